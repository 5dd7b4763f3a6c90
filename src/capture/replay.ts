/**
 * Replay of a capture's client side against a live target: each selected TCP flow over a new
 * connection, each UDP flow over its own connected socket, paced as recorded (scaled by 1/speed) or
 * as fast as back-pressure allows. What the target answers is counted and, with `compare`, checked
 * against what the recorded server sent.
 *
 *   pcap → readCapture → Reassembler → select (source CIDR) → plan (timing) → connector ⇄ target → ReplayReport
 *
 * Per-flow failures (refused, reset, timeout) are recorded in the report, never thrown: one dead
 * flow must not hide what the others did. Only bad options and unreadable captures throw.
 */
import net from 'node:net'
import dgram from 'node:dgram'
import {performance} from 'node:perf_hooks'
import {realClock, sleep, type Clock} from '../clock.js'
import {DivertError, ERROR_CATALOG} from '../errors.js'
import {formatAddress, type Address} from '../addr/address.js'
import {defaultSockets} from '../net/sockets.js'
import {abort} from '../net/reset.js'
import {formatPrefix, parseCidr, prefixContains, type Prefix} from '../addr/cidr.js'
import type {Protocol} from '../config/types.js'
import {readCapture, type SkipCount} from './pcap-reader.js'
import {Reassembler, type Flow, type Gap} from './reassembly.js'
import {compareStreams} from './compare.js'

/**
 * The real clock read through the monotonic performance.now(): pacing only measures intervals, and a
 * wall-clock step (NTP) must neither stall nor rush a replay. Tests inject a clock to check the schedule.
 */
const pacingClock: Clock = {...realClock, now: () => performance.now()}

/**
 * Opens the sockets a replay talks through. TCP: returns a socket that is connecting (or connected)
 * to `to`. UDP: returns a socket (bound if the connector wants a given source); replay connects it.
 */
export interface ReplayConnector {
  tcp(to: Address, flow: Flow): net.Socket
  udp(to: Address, flow: Flow): dgram.Socket
}

/**
 * Replay's sockets come from the socket factory, as every upstream socket does: its TCP sockets allow
 * half-open (the target's FIN must not close our side before the recorded client is done).
 */
export const defaultConnector: ReplayConnector = {
  tcp: (to) => defaultSockets.tcp(to),
  udp: (to) => defaultSockets.udp(to),
}

export interface ReplayProgress {
  flowsDone: number
  flowsTotal: number
  bytesSent: number
  bytesReceived: number
}

export interface ReplayOptions {
  file: string
  to: Address
  /** Only flows whose client is inside this CIDR (parseCidr syntax). */
  source?: string
  /** Pace multiplier: 2 = twice as fast as recorded. Default 1. */
  speed?: number
  /** No pacing: every flow at once, chunks back to back, still in order and with back-pressure. */
  fast?: boolean
  /** Replay the whole selection this many times, one pass after the other. Default 1. */
  loop?: number
  compare?: boolean
  /**
   * How long to wait for answers after a flow's last sent byte; also how long the target may stay quiet
   * before a FIN recorded after an answer is sent without the rest of that answer. Default 2000.
   */
  waitMs?: number
  /** Give up connecting after this long; 0 = leave it to the OS. Default 5000. */
  connectTimeoutMs?: number
  /** A TCP target that takes no bytes (no 'drain') for this long fails the flow. Default 30000. */
  stallTimeoutMs?: number
  /** Flows in flight at once; later ones wait for a free slot. Default 256. */
  maxConcurrent?: number
  connect?: ReplayConnector
  clock?: Clock
  onProgress?: (p: ReplayProgress) => void
  signal?: AbortSignal
}

export interface FlowComparison {
  identical: boolean
  offset?: number
  expected?: string
  actual?: string
  lengthExpected: number
  lengthActual: number
}

