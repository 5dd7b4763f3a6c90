/**
 * The rule schema: one zod description of a rule's fields for every way a rule comes in — the config
 * file's `rules:`, the admin API's POST /rules (`divert add`) and the state file — so that what one
 * refuses the others refuse too. The three differ only in how a field is written (`expires` as an
 * ISO date in the file, `for` as a duration in a request, `expiresAt` as epoch ms on disk) and in how a
 * problem is worded for their reader (a file path and line, a flag, a state-file entry).
 *
 * ruleConflicts() is the one cross-check of a rule against a config: the backends and listener it
 * names exist, and a rule scoped to a UDP listener does not send to a PROXY v1 backend. The config
 * file runs it over its own rules; `divert add` refuses, start-up skips and `divert check` reports a
 * runtime rule that fails it; a reload that would make a runtime rule fail it is refused.
 *
 *   config rules ─▶ configRuleSchema ─┐
 *   POST /rules  ─▶ parseAddRule     ─┼─▶ ruleConflicts(config) ─▶ RuleService ─▶ RuleTable
 *   state file   ─▶ parseStoredRules ─┘
 */
import {z} from 'zod'
import {DivertError} from '../errors.js'
import {ORIGINAL_BACKEND, type Protocol, type ProxyProtocolVersion, type RuleSpec} from '../config/types.js'
import {parseDuration} from '../config/duration.js'
import {describeValue, expecting, formatPath, issuesToProblems, path, ref, scalar, size, strictObject, type SchemaProblem} from '../config/fields.js'
import {formatPrefix, parseCidr} from '../addr/cidr.js'

/** A rule id: "r" and 6 lowercase hex digits. */
export const RULE_ID = /^r[0-9a-f]{6}$/

/** ECMA-262 TimeClip: past 8.64e15 ms (year 275760) a Date is invalid and toISOString throws. */
const LAST_DATE_MS = 8.64e15

/** The canonical text of the prefix (formatPrefix), so `10.0.0.1/32` and `10.0.0.1` are one source. */
const source = () => scalar('an IP or CIDR, e.g. 192.168.100.7 or 2001:db8::/64', (v) => formatPrefix(parseCidr(String(v))))

/** A backend or listener name outside the config file: whether it exists is ruleConflicts' business. */
const name = (kind: 'backend' | 'listener') => z.string(expecting(`the name of a ${kind}`)).min(1)

const note = () => z.string(expecting('text'))

const epochMs = (what: string) =>
  z.number(expecting(`${what} in epoch milliseconds, before the year 275760`)).finite().min(-LAST_DATE_MS).max(LAST_DATE_MS)

/** How the "at least one action" and "size needs a recording" problems are put to each reader. */
interface Wording {
  noAction: string
  sizeWithoutRecord: string
}

const FILE_WORDING: Wording = {
  noAction: 'has no action; expected at least one of to, mirror, record',
  sizeWithoutRecord: 'limits a recording, but the rule has no record; expected record next to recordMaxBytes',
}

const REQUEST_WORDING: Wording = {
  noAction: 'a rule needs at least one action: --to BACKEND, --mirror BACKEND or --record FILE',
  sizeWithoutRecord: '--max-size limits a recording: give --record FILE too',
}

type Actions = {to?: unknown; mirror?: unknown; record?: unknown}

/** A rule does something, and a recording size limit comes with a recording. */
function actions<T extends Actions>(wording: Wording, sizeKey?: keyof T & string) {
  return (r: T, ctx: z.RefinementCtx): void => {
    if (r.to === undefined && r.mirror === undefined && r.record === undefined) {
      ctx.addIssue({code: 'custom', message: wording.noAction, params: {code: 'RULE_INVALID'}})
    }
    if (sizeKey !== undefined && r[sizeKey] !== undefined && r.record === undefined) {
      ctx.addIssue({code: 'custom', path: sizeKey === 'maxSize' ? [] : [sizeKey], message: wording.sizeWithoutRecord, params: {code: 'RULE_INVALID'}})
    }
  }
}

/** A rule in the config file; `known` are the names the file defines. */
export function configRuleSchema(known: {backends: string[]; listeners: string[]}) {
  return strictObject({
    source: source(),
    to: ref('backend', known.backends).optional(),
    mirror: ref('backend', known.backends).optional(),
    record: path('the pcap recording').optional(),
    listener: ref('listener', known.listeners).optional(),
    // RFC 3339 §5.6 date-time (the ISO-8601 profile); a zone is required so expiry does not depend on the host's TZ.
    expires: z.string(expecting('an ISO-8601 date-time with a zone, e.g. 2026-12-01T00:00:00Z'))
      .datetime({offset: true})
      .transform((s) => Date.parse(s))
      .optional(),
    note: note().optional(),
  }, 'a rule: a mapping with source and at least one of to, mirror, record').superRefine(actions(FILE_WORDING))
}

