/**
 * Tap fan-out: one Tap that forwards each event to several, isolating them from each other and from
 * the session — a tap that throws is detached (and reported once), never allowed to break the proxy.
 * The set is keyed (`mirror:BACKEND`, `record:FILE`) and changes while the session lives, so taps
 * follow rule changes: a detached tap is told the session ended cleanly (a mirror closes its
 * connection with FIN, a recorder writes the FINs), an attached one starts from the next byte.
 *
 *   proxy ─▶ TapSet ─▶ mirror, recorder, …   (attach/detach: RuleService changes, via the daemon)
 */
import type {CloseCause, SessionMeta, Tap} from './types.js'

interface Entry {
  key: string
  tap: Tap
}

export class TapSet implements Tap {
  /** Replaced, never mutated, on attach/detach: a data call iterates a stable array. */
  private entries: Entry[] = []

  constructor(readonly meta: SessionMeta, private readonly onError: (tap: Tap, error: unknown) => void) {}

  get keys(): string[] {
    return this.entries.map((e) => e.key)
  }

  attach(key: string, tap: Tap): void {
    this.detach(key, 'rule-changed')
    this.entries = [...this.entries, {key, tap}]
  }

  /** Ends the tap as if its session closed cleanly with `cause`, and stops feeding it. */
  detach(key: string, cause: CloseCause): void {
    const entry = this.entries.find((e) => e.key === key)
    if (!entry) return
    this.entries = this.entries.filter((e) => e !== entry)
    this.call(entry, (t) => t.close?.(cause, false))
  }

  clientData(chunk: Buffer): void {
    for (const e of this.entries) this.call(e, (t) => t.clientData?.(chunk))
  }

  serverData(chunk: Buffer): void {
    for (const e of this.entries) this.call(e, (t) => t.serverData?.(chunk))
  }

  clientEnd(): void {
    for (const e of this.entries) this.call(e, (t) => t.clientEnd?.())
  }

  serverEnd(): void {
    for (const e of this.entries) this.call(e, (t) => t.serverEnd?.())
  }

  close(cause: CloseCause, reset: boolean): void {
    for (const e of this.entries) this.call(e, (t) => t.close?.(cause, reset))
  }

  describe(): Record<string, unknown> {
    return Object.assign({}, ...this.entries.map((e) => e.tap.describe?.() ?? {}))
  }

  private call(entry: Entry, fn: (t: Tap) => void): void {
    try {
      fn(entry.tap)
    } catch (error) {
      this.entries = this.entries.filter((e) => e !== entry)
      this.onError(entry.tap, error)
    }
  }
}
