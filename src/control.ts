/**
 * DaemonControl: what the admin API can do to a running daemon, as methods over its owners (the
 * RuleService for rule changes, registry, backends). Parses request fields, and writes one audit
 * line per change (what, by whom, when).
 *
 *   AdminServer routes ─▶ DaemonControl ─▶ RuleService / SessionRegistry / Backends
 */
import {DivertError} from './errors.js'
import {parseDuration} from './config/duration.js'
import {parseSize} from './config/size.js'
import {formatPrefix, normalizeAddress, parseCidr, prefixContains} from './addr/cidr.js'
import {ORIGINAL_BACKEND, type ListenerConfig} from './config/types.js'
import {needsKernel, type KernelPlan} from './net/intercept-plan.js'
import type {InterceptorView} from './net/interceptor.js'
import {RuleTable, type Rule} from './rules/table.js'
import {checkRuleSpec} from './rules/spec.js'
import {checkBackend, checkListener, type KeptFields} from './rules/service.js'
import {isRefusal} from './rules/router.js'
import type {SessionFilter} from './session/registry.js'
import {formatAddress} from './addr/address.js'
import type {Control} from './admin/routes.js'
import type {
  AddRuleRequest, AddRuleResult, BackendView, KeptView, ExplainResult, KillResult, ReloadResult, RemoveRulesResult,
  RuleView, SessionView, StatusView,
} from './admin/protocol.js'
import type {Logger} from 'pino'
import type {Config} from './config/types.js'
import type {Backend} from './backends/backend.js'
import type {Router} from './rules/router.js'
import type {RuleService} from './rules/service.js'
import type {SessionRegistry} from './session/registry.js'
import type {TcpProxy} from './net/tcp-proxy.js'
import type {UdpProxy} from './net/udp-proxy.js'
import type {DaemonMetrics} from './admin/metrics.js'
import {VERSION} from './version.js'

/**
 * The owners of a running daemon that the admin API works through (daemon.ts's Daemon is one). Named
 * here rather than imported, so the composition root and its control surface are no import circle.
 */
export interface ControlledDaemon {
  readonly config: Config
  readonly startedAt: number
  readonly logger: Logger
  readonly rules: RuleTable
  readonly ruleService: RuleService
  readonly router: Router
  readonly registry: SessionRegistry
  readonly backends: Map<string, Backend>
  readonly proxies: Map<string, TcpProxy | UdpProxy>
  readonly refused: Map<string, number>
  readonly metrics: DaemonMetrics
  reload(who: string): Promise<ReloadResult>
  /** Gateway mode: what is to be installed now, and the owner that installs it (absent with manage: false). */
  kernelPlan(): KernelPlan
  readonly interceptor?: {view(): InterceptorView}
}

export class DaemonControl implements Control {
  constructor(private readonly d: ControlledDaemon) {}

  status(): StatusView {
    const counters = this.d.registry.counters()
    const sum = (f: (c: (typeof counters)[number]) => number): number => counters.reduce((a, c) => a + f(c), 0)
    return {
      version: VERSION, pid: process.pid, configFile: this.d.config.file, startedAt: new Date(this.d.startedAt).toISOString(),
      uptimeMs: Date.now() - this.d.startedAt,
      listeners: [...this.d.proxies.values()].map((p) => {
        const a = p.address()
        return {
          name: p.config.name, protocol: p.config.protocol, bind: formatAddress(p.config.bind),
          address: a ? formatAddress(a) : '', backend: p.config.backend,
          sessions: [...this.d.registry.matching({listener: p.config.name})].length,
        }
      }),
      backends: this.backends(),
      totals: {
        activeSessions: this.d.registry.size, sessions: sum((c) => c.sessions), bytesIn: sum((c) => c.bytesIn + c.liveBytesIn),
        bytesOut: sum((c) => c.bytesOut + c.liveBytesOut), rules: this.d.rules.size, refused: [...this.d.refused.values()].reduce((a, b) => a + b, 0),
      },
      ...this.gateway(),
    }
  }

