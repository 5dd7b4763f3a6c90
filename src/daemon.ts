/**
 * Daemon: the composition root. Reads the config, builds the owners (rule table and the RuleService
 * that changes it, backends with health checkers, session registry, recordings), binds every listener
 * and the admin API, then runs the coarse activity/idle tick (the RuleService runs expiry). Live
 * sessions' mirror/record taps follow rule changes (retap). stop() drains: stop accepting, let live
 * sessions finish for the grace period, close the rest. Every owner it builds reads time and sets
 * timers through the one clock it was given (src/clock.ts).
 *
 *   config ─▶ RuleService(RuleTable) + Backends + Registry ─▶ Router ─▶ Tcp/Udp proxies ◀─ AdminServer ◀─ CLI
 */
import {lstatSync, readFileSync} from 'node:fs'
import {hostname} from 'node:os'
import type {Logger} from 'pino'
import {loadConfig} from './config/load.js'
import {DEFAULTS, type BackendConfig, type Config, type ListenerConfig} from './config/types.js'
import {FastPath} from './fastpath/splice.js'
import {DivertError} from './errors.js'
import {realClock, type Clock, type Timer} from './clock.js'
import {Backend, originalBackend} from './backends/backend.js'
import {HealthChecker, tcpConnectCheck} from './backends/health.js'
import {RuleTable} from './rules/table.js'
import {Router, type Decision} from './rules/router.js'
import {StateStore, type RuleStore} from './rules/state.js'
import {formatConflicts, ruleConflicts} from './rules/spec.js'
import {RuleService} from './rules/service.js'
import type {Fleet} from './fleet/fleet.js'
import type {FastPathView, StoreView} from './admin/protocol.js'
import {SessionRegistry, type Session} from './session/registry.js'
import {TapSet} from './session/fanout.js'
import type {SessionMeta, Tap} from './session/types.js'
import {TcpProxy} from './net/tcp-proxy.js'
import {UdpProxy} from './net/udp-proxy.js'
import type {Connector} from './net/connector.js'
import {checkUpstreamPrivileges, createSocketFactory, type SocketFactory, type UpstreamOptions} from './net/sockets.js'
import {formatAddress} from './addr/address.js'
import {AdminServer} from './admin/server.js'
import {prepareSocketDir, resolveAdminTarget} from './admin/paths.js'
import {RecordingSet} from './capture/recorder.js'
import {createMirrorTap, createUnavailableMirrorTap} from './capture/mirror.js'
import {DaemonControl} from './control.js'
import {DaemonMetrics, type MetricsSource} from './admin/metrics.js'
import type {GlobalLimit} from './net/limits.js'
import {capacity, openFds, openFilesLimit, FD_RESERVE, type FdLimits} from './fdlimit.js'
import type {ReloadResult} from './admin/protocol.js'
import {Interceptor} from './net/interceptor.js'
import {needsKernel, planFor, transparentOf, type KernelPlan} from './net/intercept-plan.js'

export interface DaemonOptions {
  configFile: string
  /** `--admin`: overrides the config's admin.socket. */
  admin?: string
  logger: Logger
  env?: NodeJS.ProcessEnv
  /** Test seam: how plain upstream TCP sockets are opened (through the socket factory). */
  connect?: Connector
  /** Time and timers for every owner the daemon builds (tests inject a fake one); realClock when absent. */
  clock?: Clock
  /** The coarse activity/idle tick's period (default 1000 ms): idle times have this granularity. */
  tickMs?: number
  /** Test seam: skip touching the real open-files limit. */
  fdLimits?: FdLimits
}

export type ListenerProxy = TcpProxy | UdpProxy

