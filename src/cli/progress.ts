/**
 * A progress bar on stderr (cli-progress) for long commands such as `divert replay`; silent when
 * stderr is not a terminal or when --json asks for machine output.
 */
import cliProgress from 'cli-progress'

export interface Progress {
  update(done: number, total: number, payload: Record<string, string | number>): void
  stop(): void
}

export function progressBar(format: string, enabled = Boolean(process.stderr.isTTY)): Progress {
  if (!enabled) return {update: () => undefined, stop: () => undefined}
  const bar = new cliProgress.SingleBar({format, stream: process.stderr, hideCursor: true, clearOnComplete: true}, cliProgress.Presets.shades_classic)
  let started = false
  return {
    update(done, total, payload) {
      if (!started) {
        bar.start(total, done, payload)
        started = true
      }
      bar.setTotal(total)
      bar.update(done, payload)
    },
    stop: () => bar.stop(),
  }
}