  /** Gateway mode's part of the status: what is installed, and which sources each intercepting listener takes. */
  private gateway(): Pick<StatusView, 'mode' | 'transparent'> {
    if (!needsKernel(this.d.config)) return {mode: 'proxy', transparent: null}
    const plan = this.d.kernelPlan()
    const state = this.d.interceptor?.view() ?? {installed: false, error: null}
    return {
      mode: 'gateway',
      transparent: {
        manage: plan.manage, table: plan.table, mark: plan.mark, routeTable: plan.routeTable, ...state,
        listeners: plan.listeners.map((l) => ({name: l.name, protocol: l.protocol, bind: formatAddress(l.bind), ports: l.ports, sources: l.sources})),
      },
    }
  }

  rules(): RuleView[] {
    return this.d.rules.snapshot().map((r) => RuleTable.view(r))
  }

  async addRule(req: AddRuleRequest, who: string): Promise<AddRuleResult> {
    const prefix = parseCidr(req.source)
    const forMs = req.for === undefined ? undefined : parseDuration(req.for, '--for')
    if (forMs === 0) throw new DivertError('INVALID_DURATION', '--for must be longer than 0')
    const expiresAt = forMs === undefined ? undefined : Date.now() + forMs
    // Checked before anything changes: a rule ending past the last Date (ECMA-262 TimeClip: 8.64e15 ms,
    // year 275760) could be added but never shown (toISOString throws).
    if (expiresAt !== undefined && !Number.isFinite(new Date(expiresAt).getTime())) {
      throw new DivertError('INVALID_DURATION', `--for "${req.for}" ends after the last date a rule can carry (year 275760): give a shorter duration`)
    }
    const recordMaxBytes = req.maxSize === undefined ? undefined : parseSize(req.maxSize, '--max-size')
    const spec = {source: req.source, to: req.to, mirror: req.mirror, record: req.record, recordMaxBytes, listener: req.listener, note: req.note, expiresAt}
    checkRuleSpec(spec)
    const {rule, replaced, kept} = await this.d.ruleService.add(spec)

    const filter: SessionFilter = {source: prefix, listener: req.listener}
    const matched = [...this.d.registry.matching(filter)].length
    const policy = req.existing ?? 'keep'
    const killed = policy === 'kill' ? this.d.registry.kill(filter, 'rule-changed') : 0
    const result: AddRuleResult = {
      rule: RuleTable.view(rule), replaced: replaced ? RuleTable.view(replaced) : null, existing: {policy, matched, killed},
      kept: replaced ? keptView(kept) : null,
    }
    this.audit(replaced ? 'rule.replace' : 'rule.add', who, {...result})
    return result
  }

  async removeRule(key: string, listener: string | undefined, who: string): Promise<RemoveRulesResult> {
    return this.afterRemove(await this.d.ruleService.remove(key, listener), who)
  }

  async removeAllRules(who: string): Promise<RemoveRulesResult> {
    return this.afterRemove(await this.d.ruleService.removeAll(), who)
  }

  private afterRemove(removed: Rule[], who: string): RemoveRulesResult {
    const result: RemoveRulesResult = {removed: [], restored: []}
    for (const r of removed) {
      const back = this.d.rules.find(r.source, r.listener)
      const rule = RuleTable.view(r)
      const restored = back ? RuleTable.view(back) : null
      result.removed.push(rule)
      if (restored) result.restored.push(restored)
      // One audit line per rule, like add: `rm --all` is as traceable as `rm SOURCE`.
      this.audit('rule.remove', who, {rule, restored})
    }
    return result
  }

