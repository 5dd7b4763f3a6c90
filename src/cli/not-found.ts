/**
 * oclif's command_not_found hook: `divert lsit` says "did you mean `divert list`?" and exits with the
 * usage status (2), on one line, whether or not a human is at a terminal. Unlike
 * @oclif/plugin-not-found it never prompts — a prompt hangs a script whose stdin is a pipe that
 * stays open, and answering "yes" by Enter would run `rm`/`kill` with arguments typed for another
 * command — and it names the suggestion also when stdin is not a terminal (the plugin does not).
 */
import {toConfiguredId, type Hook} from '@oclif/core'
import {escapeControl} from './escape.js'

const hook: Hook<'command_not_found'> = async function (opts) {
  const ids = opts.config.commands.filter((c) => !c.hidden).flatMap((c) => [c.id, ...c.aliases])
  const typed = toConfiguredId(opts.id, opts.config)
  const best = closest(opts.id, ids)
  const hint = best === undefined ? '' : `; did you mean \`${opts.config.bin} ${toConfiguredId(best, opts.config)}\`?`
  process.stderr.write(`${opts.config.bin}: "${escapeControl(typed)}" is not a ${opts.config.bin} command${hint} (see \`${opts.config.bin} --help\`)\n`)
  this.exit(2)
}

export default hook

/** The command nearest to `typed` by edit distance, if it is near enough to be a typo (at most a third of its length, and 2). */
export function closest(typed: string, ids: string[]): string | undefined {
  const limit = Math.min(2, Math.max(1, Math.floor(typed.length / 3)))
  let best: {id: string; d: number} | undefined
  for (const id of ids) {
    const d = editDistance(typed.toLowerCase(), id.toLowerCase())
    if (d <= limit && (best === undefined || d < best.d)) best = {id, d}
  }
  return best?.id
}

/** Levenshtein distance with adjacent transpositions counted as one edit (Damerau, optimal string alignment). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({length: a.length + 1}, (_, i) => Array.from({length: b.length + 1}, (_, j) => (i === 0 ? j : j === 0 ? i : 0)))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}
