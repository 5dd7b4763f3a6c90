/**
 * Pure renderers: admin API data → the text a human reads (tables via table.ts). No I/O here;
 * commands print what these return. Tables take the terminal width (terminal.ts) and fit it. Every
 * string that comes from outside — a note, a source, a path, a name, an error — goes through
 * escapeControl (escapeLines below) or a table cell, so no control sequence reaches the terminal raw.
 */
import {formatDuration} from '../config/duration.js'
import type {
  AddRuleResult, ExplainResult, FastPathView, FleetInstanceView, FleetKillResult, FleetSessionsResult, FleetStatusResult, ReloadResult, RemoveRulesResult, RuleView,
  SessionView, StatusView, StoreView,
} from '../admin/protocol.js'
import {escapeControl} from './escape.js'
import {table} from './table.js'

export {table}

const UNLIMITED = Number.POSITIVE_INFINITY

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

export function ruleActions(r: Pick<RuleView, 'to' | 'mirror' | 'record'>): string {
  return [r.to && `to ${r.to}`, r.mirror && `mirror ${r.mirror}`, r.record && `record ${r.record}`].filter(Boolean).join(', ')
}

export function expiresIn(expiresAt: string | null, now = Date.now()): string {
  if (!expiresAt) return 'never'
  const left = Date.parse(expiresAt) - now
  return left <= 0 ? 'expiring' : `in ${formatDuration(left)}`
}

/**
 * Rows `divert list` draws as a table. cli-table3 takes about 1 ms per row (wrapping and measuring
 * every cell), so 100,000 rules would take minutes to draw and nobody reads that many rows: beyond
 * this the table shows the first rows and says how to get all of them.
 */
export const LIST_TABLE_MAX = 1000

export function rulesTable(rules: RuleView[], now = Date.now(), width = UNLIMITED): string {
  if (rules.length === 0) return 'no rules: every client goes to its listener\'s default backend'
  const shown = rules.length > LIST_TABLE_MAX ? rules.slice(0, LIST_TABLE_MAX) : rules
  const text = table(['id', 'source', 'actions', 'listener', 'expires', 'hits', 'origin', 'note'], shown.map((r) => [
    r.id, r.source, ruleActions(r), r.listener ?? '*', expiresIn(r.expiresAt, now), r.hits, r.origin, r.note ?? '',
  ]), {width, drop: ['origin', 'hits', 'listener', 'expires']})
  const more = rules.length - shown.length
  return more === 0 ? text : `${text}\n${shown.length} of ${rules.length} rules shown; ${more} more not shown — \`divert list --json\` prints every rule`
}

export function sessionsTable(sessions: Array<SessionView & {instance?: string}>, width = UNLIMITED, withInstance = false): string {
  if (sessions.length === 0) return 'no live sessions'
  // Gateway mode: the destination each client dialled, shown only when some session has one.
  const dest = sessions.some((s) => s.destination) ? ['destination'] : []
  // The kernel fast path: which sessions' bytes the kernel moves, shown only when some session's does.
  const path = sessions.some((s) => s.kernel) ? ['path'] : []
  const head = ['id', 'proto', 'client', ...dest, 'listener', 'backend', 'server', 'rule', 'in', 'out', 'age', 'idle', ...path, 'taps']
  return table(withInstance ? ['instance', ...head] : head, sessions.map((s) => [
    ...(withInstance ? [s.instance ?? '?'] : []), s.id, s.protocol, s.client, ...(dest.length ? [s.destination ?? '-'] : []), s.listener, s.backend, s.server, s.rule ?? '-',
    traffic(s.bytesIn, s.packetsIn), traffic(s.bytesOut, s.packetsOut), formatDuration(s.ageMs), formatDuration(s.idleMs), ...(path.length ? [s.kernel ? 'kernel' : 'divert'] : []), tapsText(s.taps),
  ]), {width, drop: ['idle', 'proto', 'rule', 'age', 'taps', 'path', 'out', 'in', 'server', 'listener']})
}

/** `divert sessions --fleet`: one table with an instance column, then every instance that could not be asked. */
export function fleetSessionsText(r: FleetSessionsResult, width = UNLIMITED): string {
  return [sessionsTable(r.sessions, width, true), ...unreachableLines(r.instances)].join('\n')
}

