/**
 * Runs the daemon in the foreground for `divert start`: builds the logger, starts the Daemon, and
 * turns signals into actions — SIGINT/SIGTERM drain and exit 0 (a second one exits at once),
 * SIGHUP reloads the config.
 */
import {primeAllocator} from './alloc.js'
import {Daemon} from './daemon.js'
import {createLogger, type LogFormat} from './log.js'

export interface ForegroundOptions {
  configFile: string
  admin?: string
  logFormat?: LogFormat
  logLevel?: string
  drainMs: number
  /** `--log-buffer`: JSON log bytes that may wait for a slow reader (log-writer.ts). */
  logBufferBytes?: number
}

/** How long past --drain a stop may take (closing the rest, recordings) before the process exits anyway. */
export const STOP_GRACE_MS = 5000

/** The SIGHUP holder bin/run.js installs before oclif loads (see there). */
type HeldSighup = (() => void) & {asked: boolean}

export async function runForeground(opts: ForegroundOptions): Promise<void> {
  const {logger, flush} = createLogger({format: opts.logFormat, level: opts.logLevel, maxPendingBytes: opts.logBufferBytes})
  // JSON lines wait up to 100 ms in the batch (log.ts): write them out on every way out, a crash included.
  process.once('exit', flush)
  // SIGHUP's default action ends the process: hold a reload asked for during start-up until it is done.
  let daemon: Daemon | undefined = undefined
  let reloadAsked = false
  const reload = (): void => {
    if (!daemon) {
      reloadAsked = true
      logger.info('SIGHUP during start-up: the config will be reloaded once divert is ready')
      return
    }
    daemon.reload('SIGHUP').catch((error: Error) => logger.error({err: error}, `reload failed, the running config stays: ${error.message}`))
  }
  process.on('SIGHUP', reload)
  if (takeHeldSighup()) reloadAsked = true
  primeAllocator()
  daemon = await Daemon.start({configFile: opts.configFile, admin: opts.admin, logger})
  if (reloadAsked) reload()
  const running = daemon
  await new Promise<void>((resolve) => {
    let signals = 0
    const stop = (signal: NodeJS.Signals): void => {
      if (++signals > 1) {
        logger.warn({signal}, 'second signal: exiting without waiting for the drain')
        running.abandon()
        flush()
        process.exit(1)
      }
      logger.info({signal, drainMs: opts.drainMs}, 'stopping: no new sessions, draining live ones')
      let stopped = false
      exitAfter(opts.drainMs + STOP_GRACE_MS, () => {
        if (!stopped) {
          logger.error({signal}, `stop did not finish within --drain + ${STOP_GRACE_MS} ms: exiting anyway`)
          running.abandon()
        }
        flush()
        process.exit(stopped ? 0 : 1)
      })
      void running.stop(opts.drainMs).then(() => {
        stopped = true
        resolve()
      })
    }
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
  })
  flush()
}

/**
 * Takes over from bin/run.js's early SIGHUP holder: says whether a SIGHUP came while oclif loaded,
 * and removes the holder. Call after installing the real handler, so SIGHUP is never unhandled.
 */
function takeHeldSighup(): boolean {
  const key = Symbol.for('divert.heldSighup')
  const held = (globalThis as Record<symbol, HeldSighup | undefined>)[key]
  if (!held) return false
  process.off('SIGHUP', held)
  delete (globalThis as Record<symbol, unknown>)[key]
  return held.asked
}

/**
 * A stop must end even if something it waits for cannot (a session that ignores the kill, a write
 * to a log destination nobody reads keeping the loop alive): after `ms`, `exit` runs. unref'd, so it
 * never keeps a finished daemon alive.
 */
function exitAfter(ms: number, exit: () => void): void {
  setTimeout(exit, ms).unref()
}
