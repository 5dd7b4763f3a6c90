/**
 * The gateway-mode test (`npm run bench -- --only gateway`, issue 13): a client that has no rule
 * must see the kernel's throughput and latency, as if divert were not there. In network namespaces
 * the bench creates (dvgb + pid, removed at the end), the same run measures a device that goes through
 * the gateway with no divert running (`kernel`), the same device while divert runs in gateway mode and
 * intercepts another device on the very same ports (`gateway`), and, for scale, that other device,
 * which divert does proxy (`diverted`). Needs root, `ip`, `nft` and iperf3.
 *
 *   dev1 (rule), dev2 (none) ─ lan ─ gw (divert, intercept: iperf3 and echo ports) ─ srv (iperf3 -s, TCP echo)
 *   per run, rotated: kernel | gateway (+ diverted) → iperf3 Gbit/s, echo round trip p50/p99
 */
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gatewayTopology, Lab, netnsUnavailableReason, whichCommand, type LabProcess} from '../test/helpers/netns.js'
import {median, pairedRatios} from './stats.js'
import {DivertError} from '../src/errors.js'

export type GatewayArm = 'kernel' | 'gateway' | 'diverted'

export interface GatewayFigure {
  arm: GatewayArm
  gbps: number[]
  p50Us: number[]
  p99Us: number[]
}

export interface GatewayResults {
  runs: number
  iperfSec: number
  roundTrips: number
  figures: GatewayFigure[]
  /** median over runs of gateway ÷ kernel, per metric: the goal is ≈ 1 (no cost for clients without rules). */
  ratios: {gbps: number; p50Us: number; p99Us: number}
  skipped?: string
}

const NET = {gw: '192.0.2.1', dev1: '192.0.2.10', dev2: '192.0.2.11', gwSrv: '198.51.100.1', srv: '198.51.100.10'}

/** Why the test cannot run here, or undefined. */
export function gatewayUnavailable(): string | undefined {
  return netnsUnavailableReason() ?? (whichCommand('nft') ? undefined : 'needs nft (apt-get install nftables)') ?? (whichCommand('iperf3') ? undefined : 'needs iperf3 (apt-get install iperf3)')
}

/** A TCP echo server on port 0 that prints its port, and a client that times `n` 64-byte round trips. */
const ECHO = `const s = require('node:net').createServer((c) => { c.setNoDelay(true); c.pipe(c); c.on('error', () => {}) })
s.listen(0, process.argv[1], () => console.log('port ' + s.address().port))`
const PINGPONG = `const [host, port, n] = process.argv.slice(1); const c = require('node:net').connect({host, port: Number(port), noDelay: true})
const msg = Buffer.alloc(64, 1); const rtts = []; let t = 0, got = 0
c.on('connect', () => { t = process.hrtime.bigint(); c.write(msg) })
c.on('data', (d) => { got += d.length; if (got < 64) return; got -= 64; rtts.push(Number(process.hrtime.bigint() - t) / 1000)
  if (rtts.length === Number(n)) { rtts.sort((a, b) => a - b); console.log(JSON.stringify({p50: rtts[Math.floor(rtts.length / 2)], p99: rtts[Math.floor(rtts.length * 0.99)]})); c.destroy(); return }
  t = process.hrtime.bigint(); c.write(msg) })
setTimeout(() => { console.log('timeout'); process.exit(1) }, 60000).unref()`

interface World {
  lab: Lab
  ns: {dev1: string; dev2: string; gw: string; srv: string}
  echoPort: number
  iperfPort: number
}

async function build(lab: Lab): Promise<World> {
  const ns = await gatewayTopology(lab, {gwLan: NET.gw, dev1: NET.dev1, dev2: NET.dev2, gwSrv: NET.gwSrv, servers: [NET.srv]})
  const echo = lab.spawn(ns.srv, 'echo', process.execPath, ['-e', ECHO, NET.srv])
  const echoPort = Number((await echo.waitFor(/^port (\d+)$/, {timeoutMs: 10_000}))[1])
  // iperf3 has no port 0: 5201 inside the bench's own namespace cannot collide with anything.
  const iperfPort = 5201
  const iperf = lab.spawn(ns.srv, 'iperf3', whichCommand('iperf3')!, ['-s', '-B', NET.srv, '-p', String(iperfPort), '--forceflush'])
  await iperf.waitFor(/Server listening/, {timeoutMs: 10_000})
  return {lab, ns, echoPort, iperfPort}
}

async function measure(w: World, dev: 'dev1' | 'dev2', iperfSec: number, roundTrips: number): Promise<{gbps: number; p50: number; p99: number}> {
  const iperf = JSON.parse(await w.lab.run(w.ns[dev], whichCommand('iperf3')!, ['-c', NET.srv, '-p', String(w.iperfPort), '-t', String(iperfSec), '-J'], (iperfSec + 20) * 1000)) as {end: {sum_received: {bits_per_second: number}}}
  const rtt = JSON.parse(await w.lab.run(w.ns[dev], process.execPath, ['-e', PINGPONG, NET.srv, String(w.echoPort), String(roundTrips)], 70_000)) as {p50: number; p99: number}
  return {gbps: iperf.end.sum_received.bits_per_second / 1e9, p50: rtt.p50, p99: rtt.p99}
}