/** `divert status --fleet`: one row per instance. */
export function fleetStatusText(r: FleetStatusResult, width = UNLIMITED): string {
  const rows = r.instances.map((i) => {
    const s = i.status
    if (!s) return [i.instance, 'UNREACHABLE', i.adminUrl ?? '-', '-', '-', '-', '-', i.error ?? '']
    return [i.instance, 'up', i.adminUrl ?? '-', storeText(s.store), s.totals.activeSessions, s.totals.rules, formatDuration(s.uptimeMs), `pid ${s.pid}, divert ${s.version}`]
  })
  return table(['instance', 'state', 'admin', 'rule store', 'sessions', 'rules', 'uptime', 'note'], rows, {width, drop: ['note', 'uptime', 'admin']})
}

export function fleetKillText(r: FleetKillResult): string {
  const per = r.instances.filter((i) => i.reachable).map((i) => `${i.instance}: ${i.killed ?? 0}`)
  return [escapeLines([`closed ${r.killed} session${r.killed === 1 ? '' : 's'} (${per.join(', ')})`]), ...unreachableLines(r.instances)].join('\n')
}

function unreachableLines(instances: FleetInstanceView[]): string[] {
  return escapeLines(instances.filter((i) => !i.reachable).map((i) => `instance ${i.instance} UNREACHABLE${i.adminUrl ? ` at ${i.adminUrl}` : ''}: ${i.error ?? 'no answer'}`)).split('\n').filter((l) => l !== '')
}

function storeText(store?: StoreView): string {
  if (!store || store.kind === 'none') return 'none'
  if (store.kind === 'file') return store.path
  return `${store.url} ${store.connected ? `connected, version ${store.version}` : `DISCONNECTED since ${store.since}${store.error ? ` (${store.error})` : ''}`}`
}

function traffic(bytes: number, packets?: number): string {
  return packets === undefined ? formatBytes(bytes) : `${formatBytes(bytes)} / ${packets} pkt`
}

function tapsText(taps?: Record<string, unknown>): string {
  if (!taps) return ''
  return Object.entries(taps).map(([name, v]) => {
    const o = (v ?? {}) as Record<string, unknown>
    const dropped = typeof o.dropped === 'number' && o.dropped > 0 ? `, ${formatBytes(o.dropped)} dropped` : ''
    return `${name}: ${String(o.state ?? '?')}${dropped}`
  }).join('; ')
}

export function explainText(results: ExplainResult[]): string {
  return results.map((r) => {
    const verdict = r.refused
      ? `refused: ${r.refused}`
      : `→ backend ${r.backend}, server ${r.server}${r.fallbackFrom ? ` (fallback from ${r.fallbackFrom})` : ''}`
    const extras = [r.mirror && `mirror to ${r.mirror}`, r.record && `record to ${r.record}`].filter(Boolean).join(', ')
    return escapeLines([`${r.ip} on listener ${r.listener}: ${verdict}${extras ? `; ${extras}` : ''}`, ...r.reasons.map((x) => `  - ${x}`)])
  }).join('\n')
}

export function statusText(s: StatusView, width = UNLIMITED): string {
  const head = escapeLines([`divert ${s.version}, pid ${s.pid}, up ${formatDuration(s.uptimeMs)}, config ${s.configFile}`,
    ...(s.store?.kind === 'redis' ? [`instance ${s.instance ?? '?'}, rule store ${storeText(s.store)}`] : []),
    `sessions: ${s.totals.activeSessions} live, ${s.totals.sessions} total, ${s.totals.refused} refused; ` +
    `bytes in ${formatBytes(s.totals.bytesIn)}, out ${formatBytes(s.totals.bytesOut)}; rules: ${s.totals.rules}`,
    ...(s.fastPath ? [fastPathText(s.fastPath)] : [])])
  const listeners = table(['listener', 'proto', 'bind', 'default backend', 'sessions'], s.listeners.map((l) => [l.name, l.protocol, l.address || l.bind, l.backend, l.sessions]), {width, drop: ['sessions', 'proto']})
  const servers = table(['backend', 'balance', 'server', 'weight', 'health', 'active', 'total', 'last check'], s.backends.flatMap((b) => b.servers.map((srv) => [
    b.name, b.balance, srv.address, srv.weight, srv.up ? 'up' : 'DOWN', srv.active, srv.total, lastCheck(srv.lastCheck),
  ])), {width, drop: ['balance', 'weight', 'total', 'active']})
  return [head, '', listeners, '', servers, ...gatewayText(s, width)].join('\n')
}

/** The kernel fast path in one line: on and how much it carries, or why the kernel refused it. */
export function fastPathText(f: FastPathView): string {
  if (f.state === 'off') return 'fast path: off (fast_path: off; every byte goes through divert)'
  if (f.state === 'unavailable') return `fast path: UNAVAILABLE (fast_path: auto, but the kernel refused: ${f.reason}; every byte goes through divert)`
  return `fast path: active; the kernel moves ${f.active} session${f.active === 1 ? '' : 's'} now, ${f.spliced} since start`
}

