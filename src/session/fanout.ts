/**
 * Tap fan-out: one Tap that forwards each event to several, isolating them from each other and from
 * the session — a tap that throws is detached (and reported once), never allowed to break the proxy.
 *
 *   proxy ─▶ fanOut ─▶ mirror, recorder, …
 */
import type {CloseCause, Tap} from './types.js'

export function fanOut(taps: Tap[], onError: (tap: Tap, error: unknown) => void): Tap | undefined {
  if (taps.length === 0) return undefined
  let live = taps.slice()
  const guard = (call: (t: Tap) => void): void => {
    for (const t of live) {
      try {
        call(t)
      } catch (error) {
        live = live.filter((x) => x !== t)
        onError(t, error)
      }
    }
  }
  return {
    clientData: (chunk: Buffer) => guard((t) => t.clientData?.(chunk)),
    serverData: (chunk: Buffer) => guard((t) => t.serverData?.(chunk)),
    clientEnd: () => guard((t) => t.clientEnd?.()),
    serverEnd: () => guard((t) => t.serverEnd?.()),
    close: (cause: CloseCause, reset: boolean) => guard((t) => t.close?.(cause, reset)),
    describe: () => Object.assign({}, ...taps.map((t) => t.describe?.() ?? {})),
  }
}
