/**
 * HealthChecker: probes every server of one backend on its own timer and flips `server.up` after
 * `fall` consecutive failures or `rise` consecutive successes (HAProxy's rise/fall), so one lost
 * probe neither drops a server nor brings a flapping one back.
 *
 *   timer ─▶ check(server, timeout) ─▶ rise/fall counters ─▶ server.up + 'change' event + log line
 */
import {EventEmitter} from 'node:events'
import net from 'node:net'
import type {Logger} from 'pino'
import type {Address} from '../addr/address.js'
import type {HealthConfig, ProxyProtocolVersion} from '../config/types.js'
import type {Backend, Server} from './backend.js'
import {encodeProxyLocal} from './proxy-protocol.js'

export interface CheckOptions {
  /** The backend's PROXY protocol version: its servers expect a header on every connection, checks included. */
  proxyProtocol?: ProxyProtocolVersion
  /** Opens the check's socket: the daemon's socket factory with the backend's options (default: Node's connect). */
  dial?: (to: Address) => net.Socket
}

export type HealthCheck = (server: Server, timeoutMs: number, opts?: CheckOptions) => Promise<void>

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

export interface HealthCheckerOptions {
  check: HealthCheck
  /** Passed to every check (see CheckOptions.dial). */
  dial?: (to: Address) => net.Socket
  timers?: Timers
  now?: () => number
  logger?: Logger
}

export interface HealthChange {
  backend: string
  server: Server
  up: boolean
  reason: string
}

/** A check that outlived its timeout; the message is the reason logged and shown in `divert status`. */
export class CheckTimeoutError extends Error {
  readonly code = 'ETIMEDOUT'
  constructor(readonly timeoutMs: number) {
    super(`timeout after ${timeoutMs}ms`)
    this.name = 'CheckTimeoutError'
  }
}

interface ServerState {
  server: Server
  successes: number
  failures: number
  /** The timer of the next check, while waiting for it. */
  next?: unknown
  /** The timeout guard of the check in flight. */
  guard?: unknown
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
}

export class HealthChecker extends EventEmitter<{change: [HealthChange]}> {
  readonly backend: Backend
  private readonly config?: HealthConfig
  private readonly check: HealthCheck
  private readonly checkOptions: CheckOptions
  private readonly timers: Timers
  private readonly now: () => number
  private readonly logger?: Logger
  private readonly states: ServerState[]
  private running = false
  /** Bumped by stop(): results of checks started before it are ignored. */
  private epoch = 0

  constructor(backend: Backend, opts: HealthCheckerOptions) {
    super()
    this.backend = backend
    const health = backend.config.health
    this.config = health && health.check !== 'none' ? health : undefined
    this.check = opts.check
    this.checkOptions = {proxyProtocol: backend.config.proxyProtocol, dial: opts.dial}
    this.timers = opts.timers ?? realTimers
    this.now = opts.now ?? Date.now
    this.logger = opts.logger
    this.states = backend.servers.map((server) => ({server, successes: 0, failures: 0}))
  }

  /** False when the backend has no health config or says `check: none`: servers then stay up. */
  get enabled(): boolean {
    return this.config !== undefined
  }

  /** Checks every server now, then every interval after each check ends (one check in flight per server). */
  start(): void {
    if (!this.config || this.running) return
    this.running = true
    for (const state of this.states) this.run(state, this.config)
  }

  /** Idempotent. Clears every timer; checks still in flight finish but their results are dropped. */
  stop(): void {
    this.running = false
    this.epoch++
    for (const state of this.states) {
      if (state.next !== undefined) this.timers.clearTimeout(state.next)
      if (state.guard !== undefined) this.timers.clearTimeout(state.guard)
      state.next = state.guard = undefined
    }
  }

  private run(state: ServerState, config: HealthConfig): void {
    state.next = undefined
    const epoch = this.epoch
    const started = this.now()
    let settled = false
    const finish = (error?: unknown): void => {
      if (settled) return
      settled = true
      if (state.guard !== undefined) this.timers.clearTimeout(state.guard)
      state.guard = undefined
      if (epoch !== this.epoch) return
      this.record(state, config, started, error)
      if (this.running) state.next = this.timers.setTimeout(() => this.run(state, config), config.intervalMs)
    }
    // A check that never settles must not silence this server's checks forever.
    state.guard = this.timers.setTimeout(() => finish(new CheckTimeoutError(config.timeoutMs)), config.timeoutMs)
    let pending: Promise<void>
    try {
      pending = this.check(state.server, config.timeoutMs, this.checkOptions)
    } catch (error) {
      pending = Promise.reject(error)
    }
    pending.then(() => finish(), (error: unknown) => finish(error ?? new Error('check failed')))
  }

  private record(state: ServerState, config: HealthConfig, started: number, error: unknown): void {
    const {server} = state
    const at = this.now()
    if (error === undefined) {
      server.lastCheck = {ok: true, at, latencyMs: at - started}
      state.failures = 0
      state.successes++
      if (!server.up && state.successes >= config.rise) this.change(server, true, `${config.rise} consecutive checks passed`, at)
      return
    }
    const reason = describeCheckError(error)
    server.lastCheck = {ok: false, at, error: reason}
    state.successes = 0
    state.failures++
    if (server.up && state.failures >= config.fall) this.change(server, false, reason, at)
  }

  private change(server: Server, up: boolean, reason: string, at: number): void {
    server.up = up
    server.lastChange = at
    const fields = {backend: this.backend.name, server: server.key, reason}
    if (up) this.logger?.info(fields, 'server up')
    else this.logger?.warn(fields, 'server down')
    this.emit('change', {backend: this.backend.name, server, up, reason})
  }
}

/** "connect ECONNREFUSED", "timeout after 1000ms", or the error's message. */
export function describeCheckError(error: unknown): string {
  const e = error as {code?: unknown; syscall?: unknown; message?: unknown} | null | undefined
  if (typeof e?.syscall === 'string' && typeof e.code === 'string') return `${e.syscall} ${e.code}`
  if (typeof e?.message === 'string' && e.message !== '') return e.message
  if (typeof e?.code === 'string') return e.code
  return String(error)
}

/**
 * The `tcp` check: a TCP connect to the server that succeeds once the handshake completes — and, for a
 * backend with `proxy_protocol`, once a LOCAL PROXY header (encodeProxyLocal) went out after it, as
 * HAProxy's `check-send-proxy` does: a server that requires the header counts a bare connect as an
 * error. The socket is destroyed on every outcome, so a check leaves nothing open behind it.
 */
export function tcpConnectCheck(server: Server, timeoutMs: number, opts: CheckOptions = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = opts.dial ? opts.dial(server.address) : net.connect({host: server.address.address, port: server.address.port})
    let done = false
    const finish = (error?: Error): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      if (error) reject(error)
      else resolve()
    }
    const timer = setTimeout(() => finish(new CheckTimeoutError(timeoutMs)), timeoutMs)
    const version = opts.proxyProtocol
    // end(header, cb): the header then our FIN, so the server reads a whole header and EOF, not a reset.
    socket.once('connect', () => (version ? socket.end(encodeProxyLocal(version), () => finish()) : finish()))
    // `on`, not `once`: an error emitted after the first must still have a listener.
    socket.on('error', (error) => finish(error))
  })
}
