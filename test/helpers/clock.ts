/**
 * FakeClock: the Clock of src/clock.ts driven by hand. Time stands still until `advance(ms)`, which
 * fires every timer that falls due on the way, in due order (ties: the one set first), with `now()`
 * at each timer's due time while it runs — including timers that those callbacks set or refresh.
 * Between two timers it lets the event loop turn once (setImmediate), so a callback's promises and
 * the socket events it caused run before the next timer: an async expiry or a killed socket's close
 * is seen in order. No real time passes for the timers: tests of expiry and idle timeouts need no sleep.
 */
import {setImmediate as turn} from 'node:timers/promises'
import {timerDelay, type Clock, type Timer} from '../../src/clock.js'

/** 2026-01-01T00:00:00Z: a fixed start, so dates in assertions are readable. */
export const FAKE_EPOCH = Date.UTC(2026, 0, 1)

class FakeTimer implements Timer {
  at = 0
  seq = 0
  constructor(private readonly clock: FakeClock, readonly fn: () => void, readonly ms: number, readonly repeat: boolean) {}

  refresh(): Timer {
    this.clock.schedule(this, this.clock.now() + this.ms)
    return this
  }

  unref(): Timer {
    return this
  }
}

export class FakeClock implements Clock {
  private t: number
  private seq = 0
  private readonly pending = new Set<FakeTimer>()

  constructor(start = FAKE_EPOCH) {
    this.t = start
  }

  now = (): number => this.t

  setTimeout = (fn: () => void, ms: number): Timer => this.add(fn, ms, false)

  setInterval = (fn: () => void, ms: number): Timer => this.add(fn, ms, true)

  clearTimeout = (timer: Timer | undefined): void => {
    if (timer) this.pending.delete(timer as FakeTimer)
  }

  /** Timers waiting to fire. */
  get size(): number {
    return this.pending.size
  }

  /** Moves time forward by `ms`, firing what falls due on the way (see the module doc). */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms
    for (;;) {
      await turn()
      const next = this.due(end)
      if (!next) break
      this.t = next.at
      if (next.repeat) this.schedule(next, next.at + next.ms)
      else this.pending.delete(next)
      next.fn()
    }
    this.t = end
    await turn()
  }

  /** @internal (re)arms a timer to fire at `at`, after every timer already due then. */
  schedule(timer: FakeTimer, at: number): void {
    timer.at = at
    timer.seq = ++this.seq
    this.pending.add(timer)
  }

  private add(fn: () => void, ms: number, repeat: boolean): Timer {
    const timer = new FakeTimer(this, fn, timerDelay(ms), repeat)
    this.schedule(timer, this.t + timer.ms)
    return timer
  }

  private due(end: number): FakeTimer | undefined {
    let first: FakeTimer | undefined
    for (const x of this.pending) if (x.at <= end && (!first || x.at < first.at || (x.at === first.at && x.seq < first.seq))) first = x
    return first
  }
}
