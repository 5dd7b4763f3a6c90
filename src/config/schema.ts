/**
 * The config file's schema (README "Config reference") in zod, plus the checks that span several entries
 * (duplicate names and binds, PROXY v1 on UDP). Values come out parsed — durations in ms, sizes in
 * bytes, endpoints, canonical rule sources — but still in the file's snake_case shape; load.ts maps
 * them onto Config and places every problem at a line and column.
 *
 *   plain JS from YAML → configSchema(known).safeParse → crossCheck → RawConfig | SchemaProblem[]
 */
import {isIP} from 'node:net'
import {z} from 'zod'
import {DEFAULTS, ORIGINAL_BACKEND} from './types.js'
import {parseDuration} from './duration.js'
import {formatAddress, parseAddress, type Address} from '../addr/address.js'
import {formatAddressBytes, addressBytes, normalizeAddress} from '../addr/cidr.js'
import {configRuleSchema, proxyV1UdpMessage, ruleConflicts} from '../rules/spec.js'
import {DivertError} from '../errors.js'
import {describeValue, expecting, path, ref, scalar, size, strictObject, type SchemaProblem} from './fields.js'

export {describeValue, formatPath, issuesToProblems, type ConfigPath, type SchemaProblem} from './fields.js'

/** Names defined in the file, read before validation so references can be checked field by field. */
export interface KnownNames {
  backends: string[]
  listeners: string[]
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const NAME_EXPECTED = 'a name of letters, digits, "_", "." or "-" that starts with a letter or digit'

/**
 * Config durations end up as timer delays, and Node runs a timer longer than 2^31-1 ms after 1 ms
 * instead (timers docs, setTimeout): `health: {interval: 30d}` would probe in a busy loop.
 */
const MAX_TIMER_MS = 2 ** 31 - 1

function duration(positive = false) {
  return scalar(positive ? 'a duration above 0, e.g. 10s' : 'a duration, e.g. 300ms, 10s, 5m (0 = none)', (v, where) => {
    const ms = parseDuration(v, where)
    if (positive && ms <= 0) throw new DivertError('INVALID_DURATION', `${where}: ${describeValue(v)} is zero; expected a duration above 0, e.g. 10s`)
    if (ms > MAX_TIMER_MS) throw new DivertError('INVALID_DURATION', `${where}: ${describeValue(v)} is longer than 24d20h (2^31-1 ms, the longest timer Node runs); expected a shorter duration`)
    return ms
  }, true)
}

/**
 * TCP keepalive idle time: `off` or 0 disables it. The kernel takes whole seconds up to 32767
 * (TCP_KEEPIDLE, tcp(7); MAX_TCP_KEEPIDLE), and Node would silently floor 1500ms to 1 s.
 */
function keepalive() {
  const expected = 'a whole number of seconds from 1s to 9h6m7s (e.g. 60s), or off / 0 to disable'
  return scalar(expected, (v, where) => {
    if (v === 'off') return 0
    const ms = parseDuration(v, where)
    if (ms === 0) return 0
    if (ms % 1000 !== 0 || ms > 32_767_000) throw new DivertError('INVALID_DURATION', `${where}: ${describeValue(v)} is not a keepalive time; expected ${expected}`)
    return ms
  }, true)
}

const endpoint = (example: string) =>
  scalar<Address>(`IP:port, e.g. ${example}`, (v) => parseAddress(String(v), 'address'))

/**
 * `source:` of a backend's upstream sockets: `client` (the client's own address, IP_TRANSPARENT) or a
 * local IP literal (bound as is); absent, the host picks by its routes.
 */
const upstreamSource = () =>
  scalar<string>('client, or a local IP address such as 198.51.100.1', (v, where) => {
    const text = String(v)
    if (text === 'client') return text
    if (isIP(text) === 0) throw new DivertError('INVALID_ADDRESS', `${where}: "${text}" is neither client nor an IP address; expected client, or a local IP such as 198.51.100.1`)
    return normalizeAddress(text)
  })

/** A server to connect to: port 0 is only meaningful for binding, never as a destination. */
const destination = (example: string) =>
  scalar<Address>(`IP:port, e.g. ${example}`, (v) => {
    const e = parseAddress(String(v), 'address')
    if (e.port === 0) throw new DivertError('INVALID_ADDRESS', `address "${String(v)}": port 0 cannot be connected to; give the server's real port`)
    return e
  })

const int = (min: number, max: number, expected: string) =>
  z.number(expecting(expected)).int().min(min).max(max)

const name = () => z.string(expecting(NAME_EXPECTED)).regex(NAME_RE)

function adminSchema() {
  return strictObject({
    socket: path('the admin unix socket').optional(),
    listen: endpoint('127.0.0.1:7070').optional(),
    token_file: path('the admin bearer token').optional(),
  }, 'a mapping with socket, listen, token_file').superRefine((a, ctx) => {
    // SECURITY.md: a TCP admin listener answers only with a bearer token.
    if (a.listen !== undefined && a.token_file === undefined) {
      ctx.addIssue({code: 'custom', path: ['listen'], message: 'needs admin.token_file (a TCP admin listener requires a bearer token); expected token_file next to listen, or no listen'})
    }
  })
}

/**
 * `state:` is a file path, or a Redis URL (issue 14: the fleet's shared rule store). ioredis reads
 * `redis://[[user]:password@]host[:port][/db]` and `rediss://` (TLS); the db must be a whole number.
 */
function stateSchema() {
  const expected = 'a file path for the runtime-rule state, or redis://HOST:PORT/DB (rediss:// for TLS)'
  return z.string(expecting(expected)).min(1).superRefine((v, ctx) => {
    if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(v)) return
    const problem = redisUrlProblem(v)
    if (problem) ctx.addIssue({code: 'custom', message: `got ${describeValue(v.replace(/\/\/[^@/]*@/, '//***@'))}: ${problem}; expected ${expected}`})
  })
}

