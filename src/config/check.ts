/**
 * checkConfig: `divert check -c FILE`, the `nginx -t` / `haproxy -c` of divert. The config and every
 * rule `divert start` would load are validated by the code start uses — the config loader with its
 * cross-checks, the rule table, the state file's runtime rules — and nothing is bound, opened, moved
 * or written, so it runs beside a live daemon and before a reload.
 *
 *   FILE → loadConfig → RuleTable (config rules) → StateStore.read (runtime rules) → CheckResult
 */
import {DivertError} from '../errors.js'
import {RuleTable} from '../rules/table.js'
import {StateStore} from '../rules/state.js'
import {maskUrl} from '../fleet/url.js'
import {formatConflicts, ruleConflicts} from '../rules/spec.js'
import {loadConfig} from './load.js'
import type {Config} from './types.js'

export interface CheckResult {
  ok: true
  file: string
  listeners: number
  backends: number
  rules: {config: number; runtime: number}
  /** The state file the config names, when there is one. */
  state?: string
  /** `state: redis://…` (password masked): the fleet's rules, which check does not read. */
  store?: string
}

/** The summary of a valid config; throws the DivertError `divert start` would fail with (exit 2). */
export async function checkConfig(file: string): Promise<CheckResult> {
  const config = await loadConfig(file)
  const table = new RuleTable({configFile: config.file})
  table.replaceConfigRules(config.rules)
  const runtime = config.state ? await checkStateRules(config, config.state, table) : 0
  return {
    ok: true, file, listeners: config.listeners.length, backends: config.backends.size,
    rules: {config: config.rules.length, runtime}, ...(config.state ? {state: config.state} : {}),
    ...(config.redis ? {store: maskUrl(config.redis)} : {}),
  }
}

/** One line: `FILE: OK — 3 listeners, 3 backends, 1 config rule, 2 runtime rules`. */
export function describeCheck(r: CheckResult): string {
  const n = (count: number, what: string): string => `${count} ${what}${count === 1 ? '' : 's'}`
  return `${r.file}: OK — ${n(r.listeners, 'listener')}, ${n(r.backends, 'backend')}, ${n(r.rules.config, 'config rule')}, ${n(r.rules.runtime, 'runtime rule')}${r.state ? ` (state ${r.state})` : ''}${r.store ? ` (runtime rules shared in ${r.store}, not read by check)` : ''}`
}

/**
 * The state file's rules, as start would restore them: a corrupt file or a rule the rule schema
 * refuses (start moves the file aside), a rule that does not fit the config (ruleConflicts) or one
 * the table refuses (start skips either) is a problem here. Returns how many would still be live
 * (expired ones are dropped at start-up).
 */
async function checkStateRules(config: Config, state: string, table: RuleTable): Promise<number> {
  const {rules, problem} = await new StateStore(state).read()
  const problems = problem ? [`${state}: ${problem}; \`divert start\` would move it aside and start without its runtime rules`] : []
  for (const r of rules) {
    const conflicts = ruleConflicts(r, config)
    try {
      if (conflicts.length > 0) throw new Error(`${formatConflicts(conflicts)}; \`divert start\` would skip it`)
      table.add(r, 'runtime')
    } catch (error) {
      problems.push(`${state}: runtime rule ${r.id} for ${r.source}: ${(error as Error).message}`)
    }
  }
  if (problems.length > 0) throw new DivertError('CONFIG_INVALID', problems.join('\n'), {details: {state: {file: state, problems}}})
  table.expire()
  return table.snapshot().filter((r) => r.origin === 'runtime').length
}