export class Daemon {
  config!: Config
  readonly rules: RuleTable
  backends = new Map<string, Backend>()
  readonly registry: SessionRegistry
  readonly router: Router
  readonly recordings: RecordingSet
  readonly proxies = new Map<string, ListenerProxy>()
  readonly startedAt: number
  readonly clock: Clock
  readonly refused = new Map<string, number>()
  /** Live sessions over all listeners against `limits.max_connections`. */
  readonly globalLimit: GlobalLimit = {live: 0, max: 0}
  adminSocket?: string
  /** The one way rules change (admin, expiry, reload, boot): see src/rules/service.ts. */
  readonly ruleService: RuleService
  capacity?: {openFiles: number; tcpSessions: number; udpFlows: number}
  /** This daemon's Prometheus registry (GET /metrics). */
  readonly metrics: DaemonMetrics
  /** Every upstream socket (proxies, mirrors, health checks) comes from here. */
  readonly sockets: SocketFactory
  /** This instance's name in a fleet (fleet.name, else the host name); audit lines carry it. */
  instance = hostname()
  /** Set when `state: redis://…`: the shared store, registration and fleet view (issue 14). */
  fleet?: Fleet
  /** Bytes mirrors dropped, per mirror backend (read at scrape time). */
  readonly mirrorDropped = new Map<string, number>()
  /** Gateway mode with `transparent.manage`: the nftables table and policy route (src/net/interceptor.ts). */
  interceptor?: Interceptor
  private admin?: AdminServer
  private adminToken?: string
  /** `state:` as the store in use was opened from (a reload does not switch stores). */
  private storeKey?: string
  private checkers: HealthChecker[] = []
  private ticker?: Timer
  /** Resolves the drain's wait when the last session closes. */
  private drained?: () => void
  /** The kernel fast path, when `fast_path: auto` and the kernel allows it. */
  private fastPath?: FastPath
  /** Why `fast_path: auto` found no kernel fast path at start, in one line (for `divert status`). */
  private fastPathUnavailable?: string
  private stopping?: Promise<void>
  private ready = false

  private constructor(readonly opts: DaemonOptions) {
    const clock = (this.clock = opts.clock ?? realClock)
    this.startedAt = clock.now()
    this.rules = new RuleTable({clock, configFile: opts.configFile})
    this.metrics = new DaemonMetrics(this.metricsSource())
    this.sockets = createSocketFactory({connect: opts.connect})
    this.registry = new SessionRegistry({
      logger: opts.logger, clock, onConnect: (s, ms) => this.metrics.connected(s, ms), onClose: (s, ms) => this.onSessionClosed(s, ms),
    })
    this.router = new Router({rules: this.rules, backends: this.backends})
    this.recordings = new RecordingSet()
    this.ruleService = new RuleService({
      table: this.rules, recordings: this.recordings, logger: opts.logger, clock,
      config: () => this.config, backends: () => this.backends, onChange: () => this.rulesChanged(), instance: () => this.instance,
    })
  }

  /** What /metrics reads at scrape time; the owners are looked up then (a reload replaces the backends). */
  private metricsSource(): MetricsSource {
    return {
      startedAt: this.startedAt,
      counters: () => this.registry.counters(),
      refused: () => this.refused.entries(),
      rules: () => this.rules.snapshot(),
      servers: () => [...this.backends.values()].flatMap((b) => b.servers.map((s) => ({backend: b.name, key: s.key, up: s.up, active: s.active, total: s.total}))),
      mirrorDropped: () => this.mirrorDropped.entries(),
      recordingDropped: () => this.recordings.dropped().entries(),
      fastPath: () => ({active: this.fastPath?.active ?? 0, spliced: this.fastPath?.spliced ?? 0}),
    }
  }

  get logger(): Logger {
    return this.opts.logger
  }

  private onSessionClosed(s: Session, ms: number): void {
    this.metrics.closed(s, ms)
    if (this.registry.size === 0) this.drained?.()
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(opts)
    try {
      await d.boot()
    } catch (error) {
      await d.shutdown(0).catch(() => undefined)
      throw error
    }
    return d
  }

