/**
 * Config files for every process the bench starts: the nginx HTTP origin, and HAProxy, nginx (stream)
 * and divert as the proxies under test, all fronting the same loopback backends.
 *
 *   load (core 1) → proxy :http/:bulk/:udp (core 0) → origin nginx / iperf3 -s / udp echo (core 1)
 *
 * Each proxy is configured as an operator would for this job, with no tuning beyond the limits the
 * tests need (connection counts, idle timeouts); the README lists the choices.
 */

export interface ProxyPorts {
  http: number
  bulk: number
  udp: number
}

export interface BackendPorts {
  origin: number
  iperf: number
  echo: number
  sink: number
}

export interface Limits {
  /** The hard RLIMIT_NOFILE every child gets as its soft limit. */
  nofile: number
}

const LOOPBACK = '127.0.0.1'
/** UDP flows and idle TCP connections must outlive every test: one minute, like divert's example. */
const UDP_IDLE = '60s'
const TCP_IDLE_MIN = 10

/** HAProxy (TCP only: HAProxy has no UDP proxy, docs/FIELD-NOTES.md "Peers' gaps"). One thread for one core. */
export function haproxyConfig(ports: ProxyPorts, b: BackendPorts, limits: Limits): string {
  // maxconn bounds concurrent sessions; each needs two fds (client and server), plus a few spare.
  const maxconn = Math.floor((limits.nofile - 100) / 2)
  return `global
  nbthread 1
  maxconn ${maxconn}
defaults
  mode tcp
  timeout connect 5s
  timeout client ${TCP_IDLE_MIN}m
  timeout server ${TCP_IDLE_MIN}m
frontend http
  bind ${LOOPBACK}:${ports.http}
  default_backend origin
backend origin
  server origin ${LOOPBACK}:${b.origin}
frontend bulk
  bind ${LOOPBACK}:${ports.bulk}
  default_backend bulk
backend bulk
  server iperf ${LOOPBACK}:${b.iperf}
`
}

function nginxMain(dir: string, limits: Limits, loadModule?: string): string {
  // worker_connections counts connection slots, not fds: a UDP session takes two slots but one fd.
  // nginx preallocates (and touches) every slot, so this is kept near what the idle tests need.
  return `${loadModule ? `load_module ${loadModule};\n` : ''}worker_processes 1;
worker_rlimit_nofile ${limits.nofile};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections ${limits.nofile + 1000}; }
`
}

/** nginx as a stream (L4) proxy: TCP and UDP. rcvbuf matches divert's 4 MiB default listener buffer. */
export function nginxProxyConfig(ports: ProxyPorts, b: BackendPorts, dir: string, limits: Limits, streamModule?: string): string {
  return `${nginxMain(dir, limits, streamModule)}stream {
  server { listen ${LOOPBACK}:${ports.http} backlog=4096; proxy_pass ${LOOPBACK}:${b.origin}; proxy_timeout ${TCP_IDLE_MIN}m; }
  server { listen ${LOOPBACK}:${ports.bulk}; proxy_pass ${LOOPBACK}:${b.iperf}; proxy_timeout ${TCP_IDLE_MIN}m; }
  server { listen ${LOOPBACK}:${ports.udp} udp rcvbuf=4194304; proxy_pass ${LOOPBACK}:${b.echo}; proxy_timeout ${UDP_IDLE}; }
}
`
}

/** The HTTP origin: one small static file; keep-alive and header timeouts long enough for idle tests. */
export function nginxOriginConfig(port: number, dir: string, www: string, limits: Limits): string {
  return `${nginxMain(dir, limits)}http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout ${TCP_IDLE_MIN}m;
  client_header_timeout ${TCP_IDLE_MIN}m;
  server {
    listen ${LOOPBACK}:${port} backlog=4096;
    location / { root ${www}; }
  }
}
`
}

export interface DivertVariant {
  /** Total rules in the config (≥ 1). */
  rules: number
  mirror?: boolean
  /** pcap file that a rule for 127.0.0.1 records into. */
  record?: string
  /** `fast_path: auto` (the kernel splices untapped TCP sessions); absent: `off`, every byte through divert. */
  fastPath?: boolean
}

/**
 * Sources for N rules that never match the bench's clients: /32s in 198.18.0.0/15, the block RFC 2544
 * §C.2.2 reserves for benchmarking (131,072 addresses), after one rule for 127.0.0.9 (unused source).
 */
export function ruleSources(n: number): string[] {
  const max = 1 + 131_072
  if (n < 1 || n > max) throw new RangeError(`rule count ${n} is outside 1…${max} (198.18.0.0/15 holds 131,072 /32s)`)
  const out = ['127.0.0.9']
  const base = (198 << 24) + (18 << 16)
  for (let i = 0; i < n - 1; i++) {
    const a = base + i
    out.push(`${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`)
  }
  return out
}

function divertRules(v: DivertVariant): string[] {
  const rules = ruleSources(v.rules).map((s) => `  - { source: "${s}", to: origin, listener: http }`)
  if (v.mirror) rules.push('  - { source: "127.0.0.1", mirror: mirror, listener: http }')
  if (v.record) rules.push(`  - { source: "127.0.0.1", record: ${JSON.stringify(v.record)}, listener: http }`)
  return rules
}

/** divert's config (docs/DESIGN.md §4): the same three listeners and backends as the peers. */
export function divertConfig(ports: ProxyPorts, b: BackendPorts, dir: string, limits: Limits, v: DivertVariant): string {
  const server = (port: number): string => `{ servers: [ { address: "${LOOPBACK}:${port}" } ], health: { check: none } }`
  const maxFlows = limits.nofile - 500
  return `state: ${JSON.stringify(`${dir}/divert-state.json`)}
fast_path: ${v.fastPath ? 'auto' : 'off'}
listeners:
  - { name: http, protocol: tcp, bind: "${LOOPBACK}:${ports.http}", backend: origin }
  - { name: bulk, protocol: tcp, bind: "${LOOPBACK}:${ports.bulk}", backend: bulk }
  - { name: dns, protocol: udp, bind: "${LOOPBACK}:${ports.udp}", backend: udpecho, udp: { idle_timeout: ${UDP_IDLE}, max_flows: ${maxFlows} } }
backends:
  origin: ${server(b.origin)}
  bulk: ${server(b.iperf)}
  udpecho: ${server(b.echo)}
  mirror: ${server(b.sink)}
rules:
${divertRules(v).join('\n')}
`
}
