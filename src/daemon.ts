/**
 * Daemon: the composition root. Reads the config, builds the owners (rule table, backends with
 * health checkers, session registry, recordings), binds every listener and the admin API, then runs
 * the two coarse timers (activity/idle tick, rule expiry). stop() drains: stop accepting, let live
 * sessions finish for the grace period, close the rest.
 *
 *   config ─▶ RuleTable + Backends + Registry ─▶ Router ─▶ Tcp/Udp proxies ◀─ AdminServer ◀─ CLI
 */
import {readFileSync} from 'node:fs'
import type {Logger} from 'pino'
import {loadConfig} from './config/load.js'
import type {Config, ListenerConfig} from './config/types.js'
import {DivertError} from './errors.js'
import {Backend} from './backends/backend.js'
import {HealthChecker, tcpConnectCheck} from './backends/health.js'
import {RuleTable, type Rule} from './rules/table.js'
import {Router, type Decision} from './rules/router.js'
import {StateStore} from './rules/state.js'
import {SessionRegistry} from './session/registry.js'
import {fanOut} from './session/fanout.js'
import type {SessionMeta, Tap} from './session/types.js'
import {TcpProxy} from './net/tcp-proxy.js'
import {UdpProxy} from './net/udp-proxy.js'
import type {Connector} from './net/connector.js'
import {endpointString} from './net/endpoint.js'
import {AdminServer} from './admin/server.js'
import {prepareSocketDir, resolveAdminTarget} from './admin/paths.js'
import {RecordingSet} from './capture/recorder.js'
import {createMirrorTap} from './capture/mirror.js'
import {DaemonControl} from './control.js'
import {capacity, raiseFdLimit, type FdLimits} from './fdlimit.js'
import type {ReloadResult} from './admin/protocol.js'

export interface DaemonOptions {
  configFile: string
  /** `--admin`: overrides the config's admin.socket. */
  admin?: string
  logger: Logger
  env?: NodeJS.ProcessEnv
  connect?: Connector
  now?: () => number
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
  readonly refused = new Map<string, number>()
  adminSocket?: string
  state?: StateStore
  capacity?: {openFiles: number; tcpSessions: number; udpFlows: number}
  private admin?: AdminServer
  private checkers: HealthChecker[] = []
  private ticker?: NodeJS.Timeout
  private expiryTimer?: NodeJS.Timeout
  private stopping?: Promise<void>

  private constructor(readonly opts: DaemonOptions) {
    const now = opts.now ?? Date.now
    this.startedAt = now()
    this.rules = new RuleTable({now, configFile: opts.configFile})
    this.registry = new SessionRegistry({logger: opts.logger, now})
    this.router = new Router({rules: this.rules, backends: this.backends})
    this.recordings = new RecordingSet()
  }

  get logger(): Logger {
    return this.opts.logger
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
    this.checkFdLimit()
    this.backends = buildBackends(this.config)
    this.router.state = {rules: this.rules, backends: this.backends}
    this.rules.replaceConfigRules(this.config.rules)
    await this.restoreState()
    await this.openRecordings(this.rules.snapshot())
    this.startHealth()
    for (const l of this.config.listeners) this.proxies.set(l.name, this.createProxy(l))
    for (const p of this.proxies.values()) await p.listen()
    await this.startAdmin()
    this.ticker = setInterval(() => this.tick(), this.opts.tickMs ?? 1000)
    this.scheduleExpiry()
    this.logger.info({
      listeners: [...this.proxies.values()].map((p) => `${p.config.name} ${p.config.protocol} ${endpointString(p.config.bind)}`),
      admin: this.adminSocket, rules: this.rules.size, capacity: this.capacity,
    }, 'divert ready')
  }

