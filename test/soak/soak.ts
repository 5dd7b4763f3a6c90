/**
 * `npm run soak`: N concurrent TCP sessions and M UDP flows held through a spawned daemon for a
 * bounded time, with a runtime rule added and removed every second through the admin API and a few
 * short connections a second routed by it. Every 5 s the daemon's resident memory (VmRSS of
 * /proc/PID/status) and open descriptors (/proc/PID/fd) are sampled. At the end every client leaves
 * and the daemon's session count must return to 0; a table of the samples and a verdict follow, and
 * the exit status is non-zero on a leak or a lost session. Loopback only; every loop is bounded.
 *
 *   workers (tcp N, udp M from 127.0.x.y) ─▶ daemon ─▶ worker backends       soak ─ admin API: rule churn, samples
 */
import {fork, type ChildProcess} from 'node:child_process'
import {once} from 'node:events'
import {readFileSync, readdirSync, writeFileSync} from 'node:fs'
import net from 'node:net'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'
import Table from 'cli-table3'
import {AdminClient} from '../../src/admin/client.js'
import {openFilesLimit} from '../../src/fdlimit.js'
import {spawnDaemon, tempDir, type Spawned} from '../helpers/daemon.js'
import {freePort, freeUdpPort} from '../helpers/servers.js'
import {flatness, type Sample} from './verdict.js'
import type {FromWorker, ToWorker, WorkerStats} from './worker.js'

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url))
/** Descriptors the daemon keeps besides sessions: listeners, admin, logs, state writes, churn. */
const DAEMON_SPARE_FDS = 700
const SOURCES_PER_KIND = 200

interface Options {
  tcp: number
  udp: number
  minutes: number
  sampleMs: number
  warmupMs: number
  tolerance: number
}

function usage(): string {
  return `usage: npm run soak -- [--tcp N] [--udp M] [--minutes 3] [--sample 5] [--warmup 30] [--tolerance 10]
  --tcp, --udp   sessions to hold (default: 10000 each, or what fits the open-files hard limit: the
                 daemon needs 2 descriptors per TCP session and 1 per UDP flow)
  --minutes      how long to hold them once all are up (default 3)
  --sample       seconds between samples (default 5); --warmup: seconds of the hold not judged (default 30)
  --tolerance    allowed growth in % of RSS and fds from the first to the last third (default 10)`
}