async function startDivert(w: World, repo: string, dir: string): Promise<LabProcess> {
  const config = join(dir, 'divert.yaml')
  writeFileSync(config, `transparent: { table: dvgbench }
listeners:
  - { name: gw, bind: "0.0.0.0:0", transparent: true, backend: original, intercept: { ports: [${w.echoPort}, ${w.iperfPort}] } }
backends:
  placeholder: { servers: [ { address: "${NET.srv}:9" } ], health: { check: none } }   # a config needs one; nothing uses it
rules:
  - { source: ${NET.dev1}, to: original, listener: gw }   # dev1 is intercepted and proxied to where it dialled
`)
  const p = w.lab.spawn(w.ns.gw, 'divert', process.execPath, [join(repo, 'bin/run.js'), 'start', '-c', config, '--log-format', 'json', '--drain', '1s', '--admin', join(dir, 'admin.sock')])
  await p.waitFor(/"msg":"divert ready"/, {timeoutMs: 20_000})
  return p
}

/** Runs the arms `runs` times (order rotated); one Lab for all of it, closed at the end. */
export async function benchGateway(repo: string, runs: number, iperfSec: number, log: (line: string) => void): Promise<GatewayResults> {
  const roundTrips = 2000
  const empty = {runs, iperfSec, roundTrips, figures: [], ratios: {gbps: NaN, p50Us: NaN, p99Us: NaN}}
  const skipped = gatewayUnavailable()
  if (skipped) return {...empty, skipped}
  const lab = new Lab(`dvgb${process.pid}`)
  const dir = mkdtempSync(join(tmpdir(), 'divert-bench-gateway-'))
  const figures = new Map<GatewayArm, GatewayFigure>((['kernel', 'gateway', 'diverted'] as const).map((arm) => [arm, {arm, gbps: [], p50Us: [], p99Us: []}]))
  const put = (arm: GatewayArm, m: {gbps: number; p50: number; p99: number}): void => {
    const f = figures.get(arm)!
    f.gbps.push(m.gbps)
    f.p50Us.push(m.p50)
    f.p99Us.push(m.p99)
    log(`  ${arm.padEnd(9)} ${m.gbps.toFixed(2)} Gbit/s, round trip p50 ${m.p50.toFixed(0)} µs, p99 ${m.p99.toFixed(0)} µs`)
  }
  try {
    const w = await build(lab)
    for (let run = 0; run < runs; run++) {
      log(`gateway, run ${run + 1}/${runs}`)
      const order = run % 2 === 0 ? ['kernel', 'gateway'] : ['gateway', 'kernel']
      for (const arm of order) {
        if (arm === 'kernel') {
          put('kernel', await measure(w, 'dev2', iperfSec, roundTrips))
          continue
        }
        const divert = await startDivert(w, repo, dir)
        if (!divert.running || !/divert ready/.test(divert.text())) throw new DivertError('INTERNAL', `divert did not start in gateway mode: ${divert.text().slice(-600)}`)
        put('gateway', await measure(w, 'dev2', iperfSec, roundTrips))
        put('diverted', await measure(w, 'dev1', iperfSec, roundTrips))
        await divert.stop()
      }
    }
  } finally {
    await lab.close()
    rmSync(dir, {recursive: true, force: true})
  }
  const list = [...figures.values()]
  const k = figures.get('kernel')!
  const g = figures.get('gateway')!
  const ratio = (a: number[], b: number[]): number => median(pairedRatios(a, b))
  return {...empty, figures: list, ratios: {gbps: ratio(g.gbps, k.gbps), p50Us: ratio(g.p50Us, k.p50Us), p99Us: ratio(g.p99Us, k.p99Us)}}
}

export function renderGateway(r: GatewayResults): string {
  if (r.skipped) return `gateway mode: not measured (${r.skipped})`
  const row = (f: GatewayFigure): string => `  ${f.arm.padEnd(9)} ${median(f.gbps).toFixed(2).padStart(7)} Gbit/s   p50 ${median(f.p50Us).toFixed(0).padStart(6)} µs   p99 ${median(f.p99Us).toFixed(0).padStart(6)} µs`
  return [
    `gateway mode: a client without a rule vs no divert at all (medians of ${r.runs} run${r.runs === 1 ? '' : 's'}; iperf3 ${r.iperfSec} s, ${r.roundTrips} echo round trips)`,
    ...r.figures.map(row),
    `  gateway ÷ kernel (same run, median): throughput ${r.ratios.gbps.toFixed(3)}×, p50 ${r.ratios.p50Us.toFixed(3)}×, p99 ${r.ratios.p99Us.toFixed(3)}× — goal: ≈ 1 (the kernel routes it; divert never sees it)`,
  ].join('\n')
}
