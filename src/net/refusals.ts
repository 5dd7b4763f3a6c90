/**
 * RefusalLog: counts refused new sessions (no server up, limits) and logs them at most once per
 * interval per listener, with how many were refused since the last line — a flood of refused
 * clients or datagrams must not become a flood of log lines. Shared by the TCP and UDP proxies.
 */
import type {Logger} from 'pino'
import {formatAddress} from '../addr/address.js'
import type {Address} from '../addr/address.js'

export const REFUSAL_LOG_INTERVAL_MS = 10_000

export class RefusalLog {
  private last = -Infinity
  private since = 0
  total = 0

  constructor(
    private readonly listener: string,
    private readonly logger: Logger,
    private readonly now: () => number,
    private readonly onRefused?: (listener: string, reason: string) => void,
  ) {}

  /** `peer` is unknown when accept(2) itself failed (EMFILE). */
  refuse(peer: Address | undefined, reason: string, rule?: string): void {
    this.total++
    this.since++
    this.onRefused?.(this.listener, reason)
    const now = this.now()
    if (now - this.last < REFUSAL_LOG_INTERVAL_MS) return
    this.logger.warn({listener: this.listener, client: peer ? formatAddress(peer) : null, rule: rule ?? null, reason, refusedSinceLastLog: this.since}, 'session refused')
    this.last = now
    this.since = 0
  }
}