/** Gateway mode: what divert installed and which sources each intercepting listener takes. */
function gatewayText(s: StatusView, width: number): string[] {
  const t = s.transparent
  if (!t) return []
  const installed = !t.manage ? 'manage: false, the operator installs the rules (README "Gateway mode")'
    : t.installed ? `installed: nftables table inet ${t.table}, mark 0x${t.mark.toString(16)}, route table ${t.routeTable}` : 'NOT installed'
  const head = escapeLines([`mode: gateway; ${installed}${t.error ? `; last update FAILED: ${t.error}` : ''}`])
  if (t.listeners.length === 0) return ['', head]
  const rows = t.listeners.map((l) => [l.name, l.protocol, l.protocol === 'udp' ? l.bind : l.ports.join(', '), l.sources.length ? l.sources.join(', ') : 'none (nobody is intercepted)'])
  return ['', head, table(['intercepting listener', 'proto', 'ports', 'intercepted sources'], rows, {width, drop: ['proto']})]
}

function lastCheck(c?: {ok: boolean; at: number | string; error?: string} | null): string {
  if (!c) return '-'
  return c.ok ? 'ok' : `failed: ${c.error ?? '?'}`
}

export function addRuleText(r: AddRuleResult): string {
  const rule = r.rule
  const scope = rule.listener ? ` on listener ${rule.listener}` : ''
  const lines = [
    r.replaced
      ? `replaced rule ${r.replaced.id} (${ruleActions(r.replaced)}) for ${rule.source}${scope}: now ${ruleActions(rule)} [${rule.id}]`
      : `added rule ${rule.id}: ${rule.source}${scope} → ${ruleActions(rule)}`,
  ]
  const kept = keptText(r.kept)
  if (kept) lines.push(`kept: ${kept} (from the replaced rule: give --for/--note/--max-size to change them, or divert rm first to drop them)`)
  if (rule.expiresAt) lines.push(`expires ${expiresIn(rule.expiresAt)} (${rule.expiresAt})`)
  const {policy, matched, killed} = r.existing
  const n = (k: number): string => `${k} live session${k === 1 ? '' : 's'}`
  if (policy === 'kill') lines.push(`closed ${n(killed)} from ${rule.source}: they reconnect into the new route`)
  else if (matched > 0) {
    const [stay, them] = matched === 1 ? ['stays where it is', 'it'] : ['stay where they are', 'them']
    lines.push(`${n(matched)} from ${rule.source} ${stay}; move ${them} now with \`divert kill --source ${rule.source}${rule.listener ? ` --listener ${rule.listener}` : ''}\``)
  }
  return escapeLines(lines)
}

export function removeText(r: RemoveRulesResult): string {
  if (r.removed.length === 0) return 'no runtime rules to remove'
  const lines = r.removed.map((x) => `removed rule ${x.id}: ${x.source}${x.listener ? ` on ${x.listener}` : ''} (${ruleActions(x)})`)
  for (const x of r.restored) lines.push(`config rule ${x.id} for ${x.source} applies again (${ruleActions(x)})`)
  const only = r.removed.length === 1 ? r.removed[0] : undefined
  const kill = only ? `divert kill --source ${only.source}${only.listener ? ` --listener ${only.listener}` : ''}` : 'divert kill --source SOURCE'
  lines.push(`live sessions keep their backend; \`${kill}\` moves them now`)
  return escapeLines(lines)
}

function keptText(k: AddRuleResult['kept']): string {
  if (!k) return ''
  const bits = [
    k.expiresAt && `expires ${k.expiresAt}`,
    k.note !== undefined && `note ${JSON.stringify(k.note)}`,
    k.recordMaxBytes !== undefined && `max size ${k.recordMaxBytes} bytes`,
  ]
  return bits.filter(Boolean).join(', ')
}

export function reloadText(r: ReloadResult): string {
  const part = (what: string, d: {added: string[]; removed: string[]; changed: string[]}): string => {
    const bits = [d.added.length && `added ${d.added.join(', ')}`, d.removed.length && `removed ${d.removed.join(', ')}`, d.changed.length && `changed ${d.changed.join(', ')}`].filter(Boolean)
    return `${what}: ${bits.length ? bits.join('; ') : 'unchanged'}`
  }
  return escapeLines([`reloaded ${r.configFile}`, part('listeners', r.listeners), part('backends', r.backends), `rules: ${r.rules}`])
}

/** Lines built from outside strings, each escaped: the templates hold no control characters, the values may. */
function escapeLines(lines: string[]): string {
  return lines.map(escapeControl).join('\n')
}