export interface ReplayFlowResult {
  id: string
  /** 1-based pass of `loop`. */
  loop: number
  protocol: Protocol
  /** Recorded client, `address:port` (IPv6 in brackets). */
  client: string
  /** Recorded server. */
  server: string
  bytesSent: number
  bytesReceived: number
  recordedClientBytes: number
  recordedServerBytes: number
  durationMs: number
  error?: string
  /** Node's code for the error (ECONNREFUSED, ECONNRESET, …) when there is one. */
  errorCode?: string
  /** UDP: datagrams the socket refused to send (EMSGSIZE, …); neither counted in bytesSent nor retried. */
  datagramsFailed?: number
  gaps: Gap[]
  compare?: FlowComparison
}

export interface ReplayTotals {
  flows: number
  bytesSent: number
  bytesReceived: number
  errors: number
  identical?: number
  different?: number
}

export interface ReplayReport {
  file: string
  to: string
  source?: string
  speed: number
  fast: boolean
  loops: number
  capture: {linktype: number; nanosecond: boolean; records: number; flows: number; selected: number}
  flows: ReplayFlowResult[]
  totals: ReplayTotals
  skipped: SkipCount[]
  aborted: boolean
  /** What the user should know about the input, e.g. a cut last record (the packets before it were replayed). */
  warnings: string[]
}

interface Settings {
  stallTimeoutMs: number
  speed: number
  fast: boolean
  loops: number
  waitMs: number
  connectTimeoutMs: number
  maxConcurrent: number
  prefix?: Prefix
}

export async function runReplay(opts: ReplayOptions): Promise<ReplayReport> {
  const s = settings(opts)
  const reassembler = new Reassembler()
  const cap = await readCapture(opts.file, {onPacket: (p) => reassembler.push(p), signal: opts.signal})
  const all = reassembler.finish()
  const selected = selectFlows(all, s.prefix)
  if (selected.length === 0) throw nothingToReplay(opts.file, all, cap.records, cap.skipped, opts.source)
  const {flows, aborted} = await replayFlows(selected, {...opts, ...s})
  return {
    file: opts.file,
    to: formatAddress(opts.to),
    ...(opts.source === undefined ? {} : {source: opts.source}),
    speed: s.speed,
    fast: s.fast,
    loops: s.loops,
    capture: {linktype: cap.linktype, nanosecond: cap.nanosecond, records: cap.records, flows: all.length, selected: selected.length},
    flows,
    totals: totals(flows, opts.compare === true),
    skipped: cap.skipped,
    aborted,
    warnings: cap.truncated ? [cap.truncated.warning] : [],
  }
}

/** connect(2) errors (and our connect timeout): the target never took the connection. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL'])

/**
 * How `divert replay` ends. A target that took none of the flows throws REPLAY_FAILED (one line, no
 * table: nothing was replayed). Otherwise the exit status to set after the report: REPLAY_FAILED's
 * when some flows failed after others went through; 1 when answers differ, as cmp(1) does; else 0.
 */
export function replayExitCode(report: ReplayReport): number {
  const [first] = report.flows
  const unreachable = !report.aborted && first !== undefined &&
    report.flows.every((f) => UNREACHABLE.has(f.errorCode ?? '') && f.bytesReceived === 0)
  if (unreachable) {
    const n = report.flows.length
    throw new DivertError('REPLAY_FAILED', `cannot replay ${report.file} to ${report.to}: ${first.error} (${first.errorCode})${n > 1 ? ` for all ${n} flows` : ''}; check that the target is up and --to is right`, {details: {flows: n, errorCode: first.errorCode}})
  }
  if (report.totals.errors > 0) return ERROR_CATALOG.REPLAY_FAILED.exit
  return (report.totals.different ?? 0) > 0 ? 1 : 0
}

