/**
 * Redraws a text view in place every interval until Ctrl-C (like `watch`), for `sessions --watch`.
 * An error (daemon gone) is shown in the view and the loop keeps trying.
 *
 *   SIGINT ─▶ abort ─▶ the wait ends at once ─▶ the loop returns (exit 0)
 */
import {setTimeout as sleep} from 'node:timers/promises'

export async function watch(render: () => Promise<string>, intervalMs: number, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  // One listener for the whole loop: a listener per frame would pile up (MaxListenersExceededWarning
  // after 10 frames) and leave the last one behind.
  const stop = new AbortController()
  const onSigint = (): void => stop.abort()
  process.once('SIGINT', onSigint)
  try {
    while (!stop.signal.aborted) {
      let text: string
      try {
        text = await render()
      } catch (error) {
        text = `error: ${(error as Error).message}`
      }
      if (stop.signal.aborted) break
      // ESC[H moves home, ESC[2J clears: one frame replaces the last without scrolling.
      out.write(`\u001B[H\u001B[2J${new Date().toLocaleTimeString()}  (Ctrl-C to stop)\n${text}\n`)
      await sleep(intervalMs, undefined, {signal: stop.signal}).catch(() => undefined)
    }
  } finally {
    process.off('SIGINT', onSigint)
  }
}
