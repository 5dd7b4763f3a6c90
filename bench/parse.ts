/**
 * Parsers for what the load tools print: wrk's WRKJSON line (bench/wrk-report.lua), iperf3's -J
 * document, and loadgen's JSON lines. Each throws a DivertError naming the tool and what was missing.
 */
import {DivertError} from '../src/errors.js'

export interface WrkResult {
  requests: number
  durationUs: number
  bytes: number
  errors: {connect: number; read: number; write: number; status: number; timeout: number}
  latencyUs: {p50: number; p90: number; p99: number; p999: number; max: number; mean: number}
}

export interface IperfResult {
  bitsPerSecond: number
  bytes: number
  seconds: number
}

function bad(tool: string, what: string, text: string): DivertError {
  const tail = text.trim().split('\n').slice(-3).join(' | ').slice(0, 300)
  return new DivertError('INTERNAL', `${tool}: ${what}; its output ended with: ${tail || '(nothing)'}`)
}

export function parseWrk(stdout: string): WrkResult {
  const line = stdout.split('\n').find((l) => l.startsWith('WRKJSON '))
  if (!line) throw bad('wrk', 'no WRKJSON line (was bench/wrk-report.lua passed with -s?)', stdout)
  const r = JSON.parse(line.slice('WRKJSON '.length)) as WrkResult
  if (typeof r.requests !== 'number' || typeof r.latencyUs?.p99 !== 'number') throw bad('wrk', 'WRKJSON line lacks requests or latency', stdout)
  return r
}

export function wrkRate(r: WrkResult): number {
  return r.durationUs > 0 ? r.requests / (r.durationUs / 1e6) : 0
}

export function wrkErrorCount(r: WrkResult): number {
  const e = r.errors
  return e.connect + e.read + e.write + e.status + e.timeout
}

export function parseIperf(stdout: string): IperfResult {
  let doc: {error?: string; end?: {sum_received?: {bits_per_second?: number; bytes?: number; seconds?: number}}}
  try {
    doc = JSON.parse(stdout)
  } catch {
    throw bad('iperf3', 'output is not JSON (was -J passed?)', stdout)
  }
  if (doc.error) throw new DivertError('INTERNAL', `iperf3 failed: ${doc.error}`)
  const s = doc.end?.sum_received
  if (typeof s?.bits_per_second !== 'number' || typeof s.bytes !== 'number') throw bad('iperf3', 'no end.sum_received in its JSON', stdout)
  return {bitsPerSecond: s.bits_per_second, bytes: s.bytes, seconds: s.seconds ?? 0}
}

/** Every JSON line loadgen printed with the given "mode", in order. */
export function loadgenLines<T extends {mode: string}>(stdout: string, mode: string): T[] {
  const out: T[] = []
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('{')) continue
    const doc = JSON.parse(line) as T
    if (doc.mode === mode) out.push(doc)
  }
  return out
}

export function loadgenLine<T extends {mode: string}>(stdout: string, mode: string): T {
  const [first] = loadgenLines<T>(stdout, mode)
  if (!first) throw bad('loadgen', `no "${mode}" result line`, stdout)
  return first
}

export interface UdpStep {
  mode: 'udp-rate'
  rate: number
  durationMs: number
  offered: number
  sent: number
  sendErrors: number
  received: number
  late: number
  wrong: number
  sentPerSec: number
  receivedPerSec: number
  rttP50Us: number
  rttP99Us: number
  proxyCpuSec: number
}

export interface UdpFlowsResult {
  mode: 'udp-flows'
  opened: number
  completed: number
  lost: number
  wrong: number
  sendErrors: number
  elapsedSec: number
  flowsPerSec: number
  proxyCpuSec: number
}
