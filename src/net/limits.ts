/**
 * Admission limits for new sessions, shared by the TCP and UDP proxies: a global cap over all
 * listeners, a cap per listener, and per client address a cap on live sessions and on the rate of new
 * ones (a token bucket: `rate` per second, bursts up to `rate`). Like HAProxy's maxconn and
 * `src_conn_cur`/`src_conn_rate` stick-table checks, but without a table to configure.
 *
 *   new session ─▶ admit() ─ ok ─▶ router …   session end ─▶ release()
 *                     └─ reason ─▶ RefusalLog
 *   divert explain ─▶ refusal(): the same checks, read-only
 */
import type {ListenerConfig} from '../config/types.js'

export interface GlobalLimit {
  live: number
  max: number
  /** Descriptors live sessions hold (TCP 2, UDP 1) against `fdBudget` (fdlimit.ts; 0 or absent: no budget). */
  fdsUsed?: number
  fdBudget?: number
}

interface Bucket {
  live: number
  tokens: number
  last: number
}

export class Admission {
  private readonly sources = new Map<string, Bucket>()
  /** Live sessions of this listener. */
  live = 0

  constructor(
    private readonly config: () => ListenerConfig,
    private readonly global: GlobalLimit,
    private readonly now: () => number,
    /** Descriptors one session of this listener holds: 2 for TCP (client and server), 1 for a UDP flow. */
    private readonly fds = 2,
  ) {}

  /** Takes a slot for a new session from `address`, or says why not (the reason refusal() gives). */
  admit(address: string): string | undefined {
    const reason = this.refusal(address)
    if (reason) return reason
    const {maxConnections: perSource, ratePerSec} = this.config().perSource
    if (perSource > 0 || ratePerSec > 0) this.takeSource(address, ratePerSec)
    this.live++
    this.global.live++
    this.global.fdsUsed = (this.global.fdsUsed ?? 0) + this.fds
    return undefined
  }

  /**
   * Why a new session from `address` would be refused right now, or undefined; changes nothing. The
   * one admission check: admit() takes a slot only when it passes, and `divert explain` reports it.
   */
  refusal(address: string): string | undefined {
    const cfg = this.config()
    if (this.global.max > 0 && this.global.live >= this.global.max) return `limits.max_connections (${this.global.max}) reached (${this.global.live} live)`
    const {fdBudget = 0, fdsUsed = 0} = this.global
    if (fdBudget > 0 && fdsUsed + this.fds > fdBudget) return `open-files limit: the ${fdBudget} descriptors for sessions are in use (the rest is kept for the admin API, state and recordings; raise LimitNOFILE= / ulimit -n)`
    if (cfg.maxConnections > 0 && this.live >= cfg.maxConnections) return `max_connections (${cfg.maxConnections}) of listener ${cfg.name} reached (${this.live} live)`
    const {maxConnections: perSource, ratePerSec} = cfg.perSource
    if (perSource === 0 && ratePerSec === 0) return undefined
    const now = this.now()
    // An address not seen yet counts as a fresh bucket: no live session, full of tokens.
    const b = this.sources.get(address) ?? {live: 0, tokens: ratePerSec, last: now}
    if (perSource > 0 && b.live >= perSource) return `per_source.max_connections (${perSource}) reached for ${address} (${b.live} live)`
    if (ratePerSec > 0 && this.tokens(b, ratePerSec, now) < 1) return `per_source.rate (${ratePerSec}/s) exceeded by ${address}`
    return undefined
  }

  release(address: string): void {
    this.live--
    this.global.live--
    this.global.fdsUsed = (this.global.fdsUsed ?? 0) - this.fds
    const b = this.sources.get(address)
    if (b) b.live--
  }

  /** Forgets sources with no live session and a full bucket (called from the coarse tick). */
  sweep(): void {
    const rate = this.config().perSource.ratePerSec
    const now = this.now()
    for (const [address, b] of this.sources) {
      if (b.live <= 0 && (rate === 0 || this.tokens(b, rate, now) >= rate)) this.sources.delete(address)
    }
  }

  get trackedSources(): number {
    return this.sources.size
  }

  /** Counts a session admitted from `address` against its bucket (refusal() found room). */
  private takeSource(address: string, rate: number): void {
    const now = this.now()
    let b = this.sources.get(address)
    if (!b) {
      b = {live: 0, tokens: rate, last: now}
      this.sources.set(address, b)
    }
    if (rate > 0) {
      b.tokens = this.tokens(b, rate, now) - 1
      b.last = now
    }
    b.live++
  }

  /** The bucket's tokens at `now`: refilled at `rate` per second since it was last drawn from, up to `rate`. */
  private tokens(b: Bucket, rate: number, now: number): number {
    return Math.min(rate, b.tokens + ((now - b.last) / 1000) * rate)
  }
}