  /** Raises the open-files soft limit where allowed and says how many sessions fit. */
  private checkFdLimit(): void {
    const fds = this.opts.fdLimits ?? raiseFdLimit()
    const fit = capacity(fds)
    this.capacity = {openFiles: fds.soft, tcpSessions: fit.tcp, udpFlows: fit.udp}
    const fields = {openFiles: fds.soft, hardLimit: fds.hard, raisedFrom: fds.raisedFrom, tcpSessions: fit.tcp, udpFlows: fit.udp}
    if (fds.problem) this.logger.warn({...fields, problem: fds.problem}, `open-files limit is ${fds.soft}: room for about ${fit.tcp} TCP sessions or ${fit.udp} UDP flows (${fds.problem}; raise it with ulimit -n or LimitNOFILE=)`)
    else this.logger.info(fields, `open-files limit ${fds.soft}${fds.raisedFrom ? ` (raised from ${fds.raisedFrom})` : ''}: room for about ${fit.tcp} TCP sessions or ${fit.udp} UDP flows`)
  }

  createProxy(l: ListenerConfig): ListenerProxy {
    const ctx = {
      router: this.router, registry: this.registry, logger: this.logger.child({listener: l.name}), connect: this.opts.connect,
      tapsFor: (d: Decision, meta: SessionMeta) => this.tapsFor(d, meta),
      onRefused: (listener: string) => this.refused.set(listener, (this.refused.get(listener) ?? 0) + 1),
    }
    return l.protocol === 'tcp' ? new TcpProxy(l, ctx) : new UdpProxy(l, ctx)
  }

  /** The taps a decision asks for: a mirror to a server of backend M, a recorder into FILE. */
  tapsFor(d: Decision, meta: SessionMeta): Tap | undefined {
    const taps: Tap[] = []
    const mirrorServer = d.mirror?.pick(meta.client.address)
    if (d.mirror && mirrorServer) {
      taps.push(createMirrorTap(meta, {backend: d.mirror.name, server: mirrorServer.address, proxyProtocol: d.mirror.config.proxyProtocol}, {
        bufferBytes: this.config.mirrorBufferBytes, logger: this.logger, local: meta.local,
      }))
    }
    const recording = d.record ? this.recordings.get(d.record) : undefined
    if (recording) taps.push(recording.tap(meta))
    return fanOut(taps, (_t, error) => this.logger.warn({session: meta.id, err: error}, 'a tap failed and was detached'))
  }

  private async restoreState(): Promise<void> {
    if (!this.config.state) return
    this.state = new StateStore(this.config.state)
    const loaded = await this.state.load()
    if (loaded.movedAside) {
      this.logger.error({state: this.config.state, movedTo: loaded.movedAside, problem: loaded.problem}, `state file is corrupt (${loaded.problem}): moved aside to ${loaded.movedAside}; starting with no runtime rules — restore them from that file`)
    }
    for (const r of loaded.rules) {
      const missing = [r.to, r.mirror].filter((b) => b && !this.backends.has(b))
      if (missing.length > 0 || (r.listener && !this.config.listeners.some((l) => l.name === r.listener))) {
        this.logger.error({rule: r}, `runtime rule ${r.id} for ${r.source} names a backend or listener the config no longer has; not applied (re-add it with divert add)`)
        continue
      }
      this.rules.add(r, 'runtime')
    }
    const expired = this.rules.expire()
    for (const r of expired) this.logger.info({audit: true, action: 'rule.expired', rule: RuleTable.view(r)}, `rule ${r.id} for ${r.source} expired while the daemon was down`)
    if (loaded.rules.length > 0) this.logger.info({state: this.config.state, rules: loaded.rules.length - expired.length}, 'runtime rules restored')
  }

  async saveState(): Promise<void> {
    if (!this.state) return
    const runtime = this.rules.snapshot().filter((r) => r.origin === 'runtime')
    await this.state.save(runtime.map((r) => ({
      id: r.id, source: r.source, to: r.to, mirror: r.mirror, record: r.record, listener: r.listener,
      expiresAt: r.expiresAt, note: r.note, createdAt: r.createdAt,
    })))
  }

  async openRecordings(rules: Rule[]): Promise<void> {
    for (const r of rules) {
      if (r.record) await this.recordings.acquire(r.record, {maxBytes: this.config.captureMaxBytes, logger: this.logger})
    }
  }

