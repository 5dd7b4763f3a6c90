/**
 * SessionRegistry: the one owner of live sessions (TCP connections and UDP flows alike). Proxies add
 * a session when its upstream side is chosen and remove it when it ends; readers get `snapshot()`.
 * On removal it writes the session's single log line and folds its counters into the totals that
 * `/status` and `/metrics` report.
 *
 *   proxy ──add/close──▶ registry ──snapshot()──▶ admin API
 *                           └─ tick() (one coarse timer): activity, idle timeouts
 *
 * Byte counters are read from each session's transport on demand (the sockets' own counters for TCP),
 * so a session without taps costs no JavaScript per chunk. Idle time is derived by the coarse tick
 * comparing counters, so `idleMs` has the tick's granularity (1 s by default).
 */
import type {Logger} from 'pino'
import {realClock, type Clock} from '../clock.js'
import type {Protocol} from '../config/types.js'
import {prefixContains, type Prefix} from '../addr/cidr.js'
import {formatAddress, type Address} from '../addr/address.js'
import type {CloseCause, Tap} from './types.js'

/** What a proxy gives the registry so it can read counters and end the session. */
export interface SessionTransport {
  bytesIn(): number
  bytesOut(): number
  packetsIn?(): number
  packetsOut?(): number
  /** Ends the session; the proxy later calls registry.close() with the final cause. */
  kill(cause: CloseCause): void
  /** Gives a live session its tap (taps follow rule changes); the proxy feeds it from the next byte. */
  setTap?(tap: Tap): void
  /** The kernel moves this session's bytes now (TCP with the fast path, src/fastpath). */
  kernel?(): boolean
}

export interface SessionInit {
  protocol: Protocol
  listener: string
  client: Address
  backend: string
  server: Address
  rule?: string
  transport: SessionTransport
  taps?: Tap[]
  /** Transparent listeners: where the client's packets were addressed (the original destination). */
  destination?: Address
}

export interface Session extends SessionInit {
  id: string
  /** The listener/backend totals this session is folded into at close (looked up once, at add). */
  totals: Totals
  startedAt: number
  taps: Tap[]
  lastIn: number
  lastOut: number
  seenIn: number
  seenOut: number
  closed: boolean
}

export interface SessionView {
  id: string
  protocol: Protocol
  client: string
  listener: string
  backend: string
  server: string
  rule: string | null
  /** `address:port` the client dialled, on a transparent listener; null elsewhere. */
  destination?: string | null
  bytesIn: number
  bytesOut: number
  packetsIn?: number
  packetsOut?: number
  ageMs: number
  idleMs: number
  startedAt: string
  /** The kernel moves this session's bytes now (README "Kernel fast path"); false for every other session. */
  kernel?: boolean
  taps?: Record<string, unknown>
}

export interface SessionFilter {
  source?: Prefix
  backend?: string
  listener?: string
  protocol?: Protocol
}

export interface Totals {
  sessions: number
  bytesIn: number
  bytesOut: number
  closedBy: Record<string, number>
}

/** Shared by every session without taps; frozen, so a stray push fails loudly instead of leaking into all. */
const NO_TAPS: Tap[] = Object.freeze([]) as unknown as Tap[]

interface CounterKey {
  listener: string
  backend: string
}

export interface RegistryOptions {
  logger: Logger
  /** The daemon's clock: session start, idle time, the tick's time (realClock when absent). */
  clock?: Clock
  /** Told once per session when its upstream is connected, with the ms since it was added (metrics). */
  onConnect?: (s: Session, ms: number) => void
  /** Told once per session when it ends, with its lifetime in ms (metrics). */
  onClose?: (s: Session, ms: number) => void
}

export class SessionRegistry {
  private readonly sessions = new Map<string, Session>()
  private readonly totals = new Map<string, Totals>()
  private readonly logger: Logger
  private readonly now: () => number
  private readonly onConnect?: (s: Session, ms: number) => void
  private readonly onClose?: (s: Session, ms: number) => void
  private seq = 0
  /** Last tick's clock: cheap "now" for per-datagram paths. */
  coarseNow: number

  constructor(opts: RegistryOptions) {
    this.logger = opts.logger
    this.now = (opts.clock ?? realClock).now
    this.onConnect = opts.onConnect
    this.onClose = opts.onClose
    this.coarseNow = this.now()
  }

  add(init: SessionInit): Session {
    const now = this.now()
    const id = (init.protocol === 'tcp' ? 't' : 'u') + String(++this.seq)
    // A literal with every field in one order (no spread): one hidden class for all sessions.
    const session: Session = {
      protocol: init.protocol, listener: init.listener, client: init.client, backend: init.backend, server: init.server,
      rule: init.rule, transport: init.transport, taps: init.taps ?? NO_TAPS, id, startedAt: now, lastIn: now, lastOut: now,
      seenIn: 0, seenOut: 0, closed: false, totals: this.bucket(init), destination: init.destination,
    }
    this.sessions.set(id, session)
    session.totals.sessions++
    return session
  }

  /** The proxy connected the session's upstream socket (TCP 'connect', UDP connect callback); once per session. */
  connected(session: Session): void {
    if (session.closed) return
    this.onConnect?.(session, this.now() - session.startedAt)
  }