function settings(opts: ReplayOptions): Settings {
  const speed = opts.speed ?? 1
  if (!(Number.isFinite(speed) && speed > 0)) throw badOption(`--speed ${opts.speed} must be a number above 0 (e.g. 0.5 for half speed, 10 for ten times faster)`)
  const loops = opts.loop ?? 1
  if (!(Number.isInteger(loops) && loops >= 1)) throw badOption(`--loop ${opts.loop} must be a whole number of passes, 1 or more`)
  const waitMs = opts.waitMs ?? 2000
  if (!(Number.isFinite(waitMs) && waitMs >= 0)) throw badOption(`the wait for answers (${opts.waitMs} ms) must be 0 or more milliseconds`)
  const maxConcurrent = opts.maxConcurrent ?? 256
  if (!(Number.isInteger(maxConcurrent) && maxConcurrent >= 1)) throw badOption(`maxConcurrent ${opts.maxConcurrent} must be a whole number, 1 or more`)
  const prefix = opts.source === undefined ? undefined : parseCidr(opts.source)
  const connectTimeoutMs = opts.connectTimeoutMs ?? 5000
  if (!(connectTimeoutMs >= 0)) throw badOption(`the connect timeout (${opts.connectTimeoutMs} ms) must be 0 (none) or more milliseconds`)
  const stallTimeoutMs = opts.stallTimeoutMs ?? 30_000
  if (!(stallTimeoutMs > 0)) throw badOption(`the stall timeout (${opts.stallTimeoutMs} ms) must be above 0 milliseconds`)
  return {speed, fast: opts.fast === true, loops, waitMs, connectTimeoutMs, stallTimeoutMs, maxConcurrent, prefix}
}

const badOption = (message: string): DivertError => new DivertError('REPLAY_BAD_OPTION', message)

/** `--speed` as typed → the pace multiplier; the error quotes the text, not what Number() made of it. */
export function parseSpeed(text: string): number {
  const speed = Number(text)
  if (text.trim() === '' || !(Number.isFinite(speed) && speed > 0)) {
    throw badOption(`--speed "${text}" must be a number above 0 (e.g. 0.5 for half speed, 10 for ten times faster)`)
  }
  return speed
}

export function selectFlows(flows: Flow[], prefix?: Prefix): Flow[] {
  return prefix ? flows.filter((f) => prefixContains(prefix, f.client.address)) : flows
}

function nothingToReplay(file: string, all: Flow[], records: number, skipped: SkipCount[], source?: string): DivertError {
  if (all.length === 0) {
    const why = skipped.map((s) => `${s.count} ${s.reason}`).join(', ')
    return new DivertError('REPLAY_NO_FLOWS', `${file} holds no TCP or UDP flow to replay (${records} packets${why ? `; skipped: ${why}` : ''})`)
  }
  const clients = [...new Set(all.map((f) => f.client.address))]
  const shown = clients.slice(0, 5).join(', ') + (clients.length > 5 ? `, … (${clients.length} in all)` : '')
  const prefix = formatPrefix(parseCidr(source ?? ''))
  return new DivertError('REPLAY_NO_FLOWS', `no flow in ${file} has a client in ${prefix}; the capture's clients are ${shown}`)
}

function totals(flows: ReplayFlowResult[], compare: boolean): ReplayTotals {
  const t: ReplayTotals = {flows: flows.length, bytesSent: 0, bytesReceived: 0, errors: 0}
  for (const f of flows) {
    t.bytesSent += f.bytesSent
    t.bytesReceived += f.bytesReceived
    if (f.error !== undefined) t.errors++
  }
  if (compare) {
    t.identical = flows.filter((f) => f.compare?.identical === true).length
    t.different = flows.filter((f) => f.compare?.identical === false).length
  }
  return t
}

/** When each flow starts and each of its client chunks (and FIN) is due, in ms from the pass start. */
export interface FlowPlan {
  flow: Flow
  startMs: number
  chunkMs: number[]
  finMs?: number
}