  private async boot(): Promise<void> {
    this.config = await loadConfig(this.opts.configFile)
    checkUpstreamPrivileges(this.config.backends.values())
    this.globalLimit.max = this.config.maxConnections
    // Read at start only: a reload does not load or unload the kernel program.
    const fast = (this.config.fastPath ?? DEFAULTS.fastPath) === 'auto' ? FastPath.open(this.logger, undefined, this.config.fastPath === 'auto') : undefined
    if (fast instanceof FastPath) this.fastPath = fast
    else this.fastPathUnavailable = fast?.reason
    this.checkFdLimit()
    this.backends = buildBackends(this.config, this.clock)
    this.router.state = {rules: this.rules, backends: this.backends}
    this.rules.replaceConfigRules(this.config.rules)
    this.instance = this.config.fleet?.name ?? hostname()
    await this.ruleService.restore(await this.openStore())
    await this.ruleService.openRecordings(this.rules.snapshot())
    this.startHealth()
    this.interceptor = this.kernelOwner(this.config)
    this.interceptor?.preflight()
    for (const l of this.config.listeners) this.proxies.set(l.name, this.createProxy(l))
    for (const p of this.proxies.values()) await p.listen()
    await this.interceptor?.start(this.kernelPlan())
    await this.startAdmin()
    this.fleet?.start({url: this.adminUrl(), token: this.adminToken})
    this.ticker = this.clock.setInterval(() => this.tick(), this.opts.tickMs ?? 1000)
    this.logger.info({
      listeners: [...this.proxies.values()].map((p) => `${p.config.name} ${p.config.protocol} ${formatAddress(p.config.bind)}`),
      admin: this.adminSocket, rules: this.rules.size, capacity: this.capacity,
    }, 'divert ready')
    this.ready = true
  }

  /** The state file, the fleet's Redis (issue 14; ioredis is loaded only then), or nothing. */
  private async openStore(): Promise<RuleStore | undefined> {
    this.storeKey = this.config.redis ?? this.config.state
    if (this.config.redis) {
      const {Fleet} = await import('./fleet/fleet.js')
      this.fleet = new Fleet({url: this.config.redis, name: this.instance, logger: this.logger, sync: this.ruleService})
      return this.fleet.store
    }
    return this.config.state ? new StateStore(this.config.state) : undefined
  }

  /** What `divert status` says about where runtime rules live. */
  storeView(): StoreView {
    if (this.fleet) return this.fleet.store.view()
    const store = this.ruleService.store
    return store ? {kind: 'file', path: store.path} : {kind: 'none'}
  }

  /** What `divert status` says about the kernel fast path: the mode read at start, and whether the kernel took it. */
  fastPathView(): FastPathView {
    const fast = this.fastPath
    if (fast) return {mode: 'auto', state: 'active', active: fast.active, spliced: fast.spliced}
    if (this.fastPathUnavailable !== undefined) return {mode: 'auto', state: 'unavailable', reason: this.fastPathUnavailable}
    return {mode: 'off', state: 'off'}
  }

