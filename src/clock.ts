/**
 * Clock: the one source of time for the daemon — what time it is and every timer its components set.
 * The Daemon is given one at construction (realClock unless a test injects another) and hands it to
 * every owner that reads time or waits: the rule table and RuleService (expiry), the session registry
 * and the coarse tick (idle and client/server timeouts), the proxies (connect deadlines, rate limits),
 * backends and health checks, the admin API's `uptimeMs` and `expiresAt`, the drain at stop. So a
 * test's fake clock (test/helpers/clock.ts) moves all of them together, and `expiresAt` as `divert
 * list` shows it and the expiry timer always agree. The model is undici's lib/util/timers.js: one
 * module owns setTimeout/clearTimeout/now, and its callers keep no timer state of their own.
 *
 *   Daemon(clock) ─▶ RuleTable / RuleService / SessionRegistry / proxies / backends / health / control
 *
 * `now()` is wall-clock epoch milliseconds (Date.now), not monotonic time: expiry is a date that
 * users give (`expires:` in the config) and read back (`divert list`), and it must survive a restart.
 *
 * Outside the daemon the same interface serves `divert replay` (its pacing reads the monotonic
 * performance.now() through it, as intervals, and tests record its schedule) and the log batching
 * (log.ts BatchedDestination), both on the real clock unless a test injects one.
 *
 * Left on the real clock on purpose, because users read them as real times or they measure real
 * work: log and audit timestamps (log.ts, pino), pcap record timestamps (capture/recorder.ts), the
 * date in the name of a corrupt state file moved aside (rules/state.ts), the CPU time slices of
 * slices.ts, the CLI's own rendering (`expires in`, --watch), the health check's socket timeout
 * inside tcpConnectCheck (the checker's own guard is on the clock), and the process's exit and
 * connection-close grace timers (run-daemon.ts, admin/server.ts, capture/mirror.ts, log-writer.ts).
 */

/** A pending timer, as Node's Timeout is one (a real clock returns Node's own object: no wrapper). */
export interface Timer {
  /** Starts the same delay again from now, also after the timer fired (Node's timeout.refresh()). */
  refresh(): Timer
  /** The timer no longer keeps the process alive (a fake ignores it). */
  unref(): Timer
}

/**
 * Time and timers. The methods may be called detached (`const now = clock.now`): a component may
 * keep one of them, as the per-source limits keep `now`.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number
  setTimeout(fn: () => void, ms: number): Timer
  setInterval(fn: () => void, ms: number): Timer
  /** Cancels a timeout or an interval (as in Node, one function clears both); undefined is a no-op. */
  clearTimeout(timer: Timer | undefined): void
}

/**
 * Node's timers take delays up to 2^31-1 ms; a longer one fires after 1 ms instead (with a
 * TimeoutOverflowWarning; Node docs, setTimeout). A clock clamps to this ceiling, so a caller whose
 * deadline is further away (a rule `--for 30d`) is woken early and re-arms, never woken at once.
 */
export const MAX_DELAY_MS = 2 ** 31 - 1

/** The delay a timer really gets: at least 1 ms (as Node rounds 0 and NaN up) and at most MAX_DELAY_MS. */
export function timerDelay(ms: number): number {
  return ms >= 1 ? Math.min(ms, MAX_DELAY_MS) : 1
}

export const realClock: Clock = {
  now: Date.now,
  setTimeout: (fn, ms) => setTimeout(fn, timerDelay(ms)),
  setInterval: (fn, ms) => setInterval(fn, timerDelay(ms)),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
}

/** Resolves after `ms` on `clock` (also past MAX_DELAY_MS), or early, never rejecting, when `signal` aborts. */
export async function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  for (let left = ms; left > 0 && !signal?.aborted; left -= MAX_DELAY_MS) {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clock.clearTimeout(timer)
        signal?.removeEventListener('abort', done)
        resolve()
      }
      const timer = clock.setTimeout(done, Math.min(left, MAX_DELAY_MS))
      signal?.addEventListener('abort', done, {once: true})
    })
  }
}
