/**
 * Backend and Server: the runtime state of one configured backend — its servers' health and session
 * counts — and the choice of a server for each new session. The health checker writes `up`; the
 * proxies acquire/release; the admin API reads `snapshot()`.
 *
 *   client address ─▶ Backend.pick ─▶ balancer over the servers that are up ─▶ Server | undefined
 */
import {DEFAULTS, ORIGINAL_BACKEND, type BackendConfig, type BalanceMethod, type HealthConfig, type ProxyProtocolVersion, type ServerConfig} from '../config/types.js'
import {formatAddress, type Address} from '../addr/address.js'
import {createBalancer, type Balancer} from './balancer.js'
import {realClock, type Clock} from '../clock.js'

export interface CheckResult {
  ok: boolean
  /** Epoch ms when the check finished. */
  at: number
  /** Why it failed, e.g. "connect ECONNREFUSED", "timeout after 1000ms". */
  error?: string
  latencyMs?: number
}

export interface ServerView {
  address: string
  weight: number
  up: boolean
  active: number
  total: number
  /** Epoch ms of the last up/down transition (or of startup). */
  lastChange: number
  lastCheck: CheckResult | null
}

export interface BackendView {
  name: string
  balance: BalanceMethod
  proxyProtocol: ProxyProtocolVersion | null
  fallback: 'default' | 'reject'
  health: HealthConfig | null
  servers: ServerView[]
}

interface ServerOptions {
  /** Times `lastChange` (realClock when absent). */
  clock?: Clock
  /** Called after `up` changes, so the backend can refresh its list of up servers. */
  onUpChange?: () => void
}

export class Server {
  readonly key: string
  readonly address: Address
  readonly weight: number
  active = 0
  total = 0
  lastChange: number
  lastCheck?: CheckResult
  private isUp = true
  private readonly now: () => number
  private readonly onUpChange?: () => void

  constructor(config: ServerConfig, opts: ServerOptions = {}) {
    this.address = config.address
    this.weight = config.weight
    this.key = formatAddress(config.address)
    this.now = (opts.clock ?? realClock).now
    this.onUpChange = opts.onUpChange
    this.lastChange = this.now()
  }

  get up(): boolean {
    return this.isUp
  }

  set up(value: boolean) {
    if (value === this.isUp) return
    this.isUp = value
    this.lastChange = this.now()
    this.onUpChange?.()
  }

  /** A session was given this server. */
  acquire(): void {
    this.active++
    this.total++
  }

  /** That session ended. */
  release(): void {
    if (this.active > 0) this.active--
  }

  view(): ServerView {
    return {
      address: this.key, weight: this.weight, up: this.isUp, active: this.active, total: this.total,
      lastChange: this.lastChange, lastCheck: this.lastCheck ? {...this.lastCheck} : null,
    }
  }
}

export interface BackendOptions {
  /** Randomness for the `random` balancer (tests pass a seeded generator). */
  random?: () => number
  clock?: Clock
}

export class Backend {
  readonly name: string
  readonly config: BackendConfig
  readonly servers: Server[]
  private readonly balancer: Balancer<Server>
  /** Servers that are up, rebuilt only when one changes state, so pick allocates nothing. */
  private upServers: Server[] | undefined

  constructor(config: BackendConfig, opts: BackendOptions = {}) {
    this.name = config.name
    this.config = config
    const onUpChange = (): void => { this.upServers = undefined }
    this.servers = config.servers.map((s) => new Server(s, {clock: opts.clock, onUpChange}))
    this.balancer = createBalancer(config.balance, this.servers, opts.random)
  }

  /** A server for a new session from clientAddress (normalised IP); undefined when none is up. Does not acquire. */
  pick(clientAddress: string): Server | undefined {
    const up = this.up()
    return up.length === 0 ? undefined : this.balancer.pick(up, clientAddress)
  }

  anyUp(): boolean {
    return this.up().length > 0
  }

  snapshot(): BackendView {
    const c = this.config
    return {
      name: this.name, balance: c.balance, proxyProtocol: c.proxyProtocol ?? null, fallback: c.fallback,
      health: c.health ? {...c.health} : null, servers: this.servers.map((s) => s.view()),
    }
  }

  private up(): Server[] {
    return (this.upServers ??= this.servers.filter((s) => s.up))
  }
}

/**
 * The built-in backend `original` (transparent listeners): no servers of its own; each session's
 * server is the destination its client dialled (originalServer), so it never falls back and its
 * connect timeout and keepalive are the defaults; `transparent.source: client` gives its upstream
 * sockets the device's own address.
 */
export function originalBackend(source?: 'client'): Backend {
  return new Backend({
    name: ORIGINAL_BACKEND, balance: 'roundrobin', servers: [], fallback: 'reject',
    connectTimeoutMs: DEFAULTS.connectTimeoutMs, serverTimeoutMs: 0, keepaliveMs: DEFAULTS.keepaliveMs, ...(source ? {source} : {}),
  })
}

/** The server of one session of backend `original`: where the client's packets were addressed. */
export function originalServer(destination: Address): Server {
  return new Server({address: destination, weight: 1})
}