  async closeRecordings(rules: Rule[]): Promise<void> {
    for (const r of rules) if (r.record) await this.recordings.release(r.record)
  }

  private startHealth(): void {
    for (const b of this.backends.values()) {
      if (!b.config.health || b.config.health.check === 'none') continue
      const checker = new HealthChecker(b, {check: tcpConnectCheck, logger: this.logger})
      checker.start()
      this.checkers.push(checker)
    }
  }

  private async startAdmin(): Promise<void> {
    const env = this.opts.env ?? process.env
    this.adminSocket = this.opts.admin ?? this.config.admin.socket ?? resolveAdminTarget(undefined, env)
    prepareSocketDir(this.adminSocket, env)
    const a = this.config.admin
    const tcp = a.listen && a.tokenFile ? {listen: a.listen, token: readToken(a.tokenFile)} : undefined
    this.admin = new AdminServer({control: new DaemonControl(this), logger: this.logger, socket: this.adminSocket, tcp})
    await this.admin.listen()
  }

  private tick(): void {
    const limits = (s: {listener: string; backend: string; protocol: string}): [number, number] => {
      const l = this.proxies.get(s.listener)?.config
      if (!l) return [0, 0]
      if (l.protocol === 'udp') return [l.udp.idleTimeoutMs, 0]
      return [l.clientTimeoutMs, this.backends.get(s.backend)?.config.serverTimeoutMs ?? 0]
    }
    for (const {session, cause} of this.registry.tick(limits)) session.transport.kill(cause)
  }

  /** One timer for the next rule expiry; re-armed whenever rules change. */
  scheduleExpiry(): void {
    clearTimeout(this.expiryTimer)
    const next = this.rules.nextExpiry()
    if (next === undefined || this.stopping) return
    const delay = Math.min(Math.max(0, next - Date.now()), 2 ** 31 - 1)
    this.expiryTimer = setTimeout(() => void this.expireRules(), delay)
  }

  private async expireRules(): Promise<void> {
    const expired = this.rules.expire()
    for (const r of expired) this.logger.info({audit: true, action: 'rule.expired', rule: RuleTable.view(r)}, `rule ${r.id} for ${r.source} expired`)
    await this.closeRecordings(expired)
    await this.saveState().catch((error) => this.logger.error({err: error}, 'could not save state after expiry'))
    this.scheduleExpiry()
  }

  /**
   * Re-reads the config file and applies it without dropping live sessions: listeners are added,
   * closed or rebound, backends whose config changed are rebuilt (live sessions keep their server),
   * config rules are replaced, runtime rules stay. Any error leaves the running config untouched.
   */
  async reload(who: string): Promise<ReloadResult> {
    const next = await loadConfig(this.config.file)
    const backends = new Map<string, Backend>()
    for (const b of next.backends.values()) {
      const old = this.backends.get(b.name)
      backends.set(b.name, old && sameJson(old.config, b) ? old : new Backend(b))
    }
    for (const r of this.rules.snapshot().filter((x) => x.origin === 'runtime')) {
      const missing = [r.to, r.mirror].find((b) => b && !backends.has(b))
      if (missing) throw new DivertError('CONFIG_INVALID', `${next.file}: backend "${missing}" is gone but runtime rule ${r.id} (${r.source}) uses it: remove the rule first (divert rm ${r.id}) or keep the backend`)
      if (r.listener && !next.listeners.some((l) => l.name === r.listener)) throw new DivertError('CONFIG_INVALID', `${next.file}: listener "${r.listener}" is gone but runtime rule ${r.id} (${r.source}) is scoped to it: remove the rule first (divert rm ${r.id})`)
    }
    const listeners = await this.swapListeners(next)
    const oldConfigRules = this.rules.snapshot().filter((r) => r.origin === 'config')
    this.rules.replaceConfigRules(next.rules)
    await this.openRecordings(this.rules.snapshot().filter((r) => r.origin === 'config'))
    await this.closeRecordings(oldConfigRules)
    const changed = diffNames(this.backends, backends, (a, b) => a === b)
    this.backends = backends
    this.router.state = {rules: this.rules, backends}
    this.config = next
    for (const c of this.checkers) c.stop()
    this.checkers = []
    this.startHealth()
    this.scheduleExpiry()
    const result: ReloadResult = {configFile: next.file, listeners, backends: changed, rules: this.rules.size}
    this.logger.info({audit: true, action: 'config.reload', by: who, ...result}, 'config reloaded')
    return result
  }