  /**
   * The URL the other instances reach this one's TCP admin listener at: fleet.admin_url, else the
   * address it is bound to — unless that is a wildcard, which names no host to connect to.
   */
  private adminUrl(): string | null {
    if (this.config.fleet?.adminUrl) return this.config.fleet.adminUrl
    const a = this.admin?.tcpAddress()
    if (!a || a.address === '0.0.0.0' || a.address === '::') return null
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`
  }

  /** Reads the open-files limit, says how many sessions fit, and makes that the sessions' descriptor budget. */
  private checkFdLimit(): void {
    const fds = this.opts.fdLimits ?? openFilesLimit()
    const fit = capacity(fds, openFds())
    this.capacity = {openFiles: fds.soft, tcpSessions: fit.tcp, udpFlows: fit.udp}
    // A limit that cannot be read (soft 0) sets no budget rather than refusing everything.
    if (fds.soft > 0 && Number.isFinite(fds.soft)) this.globalLimit.fdBudget = fit.fds
    const fields = {openFiles: fds.soft, hardLimit: fds.hard, reserved: FD_RESERVE, tcpSessions: fit.tcp, udpFlows: fit.udp}
    if (fds.problem) this.logger.warn({...fields, problem: fds.problem}, `open-files limit is ${fds.soft}: room for ${fit.tcp} TCP sessions or ${fit.udp} UDP flows (${fds.problem}; raise it with ulimit -n or LimitNOFILE=)`)
    else this.logger.info(fields, `open-files limit ${fds.soft}: room for ${fit.tcp} TCP sessions or ${fit.udp} UDP flows, ${FD_RESERVE} descriptors kept for the admin API, state and recordings`)
  }

  createProxy(l: ListenerConfig): ListenerProxy {
    const ctx = {
      router: this.router, registry: this.registry, logger: this.logger.child({listener: l.name}), sockets: this.sockets, global: this.globalLimit, clock: this.clock,
      tapsFor: (d: Decision, meta: SessionMeta) => this.tapsFor(d, meta), fastPath: this.fastPath,
      onRefused: (listener: string) => this.refused.set(listener, (this.refused.get(listener) ?? 0) + 1),
    }
    return l.protocol === 'tcp' ? new TcpProxy(l, ctx) : new UdpProxy(l, ctx)
  }

  /** The taps a decision asks for (a mirror to a server of backend M, a recorder into FILE), as a TapSet that can change. */
  tapsFor(d: Decision, meta: SessionMeta): Tap | undefined {
    if (!d.mirror && !d.record) return undefined
    const set = this.tapSet(meta)
    this.attachTaps(set, d.mirror, d.record)
    return set.keys.length > 0 ? set : undefined
  }

  private tapSet(meta: SessionMeta): TapSet {
    return new TapSet(meta, (_t, error) => this.logger.warn({session: meta.id, err: error}, 'a tap failed and was detached'))
  }

  /** Attaches the mirror and recorder asked for that `set` lacks; detaches the ones no longer asked for. */
  private attachTaps(set: TapSet, mirror: Backend | undefined, record: string | undefined): void {
    const want = new Map<string, () => Tap | undefined>()
    if (mirror) want.set(`mirror:${mirror.name}`, () => this.mirrorTap(mirror, set.meta))
    if (record) want.set(`record:${record}`, () => this.recordings.get(record)?.tap(set.meta))
    for (const key of set.keys) if (!want.has(key)) set.detach(key, 'rule-changed')
    for (const [key, make] of want) {
      if (set.keys.includes(key)) continue
      const tap = make()
      if (tap) set.attach(key, tap)
    }
  }

  /**
   * A mirror copy holds its server as a session does (acquire now, release when the tap closes: at
   * session end or when a rule change detaches it), so leastconn and the per-server counts see it.
   */
  private mirrorTap(mirror: Backend, meta: SessionMeta): Tap {
    const onDrop = (n: number): void => { this.mirrorDropped.set(mirror.name, (this.mirrorDropped.get(mirror.name) ?? 0) + n) }
    const server = mirror.pick(meta.client.address)
    if (!server) return createUnavailableMirrorTap(mirror.name, {onDrop})
    server.acquire()
    const tap = createMirrorTap(meta, {backend: mirror.name, server: server.address, proxyProtocol: mirror.config.proxyProtocol}, {
      bufferBytes: this.config.mirrorBufferBytes, logger: this.logger, local: meta.local, onDrop,
      connect: (to) => this.sockets.tcp(to, withoutKeepalive(mirror.config), meta.client),
      udpSocket: () => this.sockets.udp(server.address, withoutKeepalive(mirror.config), meta.client),
    })
    let held = true
    return {
      ...tap,
      close: (cause, reset) => {
        if (held) server.release()
        held = false
        tap.close?.(cause, reset)
      },
    }
  }

  /**
   * Taps follow the rules: after a rule change every live session gets the mirror and recorder of
   * the rule that now matches it (README: `divert rm` stops mirroring and recording). Its backend and
   * server stay — moving a session is `--existing kill`'s job.
   */
  retap(): void {
    for (const s of this.registry.matching({})) {
      const rule = this.rules.lookup(s.client.address, s.listener)
      const mirror = rule?.mirror === undefined ? undefined : this.backends.get(rule.mirror)
      const existing = s.taps[0] instanceof TapSet ? s.taps[0] : undefined
      if (!existing && !mirror && !rule?.record) continue
      const set = existing ?? this.tapSet(metaOf(s))
      this.attachTaps(set, mirror, rule?.record)
      if (!existing && set.keys.length > 0) s.transport.setTap?.(set)
    }
  }

  /** Taps and gateway mode's intercepted sources follow every rule change (and reload). */
  private async rulesChanged(): Promise<void> {
    this.retap()
    if (this.stopping) return
    const wanted = this.kernelOwner(this.config)
    if (wanted === this.interceptor) return this.interceptor?.sync(this.kernelPlan())
    // A reload added the first transparent listener, or removed the last one.
    const gone = this.interceptor
    this.interceptor = wanted
    await gone?.stop()
    await wanted?.start(this.kernelPlan()).catch((error) => {
      this.logger.error({err: error}, `gateway mode could not be set up: ${(error as Error).message}`)
      this.interceptor = undefined
    })
  }

  /** The Interceptor when the config has transparent listeners and divert manages the kernel side. */
  private kernelOwner(config: Config): Interceptor | undefined {
    if (!needsKernel(config) || !transparentOf(config).manage) return undefined
    return this.interceptor ?? new Interceptor({logger: this.logger})
  }

  /** What gateway mode needs installed now: the config's transparent listeners and the rules' sources. */
  kernelPlan(): KernelPlan {
    return planFor(this.config, this.rules.snapshot(), (name) => this.proxies.get(name)?.address()?.port)
  }

  /** Starts a checker for every backend that has a health check and no checker yet. */
  private startHealth(): void {
    for (const b of this.backends.values()) {
      if (!b.config.health || b.config.health.check === 'none' || this.checkers.some((c) => c.backend === b)) continue
      const options = withoutKeepalive(b.config)
      const checker = new HealthChecker(b, {check: tcpConnectCheck, dial: (to) => this.sockets.tcp(to, options), logger: this.logger, clock: this.clock})
      checker.start()
      this.checkers.push(checker)
    }
  }

  private async startAdmin(): Promise<void> {
    const env = this.opts.env ?? process.env
    this.adminSocket = this.opts.admin ?? this.config.admin.socket ?? resolveAdminTarget(undefined, env)
    prepareSocketDir(this.adminSocket, env)
    const a = this.config.admin
    this.adminToken = a.listen && a.tokenFile ? readToken(a.tokenFile) : undefined
    const tcp = a.listen && this.adminToken ? {listen: a.listen, token: this.adminToken} : undefined
    const admin = new AdminServer({control: new DaemonControl(this), logger: this.logger, socket: this.adminSocket, tcp})
    const before = lstatSync(this.adminSocket, {throwIfNoEntry: false})
    try {
      await admin.listen()
    } catch (error) {
      // AdminServer.close() unlinks the socket path. That is right only for a socket this daemon
      // bound (the TCP admin listener failed after it): never for a live daemon's socket or a file
      // that is not a socket, which is why listen() refused.
      const now = lstatSync(this.adminSocket, {throwIfNoEntry: false})
      if (now && now.ino !== before?.ino) await admin.close()
      throw error
    }
    this.admin = admin
  }

  private tick(): void {
    const limits = (s: {listener: string; backend: string; protocol: string}): [number, number] => {
      const l = this.proxies.get(s.listener)?.config
      if (!l) return [0, 0]
      if (l.protocol === 'udp') return [l.udp.idleTimeoutMs, 0]
      return [l.clientTimeoutMs, this.backends.get(s.backend)?.config.serverTimeoutMs ?? 0]
    }
    for (const {session, cause} of this.registry.tick(limits)) session.transport.kill(cause)
    for (const p of this.proxies.values()) p.sweep()
  }

  /**
   * Re-reads the config file and applies it without dropping live sessions: listeners are added,
   * closed or rebound, backends whose config changed are rebuilt (live sessions keep their server),
   * config rules are replaced, runtime rules stay. Everything that can fail — parsing, the names
   * runtime rules use, the config rules, their recordings, binding new addresses — happens before
   * anything changes, so an error leaves the running config untouched; then the new state is swapped
   * in without an await in between, so no new session sees half of each. Reloads run one at a time.
   */
  reload(who: string): Promise<ReloadResult> {
    return this.ruleService.reload(() => this.applyReload(who))
  }

  private async applyReload(who: string): Promise<ReloadResult> {
    const next = await loadConfig(this.config.file)
    checkUpstreamPrivileges(next.backends.values())
    const backends = new Map<string, Backend>()
    for (const b of next.backends.values()) {
      const old = this.backends.get(b.name)
      backends.set(b.name, old && sameJson(old.config, b) ? old : new Backend(b, {clock: this.clock}))
    }
    // Stateless (no servers of its own): built anew, so a changed transparent.source applies.
    if (needsKernel(next)) backends.set('original', originalBackend(transparentOf(next).source))
    this.checkRuntimeRules(next)
    // The new config rules are validated and built beside the live ones, in slices (sessions keep flowing).
    const configRules = await this.rules.buildConfigRules(next.rules)
    const plan = planListeners(this.proxies, next)
    const opened = await this.acquireRecordings(next.rules, next.captureMaxBytes)
    const fresh = new Map<string, ListenerProxy>()
    try {
      for (const l of plan.bind) fresh.set(l.name, this.createProxy(l))
      await bindAll([...fresh.values()])
    } catch (error) {
      for (const path of opened) await this.recordings.release(path)
      throw error
    }
    const oldConfigRules = this.rules.rulesOf('config')
    const result: ReloadResult = {
      configFile: next.file, listeners: this.commitListeners(plan, fresh), backends: diffNames(this.backends, backends, (a, b) => a === b), rules: 0,
    }
    this.rules.swapConfigRules(configRules)
    this.backends = backends
    this.router.state = {rules: this.rules, backends}
    const fastPath = (c: Config): string => c.fastPath ?? DEFAULTS.fastPath
    if (fastPath(next) !== fastPath(this.config)) this.logger.warn({fastPath: fastPath(next)}, 'fast_path changed: it takes effect at the next start (a reload does not load or unload the kernel program)')
    this.config = next
    this.globalLimit.max = next.maxConnections
    result.rules = this.rules.size
    this.restartHealth()
    for (const p of plan.retire) await closeProxy(p)
    await this.ruleService.closeRecordings(oldConfigRules)
    if ((next.redis ?? next.state) !== this.storeKey) this.logger.warn({state: next.redis ?? next.state ?? null, inUse: this.ruleService.store?.path ?? null}, 'state: (where runtime rules are kept) changed in the config: that takes effect at the next start, not on reload')
    this.logger.info({audit: true, action: 'config.reload', by: who, ...result}, 'config reloaded')
    return result
  }

  /**
   * A runtime rule must still fit the new config (ruleConflicts): refuse a config that drops its
   * backends or listener, or makes it PROXY v1 to a UDP listener, naming the rule.
   */
  private checkRuntimeRules(next: Config): void {
    for (const r of this.rules.rulesOf('runtime')) {
      const [missing] = ruleConflicts(r, next)
      if (missing?.kind === 'proxy-v1-udp') throw new DivertError('CONFIG_INVALID', `${next.file}: runtime rule ${r.id} (${r.source}) would no longer fit: ${formatConflicts([missing])}; remove the rule first (divert rm ${r.id}) or keep the backend's PROXY version`)
      if (missing?.kind === 'backend') throw new DivertError('CONFIG_INVALID', `${next.file}: backend "${missing.name}" is gone but runtime rule ${r.id} (${r.source}) uses it: remove the rule first (divert rm ${r.id}) or keep the backend`)
      if (missing?.kind === 'listener') throw new DivertError('CONFIG_INVALID', `${next.file}: listener "${missing.name}" is gone but runtime rule ${r.id} (${r.source}) is scoped to it: remove the rule first (divert rm ${r.id})`)
    }
  }

  /** Opens (or takes another reference on) every recording the rules name; all or nothing. */
  private async acquireRecordings(rules: Array<{record?: string}>, maxBytes: number): Promise<string[]> {
    const opened: string[] = []
    try {
      for (const r of rules) {
        if (!r.record) continue
        await this.recordings.acquire(r.record, {maxBytes, logger: this.logger})
        opened.push(r.record)
      }
    } catch (error) {
      for (const path of opened) await this.recordings.release(path)
      throw error
    }
    return opened
  }

  /** Puts the freshly bound listeners in place and gives kept ones their new options (same bind). */
  private commitListeners(plan: ListenerPlan, fresh: Map<string, ListenerProxy>): ReloadResult['listeners'] {
    const result = {added: [] as string[], removed: [] as string[], changed: [] as string[]}
    for (const [proxy, l] of plan.keep) {
      // Same bind, other options (limits, timeouts, backend…): in force from now on, and reported.
      if (!sameJson(proxy.config, l)) result.changed.push(l.name)
      proxy.config = l
    }
    for (const p of plan.retire) {
      if (this.proxies.get(p.config.name) === p) this.proxies.delete(p.config.name)
      if (!fresh.has(p.config.name)) result.removed.push(p.config.name)
    }
    for (const [name, p] of fresh) {
      result[plan.retire.some((r) => r.config.name === name) ? 'changed' : 'added'].push(name)
      this.proxies.set(name, p)
    }
    return result
  }

  /** Checkers of backends kept as they were go on (their rise/fall counts stay); the others restart. */
  private restartHealth(): void {
    const keep = this.checkers.filter((c) => this.backends.get(c.backend.name) === c.backend)
    for (const c of this.checkers) if (!keep.includes(c)) c.stop()
    this.checkers = keep
    this.startHealth()
  }

  /** SIGINT/SIGTERM: stop accepting, drain for drainMs, close what is left. Idempotent. */
  stop(drainMs: number): Promise<void> {
    this.stopping ??= this.shutdown(drainMs)
    return this.stopping
  }

  /** The process exits now, without a drain (a second SIGTERM): remove what only this daemon may remove. */
  abandon(): void {
    this.admin?.removeSocketSync()
    this.interceptor?.stopSync()
  }

  private async shutdown(drainMs: number): Promise<void> {
    this.clock.clearTimeout(this.ticker)
    this.ruleService.stop()
    // New connections of intercepted devices go straight to their servers from now on; live ones drain.
    await this.interceptor?.quiesce()
    await Promise.all([...this.proxies.values()].map((p) => p.close()))
    if (this.registry.size > 0) {
      this.logger.info({sessions: this.registry.size, drainMs}, 'draining live sessions')
      await this.drain(drainMs)
    }
    if (this.registry.size > 0) {
      this.logger.warn({sessions: this.registry.size}, 'drain period over: closing the remaining sessions')
      this.registry.kill({}, 'shutdown')
      await this.drain(2000)
    }
    for (const p of this.proxies.values()) if (p instanceof UdpProxy) p.destroy()
    for (const c of this.checkers) c.stop()
    await this.interceptor?.stop()
    await this.admin?.close()
    await this.fleet?.close()
    await this.recordings.closeAll()
    this.fastPath?.close()
    if (this.ready) this.logger.info({uptimeMs: this.clock.now() - this.startedAt}, 'divert stopped')
  }

  /** Resolves when the last live session has closed, or after `ms` on the daemon's clock. */
  private drain(ms: number): Promise<void> {
    if (this.registry.size === 0 || ms <= 0) return Promise.resolve()
    return new Promise((resolve) => {
      const timer = this.clock.setTimeout(() => this.drained?.(), ms)
      this.drained = () => {
        this.drained = undefined
        this.clock.clearTimeout(timer)
        resolve()
      }
    })
  }
}