/** A runtime rule as the state file keeps it (RuleTable.spec); createdAt defaults to the load time. */
const storedRuleSchema = strictObject({
  id: z.string(expecting('a rule id: "r" and 6 lowercase hex digits, e.g. r1a2b3c')).regex(RULE_ID),
  source: source(),
  to: name('backend').optional(),
  mirror: name('backend').optional(),
  record: path('the pcap recording').optional(),
  recordMaxBytes: z.number(expecting('a whole number of bytes above 0')).int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
  listener: name('listener').optional(),
  expiresAt: epochMs('the expiry').optional(),
  note: note().optional(),
  createdAt: epochMs('the creation time').optional(),
}, 'a rule: a mapping with id, source and at least one of to, mirror, record').superRefine(actions(FILE_WORDING, 'recordMaxBytes'))

export type StoredRuleSpec = RuleSpec & {id: string; createdAt: number}

/**
 * The state file's `rules` list: every rule valid and every id unique, or the first problem as
 * `rules[i] (SOURCE): field: what is wrong; expected what` (the whole file is then set aside).
 */
export function parseStoredRules(list: unknown[], now: number): {rules: StoredRuleSpec[]; problem?: string} {
  const rules: StoredRuleSpec[] = []
  const ids = new Map<string, number>()
  for (const [i, raw] of list.entries()) {
    const parsed = storedRuleSchema.safeParse(raw)
    if (!parsed.success) return {rules: [], problem: storedProblem(i, raw, issuesToProblems(parsed.error.issues)[0])}
    const first = ids.get(parsed.data.id)
    if (first !== undefined) return {rules: [], problem: `rules[${i}] has id ${parsed.data.id}, like rules[${first}]; expected a unique id per rule`}
    ids.set(parsed.data.id, i)
    rules.push(compact({...parsed.data, createdAt: parsed.data.createdAt ?? now}))
  }
  return {rules}
}

/** One rule as a shared store holds it (the state file's shape): the rule, or undefined if it is not one. */
export function parseStoredRule(raw: unknown): StoredRuleSpec | undefined {
  const parsed = storedRuleSchema.safeParse(raw)
  return parsed.success && parsed.data.createdAt !== undefined ? compact({...parsed.data, createdAt: parsed.data.createdAt}) : undefined
}

/** The source is named in the parentheses and an unknown key in the message, so neither is prefixed again. */
function storedProblem(index: number, raw: unknown, p: SchemaProblem): string {
  const given = typeof raw === 'object' && raw !== null ? (raw as {source?: unknown}).source : undefined
  const src = given === undefined ? 'no source' : typeof given === 'string' ? given : describeValue(given)
  const field = p.path.length > 0 && p.path[0] !== 'source' && !p.atKey ? `${formatPath(p.path)}: ` : ''
  return `rules[${index}] (${src}): ${field}${p.message}`
}

/** POST /rules fields as `divert add` names them, for messages. */
const REQUEST_LABELS: Record<string, string> = {
  source: 'source', to: '--to', mirror: '--mirror', record: '--record', maxSize: '--max-size',
  listener: '--listener', for: '--for', note: '--note', existing: '--existing',
}

/** `for`: a duration above 0 from `now()`, as the epoch ms the rule expires at. */
function lifetime(clock: () => number) {
  return scalar('a duration above 0, e.g. 30m', (v, where) => {
    const now = clock()
    const ms = parseDuration(v, where)
    if (ms === 0) throw new DivertError('INVALID_DURATION', `${where}: ${describeValue(v)} is zero; expected a duration above 0, e.g. 30m`)
    // A rule ending past the last Date could be added but never shown (toISOString throws).
    if (now + ms > LAST_DATE_MS) throw new DivertError('INVALID_DURATION', `${where}: ${describeValue(v)} ends after the last date a rule can carry (year 275760); expected a shorter duration`)
    return now + ms
  })
}

/** The time parseAddRule counts `for` from: set for each (synchronous) parse, so the schema is built once. */
let requestTime = 0

const addRuleSchema = strictObject({
  source: source(),
  to: name('backend').optional(),
  mirror: name('backend').optional(),
  record: path('the pcap recording').optional(),
  maxSize: size(false).optional(),
  listener: name('listener').optional(),
  for: lifetime(() => requestTime).optional(),
  note: note().optional(),
  existing: z.enum(['keep', 'kill'], expecting('keep or kill')).default('keep'),
}, 'a JSON object body like {"source": "192.168.100.1", "to": "staging"}').superRefine(actions(REQUEST_WORDING, 'maxSize'))

