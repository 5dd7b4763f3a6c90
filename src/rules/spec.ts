/**
 * Rule specs: the one check of a rule's own fields (source, actions, expiry, size limit), shared by
 * `divert add` and the state file loader, so a rule refused at runtime is refused from disk too.
 * missingNames() is the one cross-check of the backend and listener names a rule uses against a
 * config: reload refuses a config that drops a runtime rule's name, start-up skips such a stored rule,
 * `divert check` reports it (RuleService checks new rules against the config in force).
 *
 *   divert add ─┐
 *               ├─▶ checkRuleSpec ─▶ RuleTable
 *   state file ─┘
 */
import {DivertError} from '../errors.js'
import {ORIGINAL_BACKEND, type RuleSpec} from '../config/types.js'
import {parseCidr} from '../addr/cidr.js'

const TEXT_FIELDS = ['to', 'mirror', 'record', 'listener', 'note'] as const

/** Throws a DivertError naming the first thing wrong with `spec` (INVALID_ADDRESS, INVALID_ARGUMENT). */
export function checkRuleSpec(spec: Partial<Record<keyof RuleSpec, unknown>>): asserts spec is RuleSpec {
  if (typeof spec.source !== 'string') throw invalid('source must be an IP address or CIDR text')
  parseCidr(spec.source)
  for (const k of TEXT_FIELDS) {
    if (spec[k] !== undefined && (typeof spec[k] !== 'string' || spec[k] === '')) throw invalid(`${k} must be a non-empty text when given`)
  }
  if (!spec.to && !spec.mirror && !spec.record) {
    throw invalid('a rule needs at least one action: --to BACKEND, --mirror BACKEND or --record FILE')
  }
  if (spec.recordMaxBytes !== undefined) {
    if (!spec.record) throw invalid('--max-size limits a recording: give --record FILE too')
    if (!Number.isSafeInteger(spec.recordMaxBytes) || (spec.recordMaxBytes as number) <= 0) throw invalid(`recordMaxBytes must be a positive whole number of bytes, got ${String(spec.recordMaxBytes)}`)
  }
  // ECMA-262 TimeClip: past 8.64e15 ms (year 275760) a Date is invalid and toISOString throws.
  if (spec.expiresAt !== undefined && (typeof spec.expiresAt !== 'number' || !Number.isFinite(new Date(spec.expiresAt).getTime()))) {
    throw invalid(`expiresAt must be epoch milliseconds before the year 275760, got ${String(spec.expiresAt)}`)
  }
}

function invalid(message: string): DivertError {
  return new DivertError('INVALID_ARGUMENT', message)
}

/** A backend or listener a rule names that a config does not have. */
export interface MissingName {
  kind: 'backend' | 'listener'
  name: string
}

/** What `rule` names that `config` lacks: its `to`/`mirror` backends, then its listener. */
export function missingNames(rule: Pick<RuleSpec, 'to' | 'mirror' | 'listener'>, config: {backends: {has(name: string): boolean}; listeners: ReadonlyArray<{name: string}>}): MissingName[] {
  const backends = [rule.to, rule.mirror].filter((b): b is string => b !== undefined && b !== ORIGINAL_BACKEND && !config.backends.has(b)).map((name) => ({kind: 'backend' as const, name}))
  const listener = rule.listener && !config.listeners.some((l) => l.name === rule.listener) ? [{kind: 'listener' as const, name: rule.listener}] : []
  return [...backends, ...listener]
}

/** `backend "x" and listener "y"`, for messages. */
export function formatMissing(missing: MissingName[]): string {
  return missing.map((m) => `${m.kind} "${m.name}"`).join(' and ')
}