/** Pure schedule: recorded offsets from the earliest flow's first packet, divided by speed; fast: all 0. */
export function planReplay(flows: Flow[], pacing: {speed: number; fast: boolean}): FlowPlan[] {
  const base = flows.reduce((m, f) => Math.min(m, f.firstTs), Infinity)
  const at = (ts: number): number => (pacing.fast ? 0 : (ts - base) / 1000 / pacing.speed)
  return [...flows]
    .sort((a, b) => a.firstTs - b.firstTs)
    .map((flow) => ({
      flow,
      startMs: at(flow.firstTs),
      chunkMs: flow.clientChunks.map((c) => at(c.ts)),
      ...(flow.clientFinTs === undefined ? {} : {finMs: at(flow.clientFinTs)}),
    }))
}

type ReplayFlowsOptions = Pick<ReplayOptions, 'to' | 'compare' | 'connect' | 'clock' | 'onProgress' | 'signal'> & Omit<Settings, 'prefix'>

/** Replays already reassembled flows `loops` times; never throws for a flow's own failure. */
export async function replayFlows(flows: Flow[], opts: ReplayFlowsOptions): Promise<{flows: ReplayFlowResult[]; aborted: boolean}> {
  const ctx = new ReplayContext(opts, flows.length * opts.loops)
  const onAbort = (): void => ctx.abortAll()
  opts.signal?.addEventListener('abort', onAbort, {once: true})
  try {
    const plans = planReplay(flows, opts)
    const results: ReplayFlowResult[] = []
    for (let loop = 1; loop <= opts.loops && !ctx.aborted; loop++) results.push(...(await runPass(plans, ctx, loop)))
    ctx.progress(true)
    return {flows: results, aborted: ctx.aborted}
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
  }
}

/** Shared state of one replay: options, running totals, live sockets (closed on abort). */
class ReplayContext {
  readonly clock: Clock
  readonly connector: ReplayConnector
  readonly live = new Set<{destroy(): void}>()
  readonly counters: ReplayProgress
  private lastReport = -Infinity

  constructor(readonly opts: ReplayFlowsOptions, flowsTotal: number) {
    this.clock = opts.clock ?? pacingClock
    this.connector = opts.connect ?? defaultConnector
    this.counters = {flowsDone: 0, flowsTotal, bytesSent: 0, bytesReceived: 0}
  }

  get aborted(): boolean {
    return this.opts.signal?.aborted === true
  }

  abortAll(): void {
    for (const s of [...this.live]) s.destroy()
  }

  sleepUntil(t: number): Promise<void> {
    const ms = t - this.clock.now()
    return ms > 0 && !this.aborted ? sleep(this.clock, ms, this.opts.signal) : Promise.resolve()
  }

  /** Reports progress at most every 100 ms, and always when `force`. */
  progress(force = false): void {
    const now = this.clock.now()
    if (!this.opts.onProgress || (!force && now - this.lastReport < 100)) return
    this.lastReport = now
    this.opts.onProgress({...this.counters})
  }
}

async function runPass(plans: FlowPlan[], ctx: ReplayContext, loop: number): Promise<ReplayFlowResult[]> {
  const t0 = ctx.clock.now()
  const running: Promise<ReplayFlowResult>[] = []
  const slots = new Slots(ctx.opts.maxConcurrent)
  for (const plan of plans) {
    await ctx.sleepUntil(t0 + plan.startMs)
    await slots.take()
    if (ctx.aborted) {
      slots.give()
      break
    }
    running.push(replayFlow(plan, ctx, t0, loop).finally(() => slots.give()))
  }
  return Promise.all(running)
}

/** A counting semaphore for flows in flight. */
class Slots {
  private waiting: (() => void)[] = []
  constructor(private free: number) {}

  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--
      return
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve))
  }

  give(): void {
    const next = this.waiting.shift()
    if (next) next()
    else this.free++
  }
}

