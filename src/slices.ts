/**
 * Long CPU work on the daemon's one thread, cut into slices: between slices the event loop runs, so
 * proxied sessions keep flowing while a reload builds 100,000 rules. A slice ends once it has run
 * for `sliceMs`; the clock is read every 64 items so reading it costs nothing next to the work.
 *
 *   item 0 … item k ─ ≥ sliceMs ─▶ setImmediate (I/O callbacks run) ─▶ item k+1 …
 */
import {performance} from 'node:perf_hooks'

/** Time one slice may take: well under the 50 ms round trip the bench's reload budget allows. */
export const SLICE_MS = 5

/** Runs `work(i)` for i = 0 … count-1 in order, yielding to the event loop between slices. */
export async function eachInSlices(count: number, work: (i: number) => void, sliceMs = SLICE_MS): Promise<void> {
  let start = performance.now()
  for (let i = 0; i < count; i++) {
    work(i)
    if ((i & 63) === 63 && performance.now() - start >= sliceMs) {
      await yieldToLoop()
      start = performance.now()
    }
  }
}

/** Resolves after pending I/O callbacks have run (setImmediate runs in the check phase, after poll). */
export function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}