function options(argv: string[], hardLimit: number): Options {
  const {values} = parseArgs({args: argv, options: {
    tcp: {type: 'string'}, udp: {type: 'string'}, minutes: {type: 'string'}, sample: {type: 'string'},
    warmup: {type: 'string'}, tolerance: {type: 'string'}, help: {type: 'boolean'},
  }})
  if (values.help) {
    console.log(usage())
    process.exit(0)
  }
  const num = (v: string | undefined, d: number, what: string): number => {
    const n = v === undefined ? d : Number(v)
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${what} must be a number ≥ 0, got ${v}\n${usage()}`)
    return n
  }
  // What fits: 2·N + M + spare ≤ the hard limit, N = M, in hundreds.
  const fits = Math.min(10_000, Math.floor((hardLimit - DAEMON_SPARE_FDS) / 3 / 100) * 100)
  const o = {
    tcp: num(values.tcp, fits, 'tcp'), udp: num(values.udp, fits, 'udp'), minutes: num(values.minutes, 3, 'minutes'),
    sampleMs: num(values.sample, 5, 'sample') * 1000, warmupMs: num(values.warmup, 30, 'warmup') * 1000, tolerance: num(values.tolerance, 10, 'tolerance') / 100,
  }
  const need = 2 * o.tcp + o.udp + DAEMON_SPARE_FDS
  if (need > hardLimit) throw new Error(`--tcp ${o.tcp} and --udp ${o.udp} need about ${need} descriptors in the daemon; the hard limit here is ${hardLimit}`)
  return o
}

/** A child worker with a request/answer helper over its IPC channel. */
class Worker {
  private constructor(readonly proc: ChildProcess, readonly role: string) {}

  static async start(role: string): Promise<{worker: Worker; ready: FromWorker}> {
    const proc = fork(WORKER, [role], {stdio: ['ignore', 'inherit', 'inherit', 'ipc']})
    const [ready] = (await once(proc, 'message')) as [FromWorker]
    return {worker: new Worker(proc, role), ready}
  }

  ask(m: ToWorker, answer: FromWorker['type'], timeoutMs = 600_000): Promise<WorkerStats> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`soak worker ${this.role}: no "${answer}" within ${timeoutMs}ms`)), timeoutMs)
      const on = (r: FromWorker): void => {
        if (r.type !== answer) return
        clearTimeout(timer)
        this.proc.off('message', on)
        resolve((r as {stats: WorkerStats}).stats)
      }
      this.proc.on('message', on)
      this.proc.send(m)
    })
  }

  stop(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM')
  }
}

function sources(third: number, count = SOURCES_PER_KIND): string[] {
  return Array.from({length: count}, (_, i) => `127.0.${third}.${i + 1}`)
}

function readDaemon(pid: number): {rssKb: number; fds: number} {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return {rssKb: Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0), fds: readdirSync(`/proc/${pid}/fd`).length}
}

/** Every second: the churn rule goes in or out, and a few short connections from its /24 are routed. */
function startChurn(admin: AdminClient, port: number): {stop: () => Promise<void>; counts: {rules: number; conns: number; failed: number; staging: number}} {
  const counts = {rules: 0, conns: 0, failed: 0, staging: 0}
  let on = false
  let running: Promise<void> = Promise.resolve()
  const shortConn = (i: number): Promise<void> => new Promise((resolve) => {
    const s = net.connect({port, host: '127.0.0.1', localAddress: `127.0.3.${(i % 250) + 1}`})
    s.on('error', () => undefined)
    s.once('data', (c: Buffer) => {
      counts.conns++
      if (c.toString().startsWith('staging')) counts.staging++
      s.end()
    })
    s.once('close', (hadError) => {
      if (hadError) counts.failed++
      resolve()
    })
  })
  let n = 0
  const timer = setInterval(() => {
    running = running.then(async () => {
      try {
        if (on) await admin.removeRule('127.0.3.0/24')
        else await admin.addRule({source: '127.0.3.0/24', to: 'staging', note: 'soak churn'})
        on = !on
        counts.rules++
      } catch (error) {
        console.error(`soak: rule churn failed: ${(error as Error).message}`)
        counts.failed++
      }
      await Promise.all(Array.from({length: 5}, () => shortConn(n++)))
    })
  }, 1000)
  return {
    counts,
    stop: async () => {
      clearInterval(timer)
      await running
      if (on) await admin.removeRule('127.0.3.0/24').catch(() => undefined)
    },
  }
}

async function activeSessions(admin: AdminClient): Promise<{sessions: number; rules: number}> {
  const s = await admin.status()
  return {sessions: s.totals.activeSessions, rules: s.totals.rules}
}

function printSamples(samples: Sample[]): void {
  const table = new Table({head: ['t (s)', 'phase', 'RSS (MiB)', 'fds', 'sessions', 'rules'], style: {head: [], border: []}})
  for (const s of samples) table.push([s.t.toFixed(0), s.phase, (s.rssKb / 1024).toFixed(1), s.fds, s.sessions, s.rules])
  console.log(table.toString())
}

export async function main(argv: string[]): Promise<number> {
  const limits = openFilesLimit()
  const o = options(argv, limits.hard)
  console.log(`soak: ${o.tcp} TCP sessions + ${o.udp} UDP flows for ${o.minutes} min (open-files hard limit ${limits.hard}; the daemon needs ~${2 * o.tcp + o.udp + DAEMON_SPARE_FDS})`)
  const {dir, cleanup} = tempDir('divert-soak-')
  const workers: Worker[] = []
  let daemon: Spawned | undefined
  let admin: AdminClient | undefined
  try {
    const {worker: back, ready} = await Worker.start('backends')
    workers.push(back)
    const ports = (ready as {ports: {prod: number; staging: number; udp: number}}).ports
    const tcpPort = await freePort()
    const udpPort = await freeUdpPort()
    const configFile = join(dir, 'divert.yaml')
    writeFileSync(configFile, `state: ./state.json
listeners:
  - { name: tcp, bind: "127.0.0.1:${tcpPort}", backend: prod }
  - { name: udp, protocol: udp, bind: "127.0.0.1:${udpPort}", backend: uprod, udp: { idle_timeout: 20s, max_flows: ${o.udp + 1000} } }
backends:
  prod: { servers: [ { address: "127.0.0.1:${ports.prod}" } ] }
  staging: { servers: [ { address: "127.0.0.1:${ports.staging}" } ] }
  uprod: { servers: [ { address: "127.0.0.1:${ports.udp}" } ], health: { check: none } }
`)
    const socket = join(dir, 'admin.sock')
    daemon = await spawnDaemon(configFile, {admin: socket, dir})
    const pid = daemon.proc.pid!
    admin = new AdminClient(socket)
    const baseline = readDaemon(pid)
    console.log(`soak: daemon pid ${pid} up: RSS ${(baseline.rssKb / 1024).toFixed(1)} MiB, ${baseline.fds} fds`)

    const samples: Sample[] = []
    const t0 = Date.now()
    const sample = async (phase: Sample['phase'], since = t0): Promise<Sample> => {
      const s: Sample = {t: (Date.now() - since) / 1000, phase, ...readDaemon(pid), ...(await activeSessions(admin!))}
      samples.push(s)
      return s
    }

    const [{worker: tcp}, {worker: udp}] = await Promise.all([Worker.start('tcp'), Worker.start('udp')])
    workers.push(tcp, udp)
    const rampStarted = Date.now()
    const rampSampler = setInterval(() => void sample('ramp').catch(() => undefined), o.sampleMs)
    const [tcpUp, udpUp] = await Promise.all([
      tcp.ask({type: 'open', port: tcpPort, count: o.tcp, sources: sources(1), pingEveryMs: 30_000}, 'opened'),
      udp.ask({type: 'open', port: udpPort, count: o.udp, sources: sources(2), pingEveryMs: 5_000}, 'opened'),
    ])
    clearInterval(rampSampler)
    console.log(`soak: ramp took ${((Date.now() - rampStarted) / 1000).toFixed(1)} s: TCP ${tcpUp.open} open (${tcpUp.failed} failed), UDP ${udpUp.open} flows (${udpUp.failed} failed)`)

    const churn = startChurn(admin, tcpPort)
    const holdStart = Date.now()
    const holdMs = o.minutes * 60_000
    while (Date.now() - holdStart < holdMs) {
      await new Promise((r) => setTimeout(r, Math.min(o.sampleMs, holdMs - (Date.now() - holdStart))))
      const s = await sample(Date.now() - holdStart <= o.warmupMs ? 'warmup' : 'hold', holdStart)
      process.stdout.write(`\rsoak: ${s.t.toFixed(0)} s  RSS ${(s.rssKb / 1024).toFixed(1)} MiB  fds ${s.fds}  sessions ${s.sessions}   `)
    }
    process.stdout.write('\n')
    await churn.stop()

    const [tcpEnd, udpEnd] = await Promise.all([tcp.ask({type: 'leave'}, 'left'), udp.ask({type: 'leave'}, 'left')])
    const leaveStart = Date.now()
    let left = await sample('leave', holdStart)
    // UDP flows end by idle timeout (20 s) on the daemon's 1 s tick: bounded wait.
    while (left.sessions > 0 && Date.now() - leaveStart < 60_000) {
      await new Promise((r) => setTimeout(r, 2000))
      left = await sample('leave', holdStart)
    }
    const drainedIn = (Date.now() - leaveStart) / 1000

    printSamples(samples)
    const verdicts = [flatness(samples, 'rssKb', o.tolerance), flatness(samples, 'fds', o.tolerance)]
    const problems: string[] = []
    for (const v of verdicts) {
      if (!v) {
        problems.push('too few samples after the warm-up to judge: hold longer (--minutes) or sample more often (--sample)')
        continue
      }
      const unit = v.metric === 'rssKb' ? 'RSS' : 'fds'
      const show = (x: number): string => (v.metric === 'rssKb' ? `${(x / 1024).toFixed(1)} MiB` : String(x))
      console.log(`soak: ${unit} first-third max ${show(v.firstMax)}, last-third max ${show(v.lastMax)}: ${(v.growth * 100).toFixed(1)} % → ${v.flat ? 'flat' : 'GROWING'}`)
      if (!v.flat) problems.push(`${unit} grew ${(v.growth * 100).toFixed(1)} % (> ${(o.tolerance * 100).toFixed(0)} %) while the load held`)
    }
    console.log(`soak: TCP opened ${tcpEnd.opened}/${o.tcp}, failed ${tcpEnd.failed}, dropped while held ${tcpEnd.dropped}, echo bytes missing ${tcpEnd.missing}`)
    console.log(`soak: UDP flows ${udpEnd.opened}/${o.udp}, failed ${udpEnd.failed}, datagrams sent ${udpEnd.sent}, unanswered ${udpEnd.missing}`)
    console.log(`soak: rule churn ${churn.counts.rules} changes, ${churn.counts.conns} short connections (${churn.counts.staging} diverted), ${churn.counts.failed} failures`)
    console.log(`soak: after everyone left: ${left.sessions} sessions after ${drainedIn.toFixed(1)} s; daemon RSS ${(left.rssKb / 1024).toFixed(1)} MiB, ${left.fds} fds (baseline ${baseline.fds})`)
    if (left.sessions !== 0) problems.push(`${left.sessions} sessions still live after every client left`)
    if (left.fds > baseline.fds + 10) problems.push(`the daemon holds ${left.fds} fds after every client left, ${baseline.fds} before the load`)
    if (tcpEnd.opened < o.tcp || udpEnd.opened < o.udp) problems.push('not every session could be opened')
    if (tcpEnd.dropped > 0) problems.push(`${tcpEnd.dropped} held TCP sessions were dropped`)
    if ((tcpEnd.missing ?? 0) !== 0) problems.push(`${tcpEnd.missing} echoed TCP bytes missing`)
    if (churn.counts.failed > 0) problems.push(`${churn.counts.failed} rule changes or short connections failed`)
    // UDP may lose a datagram under load by design; a flow that lost its session would lose them all.
    if ((udpEnd.missing ?? 0) > udpEnd.sent * 0.01) problems.push(`${udpEnd.missing} of ${udpEnd.sent} UDP datagrams unanswered (> 1 %)`)
    const errors = daemon.logs.filter((l) => l.level >= 50)
    if (errors.length > 0) problems.push(`the daemon logged ${errors.length} errors, first: ${errors[0].msg}`)
    for (const p of problems) console.error(`soak: FAIL: ${p}`)
    if (problems.length === 0) console.log('soak: PASS')
    return problems.length === 0 ? 0 : 1
  } finally {
    await admin?.close().catch(() => undefined)
    for (const w of workers) w.stop()
    await daemon?.stop()
    cleanup()
  }
}