async function replayFlow(plan: FlowPlan, ctx: ReplayContext, t0: number, loop: number): Promise<ReplayFlowResult> {
  const f = plan.flow
  const r: ReplayFlowResult = {
    id: f.id,
    loop,
    protocol: f.protocol,
    client: formatAddress(f.client),
    server: formatAddress(f.server),
    bytesSent: 0,
    bytesReceived: 0,
    recordedClientBytes: sum(f.clientChunks),
    recordedServerBytes: sum(f.serverChunks),
    durationMs: 0,
    gaps: f.gaps,
    ...(f.protocol === 'udp' ? {datagramsFailed: 0} : {}),
  }
  const started = ctx.clock.now()
  const target = new Target(ctx, ctx.opts.compare === true)
  try {
    await (f.protocol === 'tcp' ? replayTcp(plan, ctx, t0, r, target) : replayUdp(plan, ctx, t0, r, target))
  } catch (e) {
    target.fail(e)
  }
  r.bytesReceived = target.received
  r.durationMs = Math.round(ctx.clock.now() - started)
  if (target.error) Object.assign(r, describeError(target.error, ctx, r.bytesSent))
  if (ctx.opts.compare) r.compare = comparison(f, target.chunks)
  ctx.counters.flowsDone++
  ctx.progress(true)
  return r
}

const sum = (chunks: {data: Buffer}[]): number => chunks.reduce((n, c) => n + c.data.length, 0)

function comparison(f: Flow, received: Buffer[]): FlowComparison {
  const c = compareStreams(Buffer.concat(f.serverChunks.map((x) => x.data)), Buffer.concat(received))
  const out: FlowComparison = {identical: c.identical, lengthExpected: c.lengthExpected, lengthActual: c.lengthActual}
  if (!c.identical) Object.assign(out, {offset: c.offset, expected: c.expectedExcerpt, actual: c.actualExcerpt})
  return out
}

/** What came back on one flow's socket, and a way to wait for a condition on it (or a deadline). */
class Target {
  received = 0
  readonly chunks: Buffer[] = []
  error?: Error
  ended = false
  closed = false
  private readonly wakers = new Set<() => void>()

  constructor(private readonly ctx: ReplayContext, private readonly keep: boolean) {}

  data(chunk: Buffer): void {
    this.received += chunk.length
    this.ctx.counters.bytesReceived += chunk.length
    if (this.keep) this.chunks.push(chunk)
    this.ctx.progress()
    this.wake()
  }

  fail(e: unknown): void {
    this.error ??= e instanceof Error ? e : new Error(String(e))
    this.wake()
  }

  /** The socket is finished with: it failed or closed. */
  get gone(): boolean {
    return this.error !== undefined || this.closed
  }

  wake(): void {
    for (const w of [...this.wakers]) w()
  }

  /** Resolves once `done()` holds (checked on every wake), or after `ms` when given. */
  until(done: () => boolean, ms?: number): Promise<void> {
    if (done()) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = new AbortController()
      const finish = (): void => {
        this.wakers.delete(check)
        timer.abort()
        resolve()
      }
      const check = (): void => {
        if (done()) finish()
      }
      this.wakers.add(check)
      if (ms !== undefined) sleep(this.ctx.clock, Math.max(0, ms), timer.signal).then(finish, finish)
    })
  }
}

class ConnectTimeout extends Error {
  readonly code = 'ETIMEDOUT'
}

class Stalled extends Error {
  readonly code = 'STALLED'
}

