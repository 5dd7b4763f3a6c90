/**
 * The one pino factory. Daemon logs are structured: JSON lines when stdout is not a terminal or with
 * `--log-format json`, pino-pretty when a human watches. The JSON destination is asynchronous
 * (SonicBoom, sync: false) so a slow terminal or pipe never blocks the proxy's event loop.
 */
import pino, {type Logger} from 'pino'
import pretty from 'pino-pretty'

export type LogFormat = 'pretty' | 'json'
export type {Logger}

export interface LoggerOptions {
  format?: LogFormat
  level?: string
  /** File descriptor to write to (default 1, stdout). */
  fd?: number
}

export interface DaemonLogger {
  logger: Logger
  /** Writes out what is still buffered; call before the process exits. */
  flush(): void
}

export function createLogger(opts: LoggerOptions = {}): DaemonLogger {
  const fd = opts.fd ?? 1
  const format = opts.format ?? (process.stdout.isTTY ? 'pretty' : 'json')
  const base = {level: opts.level ?? 'info', base: {pid: process.pid}, timestamp: pino.stdTimeFunctions.isoTime}
  if (format === 'pretty') {
    const stream = pretty({destination: fd, colorize: Boolean(process.stdout.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true})
    return {logger: pino(base, stream), flush: () => undefined}
  }
  const dest = pino.destination({dest: fd, sync: false, minLength: 0})
  return {logger: pino(base, dest), flush: () => dest.flushSync()}
}

/** A logger that writes nothing: the default for library code and tests. */
export function silentLogger(): Logger {
  return pino({level: 'silent'})
}
