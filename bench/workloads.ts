/**
 * The load tools, each run pinned to the load core with a hard time limit: wrk (HTTP), iperf3 (bulk
 * TCP), loadgen (UDP rates, new UDP flows, idle TCP connections and UDP flows held open). Proxy CPU
 * is read from /proc around each run, or inside loadgen for the UDP steps.
 *
 *   workload(lab, port, …) → parsed result (+ proxy CPU seconds)
 */
import {setTimeout as delay} from 'node:timers/promises'
import {LOOPBACK, SMALL_FILE, loadSpec, type Lab} from './lab.js'
import {loadgenLine, loadgenLines, parseIperf, parseWrk, type IperfResult, type UdpFlowsResult, type UdpStep, type WrkResult} from './parse.js'
import {machineBusySec, usage, type Usage} from './procfs.js'
import {DivertError} from '../src/errors.js'

export interface WrkOptions {
  connections: number
  seconds: number
  /** Send `Connection: close`: every request on a new TCP connection. */
  close: boolean
}

/** Time allowed beyond a tool's own duration before it is killed: start-up, drain, a slow proxy. */
const GRACE_MS = 20_000

function failed(tool: string, code: number | null, tail: string): DivertError {
  return new DivertError('INTERNAL', `${tool} exited with status ${code}${code === null ? ' (killed at its time limit)' : ''}: ${tail || 'no output'}`)
}

export async function wrk(lab: Lab, port: number, o: WrkOptions): Promise<WrkResult> {
  const args = ['-t1', `-c${o.connections}`, `-d${o.seconds}s`, '--timeout', '5s', '-s', lab.wrkScript,
    ...(o.close ? ['-H', 'Connection: close'] : []), `http://${LOOPBACK}:${port}/${SMALL_FILE}`]
  const r = await lab.group.run(loadSpec(lab, {name: 'wrk', cmd: 'wrk', args}), o.seconds * 1000 + GRACE_MS)
  if (r.code !== 0) throw failed('wrk', r.code, r.tail)
  return parseWrk(r.stdout)
}

export async function iperf(lab: Lab, port: number, streams: number, seconds: number): Promise<IperfResult> {
  const args = ['-c', LOOPBACK, '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J']
  const r = await lab.group.run(loadSpec(lab, {name: 'iperf3', cmd: 'iperf3', args}), seconds * 1000 + GRACE_MS)
  if (r.code !== 0 && !r.stdout.includes('"end"')) throw failed('iperf3', r.code, r.tail)
  return parseIperf(r.stdout)
}

function pidList(pids: number[]): string {
  return pids.length ? pids.join(',') : '-'
}

export async function udpRate(lab: Lab, port: number, clients: number, stepMs: number, rates: number[], pids: number[]): Promise<{warm: {answered: number; wrong: number}; steps: UdpStep[]}> {
  const args = ['udp-rate', LOOPBACK, String(port), String(clients), '64', String(stepMs), rates.join(','), pidList(pids)]
  const r = await lab.group.run(loadSpec(lab, {name: 'loadgen udp-rate', cmd: lab.loadgen, args}), rates.length * (stepMs + 2500) + GRACE_MS)
  if (r.code !== 0) throw failed('loadgen udp-rate', r.code, r.tail)
  return {warm: loadgenLine<{mode: string; answered: number; wrong: number}>(r.stdout, 'udp-warm'), steps: loadgenLines<UdpStep>(r.stdout, 'udp-rate')}
}

export async function udpFlows(lab: Lab, port: number, concurrency: number, ms: number, max: number, pids: number[]): Promise<UdpFlowsResult> {
  const args = ['udp-flows', LOOPBACK, String(port), String(concurrency), String(ms), String(max), '1000', pidList(pids)]
  const r = await lab.group.run(loadSpec(lab, {name: 'loadgen udp-flows', cmd: lab.loadgen, args}), ms + GRACE_MS)
  if (r.code !== 0) throw failed('loadgen udp-flows', r.code, r.tail)
  return loadgenLine<UdpFlowsResult>(r.stdout, 'udp-flows')
}

/**
 * CPU spent while fn ran: the proxy's process tree (undefined for direct, which has no proxy), and
 * the whole machine (load, backends, proxy and the kernel's own workers, for every contender).
 */
export async function withCpu<T>(pids: () => number[], fn: () => Promise<T>): Promise<{result: T; cpuSec?: number; minorFaults?: number; machineSec: number}> {
  const before = pids()
  const u0 = before.length ? usage(before) : undefined
  const m0 = machineBusySec()
  const result = await fn()
  const machineSec = machineBusySec() - m0
  if (!u0) return {result, machineSec}
  const u1 = usage(pids())
  return {result, cpuSec: u1.cpuSec - u0.cpuSec, minorFaults: u1.minorFaults - u0.minorFaults, machineSec}
}

export interface Held {
  /** loadgen's first line: {connected, failed} or {answered, wrong}. */
  result: Record<string, number>
  /** Closes the connections/flows; resolves with loadgen's final line, if any. */
  release(): Promise<Record<string, number> | undefined>
}

/** Opens `count` idle TCP connections or answered UDP flows to port and keeps them until release(). */
export async function hold(lab: Lab, mode: 'tcp-hold' | 'udp-hold', port: number, count: number): Promise<Held> {
  const m = lab.group.launch(loadSpec(lab, {name: `loadgen ${mode}`, cmd: lab.loadgen, args: [mode, LOOPBACK, String(port), String(count), '60000'], stdin: 'pipe'}))
  try {
    const line = await m.waitFor(new RegExp(`"mode":"${mode}"`), 90_000)
    return {
      result: JSON.parse(line) as Record<string, number>,
      async release() {
        m.endInput()
        const end = await m.waitFor(/"mode":"tcp-hold-end"/, 10_000).catch(() => undefined)
        await m.stop()
        return end ? (JSON.parse(end) as Record<string, number>) : undefined
      },
    }
  } catch (e) {
    await m.stop()
    throw e
  }
}

/**
 * Waits until the proxy holds at least `fds` descriptors (its upstream sockets exist: it has done its
 * work for every held client), polling /proc. Stops early when the count has not moved for
 * `stableMs` or at timeoutMs, returning the last reading: a proxy that never opens them all is still
 * measured as it is.
 */
export async function settledUsage(pids: () => number[], fds: number, timeoutMs: number, stableMs = 2000): Promise<Usage> {
  const deadline = Date.now() + timeoutMs
  let u = usage(pids())
  let changedAt = Date.now()
  while (u.fds < fds && Date.now() < deadline && Date.now() - changedAt < stableMs) {
    await delay(100)
    const next = usage(pids())
    if (next.fds !== u.fds) changedAt = Date.now()
    u = next
  }
  return u
}