async function replayTcp(plan: FlowPlan, ctx: ReplayContext, t0: number, r: ReplayFlowResult, t: Target): Promise<void> {
  const sock = ctx.connector.tcp(ctx.opts.to, plan.flow)
  ctx.live.add(sock)
  sock.setNoDelay(true)
  sock.on('data', (d: Buffer) => t.data(d))
  sock.on('end', () => {
    t.ended = true
    t.wake()
  })
  sock.on('error', (e) => t.fail(e))
  sock.on('close', () => {
    t.closed = true
    if (ctx.aborted) t.fail(new DOMException('aborted', 'AbortError'))
    t.wake()
  })
  sock.on('connect', () => t.wake())
  sock.on('drain', () => t.wake())
  try {
    await t.until(() => !sock.connecting || t.gone, ctx.opts.connectTimeoutMs > 0 ? ctx.opts.connectTimeoutMs : undefined)
    if (sock.connecting && !t.gone) t.fail(new ConnectTimeout(`no connection within ${ctx.opts.connectTimeoutMs} ms`))
    if (t.gone) return
    const lastSend = await sendTcp(plan, ctx, t0, r, sock, t)
    await t.until(() => t.gone || t.ended, lastSend + ctx.opts.waitMs - ctx.clock.now())
    // abort(): a plain resetAndDestroy() after the flow's own end() may leave the socket open (src/net/reset.ts).
    if (plan.flow.clientReset && !t.gone) abort(sock, true)
  } finally {
    sock.destroy()
    ctx.live.delete(sock)
  }
}

const BATCH = 64 * 1024

/** Writes the client chunks on schedule, due ones corked together, then FIN as recorded once the answer before it arrived (awaitAnswer). Returns when the last byte (or the FIN) went. */
async function sendTcp(plan: FlowPlan, ctx: ReplayContext, t0: number, r: ReplayFlowResult, sock: net.Socket, t: Target): Promise<number> {
  const chunks = plan.flow.clientChunks
  let lastSend = ctx.clock.now()
  for (let i = 0; i < chunks.length && !t.gone; ) {
    await ctx.sleepUntil(t0 + plan.chunkMs[i])
    if (t.gone || ctx.aborted) break
    sock.cork()
    let batched = 0
    do {
      sock.write(chunks[i].data)
      batched += chunks[i].data.length
      i++
    } while (i < chunks.length && batched < BATCH && t0 + plan.chunkMs[i] <= ctx.clock.now())
    sock.uncork()
    r.bytesSent += batched
    ctx.counters.bytesSent += batched
    ctx.progress()
    if (sock.writableNeedDrain) {
      await t.until(() => !sock.writableNeedDrain || t.gone, ctx.opts.stallTimeoutMs)
      if (sock.writableNeedDrain && !t.gone) t.fail(new Stalled(`${sock.writableLength} bytes were still queued after ${ctx.opts.stallTimeoutMs} ms: the target stopped reading`))
    }
    lastSend = ctx.clock.now()
  }
  if (plan.flow.clientFin && !t.gone && !ctx.aborted) {
    if (plan.finMs !== undefined) await ctx.sleepUntil(t0 + plan.finMs)
    await awaitAnswer(answeredBeforeFin(plan.flow), ctx, t)
    if (t.gone || ctx.aborted) return lastSend
    sock.end()
    lastSend = ctx.clock.now()
  }
  return lastSend
}

/** Bytes the recorded server had sent before the recorded client FIN: the answer the FIN must not cut off. */
function answeredBeforeFin(flow: Flow): number {
  const fin = flow.clientFinTs ?? Infinity
  return flow.serverChunks.reduce((n, c) => (c.ts <= fin ? n + c.data.length : n), 0)
}

/**
 * Holds the client's FIN until the target has sent `expected` bytes, or stayed quiet for waitMs, or
 * ended or failed; stallTimeoutMs at most in all. Servers that drop unsent replies once they read the
 * client's FIN (redis does, measured with redis-server 7) would otherwise cut the answer off when replay runs ahead of
 * the recording (--fast, or a server slower than the recorded one).
 */
async function awaitAnswer(expected: number, ctx: ReplayContext, t: Target): Promise<void> {
  const deadline = ctx.clock.now() + ctx.opts.stallTimeoutMs
  const done = (): boolean => t.received >= expected || t.gone || t.ended || ctx.aborted
  let seen = -1
  while (!done() && seen !== t.received && ctx.clock.now() < deadline) {
    seen = t.received
    await t.until(() => done() || t.received !== seen, Math.min(ctx.opts.waitMs, deadline - ctx.clock.now()))
  }
}