/** What a tap needs of a session it joins mid-stream; the listener address is not kept, so a PROXY header names the server. */
function metaOf(s: Session): SessionMeta {
  return {id: s.id, protocol: s.protocol, listener: s.listener, backend: s.backend, rule: s.rule, client: s.client, server: s.server, startedAt: s.startedAt}
}

/** A backend's source and mark without its keepalive: mirror copies and health checks end with what started them. */
function withoutKeepalive(b: BackendConfig): UpstreamOptions {
  return {source: b.source, mark: b.mark}
}

/** The config's backends and the built-in `original` (the destination a transparent listener's client dialled). */
export function buildBackends(config: Config, clock?: Clock): Map<string, Backend> {
  const backends = new Map([...config.backends.values()].map((b) => [b.name, new Backend(b, {clock})]))
  if (needsKernel(config)) backends.set('original', originalBackend(transparentOf(config).source))
  return backends
}

function readToken(file: string): string {
  let token: string
  try {
    token = readFileSync(file, 'utf8').trim()
  } catch (error) {
    throw new DivertError('CONFIG_INVALID', `admin.token_file ${file} cannot be read: ${(error as Error).message}`, {cause: error})
  }
  if (token.length < 16) throw new DivertError('CONFIG_INVALID', `admin.token_file ${file} holds a token shorter than 16 characters: use a long random one (e.g. openssl rand -hex 32)`)
  return token
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a, (_k, v: unknown) => (v instanceof Map ? [...v.entries()] : v)) === JSON.stringify(b, (_k, v: unknown) => (v instanceof Map ? [...v.entries()] : v))
}

