/**
 * The fleet test (`npm run bench -- --only fleet`, issue 14): two divert instances sharing rules
 * through a real redis-server. (1) How long a rule change made on instance A takes to be in force on
 * instance B — median, p99 and max over N changes (adds and removals, alternating), measured from the
 * moment the bench sends `POST /rules` (or DELETE) to A until B's `GET /explain` shows it (polled back
 * to back on B's admin socket). (2) Whether rule changes at 100/s disturb proxied traffic: one
 * ping-pong stream (64 bytes, echoed) through each instance, first quiet, then while A takes 100
 * changes a second; round-trip p50/p99/max of both phases. Needs only redis-server (no proxy tools).
 *
 *   bench ─POST/DELETE /rules─▶ A ─EVAL─▶ redis-server ─PUBLISH─▶ B ◀─GET /explain (poll)─ bench
 *   bench ─64-byte ping-pong─▶ A, B ─▶ echo (in the bench process)
 */
import http from 'node:http'
import net from 'node:net'
import {once} from 'node:events'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'
import {ProcessGroup, type Managed} from './process.js'
import {PortPool} from './ports.js'
import {median} from './stats.js'
import {DivertError} from '../src/errors.js'

export interface FleetOptions {
  /** Rule changes whose time to reach B is measured (half adds, half removals). */
  changes: number
  /** Seconds of each traffic phase (quiet, then under 100 changes/s). */
  seconds: number
  /** Rule changes per second during the second phase. */
  rate: number
}

export interface Percentiles {
  p50: number
  p99: number
  max: number
  n: number
}

export interface FleetResults {
  changes: number
  /** From sending the change to A until B has it in force, ms. */
  reachMs: Percentiles
  /** A's own answer to the change (Redis round trip included), ms. */
  commitMs: Percentiles
  traffic: Array<{instance: 'A' | 'B'; quiet: Percentiles; churn: Percentiles}>
  /** Changes made during the churn phase, and how many failed. */
  churnChanges: number
  churnFailures: number
}

function percentiles(xs: number[]): Percentiles {
  const s = [...xs].sort((a, b) => a - b)
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? Number.NaN
  return {p50: median(s), p99: at(0.99), max: s[s.length - 1] ?? Number.NaN, n: s.length}
}

/** One admin API call over a unix socket; resolves with the parsed JSON body, rejects on HTTP ≥ 400. */
function admin(socketPath: string, method: string, path: string, body?: unknown): Promise<any> {
  return new Promise((resolve, reject) => {
    const req = http.request({socketPath, method, path, headers: {'content-type': 'application/json', 'x-divert-client': 'bench'}}, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (text += c))
      res.once('end', () => (res.statusCode! < 400 ? resolve(JSON.parse(text)) : reject(new DivertError('INTERNAL', `${method} ${path}: HTTP ${res.statusCode} ${text.slice(0, 200)}`))))
    })
    req.once('error', reject)
    req.end(body === undefined ? undefined : JSON.stringify(body))
  })
}

const source = (i: number): string => `198.18.${(i >> 8) & 255}.${i & 255}`

/** Change i: even adds the rule for source(i/2), odd removes it. */
function change(a: string, i: number): Promise<unknown> {
  const s = source(i >> 1)
  return i % 2 === 0 ? admin(a, 'POST', '/rules', {source: s, to: 'staging'}) : admin(a, 'DELETE', `/rules/${s}`)
}

async function inForce(b: string, i: number): Promise<boolean> {
  const [r] = await admin(b, 'GET', `/explain?ip=${source(i >> 1)}&listener=main`) as Array<{rule: unknown}>
  return (r.rule !== null) === (i % 2 === 0)
}

async function reach(a: string, b: string, n: number): Promise<{reach: number[]; commit: number[]}> {
  const out = {reach: [] as number[], commit: [] as number[]}
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await change(a, i)
    out.commit.push(performance.now() - t0)
    const deadline = t0 + 10_000
    while (!(await inForce(b, i))) {
      if (performance.now() > deadline) throw new DivertError('INTERNAL', `change ${i} did not reach instance B within 10 s`)
    }
    out.reach.push(performance.now() - t0)
  }
  return out
}

/** Back-to-back 64-byte round trips on one connection until `stop()`; resolves with their times (ms). */
function pingPong(port: number): {stop: () => Promise<number[]>} {
  const rtts: number[] = []
  let running = true
  const done = (async () => {
    const s = net.connect(port, '127.0.0.1')
    s.setNoDelay(true)
    await once(s, 'connect')
    const ping = Buffer.alloc(64, 7)
    try {
      while (running) {
        const t = performance.now()
        s.write(ping)
        let got = 0
        while (got < ping.length) got += ((await once(s, 'data')) as [Buffer])[0].length
        rtts.push(performance.now() - t)
      }
    } finally {
      s.destroy()
    }
    return rtts
  })()
  return {stop: () => ((running = false), done)}
}