async function replayUdp(plan: FlowPlan, ctx: ReplayContext, t0: number, r: ReplayFlowResult, t: Target): Promise<void> {
  const sock = ctx.connector.udp(ctx.opts.to, plan.flow)
  let connected = false
  const handle = {destroy: () => closeQuietly(sock)}
  ctx.live.add(handle)
  sock.on('message', (m: Buffer) => t.data(m))
  sock.on('error', (e) => t.fail(e))
  sock.on('close', () => {
    t.closed = true
    if (ctx.aborted) t.fail(new DOMException('aborted', 'AbortError'))
    t.wake()
  })
  try {
    sock.connect(ctx.opts.to.port, ctx.opts.to.address, () => {
      connected = true
      t.wake()
    })
    await t.until(() => connected || t.gone)
    let lastSend = ctx.clock.now()
    for (let i = 0; i < plan.flow.clientChunks.length && !t.gone; i++) {
      await ctx.sleepUntil(t0 + plan.chunkMs[i])
      if (t.gone || ctx.aborted) break
      const data = plan.flow.clientChunks[i].data
      const error = await sendDatagram(sock, data)
      if (error) {
        unsent(r, error, plan.flow.clientChunks.length)
        continue
      }
      r.bytesSent += data.length
      ctx.counters.bytesSent += data.length
      ctx.progress()
      lastSend = ctx.clock.now()
    }
    await t.until(() => t.gone, lastSend + ctx.opts.waitMs - ctx.clock.now())
  } finally {
    closeQuietly(sock)
    ctx.live.delete(handle)
  }
}

/** dgram has no back-pressure; waiting for each send's callback is the closest to it. Resolves with the send's error, if any. */
function sendDatagram(sock: dgram.Socket, data: Buffer): Promise<Error | undefined> {
  return new Promise((resolve) => {
    try {
      sock.send(data, (e) => resolve(e ?? undefined))
    } catch (e) {
      resolve(e as Error)
    }
  })
}

/**
 * One datagram the socket would not send (EMSGSIZE: larger than the target's family carries, RFC 768 /
 * udp(7)): counted as failed, not as sent, and the flow goes on with the next one — the target may
 * still answer the others. The first such error is the flow's error.
 */
function unsent(r: ReplayFlowResult, e: Error, total: number): void {
  r.datagramsFailed = (r.datagramsFailed ?? 0) + 1
  const code = (e as NodeJS.ErrnoException).code
  r.error = `${r.datagramsFailed} of ${total} datagrams could not be sent: ${e.message}`
  if (code !== undefined) r.errorCode = code
}

function closeQuietly(sock: dgram.Socket): void {
  try {
    sock.close()
  } catch {
    // ERR_SOCKET_DGRAM_NOT_RUNNING: already closed, which is all we wanted.
  }
}

function describeError(e: Error, ctx: ReplayContext, sent: number): {error: string; errorCode?: string} {
  const code = (e as NodeJS.ErrnoException).code
  const to = formatAddress(ctx.opts.to)
  const codeField = code === undefined ? {} : {errorCode: code}
  if (e.name === 'AbortError') return {error: 'aborted', errorCode: 'ABORT_ERR'}
  switch (code) {
    case 'ECONNREFUSED':
      return {error: `connection refused by ${to}`, ...codeField}
    case 'ECONNRESET':
      return {error: `reset by ${to} after ${sent} bytes were sent`, ...codeField}
    case 'EPIPE':
      return {error: `${to} closed the connection after ${sent} bytes were sent; the rest was not delivered`, ...codeField}
    case 'ETIMEDOUT':
      return {error: `${to} did not answer: ${e.message}`, ...codeField}
    case 'STALLED':
      return {error: `${to} stalled after ${sent} bytes were sent: ${e.message}`, ...codeField}
    default:
      return {error: e.message, ...codeField}
  }
}
