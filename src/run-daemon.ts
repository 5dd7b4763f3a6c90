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
}

export async function runForeground(opts: ForegroundOptions): Promise<void> {
  const {logger, flush} = createLogger({format: opts.logFormat, level: opts.logLevel})
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
  primeAllocator()
  daemon = await Daemon.start({configFile: opts.configFile, admin: opts.admin, logger})
  if (reloadAsked) reload()
  const running = daemon
  await new Promise<void>((resolve) => {
    let signals = 0
    const stop = (signal: NodeJS.Signals): void => {
      if (++signals > 1) {
        logger.warn({signal}, 'second signal: exiting without waiting for the drain')
        flush()
        process.exit(1)
      }
      logger.info({signal, drainMs: opts.drainMs}, 'stopping: no new sessions, draining live ones')
      void running.stop(opts.drainMs).then(resolve)
    }
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
  })
  flush()
}
