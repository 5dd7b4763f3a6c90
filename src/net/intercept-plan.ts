/**
 * What gateway mode asks of the kernel, worked out from the config and the rules (pure): which
 * sources each intercepting listener takes, and the nftables table that steers them there with
 * TPROXY. The Interceptor (interceptor.ts) applies it; tests read it without a kernel.
 *
 *   Config + rules ─planFor─▶ KernelPlan ─renderTable─▶ `nft -f -` script (one atomic transaction)
 *
 * The table (kernel Documentation/networking/tproxy.rst, nftables wiki "Transparent proxy"):
 *  1. a transparent UDP listener stands in for one server: datagrams from intercepted sources to that
 *     address are handed to it; everyone else's datagrams to it are left alone (`return`) — else the
 *     socket match below would find the stand-in socket and pull every client's traffic in;
 *  2. packets of sockets divert holds transparently (accepted connections, and upstream sockets bound
 *     to a client's address) get the mark, so the policy route delivers them locally — but not packets
 *     whose lookup finds the wildcard-bound TPROXY listener itself (`socket wildcard 0`): without it,
 *     anyone's SYN to port P of any host would be pulled into a listener on 0.0.0.0:P (measured);
 *  3. new TCP connections from intercepted sources to the intercepted ports go to the listener.
 * A listener takes TPROXY'd traffic of its bind's family only (an IPv4 device needs a 0.0.0.0
 * listener; "[::]" takes IPv6). The mark is OR-ed in (other bits of the packet's mark stay) and the policy route matches it with
 * itself as the mask (`fwmark M/M`), so divert shares the mark space with other users.
 */
import {DEFAULTS, type Config, type ListenerConfig, type Protocol, type TransparentConfig} from '../config/types.js'
import {formatPrefix, prefixContains, type Prefix} from '../addr/cidr.js'
import {formatAddress, type Address} from '../addr/address.js'

/** How divert recognises its own table after a crash: this comment, under the configured name. */
export const TABLE_COMMENT = 'managed by divert: gateway mode'

export interface InterceptListener {
  name: string
  protocol: Protocol
  bind: Address
  ports: number[]
  /** Canonical prefixes (formatPrefix), none inside another, v4 first. */
  sources: string[]
}

export interface KernelPlan extends TransparentConfig {
  /** Address families the policy route is needed for. */
  families: Array<4 | 6>
  listeners: InterceptListener[]
}

/** The sources of the rules that apply on a listener: the rules scoped to it and the unscoped ones. */
export interface RuleSource {
  prefix: Prefix
  listener?: string
}

export function transparentOf(config: Config): TransparentConfig {
  return config.transparent ?? DEFAULTS.transparent
}

/** Whether divert has anything to install: a transparent listener (TPROXY needs the mark and route). */
export function needsKernel(config: Config): boolean {
  return config.listeners.some((l) => l.transparent === true)
}

/** `boundPort`: the port a listener bound to port 0 got, so the TPROXY rule names the real one. */
export function planFor(config: Config, rules: RuleSource[], boundPort: (listener: string) => number | undefined = () => undefined): KernelPlan {
  const transparent = config.listeners.filter((l) => l.transparent)
  const families = new Set<4 | 6>(transparent.map((l) => l.bind.family))
  return {
    ...transparentOf(config),
    families: [...families].sort(),
    listeners: transparent.filter((l) => l.intercept).map((l) => ({
      name: l.name, protocol: l.protocol, bind: {...l.bind, port: l.bind.port || (boundPort(l.name) ?? 0)}, ports: [...new Set(l.intercept!.ports)].sort((a, b) => a - b),
      sources: sourcesOf(l, rules),
    })),
  }
}

/** Prefixes that no other prefix of the list contains (nftables refuses overlapping intervals). */
function sourcesOf(l: ListenerConfig, rules: RuleSource[]): string[] {
  const mine = rules.filter((r) => r.listener === undefined || r.listener === l.name).map((r) => r.prefix)
  const sorted = [...mine].sort((a, b) => a.family - b.family || a.length - b.length)
  const kept: Prefix[] = []
  for (const p of sorted) if (!kept.some((k) => k.family === p.family && prefixContains(k, formatPrefix(p).split('/')[0]))) kept.push(p)
  return [...new Set(kept.map(formatPrefix))]
}

/**
 * The whole table as one `nft -f` script: create (so the delete cannot fail), delete, create anew.
 * nft applies a file as one transaction, so packets see the old table or the new one, never neither.
 */
export function renderTable(plan: KernelPlan, pid = process.pid): string {
  const setMark = `meta mark set meta mark or 0x${plan.mark.toString(16)}`
  const parts = plan.listeners.map((l, i) => listenerRules(l, `l${i}_v${l.bind.family}`, setMark))
  const table = `inet ${plan.table}`
  return [
    `table ${table} {}`,
    `delete table ${table}`,
    `table ${table} {`,
    `  comment ${JSON.stringify(`${TABLE_COMMENT} (pid ${pid})`)}`,
    ...parts.map((p) => p.set),
    '  chain prerouting {',
    '    type filter hook prerouting priority mangle; policy accept;',
    ...parts.flatMap((p) => p.standIn),
    `    meta l4proto { tcp, udp } socket transparent 1 socket wildcard 0 ${setMark} accept`,
    ...parts.flatMap((p) => p.steer),
    '  }',
    '}',
    '',
  ].join('\n')
}

/** One listener's source set, and its rules: a UDP stand-in's (before the socket match) or a TCP steer. */
function listenerRules(l: InterceptListener, set: string, setMark: string): {set: string; standIn: string[]; steer: string[]} {
  const family = l.bind.family
  const elements = l.sources.filter((s) => s.includes(':') === (family === 6))
  const ip = family === 4 ? 'ip' : 'ip6'
  const comment = `comment ${JSON.stringify(`listener ${l.name}`)}`
  const setText = `  set ${set} {\n    type ${family === 4 ? 'ipv4_addr' : 'ipv6_addr'}; flags interval;${elements.length ? ` elements = { ${elements.join(', ')} }` : ''}\n  }`
  if (l.protocol === 'tcp') {
    return {set: setText, standIn: [], steer: [`    ${ip} saddr @${set} tcp dport { ${l.ports.join(', ')} } tproxy ${ip} to ${tproxyTarget(l.bind)} ${setMark} accept ${comment}`]}
  }
  const daddr = `${ip} daddr ${l.bind.address} udp dport ${l.bind.port}`
  return {set: setText, steer: [], standIn: [
    `    ${ip} saddr @${set} ${daddr} tproxy ${ip} to ${formatAddress(l.bind)} ${setMark} accept ${comment}`,
    `    ${daddr} return ${comment}`,
  ]}
}

function tproxyTarget(bind: Address): string {
  return bind.address === '0.0.0.0' || bind.address === '::' ? `:${bind.port}` : formatAddress(bind)
}
