/**
 * FdWriter: where the JSON log's batches go — asynchronous writes to one file descriptor with a
 * bound on what may wait. A log reader that stops reading (a full pipe) must cost neither memory nor
 * time: past `limit` pending bytes whole batches are dropped and counted, and once the output drains
 * one line says how many lines were lost. A destination that is gone (EPIPE: the reader closed the
 * pipe; EBADF) is dropped for good — no retry loop. At exit, flushSync() writes what it can without
 * ever waiting for a reader.
 *
 *   BatchedDestination ─batch─▶ FdWriter (queue ≤ limit) ─fs.write─▶ fd    (over limit: dropped, counted)
 *
 * It replaces SonicBoom here: SonicBoom's buffer has no bound by default, it retries a failed write
 * on every later write (EPIPE every 100 ms, forever), and its flushSync() sleeps and retries EAGAIN
 * until the reader takes the bytes — a blocked pipe made SIGTERM hang.
 */
import {write, writeSync} from 'node:fs'

/** Log bytes that may wait for a slow reader before batches are dropped. */
export const LOG_PENDING_LIMIT = 4 * 1024 * 1024

/**
 * A full non-blocking pipe gives EAGAIN and no readiness event for fs.write: try again later, first
 * after 100 ms, then twice as long each time up to 1 s, so a reader that stopped for good costs one
 * write a second, not ten.
 */
const RETRY_MIN_MS = 100
const RETRY_MAX_MS = 1000

export class FdWriter {
  /** Lines dropped since the output last drained. */
  dropped = 0
  /** Why the destination is gone (an errno code), once it is. */
  gone?: string
  private queue: string[] = []
  private pending = 0
  /** The bytes fs.write is writing now, or that wait for a retry. */
  private current?: Buffer
  private writing = false
  private retry?: NodeJS.Timeout
  private retryMs = RETRY_MIN_MS
  private scheduled = false

  constructor(
    private readonly fd: number,
    private readonly limit = LOG_PENDING_LIMIT,
    /** Called once the output has drained after lines were dropped; logs the count. */
    private readonly onDropped?: (lines: number) => void,
  ) {
    // process.stdout opens a pipe through libuv, which makes it O_NONBLOCK: a write then fails with
    // EAGAIN instead of blocking a thread-pool thread (or, in flushSync, the process) on a full pipe.
    if (fd === 1) void process.stdout
  }

  /** Queues one batch of whole lines, or drops it (counted) when `limit` bytes already wait. */
  write(chunk: string): boolean {
    if (this.gone !== undefined) return true
    const size = Buffer.byteLength(chunk)
    if (this.pending + size > this.limit) {
      this.dropped += countLines(chunk)
      return true
    }
    this.queue.push(chunk)
    this.pending += size
    // Started from setImmediate, not here: a flushSync() in this same tick then still finds the batch
    // queued and writes it itself (nothing is in flight that it would have to wait for).
    if (!this.writing && this.retry === undefined && !this.scheduled) {
      this.scheduled = true
      setImmediate(this.next)
    }
    return true
  }

  /**
   * Writes what waits, synchronously and without waiting: stops at the first EAGAIN (the reader is
   * not reading; what is left is lost) or error. For the last lines before the process exits. A batch
   * fs.write is writing at that moment is left to it.
   */
  flushSync(): void {
    if (this.gone !== undefined) return
    const parts = this.writing ? [] : [this.current ?? Buffer.alloc(0)]
    if (!this.writing) {
      this.current = undefined
      clearTimeout(this.retry)
      this.retry = undefined
    }
    let buf = Buffer.concat([...parts, ...this.queue.map((q) => Buffer.from(q))])
    this.queue = []
    this.pending = this.current?.length ?? 0
    try {
      while (buf.length > 0) buf = buf.subarray(writeSync(this.fd, buf))
    } catch (error) {
      if (isGone(error as NodeJS.ErrnoException)) this.giveUp(error as NodeJS.ErrnoException)
    }
  }

  private readonly next = (): void => {
    this.scheduled = false
    this.retry = undefined
    if (this.gone !== undefined || this.writing) return
    if (!this.current) {
      if (this.queue.length === 0) return this.drained()
      this.current = Buffer.from(this.queue.length === 1 ? this.queue[0] : this.queue.join(''))
      this.queue = []
    }
    this.writing = true
    write(this.fd, this.current, 0, this.current.length, null, this.written)
  }

  private readonly written = (error: NodeJS.ErrnoException | null, n: number): void => {
    this.writing = false
    if (error && isBusy(error)) {
      this.retry = setTimeout(this.next, this.retryMs).unref()
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS)
      return
    }
    this.retryMs = RETRY_MIN_MS
    if (error && isGone(error)) return this.giveUp(error)
    if (error) {
      // ENOSPC, EIO …: this batch is lost (and counted); the next one tries again.
      this.dropped += countLines(this.current!)
      this.pending -= this.current!.length
      this.current = undefined
      return this.next()
    }
    this.pending -= n
    this.current = n < this.current!.length ? this.current!.subarray(n) : undefined
    this.next()
  }

  private drained(): void {
    if (this.dropped === 0) return
    const lines = this.dropped
    this.dropped = 0
    this.onDropped?.(lines)
  }

  /** EPIPE, EBADF: the destination is gone; further lines are discarded, never retried. */
  private giveUp(error: NodeJS.ErrnoException): void {
    this.gone = error.code ?? 'error'
    this.queue = []
    this.current = undefined
    this.pending = 0
  }
}

function isBusy(error: NodeJS.ErrnoException): boolean {
  return error.code === 'EAGAIN' || error.code === 'EWOULDBLOCK' || error.code === 'EINTR'
}

/** The reader closed the pipe or socket (write(2): EPIPE), or the descriptor is not writable. */
function isGone(error: NodeJS.ErrnoException): boolean {
  return error.code === 'EPIPE' || error.code === 'EBADF' || error.code === 'ECONNRESET' || error.code === 'EINVAL'
}

function countLines(chunk: string | Buffer): number {
  let n = 0
  for (let i = chunk.indexOf('\n'); i >= 0; i = chunk.indexOf('\n', i + 1)) n++
  return n
}