function redisUrlProblem(v: string): string | undefined {
  let u: URL
  try {
    u = new URL(v)
  } catch {
    return 'not a valid URL'
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') return `the scheme ${u.protocol}// is not one divert keeps rules in`
  if (u.hostname === '') return 'no host'
  const db = u.pathname.replace(/^\//, '')
  if (db !== '' && !/^\d{1,5}$/.test(db)) return `the database "${db}" is not a number`
  return undefined
}

function fleetSchema() {
  return strictObject({
    name: name().optional(),
    admin_url: z.string(expecting('the URL other instances reach this one\'s TCP admin listener at, e.g. http://10.0.0.5:7070')).url().optional(),
  }, 'a mapping like { name: edge-1 }')
}

function captureSchema() {
  return strictObject({
    max_size: size().default(DEFAULTS.captureMaxBytes),
    mirror_buffer: size().default(DEFAULTS.mirrorBufferBytes),
  }, 'a mapping with max_size, mirror_buffer')
}

function listenerSchema(known: KnownNames) {
  return strictObject({
    name: name(),
    protocol: z.enum(['tcp', 'udp'], expecting('tcp or udp')).default('tcp'),
    bind: endpoint('0.0.0.0:23 or [::]:23'),
    backend: ref('backend', known.backends),
    max_connections: int(0, Number.MAX_SAFE_INTEGER, 'an integer ≥ 0 (0 = unlimited)').default(0),
    timeouts: strictObject({client: duration().default(0)}, 'a mapping like { client: 10m }').optional(),
    per_source: strictObject({
      max_connections: int(0, Number.MAX_SAFE_INTEGER, 'an integer ≥ 0 (0 = unlimited)').default(0),
      rate: z.number({invalid_type_error: 'a number of new sessions per second (0 = unlimited)'}).min(0, 'a number ≥ 0 (0 = unlimited)').finite().default(0),
    }, 'a mapping like { max_connections: 100, rate: 20 }').optional(),
    udp: strictObject({
      idle_timeout: duration(true).default(DEFAULTS.udpIdleTimeoutMs),
      key: z.enum(['address', 'address-port'], expecting('address or address-port')).default(DEFAULTS.udpKey),
      max_flows: int(1, Number.MAX_SAFE_INTEGER, 'an integer ≥ 1').default(DEFAULTS.udpMaxFlows),
      recv_buffer: size().default(DEFAULTS.udpRecvBufferSize),
    }, 'a mapping like { idle_timeout: 300s, key: address-port, max_flows: 10000 }').optional(),
    keepalive: keepalive().optional(),
    transparent: z.boolean(expecting('true or false')).default(false),
    intercept: strictObject({
      ports: z.array(int(1, 65535, 'a port from 1 to 65535'), expecting('a list of 1 to 64 ports, e.g. [23]')).min(1).max(64).optional(),
    }, 'a mapping like { ports: [23] }').optional(),
  }, 'a listener: a mapping with name, protocol, bind, backend').superRefine((l, ctx) => {
    for (const p of transparentProblems(l)) ctx.addIssue({code: 'custom', ...p})
    if (l.protocol === 'tcp' && l.udp !== undefined) {
      ctx.addIssue({code: 'custom', path: ['udp'], message: 'is only allowed on a udp listener; expected protocol: udp, or no udp block'})
    }
    if (l.protocol === 'udp' && l.keepalive !== undefined) {
      ctx.addIssue({code: 'custom', path: ['keepalive'], message: 'is TCP keepalive, only allowed on a tcp listener; expected protocol: tcp, or no keepalive'})
    }
  })
}

/**
 * Gateway mode's constraints on one listener. A transparent UDP listener stands in for one server
 * (its bind): Node's dgram cannot read a datagram's original destination (IP_RECVORIGDSTADDR, ip(7)),
 * so the only destination a UDP listener can know is the address its own socket is bound to.
 */
function transparentProblems(l: {protocol: string; bind: Address; backend: string; transparent: boolean; intercept?: {ports?: number[]}}): Array<{path: string[]; message: string}> {
  const out: Array<{path: string[]; message: string}> = []
  if (!l.transparent) {
    if (l.intercept !== undefined) out.push({path: ['intercept'], message: 'needs transparent: true (TPROXY steers intercepted traffic to a transparent listener)'})
    if (l.backend === ORIGINAL_BACKEND) out.push({path: ['backend'], message: `"${ORIGINAL_BACKEND}" (the destination the client dialled) needs transparent: true; expected another backend, or transparent: true`})
    return out
  }
  if (l.protocol === 'tcp' && l.intercept !== undefined && l.intercept.ports === undefined) out.push({path: ['intercept', 'ports'], message: 'is missing; expected the destination ports to intercept, e.g. [23]'})
  if (l.protocol !== 'udp') return out
  if (l.bind.port === 0) out.push({path: ['bind'], message: 'a transparent udp listener binds the address and port of the server it stands in for; port 0 is no server\'s port'})
  if (/^(0\.0\.0\.0|::)$/.test(l.bind.address)) out.push({path: ['bind'], message: `a transparent udp listener stands in for one server and binds that server's address (Node's dgram cannot read a datagram's original destination); expected e.g. 198.51.100.10:${l.bind.port || 1194}`})
  const ports = l.intercept?.ports
  if (ports && (ports.length !== 1 || ports[0] !== l.bind.port)) out.push({path: ['intercept', 'ports'], message: `a transparent udp listener intercepts only the port it stands in for; expected [${l.bind.port}] or no ports`})
  return out
}

function transparentSchema() {
  const d = DEFAULTS.transparent
  return strictObject({
    manage: z.boolean(expecting('true or false')).default(d.manage),
    table: z.string(expecting('an nftables table name of letters, digits and "_"')).regex(/^[A-Za-z][A-Za-z0-9_]{0,31}$/).default(d.table),
    mark: int(1, 2 ** 32 - 1, 'a firewall mark from 1 to 0xffffffff').default(d.mark),
    route_table: int(1, 2 ** 32 - 1, 'a routing table number, e.g. 465 (not 253-255: default, main, local)')
      .refine((n) => n < 253 || n > 255, {message: 'is a table the kernel uses (253 default, 254 main, 255 local); expected another number, e.g. 465'})
      .default(d.routeTable),
    source: z.enum(['client'], expecting('client (backend original connects from the device\'s own address)')).optional(),
  }, 'a mapping like { manage: true }')
}

function healthSchema() {
  const d = DEFAULTS.health
  return strictObject({
    check: z.enum(['tcp', 'none'], expecting('tcp or none')).default(d.check),
    interval: duration(true).default(d.intervalMs),
    timeout: duration(true).default(d.timeoutMs),
    rise: int(1, 1000, 'an integer from 1 to 1000').default(d.rise),
    fall: int(1, 1000, 'an integer from 1 to 1000').default(d.fall),
  }, 'a mapping like { check: tcp, interval: 2s, timeout: 1s, rise: 2, fall: 3 }')
}

function backendSchema() {
  const server = strictObject({
    address: destination('127.0.0.1:8080 or [::1]:8080'),
    weight: int(1, 256, 'an integer from 1 to 256').default(1),
  }, 'a server: a mapping like { address: 127.0.0.1:8080, weight: 1 }')
  return strictObject({
    balance: z.enum(['roundrobin', 'leastconn', 'source', 'random'], expecting('roundrobin, leastconn, source or random')).default('roundrobin'),
    servers: z.array(server, expecting('a list of at least one server')).min(1),
    health: healthSchema().optional(),
    proxy_protocol: z.enum(['v1', 'v2'], expecting('v1 or v2')).optional(),
    fallback: z.enum(['default', 'reject'], expecting('default or reject')).default('default'),
    timeouts: strictObject({
      connect: duration(true).default(DEFAULTS.connectTimeoutMs),
      server: duration().default(0),
    }, 'a mapping like { connect: 5s, server: 0 }').optional(),
    keepalive: keepalive().optional(),
    source: upstreamSource().optional(),
    // SO_MARK takes an unsigned 32-bit value (socket(7)); YAML also reads 0x-prefixed hex.
    mark: int(0, 2 ** 32 - 1, 'an integer from 0 to 4294967295 (SO_MARK), e.g. 1 or 0x10').optional(),
  }, 'a backend: a mapping with servers').superRefine((b, ctx) => {
    const family = b.source === undefined || b.source === 'client' ? undefined : isIP(b.source)
    // zod runs this refinement on a backend whose servers failed (their issues are reported already):
    // a server without a parsed address is not compared.
    const other = b.servers.findIndex((s) => family !== undefined && s?.address?.family !== undefined && s.address.family !== family)
    if (other >= 0) ctx.addIssue({code: 'custom', path: ['source'], message: `is an IPv${family} address but servers[${other}] (${formatAddress(b.servers[other].address)}) is not; expected a source of the servers' family`})
  })
}

/** Optional sections may be left empty (`rules:` with every entry commented out): null means absent. */
export function configSchema(known: KnownNames) {
  return strictObject({
    admin: adminSchema().nullish(),
    state: stateSchema().nullish(),
    fleet: fleetSchema().nullish(),
    capture: captureSchema().nullish(),
    fast_path: z.enum(['auto', 'off'], expecting('auto or off')).nullish(),
    limits: strictObject({
      max_connections: int(0, Number.MAX_SAFE_INTEGER, 'an integer ≥ 0 (0 = unlimited)').default(0),
    }, 'a mapping like { max_connections: 50000 }').nullish(),
    listeners: z.array(listenerSchema(known), expecting('a list of at least one listener')).min(1),
    backends: z.record(name(), backendSchema(), expecting('a mapping of backend name to backend'))
      .refine((b) => Object.keys(b).length > 0, {message: 'is empty; expected at least one backend'})
    .superRefine((b, ctx) => {
      if (ORIGINAL_BACKEND in b) ctx.addIssue({code: 'custom', path: [ORIGINAL_BACKEND], message: `"${ORIGINAL_BACKEND}" is built in (the destination the client dialled); expected another backend name`})
    }),
    rules: z.array(configRuleSchema(known), expecting('a list of rules')).nullish(),
    transparent: transparentSchema().nullish(),
  }, 'a mapping with listeners and backends')
}

export type RawConfig = z.output<ReturnType<typeof configSchema>>

/** Reads backend and listener names from the unvalidated document, tolerating any shape. */
export function knownNames(doc: unknown): KnownNames {
  const root = isRecord(doc) ? doc : {}
  const listeners = Array.isArray(root.listeners)
    ? root.listeners.flatMap((l: unknown) => (isRecord(l) && typeof l.name === 'string' ? [l.name] : []))
    : []
  // `original` is built in where a listener is transparent: the destination the client dialled.
  const gateway = Array.isArray(root.listeners) && root.listeners.some((l: unknown) => isRecord(l) && l.transparent === true)
  const backends = [...(isRecord(root.backends) ? Object.keys(root.backends) : []), ...(gateway ? [ORIGINAL_BACKEND] : [])]
  return {backends, listeners}
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Checks across entries, run once every entry is valid on its own. */
export function crossCheck(cfg: RawConfig): SchemaProblem[] {
  return [...duplicateListeners(cfg), ...udpProxyV1(cfg), ...duplicateRules(cfg)]
}

function duplicateListeners(cfg: RawConfig): SchemaProblem[] {
  const out: SchemaProblem[] = []
  const names = new Map<string, number>()
  const binds = new Map<string, number>()
  cfg.listeners.forEach((l, i) => {
    const first = names.get(l.name)
    if (first !== undefined) {
      out.push({path: ['listeners', i, 'name'], message: `"${l.name}" is already the name of listeners[${first}]; expected a unique listener name`})
    } else names.set(l.name, i)
    // Port 0 asks the kernel for a fresh port each time, so two such listeners never collide.
    if (l.bind.port === 0) return
    const host = addressBytes(l.bind.address)
    const key = `${l.protocol} ${host ? formatAddressBytes(host.family, host.bytes) : l.bind.address} ${l.bind.port}`
    const other = binds.get(key)
    if (other !== undefined) {
      out.push({path: ['listeners', i, 'bind'], message: `${l.protocol} ${formatAddress(l.bind)} is already bound by listener "${cfg.listeners[other].name}" (listeners[${other}]); expected a different address or port`})
    } else binds.set(key, i)
  })
  return out
}

/** PROXY protocol v1 on a udp listener: its default backend here, its rules through the rules' own cross-check. */
function udpProxyV1(cfg: RawConfig): SchemaProblem[] {
  const context = {
    backends: new Map(Object.entries(cfg.backends).map(([n, b]) => [n, {proxyProtocol: b.proxy_protocol}])),
    listeners: cfg.listeners,
  }
  const out: SchemaProblem[] = []
  cfg.listeners.forEach((l, i) => {
    if (l.protocol === 'udp' && context.backends.get(l.backend)?.proxyProtocol === 'v1') out.push({path: ['listeners', i, 'backend'], message: proxyV1UdpMessage(l.backend)})
  })
  cfg.rules?.forEach((r, i) => {
    for (const c of ruleConflicts(r, context)) if (c.kind === 'proxy-v1-udp') out.push({path: ['rules', i, 'to'], message: proxyV1UdpMessage(c.name)})
  })
  return out
}

function duplicateRules(cfg: RawConfig): SchemaProblem[] {
  const out: SchemaProblem[] = []
  const seen = new Map<string, number>()
  cfg.rules?.forEach((r, i) => {
    const key = `${r.source} ${r.listener ?? ''}`
    const first = seen.get(key)
    if (first === undefined) {
      seen.set(key, i)
      return
    }
    const scope = r.listener === undefined ? 'all listeners' : `listener "${r.listener}"`
    out.push({path: ['rules', i, 'source'], message: `rules[${first}] already has source ${r.source} for ${scope}; expected one rule per source and listener scope`})
  })
  return out
}