function diffNames<T>(before: Map<string, T>, after: Map<string, T>, same: (a: T, b: T) => boolean): {added: string[]; removed: string[]; changed: string[]} {
  return {
    added: [...after.keys()].filter((k) => !before.has(k)),
    removed: [...before.keys()].filter((k) => !after.has(k)),
    changed: [...after.keys()].filter((k) => before.has(k) && !same(before.get(k)!, after.get(k)!)),
  }
}

interface ListenerPlan {
  /** Listeners to bind: new names, or a name whose protocol or address changed. */
  bind: ListenerConfig[]
  /** Running listeners that stay bound and take the new options. */
  keep: Array<[ListenerProxy, ListenerConfig]>
  /** Running listeners to close once the new state is in place (removed, or moved). */
  retire: ListenerProxy[]
}

/**
 * Which listeners a new config binds, keeps and retires. A new address that overlaps one still bound
 * (a rename on the same port, 127.0.0.1:23 → 0.0.0.0:23) cannot be bound while the old one serves,
 * and a reload never drops a listening address before its replacement is bound: say so plainly
 * instead of a bare EADDRINUSE.
 */
function planListeners(proxies: Map<string, ListenerProxy>, next: Config): ListenerPlan {
  const plan: ListenerPlan = {bind: [], keep: [], retire: []}
  for (const l of next.listeners) {
    const old = proxies.get(l.name)
    if (old && old.config.protocol === l.protocol && sameJson(old.config.bind, l.bind)) {
      plan.keep.push([old, l])
      continue
    }
    const clash = [...proxies.values()].find((p) => overlaps(p.config, l))
    if (clash) {
      const what = clash.config.name === l.name ? `listener ${l.name} moves from ${formatAddress(clash.config.bind)} to ${formatAddress(l.bind)}` : `listener ${l.name} (${formatAddress(l.bind)}) needs the address listener ${clash.config.name} holds (${formatAddress(clash.config.bind)})`
      throw new DivertError('CONFIG_INVALID', `${next.file}: ${what}; both cannot be bound at once and a reload binds the new address before it closes the old: use another port, or reload in two steps (first without ${clash.config.name}), or restart the daemon`)
    }
    plan.bind.push(l)
    if (old) plan.retire.push(old)
  }
  for (const [name, p] of proxies) if (!next.listeners.some((l) => l.name === name)) plan.retire.push(p)
  return plan
}

/** Whether two binds of the same protocol contend for one port ("[::]" is dual stack: it takes v4 too). */
function overlaps(a: ListenerConfig, b: ListenerConfig): boolean {
  if (a.protocol !== b.protocol || a.bind.port === 0 || a.bind.port !== b.bind.port) return false
  const [x, y] = [a.bind.address, b.bind.address]
  if (x === y || x === '::' || y === '::') return true
  return (x === '0.0.0.0' || y === '0.0.0.0') && a.bind.family === b.bind.family
}

/** Binds every proxy or none: on a failure the ones already bound are closed again. */
async function bindAll(proxies: ListenerProxy[]): Promise<void> {
  const bound: ListenerProxy[] = []
  try {
    for (const p of proxies) {
      await p.listen()
      bound.push(p)
    }
  } catch (error) {
    for (const p of bound) await closeProxy(p)
    throw error
  }
}

/** A retired TCP listener stops accepting (its sessions finish on their own); a UDP one closes its flows. */
async function closeProxy(p: ListenerProxy): Promise<void> {
  await p.close()
  if (p instanceof UdpProxy) p.destroy()
}
