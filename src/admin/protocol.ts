/**
 * The admin API's request and response shapes (README "Admin API"): shared by the daemon's routes and the
 * CLI's client, so both sides agree on field names (camelCase, stable for scripts).
 */
import type {RuleView} from '../rules/table.js'
import type {SessionView} from '../session/registry.js'
import type {BackendView} from '../backends/backend.js'

export type {RuleView, SessionView, BackendView}

export interface AddRuleRequest {
  source: string
  to?: string
  mirror?: string
  record?: string
  /** Size text (`10MB`, `64MiB`): the recording stops cleanly there (default capture.max_size). */
  maxSize?: string
  listener?: string
  /** Duration text (`30m`) after which the rule removes itself. */
  for?: string
  note?: string
  existing?: 'keep' | 'kill'
}

export interface AddRuleResult {
  rule: RuleView
  replaced: RuleView | null
  /** Live sessions from SOURCE (on the rule's listener scope) when the rule was added. */
  existing: {policy: 'keep' | 'kill'; matched: number; killed: number}
  /** On a replace: what the new rule took over from the old one because the call did not set it; else null. */
  kept: KeptView | null
}

export interface KeptView {
  expiresAt?: string
  note?: string
  recordMaxBytes?: number
}

export interface RemoveRulesResult {
  removed: RuleView[]
  /** A config rule that a runtime rule had shadowed and that applies again. */
  restored: RuleView[]
}

export interface ExplainResult {
  ip: string
  listener: string
  rule: RuleView | null
  backend: string | null
  server: string | null
  mirror: string | null
  record: string | null
  fallbackFrom: string | null
  refused: string | null
  /** The admission limit (limits.max_connections, max_connections, per_source.*) that refuses a new session now, else null. */
  limit: string | null
  /** Gateway mode: whether divert steers this source's traffic into the listener (absent: the listener does not intercept). */
  intercepted?: boolean
  reasons: string[]
}

export interface ListenerView {
  name: string
  protocol: 'tcp' | 'udp'
  bind: string
  address: string
  backend: string
  sessions: number
}

/** Where this instance keeps its runtime rules, and (Redis) whether it is connected. */
export type StoreView =
  | {kind: 'none'}
  | {kind: 'file'; path: string}
  | {kind: 'redis'; url: string; connected: boolean; version: number; since: string; error: string | null}

export interface StatusView {
  version: string
  pid: number
  /** This instance's fleet name (fleet.name, else the host name). */
  instance?: string
  store?: StoreView
  configFile: string
  startedAt: string
  uptimeMs: number
  listeners: ListenerView[]
  backends: BackendView[]
  totals: {activeSessions: number; sessions: number; bytesIn: number; bytesOut: number; rules: number; refused: number}
  /** `gateway` when a listener is transparent (README "Gateway mode"), else `proxy`. */
  mode?: 'proxy' | 'gateway'
  /** Gateway mode only: what divert installs and which sources it intercepts where. */
  transparent?: TransparentView | null
  /** The kernel fast path (README "Kernel fast path"). */
  fastPath?: FastPathView
}

/**
 * The kernel fast path as it runs: `fast_path` as read at start (a reload does not change it) and
 * whether the kernel program is loaded. `active`: sessions whose bytes the kernel moves now;
 * `spliced`: sessions handed to it since start. `reason`: why the kernel refused, in one line.
 */
export type FastPathView =
  | {mode: 'auto'; state: 'active'; active: number; spliced: number}
  | {mode: 'auto'; state: 'unavailable'; reason: string}
  | {mode: 'off'; state: 'off'}

export interface TransparentView {
  /** divert installs and removes the nftables table and policy route itself. */
  manage: boolean
  table: string
  mark: number
  routeTable: number
  /** The table and route are in place now (false with manage: false: the operator's rules apply). */
  installed: boolean
  /** The last failure to update the intercepted sources, until one succeeds. */
  error: string | null
  listeners: Array<{name: string; protocol: 'tcp' | 'udp'; bind: string; ports: number[]; sources: string[]}>
}

export interface KillResult {
  killed: number
}

export interface ReloadResult {
  configFile: string
  listeners: {added: string[]; removed: string[]; changed: string[]}
  backends: {added: string[]; removed: string[]; changed: string[]}
  rules: number
}

/** One instance as a fleet-wide command saw it (issue 14): an unreachable one is listed, with why. */
export interface FleetInstanceView {
  instance: string
  adminUrl: string | null
  reachable: boolean
  error: string | null
}

export interface FleetSessionsResult {
  instances: FleetInstanceView[]
  sessions: Array<SessionView & {instance: string}>
}

export interface FleetStatusResult {
  instances: Array<FleetInstanceView & {status: StatusView | null}>
}

export interface FleetKillResult {
  killed: number
  instances: Array<FleetInstanceView & {killed: number | null}>
}
