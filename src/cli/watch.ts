/**
 * Redraws a text view in place every interval until Ctrl-C (like `watch`), for `sessions --watch`.
 * An error (daemon gone) is shown in the view and the loop keeps trying. Into a pipe or file there is
 * no screen to redraw: each snapshot follows the last under a plain time line, with no escape codes
 * (a log file or `grep` would otherwise collect ESC[2J sequences).
 *
 *   SIGINT ─▶ abort ─▶ the wait ends at once ─▶ the loop returns (exit 0)
 */
import {setTimeout as sleep} from 'node:timers/promises'
import {escapeControl} from './escape.js'

export async function watch(render: () => Promise<string>, intervalMs: number, out: NodeJS.WritableStream & {isTTY?: boolean} = process.stdout): Promise<void> {
  const frame = out.isTTY ? redraw : append
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
        text = `error: ${escapeControl((error as Error).message)}`
      }
      if (stop.signal.aborted) break
      out.write(frame(new Date().toLocaleTimeString(), text))
      await sleep(intervalMs, undefined, {signal: stop.signal}).catch(() => undefined)
    }
  } finally {
    process.off('SIGINT', onSigint)
  }
}

/** ESC[H moves home, ESC[2J clears: one frame replaces the last without scrolling. */
function redraw(time: string, text: string): string {
  return `\u001B[H\u001B[2J${time}  (Ctrl-C to stop)\n${text}\n`
}

/** A snapshot for a pipe: a separator line with the time, the view, a blank line. */
function append(time: string, text: string): string {
  return `--- ${time} ---\n${text}\n\n`
}
