/**
 * glibc malloc tuning for the daemon, from inside the process.
 *
 * Every socket read gets a fresh 64 KiB buffer from malloc (Node allocates one per read; `onread`
 * with a reusable buffer is not offered for accepted sockets). Those chunks come from the top of the
 * main heap, and glibc gives the top back to the kernel whenever more than M_TRIM_THRESHOLD (128 KiB
 * by default) is free there. A bulk transfer then trims and re-faults the same pages for every few
 * buffers: measured 166–170 minor page faults per MB proxied and 1.0–1.3 s of proxy CPU per GB,
 * against ~2 faults/MB and ~0.7 s/GB once the threshold is higher (bench/README.md).
 *
 * glibc raises both thresholds by itself when a chunk it served with mmap() is freed (its "dynamic
 * mmap threshold": mmap threshold = that chunk's size, trim threshold = twice that, up to 32 MiB).
 * Allocating one 16 MiB buffer at start-up and dropping it does exactly that at the next garbage
 * collection, without setting MALLOC_TRIM_THRESHOLD_ in the environment (which would have to happen
 * before node starts). Up to 32 MiB of freed heap may then stay mapped after a burst.
 *
 * It changes nothing when the user set MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ (glibc then
 * disables the dynamic threshold and the user's values stand), and nothing on other C libraries.
 */
import {setFlagsFromString} from 'node:v8'
import {runInNewContext} from 'node:vm'

export const PRIME_BYTES = 16 * 1024 * 1024

export function primeAllocator(): void {
  allocateAndDrop()
  // Free it now, not at whichever GC comes next: a start-up that allocates little may reach its first
  // bulk transfer before any GC has run, and until the chunk is freed glibc keeps its default
  // thresholds (measured: 130–220 faults/MB and a third of the throughput until then). A full GC
  // through V8's own gc() (exposed for this one call) frees the chunk's backing store. The chunk is
  // allocated in a frame of its own that has returned by then: a reference still held in the caller's
  // registers would make this GC promote the chunk to the old generation instead, where it could
  // outlive the first transfers (seen: the same slow runs, intermittently).
  collectGarbage()
}

function allocateAndDrop(): void {
  const chunk = Buffer.allocUnsafeSlow(PRIME_BYTES)
  // Touch it so the allocation cannot be elided.
  chunk[0] = 1
}

function collectGarbage(): void {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as (() => void) | undefined
  gc?.()
}