  /** Records the end of a session once: counters into totals, one log line, taps told. */
  close(session: Session, cause: CloseCause, reset = false, extra?: Record<string, unknown>): void {
    if (session.closed) return
    session.closed = true
    this.sessions.delete(session.id)
    const bytesIn = session.transport.bytesIn()
    const bytesOut = session.transport.bytesOut()
    const t = session.totals
    t.bytesIn += bytesIn
    t.bytesOut += bytesOut
    t.closedBy[cause] = (t.closedBy[cause] ?? 0) + 1
    const durationMs = this.now() - session.startedAt
    this.onClose?.(session, durationMs)
    for (const tap of session.taps) {
      try {
        tap.close?.(cause, reset)
      } catch (error) {
        this.logger.warn({session: session.id, err: error}, 'tap failed at close')
      }
    }
    // The line's strings cost even when pino would drop it (e.g. --log-level warn).
    if (!this.logger.isLevelEnabled('info')) return
    const line: Record<string, unknown> = {
      session: session.id, protocol: session.protocol, client: formatAddress(session.client),
      listener: session.listener, rule: session.rule ?? null, backend: session.backend,
      server: formatAddress(session.server), bytesIn, bytesOut,
      durationMs, cause,
    }
    if (session.destination) line.destination = formatAddress(session.destination)
    if (extra) Object.assign(line, extra)
    this.logger.info(line, 'session closed')
  }

  get(id: string): Session | undefined {
    return this.sessions.get(id)
  }

  get size(): number {
    return this.sessions.size
  }

  *matching(filter: SessionFilter): Iterable<Session> {
    for (const s of this.sessions.values()) {
      if (filter.backend && s.backend !== filter.backend) continue
      if (filter.listener && s.listener !== filter.listener) continue
      if (filter.protocol && s.protocol !== filter.protocol) continue
      if (filter.source && !prefixContains(filter.source, s.client.address)) continue
      yield s
    }
  }

  /** Ends the matching sessions and returns how many were told to close. */
  kill(filter: SessionFilter, cause: CloseCause = 'killed'): number {
    const victims = [...this.matching(filter)]
    for (const s of victims) s.transport.kill(cause)
    return victims.length
  }

  snapshot(filter: SessionFilter = {}): SessionView[] {
    const now = this.now()
    return [...this.matching(filter)].map((s) => this.view(s, now))
  }

  view(s: Session, now = this.now()): SessionView {
    const v: SessionView = {
      id: s.id, protocol: s.protocol, client: formatAddress(s.client), listener: s.listener,
      backend: s.backend, server: formatAddress(s.server), rule: s.rule ?? null,
      destination: s.destination ? formatAddress(s.destination) : null, bytesIn: s.transport.bytesIn(), bytesOut: s.transport.bytesOut(), ageMs: now - s.startedAt,
      idleMs: now - Math.max(s.lastIn, s.lastOut), startedAt: new Date(s.startedAt).toISOString(), kernel: s.transport.kernel?.() ?? false,
    }
    if (s.transport.packetsIn) v.packetsIn = s.transport.packetsIn()
    if (s.transport.packetsOut) v.packetsOut = s.transport.packetsOut()
    const taps = Object.assign({}, ...s.taps.map((t) => t.describe?.() ?? {}))
    if (Object.keys(taps).length > 0) v.taps = taps
    return v
  }

  /**
   * The coarse timer's work: notes which sessions moved bytes since the last tick and returns those
   * idle past a limit. `limits(s)` gives [clientIdleMs, serverIdleMs] (0 = none) for one session.
   */
  tick(limits?: (s: Session) => [number, number]): Array<{session: Session; cause: CloseCause}> {
    const now = (this.coarseNow = this.now())
    const expired: Array<{session: Session; cause: CloseCause}> = []
    for (const s of this.sessions.values()) {
      // Packets count too: a zero-length UDP keepalive is activity though it carries no byte.
      const bin = s.transport.bytesIn() + (s.transport.packetsIn?.() ?? 0)
      const bout = s.transport.bytesOut() + (s.transport.packetsOut?.() ?? 0)
      if (bin !== s.seenIn) { s.seenIn = bin; s.lastIn = Math.max(s.lastIn, now) }
      if (bout !== s.seenOut) { s.seenOut = bout; s.lastOut = Math.max(s.lastOut, now) }
      if (!limits) continue
      const [clientMs, serverMs] = limits(s)
      if (s.protocol === 'udp') {
        if (clientMs > 0 && now - Math.max(s.lastIn, s.lastOut) >= clientMs) expired.push({session: s, cause: 'idle-timeout'})
      } else if (clientMs > 0 && now - s.lastIn >= clientMs) expired.push({session: s, cause: 'client-timeout'})
      else if (serverMs > 0 && now - s.lastOut >= serverMs) expired.push({session: s, cause: 'server-timeout'})
    }
    return expired
  }

  /** Totals per listener/backend pair, live sessions included (for /status and /metrics). */
  counters(): Array<CounterKey & Totals & {active: number; liveBytesIn: number; liveBytesOut: number}> {
    const live = new Map<string, {active: number; bytesIn: number; bytesOut: number}>()
    for (const s of this.sessions.values()) {
      const k = `${s.listener}\u0000${s.backend}`
      const l = live.get(k) ?? {active: 0, bytesIn: 0, bytesOut: 0}
      l.active++
      l.bytesIn += s.transport.bytesIn()
      l.bytesOut += s.transport.bytesOut()
      live.set(k, l)
    }
    return [...this.totals.entries()].map(([k, t]) => {
      const [listener, backend] = k.split('\u0000')
      const l = live.get(k) ?? {active: 0, bytesIn: 0, bytesOut: 0}
      return {listener, backend, ...t, closedBy: {...t.closedBy}, active: l.active, liveBytesIn: l.bytesIn, liveBytesOut: l.bytesOut}
    })
  }

  private bucket(s: CounterKey): Totals {
    const k = `${s.listener}\u0000${s.backend}`
    let t = this.totals.get(k)
    if (!t) {
      t = {sessions: 0, bytesIn: 0, bytesOut: 0, closedBy: {}}
      this.totals.set(k, t)
    }
    return t
  }
}