async function trafficPhase(ports: number[], seconds: number, during?: () => Promise<void>): Promise<number[][]> {
  const streams = ports.map((p) => pingPong(p))
  await (during ? during() : new Promise((r) => setTimeout(r, seconds * 1000)))
  return Promise.all(streams.map((s) => s.stop()))
}

/** `rate` changes a second on A for `seconds`, each awaited before the next is due. */
async function churn(a: string, rate: number, seconds: number, first: number): Promise<{made: number; failed: number}> {
  let made = 0
  let failed = 0
  const start = performance.now()
  for (let i = 0; i < rate * seconds; i++) {
    const due = start + (i * 1000) / rate
    const wait = due - performance.now()
    if (wait > 0) await new Promise((r) => setTimeout(r, wait))
    await change(a, first + i).then(() => made++, () => failed++)
  }
  return {made, failed}
}

function daemonConfig(port: number, echo: number, redis: string, name: string): string {
  return `state: ${redis}
fleet: { name: ${name} }
listeners:
  - { name: main, bind: "127.0.0.1:${port}", backend: prod }
backends:
  prod: { servers: [ { address: "127.0.0.1:${echo}" } ] }
  staging: { servers: [ { address: "127.0.0.1:${echo}" } ] }
`
}

async function echoServer(): Promise<net.Server> {
  const server = net.createServer((s) => {
    s.setNoDelay(true)
    s.on('error', () => undefined)
    s.pipe(s)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

export async function benchFleet(repo: string, dir: string, o: FleetOptions): Promise<FleetResults> {
  const group = new ProcessGroup()
  const ports = new PortPool()
  const echo = await echoServer()
  try {
    const redisPort = await ports.take()
    const redis = group.launch({name: 'redis-server', cmd: 'redis-server', args: ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']})
    await redis.waitFor(/Ready to accept connections/, 10_000)
    const url = `redis://127.0.0.1:${redisPort}/0`
    const echoPort = (echo.address() as net.AddressInfo).port
    const instances: Array<{admin: string; port: number; proc: Managed}> = []
    for (const name of ['bench-a', 'bench-b']) {
      const port = await ports.take()
      const config = join(dir, `${name}.yaml`)
      writeFileSync(config, daemonConfig(port, echoPort, url, name))
      const adminSock = join(dir, `${name}.sock`)
      const proc = group.launch({name, cmd: process.execPath, args: [join(repo, 'bin/run.js'), 'start', '-c', config, '--log-format', 'json', '--admin', adminSock]})
      await proc.waitFor(/"msg":"divert ready"/, 30_000)
      instances.push({admin: adminSock, port, proc})
    }
    const [a, b] = instances
    const r = await reach(a.admin, b.admin, o.changes)
    const quiet = await trafficPhase([a.port, b.port], o.seconds)
    let made = {made: 0, failed: 0}
    const busy = await trafficPhase([a.port, b.port], o.seconds, async () => {
      made = await churn(a.admin, o.rate, o.seconds, o.changes + (o.changes % 2))
    })
    return {
      changes: o.changes, reachMs: percentiles(r.reach), commitMs: percentiles(r.commit),
      traffic: (['A', 'B'] as const).map((instance, i) => ({instance, quiet: percentiles(quiet[i]), churn: percentiles(busy[i])})),
      churnChanges: made.made, churnFailures: made.failed,
    }
  } finally {
    await group.stopAll()
    await new Promise((r) => echo.close(() => r(undefined)))
  }
}

export function renderFleet(r: FleetResults, o: FleetOptions): string {
  const p = (x: Percentiles): string => `p50 ${x.p50.toFixed(2)} ms, p99 ${x.p99.toFixed(2)} ms, max ${x.max.toFixed(2)} ms (${x.n})`
  return [
    `Fleet (two instances, one redis-server): a rule change made on A in force on B, over ${r.changes} changes`,
    `  change → in force on B   ${p(r.reachMs)}`,
    `  change → A's answer      ${p(r.commitMs)}`,
    `Proxied 64-byte round trips, quiet vs ${o.rate} rule changes/s on A for ${o.seconds}s (${r.churnChanges} made, ${r.churnFailures} failed)`,
    ...r.traffic.flatMap((t) => [`  via ${t.instance} quiet   ${p(t.quiet)}`, `  via ${t.instance} churn   ${p(t.churn)}`]),
  ].join('\n')
}
