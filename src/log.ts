/**
 * The one pino factory. Daemon logs are structured: JSON lines when stdout is not a terminal or with
 * `--log-format json`, pino-pretty when a human watches. The JSON destination is asynchronous
 * (FdWriter) so a slow terminal or pipe never blocks the proxy's event loop, bounded (a reader that
 * stops reading costs dropped, counted lines — never memory), and batched: lines gather for up to
 * `batchMs` (or `batchBytes`) and leave in one write.
 *
 *   logger ─▶ BatchedDestination (buffer, timer) ─▶ FdWriter (≤ maxPendingBytes) ─▶ fd
 */
import {createRequire} from 'node:module'
import pino, {type DestinationStream, type Logger} from 'pino'
import type PinoPretty from 'pino-pretty'
import {escapeControl} from './cli/escape.js'
import {colorAllowed} from './cli/terminal.js'
import {FdWriter} from './log-writer.js'
import {realClock, type Clock, type Timer} from './clock.js'

export type LogFormat = 'pretty' | 'json'
export type {Logger}

export interface LoggerOptions {
  format?: LogFormat
  level?: string
  /** File descriptor to write to (default 1, stdout). */
  fd?: number
  /** Longest a JSON line waits for company before it is written (default 100 ms). */
  batchMs?: number
  /** Buffered JSON bytes that trigger a write at once (default 64 KiB). */
  batchBytes?: number
  /** JSON bytes that may wait for a slow reader before lines are dropped (default 4 MiB). */
  maxPendingBytes?: number
}

export interface DaemonLogger {
  logger: Logger
  /** Writes out what is still buffered, synchronously; call before the process exits. */
  flush(): void
}

/** What BatchedDestination writes to: SonicBoom in the daemon, a plain collector in tests. */
export interface LineSink {
  write(chunk: string): unknown
  flushSync?(): void
}

/**
 * Gathers log lines and hands them to the sink in batches. Under load the daemon writes one line per
 * closed session; an async write per line costs a thread-pool round trip each (measured: ~11% of the
 * proxy's CPU at 4,000 connections/s), a write per batch costs a few per second.
 */
export class BatchedDestination implements DestinationStream {
  private buffered = ''
  private timer?: Timer
  private readonly onTimer = (): void => {
    this.timer = undefined
    this.flush()
  }

  constructor(
    private readonly sink: LineSink,
    private readonly batchMs = 100,
    private readonly batchBytes = 64 * 1024,
    private readonly clock: Clock = realClock,
  ) {}

  write(line: string): boolean {
    this.buffered += line
    if (this.buffered.length >= this.batchBytes) this.flush()
    // unref: a pending log write must not keep a stopping daemon alive; runForeground flushes at exit.
    else if (this.timer === undefined) this.timer = this.clock.setTimeout(this.onTimer, this.batchMs).unref()
    return true
  }

  /** Hands what is buffered to the sink (which writes it asynchronously); pino's logger.flush(cb) lands here. */
  flush(cb?: (error?: Error) => void): void {
    if (this.timer !== undefined) {
      this.clock.clearTimeout(this.timer)
      this.timer = undefined
    }
    if (this.buffered.length > 0) {
      const out = this.buffered
      this.buffered = ''
      this.sink.write(out)
    }
    cb?.()
  }

  /** Everything buffered here and in the sink reaches the fd before this returns. */
  flushSync(): void {
    this.flush()
    this.sink.flushSync?.()
  }
}

export function createLogger(opts: LoggerOptions = {}): DaemonLogger {
  const fd = opts.fd ?? 1
  const format = opts.format ?? (process.stdout.isTTY ? 'pretty' : 'json')
  const base = {level: opts.level ?? 'info', base: {pid: process.pid}, timestamp: isoTimeCached}
  if (format === 'pretty') {
    // Loaded only when a human watches: a JSON-logging daemon need not hold pino-pretty and its dependencies.
    const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty
    const stream = pretty({destination: fd, colorize: colorAllowed(process.stdout.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true,
      // The message is printed raw by pino-pretty (the other fields go through JSON, which escapes C0).
      messageFormat: (log, key) => escapeControl(String(log[key] ?? ''))})
    return {logger: pino(base, stream), flush: () => undefined}
  }
  let logger: Logger | undefined = undefined
  const sink = new FdWriter(fd, opts.maxPendingBytes, (lines) => logger?.warn({droppedLines: lines}, `${lines} log lines dropped: the log output was not read fast enough`))
  const dest = new BatchedDestination(sink, opts.batchMs, opts.batchBytes)
  logger = pino(base, dest)
  return {logger, flush: () => dest.flushSync()}
}

let stampMs = -1
let stamp = ''

/**
 * pino.stdTimeFunctions.isoTime, formatted once per millisecond: at thousands of session lines a
 * second most lines share their millisecond, and toISOString() was ~1 µs of each line.
 */
export function isoTimeCached(): string {
  const now = Date.now()
  if (now !== stampMs) {
    stampMs = now
    stamp = `,"time":"${new Date(now).toISOString()}"`
  }
  return stamp
}

/** A logger that writes nothing: the default for library code and tests. */
export function silentLogger(): Logger {
  return pino({level: 'silent'})
}