export interface AddRule {
  spec: RuleSpec
  existing: 'keep' | 'kill'
}

/**
 * A POST /rules body → the rule it asks for, `for` counted from `now`. null means absent, and so does
 * an empty text, except for `existing` and `source`. Throws the first problem as a DivertError: the
 * parser's own code (INVALID_ADDRESS, INVALID_DURATION, INVALID_SIZE), RULE_INVALID for a rule that
 * does nothing, else ADMIN_BAD_REQUEST (wrong type, unknown field).
 */
export function parseAddRule(body: unknown, now: number): AddRule {
  requestTime = now
  const parsed = addRuleSchema.safeParse(absentIfEmpty(body))
  if (!parsed.success) {
    const p = issuesToProblems(parsed.error.issues)[0]
    const field = p.path.length > 0 && !p.atKey ? `${REQUEST_LABELS[String(p.path[0])] ?? formatPath(p.path)}: ` : ''
    throw new DivertError(p.code ?? 'ADMIN_BAD_REQUEST', `${field}${p.message}`)
  }
  const {maxSize, for: expiresAt, existing, ...rest} = parsed.data
  return {spec: compact({...rest, recordMaxBytes: maxSize, expiresAt}), existing}
}

function absentIfEmpty(body: unknown): unknown {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return body
  return Object.fromEntries(Object.entries(body).filter(([k, v]) => v !== null && (v !== '' || k === 'existing' || k === 'source')))
}

function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}

/** What the cross-check needs of a config (Config has it): backends' PROXY version, listeners' protocol. */
export interface RuleContext {
  backends: ReadonlyMap<string, {proxyProtocol?: ProxyProtocolVersion}>
  listeners: ReadonlyArray<{name: string; protocol: Protocol; transparent?: boolean}>
}

/** A backend the rule may name: one of the config's, or the built-in `original` where a listener is transparent. */
function knownBackend(name: string, config: RuleContext): boolean {
  return config.backends.has(name) || (name === ORIGINAL_BACKEND && config.listeners.some((l) => l.transparent === true))
}

/** Why a rule does not fit a config: a name it lacks, or PROXY v1 to a UDP listener. */
export type RuleConflict =
  | {kind: 'backend' | 'listener'; name: string}
  | {kind: 'proxy-v1-udp'; name: string; listener: string}

/**
 * What is wrong with `rule` under `config`: its `to`/`mirror` backends and its listener, in that
 * order, then PROXY v1 on a UDP listener — v1 is a text line for TCP streams only (HAProxy
 * proxy-protocol.txt §2.1), v2 carries UDP. An unscoped rule may send to a v1 backend, as the config
 * file always allowed: its TCP sessions carry the header, its UDP flows go without one.
 */
export function ruleConflicts(rule: Pick<RuleSpec, 'to' | 'mirror' | 'listener'>, config: RuleContext): RuleConflict[] {
  const out: RuleConflict[] = [rule.to, rule.mirror]
    .filter((b): b is string => b !== undefined && !knownBackend(b, config))
    .map((name) => ({kind: 'backend' as const, name}))
  if (rule.listener === undefined) return out
  const listener = config.listeners.find((l) => l.name === rule.listener)
  if (!listener) return [...out, {kind: 'listener', name: rule.listener}]
  if (listener.protocol === 'udp' && rule.to !== undefined && config.backends.get(rule.to)?.proxyProtocol === 'v1') {
    out.push({kind: 'proxy-v1-udp', name: rule.to, listener: listener.name})
  }
  return out
}

/** The config file's wording of a PROXY v1 backend behind a UDP listener (listener default or rule). */
export function proxyV1UdpMessage(backend: string): string {
  return `backend "${backend}" sends PROXY protocol v1, which is TCP-only; expected a backend with proxy_protocol: v2 (or none) for a udp listener`
}

/** `names backend "x" and listener "y", which the config does not have`, and/or the PROXY v1 conflict. */
export function formatConflicts(conflicts: RuleConflict[]): string {
  const missing = conflicts.filter((c) => c.kind !== 'proxy-v1-udp').map((c) => `${c.kind} "${c.name}"`)
  const v1 = conflicts.flatMap((c) => (c.kind === 'proxy-v1-udp' ? [`listener "${c.listener}" is udp, and ${proxyV1UdpMessage(c.name)}`] : []))
  return [...(missing.length > 0 ? [`names ${missing.join(' and ')}, which the config does not have`] : []), ...v1].join('; ')
}