  explain(ip: string, listener?: string): ExplainResult[] {
    parseCidr(ip)
    if (ip.includes('/')) throw new DivertError('INVALID_ADDRESS', `explain takes one IP address, not a prefix: "${ip}"`)
    const listeners = listener ? [this.d.config.listeners.find((l) => l.name === this.listenerNamed(listener).name)!] : this.d.config.listeners
    return listeners.map((l) => {
      // The proxies check the limits before routing (Admission.admit): a limit that refuses now wins.
      const limit = this.d.proxies.get(l.name)?.admission.refusal(normalizeAddress(ip)) ?? null
      const d = this.d.router.decide(l, ip, {countHit: false, explain: true})
      const intercepted = this.intercepted(l.name, ip)
      const reasons = [...interceptReasons(ip, l, intercepted), ...(limit ? [`a new session from ${ip} would be refused now: ${limit}`, ...(d.reasons ?? []).map((r) => `otherwise: ${r}`)] : d.reasons ?? [])]
      // `intercepted` only where the listener intercepts: the shape for every other listener stays as it was.
      const base = {ip, listener: l.name, rule: d.rule ? RuleTable.view(d.rule) : null, reasons, mirror: d.rule?.mirror ?? null, record: d.rule?.record ?? null, limit, ...(intercepted === null ? {} : {intercepted})}
      if (limit) return {...base, backend: null, server: null, fallbackFrom: null, refused: limit}
      if (isRefusal(d) && d.needsDestination && l.transparent) return {...base, backend: ORIGINAL_BACKEND, server: 'the destination the client dialled', fallbackFrom: null, refused: null}
      if (isRefusal(d)) return {...base, backend: null, server: null, fallbackFrom: null, refused: d.refused}
      return {...base, backend: d.backend.name, server: d.server.key, fallbackFrom: d.fallbackFrom ?? null, refused: null}
    })
  }

  /** Whether gateway mode steers `ip` into listener `name` (null: that listener does not intercept). */
  private intercepted(name: string, ip: string): boolean | null {
    const l = this.d.kernelPlan().listeners.find((x) => x.name === name)
    return l ? l.sources.some((s) => prefixContains(parseCidr(s), ip)) : null
  }

  sessions(filter: SessionFilter): SessionView[] {
    if (filter.backend) this.backendNamed(filter.backend)
    if (filter.listener) this.listenerNamed(filter.listener)
    return this.d.registry.snapshot(filter)
  }

  session(id: string): SessionView {
    const s = this.d.registry.get(id)
    if (!s) throw noSession(id)
    return this.d.registry.view(s)
  }

  killSessions(filter: SessionFilter, who: string): KillResult {
    if (filter.backend) this.backendNamed(filter.backend)
    if (filter.listener) this.listenerNamed(filter.listener)
    const killed = this.d.registry.kill(filter)
    this.audit('sessions.kill', who, {filter: {...filter, source: filter.source ? formatPrefix(filter.source) : undefined}, killed})
    return {killed}
  }

  killSession(id: string, who: string): KillResult {
    const s = this.d.registry.get(id)
    if (!s) throw noSession(id)
    s.transport.kill('killed')
    this.audit('sessions.kill', who, {session: id, killed: 1})
    return {killed: 1}
  }

  backends(): BackendView[] {
    return [...this.d.backends.values()].map((b) => b.snapshot())
  }

  metrics(): Promise<string> {
    return this.d.metrics.render()
  }

  reload(who: string): Promise<ReloadResult> {
    return this.d.reload(who)
  }

  private backendNamed(name: string): void {
    checkBackend(this.d.backends, name)
  }

  private listenerNamed(name: string): {name: string; backend: string} {
    return checkListener(this.d.config, name)
  }

  private audit(action: string, who: string, what: Record<string, unknown>): void {
    this.d.logger.info({audit: true, action, by: who, at: new Date().toISOString(), ...what}, `audit: ${action} by ${who}`)
  }
}

/** What a replacing add took over from the old rule, as the API shows it. */
function keptView(k: KeptFields): KeptView {
  return {
    ...(k.expiresAt === undefined ? {} : {expiresAt: new Date(k.expiresAt).toISOString()}),
    ...(k.note === undefined ? {} : {note: k.note}),
    ...(k.recordMaxBytes === undefined ? {} : {recordMaxBytes: k.recordMaxBytes}),
  }
}

function interceptReasons(ip: string, l: ListenerConfig, intercepted: boolean | null): string[] {
  if (intercepted === null) return []
  const ports = `${l.protocol} port${l.intercept!.ports.length === 1 ? '' : 's'} ${l.intercept!.ports.join(', ')}`
  return [intercepted
    ? `${ip} is intercepted: the kernel steers its ${ports} traffic into listener ${l.name}`
    : `${ip} is not intercepted: no rule names it, so the kernel routes its ${ports} traffic past divert (what follows applies only once a rule names it)`]
}

function noSession(id: string): DivertError {
  return new DivertError('SESSION_NOT_FOUND', `no live session "${id}" (it may have ended): list them with \`divert sessions\``)
}
