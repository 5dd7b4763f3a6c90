/**
 * DaemonControl: what the admin API can do to a running daemon, as methods over its owners (the
 * RuleService for rule changes, registry, backends). Parses request fields (a new rule through the
 * rule schema, rules/spec.ts), and writes one audit line per change (what, by whom, when).
 *
 *   AdminServer routes ─▶ DaemonControl ─▶ RuleService / SessionRegistry / Backends
 */
import {DivertError} from './errors.js'
import {formatPrefix, normalizeAddress, parseCidr, prefixContains} from './addr/cidr.js'
import {ORIGINAL_BACKEND, type ListenerConfig} from './config/types.js'
import {needsKernel, type KernelPlan} from './net/intercept-plan.js'
import type {InterceptorView} from './net/interceptor.js'
import {RuleTable, type Rule} from './rules/table.js'
import {parseAddRule} from './rules/spec.js'
import {checkBackend, checkListener, type KeptFields} from './rules/service.js'
import {isRefusal} from './rules/router.js'
import type {SessionFilter} from './session/registry.js'
import {formatAddress} from './addr/address.js'
import type {Control} from './admin/routes.js'
import type {SessionQuery} from './admin/client.js'
import type {FleetView} from './fleet/view.js'
import type {
  AddRuleResult, BackendView, FastPathView, FleetKillResult, FleetSessionsResult, FleetStatusResult, KeptView, ExplainResult, KillResult, ReloadResult, RemoveRulesResult,
  RuleView, SessionView, StatusView, StoreView,
} from './admin/protocol.js'
import type {Logger} from 'pino'
import type {Clock} from './clock.js'
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
  readonly clock: Clock
  readonly logger: Logger
  readonly rules: RuleTable
  readonly ruleService: RuleService
  readonly router: Router
  readonly registry: SessionRegistry
  readonly backends: Map<string, Backend>
  readonly proxies: Map<string, TcpProxy | UdpProxy>
  readonly refused: Map<string, number>
  readonly metrics: DaemonMetrics
  /** This instance's fleet name, and the fleet when rules are shared (issue 14). */
  readonly instance: string
  readonly fleet?: {readonly view: FleetView}
  storeView(): StoreView
  /** The kernel fast path: mode, whether it is loaded (or why not), sessions spliced. */
  fastPathView(): FastPathView
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
      version: VERSION, pid: process.pid, instance: this.d.instance, store: this.d.storeView(), configFile: this.d.config.file, startedAt: new Date(this.d.startedAt).toISOString(),
      uptimeMs: this.d.clock.now() - this.d.startedAt,
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
      fastPath: this.d.fastPathView(),
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

  async addRule(body: unknown, who: string): Promise<AddRuleResult> {
    const {spec, existing: policy} = parseAddRule(body, this.d.clock.now())
    const {rule, replaced, kept} = await this.d.ruleService.add(spec, who)

    const filter: SessionFilter = {source: parseCidr(spec.source), listener: spec.listener}
    const matched = [...this.d.registry.matching(filter)].length
    const killed = policy === 'kill' ? this.d.registry.kill(filter, 'rule-changed') : 0
    const result: AddRuleResult = {
      rule: RuleTable.view(rule), replaced: replaced ? RuleTable.view(replaced) : null, existing: {policy, matched, killed},
      kept: replaced ? keptView(kept) : null,
    }
    this.audit(replaced ? 'rule.replace' : 'rule.add', who, {...result})
    return result
  }

  async removeRule(key: string, listener: string | undefined, who: string): Promise<RemoveRulesResult> {
    return this.afterRemove(await this.d.ruleService.remove(key, listener, who), who)
  }

  async removeAllRules(who: string): Promise<RemoveRulesResult> {
    return this.afterRemove(await this.d.ruleService.removeAll(who), who)
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

  /** `divert status --fleet`: every live instance's status (issue 14). */
  async fleetStatus(who: string): Promise<FleetStatusResult> {
    const answers = await this.fleet().ask(who, () => this.status(), (c) => c.status())
    return {instances: answers.map(({result, ...at}) => ({...at, status: result}))}
  }

  /** `divert sessions --fleet`: every live instance's sessions, each with its instance. */
  async fleetSessions(filter: SessionFilter, query: SessionQuery, who: string): Promise<FleetSessionsResult> {
    const answers = await this.fleet().ask(who, () => this.sessions(filter), (c) => c.sessions(query))
    return {
      instances: answers.map(({result: _r, ...at}) => at),
      sessions: answers.flatMap((a) => (a.result ?? []).map((s) => ({instance: a.instance, ...s}))),
    }
  }

  /** `divert kill --fleet --source X`: closes the matching sessions on every live instance. */
  async fleetKill(filter: SessionFilter, query: SessionQuery, who: string): Promise<FleetKillResult> {
    const answers = await this.fleet().ask(who, () => this.killSessions(filter, who), (c) => c.killSessions(query))
    const instances = answers.map(({result, ...at}) => ({...at, killed: result?.killed ?? null}))
    return {killed: instances.reduce((n, i) => n + (i.killed ?? 0), 0), instances}
  }

  private fleet(): FleetView {
    if (!this.d.fleet) throw new DivertError('CLI_USAGE', `--fleet needs a shared rule store: this instance keeps its rules ${this.d.config.state ? `in ${this.d.config.state}` : 'in memory'} and knows no fleet (set state: redis://HOST:PORT/DB in ${this.d.config.file})`)
    return this.d.fleet.view
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
    this.d.logger.info({audit: true, action, by: who, instance: this.d.instance, at: new Date().toISOString(), ...what}, `audit: ${action} by ${who} on ${this.d.instance}`)
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
