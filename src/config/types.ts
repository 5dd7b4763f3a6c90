/**
 * The validated, normalised configuration (README "Config reference"). YAML keys are snake_case; here they are
 * camelCase, durations are milliseconds, addresses are parsed endpoints, paths are absolute.
 */
import type {Address} from '../addr/address.js'

export type Protocol = 'tcp' | 'udp'
export type BalanceMethod = 'roundrobin' | 'leastconn' | 'source' | 'random'
export type ProxyProtocolVersion = 'v1' | 'v2'
export type UdpFlowKey = 'address' | 'address-port'

export interface AdminConfig {
  /** Unix socket path, when the config names one. */
  socket?: string
  /** Optional TCP admin listener; requires tokenFile. */
  listen?: Address
  tokenFile?: string
}

export interface FleetConfig {
  name?: string
  /** `fleet.admin_url`: how the other instances reach this one's TCP admin listener. */
  adminUrl?: string
}

export interface UdpListenerOptions {
  idleTimeoutMs: number
  key: UdpFlowKey
  maxFlows: number
  /** SO_RCVBUF for the listener socket (the 208 KiB default, net.core.rmem_default, overflows under bursts). */
  recvBufferSize: number
}

export interface ListenerConfig {
  name: string
  protocol: Protocol
  bind: Address
  backend: string
  udp: UdpListenerOptions
  /** New sessions beyond this many live ones are refused (0 = unlimited). */
  maxConnections: number
  /** TCP: close a session after this long with no bytes from the client (0 = never). */
  clientTimeoutMs: number
  /** Limits per client address on this listener (0 = unlimited). */
  perSource: {maxConnections: number; ratePerSec: number}
  /** TCP: keepalive idle time of accepted sockets (0 = off; absent = DEFAULTS.keepaliveMs). */
  keepaliveMs?: number
  /** The listening socket has IP_TRANSPARENT: it takes TPROXY-steered traffic for any destination. */
  transparent?: boolean
  /** Gateway mode: divert steers the sources that have rules, to these ports, into this listener. */
  intercept?: InterceptConfig
}

export interface InterceptConfig {
  /** Destination ports steered here (TCP: any destination; UDP: the listener's own bind, the server it stands in for). */
  ports: number[]
}

/** The built-in backend of transparent listeners: the destination the client dialled. */
export const ORIGINAL_BACKEND = 'original'

/** Top-level `transparent:`: what divert installs in the kernel for transparent listeners. */
export interface TransparentConfig {
  /** Install and remove the nftables table and policy route (false: the operator does, README). */
  manage: boolean
  /** Name of divert's own nftables table (family inet). */
  table: string
  /** The firewall mark (bits) that routes steered and transparent traffic to the local host. */
  mark: number
  /** The routing table holding `local 0.0.0.0/0 dev lo` (and `::/0`). */
  routeTable: number
  /** The built-in backend `original`'s upstream source: `client` (the device's own address, as a backend's `source`). */
  source?: 'client'
}

export interface ServerConfig {
  address: Address
  weight: number
}

export interface HealthConfig {
  check: 'tcp' | 'none'
  intervalMs: number
  timeoutMs: number
  rise: number
  fall: number
}

export interface BackendConfig {
  name: string
  balance: BalanceMethod
  servers: ServerConfig[]
  health?: HealthConfig
  proxyProtocol?: ProxyProtocolVersion
  fallback: 'default' | 'reject'
  connectTimeoutMs: number
  /** TCP: close a session after this long with no bytes from the server (0 = never). */
  serverTimeoutMs: number
  /** TCP: keepalive idle time of upstream sockets (0 = off; absent = DEFAULTS.keepaliveMs). */
  keepaliveMs?: number
  /** Upstream sockets' source: `client` (the client's own address, IP_TRANSPARENT) or a local IP; absent = the host picks. */
  source?: string
  /** SO_MARK of upstream sockets (absent or 0 = none). */
  mark?: number
}

export interface RuleSpec {
  source: string
  to?: string
  mirror?: string
  record?: string
  /** Size limit of this rule's recording (`divert add --max-size`); default capture.max_size. */
  recordMaxBytes?: number
  listener?: string
  /** Absolute epoch ms. */
  expiresAt?: number
  note?: string
}

export interface Config {
  /** Absolute path of the file it was read from (for reload and error messages). */
  file: string
  admin: AdminConfig
  /** Absolute path of the runtime-rule state file, when configured (and `state:` is not a Redis URL). */
  state?: string
  /** `state: redis://…`: the fleet's shared rule store (issue 14); `state` is then absent. */
  redis?: string
  /** `fleet:` as given: this instance's name (absent: the host name) and the admin URL it registers. */
  fleet?: FleetConfig
  listeners: ListenerConfig[]
  backends: Map<string, BackendConfig>
  rules: RuleSpec[]
  /** Largest size of one recording file in bytes (`capture.max_size`). */
  captureMaxBytes: number
  /** Largest buffer of one mirrored session in bytes (`capture.mirror_buffer`). */
  mirrorBufferBytes: number
  /** Live sessions over all listeners (`limits.max_connections`, 0 = unlimited). */
  maxConnections: number
  /** `fast_path`: hand untapped TCP sessions to the kernel (src/fastpath), or keep every byte in divert (absent = DEFAULTS.fastPath). */
  fastPath?: 'auto' | 'off'
  /** Top-level `transparent:`, when the file has it (defaults: DEFAULTS.transparent). */
  transparent?: TransparentConfig
}

export const DEFAULTS = {
  udpIdleTimeoutMs: 300_000,
  udpMaxFlows: 10_000,
  udpKey: 'address-port' as UdpFlowKey,
  udpRecvBufferSize: 4 * 1024 * 1024,
  connectTimeoutMs: 5_000,
  /** TCP keepalive idle time on both sides, as undici's default: a vanished peer frees its fds. */
  keepaliveMs: 60_000,
  fastPath: 'auto' as 'auto' | 'off',
  health: {check: 'tcp' as const, intervalMs: 2_000, timeoutMs: 1_000, rise: 2, fall: 3},
  captureMaxBytes: 100 * 1024 * 1024,
  transparent: {manage: true, table: 'divert', mark: 0x1d1, routeTable: 465} as TransparentConfig,
  mirrorBufferBytes: 1024 * 1024,
}