  /** Binds new and moved listeners first (so a failure changes nothing), then retires the old ones. */
  private async swapListeners(next: Config): Promise<ReloadResult['listeners']> {
    const fresh = new Map<string, ListenerProxy>()
    const retire: ListenerProxy[] = []
    for (const l of next.listeners) {
      const old = this.proxies.get(l.name)
      if (old && old.config.protocol === l.protocol && sameJson(old.config.bind, l.bind)) {
        old.config = l
        continue
      }
      fresh.set(l.name, this.createProxy(l))
      if (old) retire.push(old)
    }
    for (const [name, p] of this.proxies) if (!next.listeners.some((l) => l.name === name)) retire.push(p)
    const bound: ListenerProxy[] = []
    try {
      // A moved listener keeps serving on its old address until the new one is bound.
      for (const p of fresh.values()) {
        await p.listen()
        bound.push(p)
      }
    } catch (error) {
      for (const p of bound) await closeProxy(p)
      throw error
    }
    const result = {added: [] as string[], removed: [] as string[], changed: [] as string[]}
    for (const p of retire) {
      await closeProxy(p)
      this.proxies.delete(p.config.name)
      if (!fresh.has(p.config.name)) result.removed.push(p.config.name)
    }
    for (const [name, p] of fresh) {
      result[retire.some((r) => r.config.name === name) ? 'changed' : 'added'].push(name)
      this.proxies.set(name, p)
    }
    return result
  }

  /** SIGINT/SIGTERM: stop accepting, drain for drainMs, close what is left. Idempotent. */
  stop(drainMs: number): Promise<void> {
    this.stopping ??= this.shutdown(drainMs)
    return this.stopping
  }

  private async shutdown(drainMs: number): Promise<void> {
    clearInterval(this.ticker)
    clearTimeout(this.expiryTimer)
    await Promise.all([...this.proxies.values()].map((p) => p.close()))
    if (this.registry.size > 0) {
      this.logger.info({sessions: this.registry.size, drainMs}, 'draining live sessions')
      await waitFor(() => this.registry.size === 0, drainMs)
    }
    if (this.registry.size > 0) {
      this.logger.warn({sessions: this.registry.size}, 'drain period over: closing the remaining sessions')
      this.registry.kill({}, 'shutdown')
      await waitFor(() => this.registry.size === 0, 2000)
    }
    for (const p of this.proxies.values()) if (p instanceof UdpProxy) p.destroy()
    for (const c of this.checkers) c.stop()
    await this.admin?.close()
    await this.recordings.closeAll()
    this.logger.info({uptimeMs: Date.now() - this.startedAt}, 'divert stopped')
  }
}

export function buildBackends(config: Config): Map<string, Backend> {
  return new Map([...config.backends.values()].map((b) => [b.name, new Backend(b)]))
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

/** A retired TCP listener stops accepting (its sessions finish on their own); a UDP one closes its flows. */
async function closeProxy(p: ListenerProxy): Promise<void> {
  await p.close()
  if (p instanceof UdpProxy) p.destroy()
}

function waitFor(done: () => boolean, ms: number): Promise<void> {
  return new Promise((resolve) => {
    if (done()) return resolve()
    const deadline = Date.now() + ms
    const t = setInterval(() => {
      if (done() || Date.now() >= deadline) {
        clearInterval(t)
        resolve()
      }
    }, 50)
  })
}
