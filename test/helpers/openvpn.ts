/**
 * OpenVPN 2.6 fixtures for e2e tests: self-signed identities pinned by fingerprint, server and client
 * configs, readiness from the logs, what a server log says about each client's session, and traffic
 * probes (UDP echo, TCP checksum sink and sender) over a tunnel.
 *
 *   openssl → Identity → config file → `openvpn` in a Lab namespace → log lines → ServerLogFacts
 *
 * TLS mode, not static-key: static-key mode serves one peer per port, and a two-client test needs a
 * server that tells its clients apart (docs/FIELD-NOTES.md). Without a CA, `peer-fingerprint` pins each peer's
 * self-signed certificate (openvpn(8) "--peer-fingerprint"; openvpn-examples(5)).
 */
import {execFile} from 'node:child_process'
import {X509Certificate} from 'node:crypto'
import {readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {promisify} from 'node:util'
import {whichCommand, type Lab, type LabProcess} from './netns.js'

const execFileP = promisify(execFile)

/** The line OpenVPN prints once its tunnel is configured (client) or its server is listening. */
export const INIT_COMPLETE = /Initialization Sequence Completed/

/** The server's line for a client (by certificate CN) whose TLS session is up. */
export function peerConnected(cn: string): RegExp {
  return new RegExp(`\\[${cn}\\] Peer Connection Initiated with `)
}

/** Why OpenVPN tests cannot run here (what is missing and how to get it), or undefined when they can. */
export function openvpnUnavailableReason(): string | undefined {
  if (!whichCommand('openvpn')) return 'needs OpenVPN 2.6 (apt-get install -y openvpn)'
  if (!whichCommand('openssl')) return 'needs the openssl command to make test certificates (apt-get install -y openssl)'
  return undefined
}

/** A self-signed certificate and key, and the SHA256 fingerprint peers pin it by. */
export interface Identity {
  name: string
  certPath: string
  keyPath: string
  fingerprint: string
}

/** EC P-256, valid two days: long enough for any test run, short enough to be worthless if leaked. */
export async function makeIdentity(dir: string, name: string): Promise<Identity> {
  const certPath = join(dir, `${name}.crt`)
  const keyPath = join(dir, `${name}.key`)
  await execFileP(whichCommand('openssl') ?? 'openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-sha256',
    '-days', '2', '-subj', `/CN=${name}`, '-keyout', keyPath, '-out', certPath,
  ])
  const fingerprint = new X509Certificate(await readFile(certPath)).fingerprint256
  return {name, certPath, keyPath, fingerprint}
}

export interface ServerOptions {
  identity: Identity
  /** The clients this server accepts. */
  clients: Identity[]
  /** Address and port the server listens on (inside its namespace). */
  bind: string
  port: number
  /** Tunnel subnet, /24; the server takes .1. */
  subnet: string
}

/** The server's own tunnel address (`server` directive gives it .1 of the subnet, `topology subnet`). */
export function serverTunnelAddress(subnet: string): string {
  return subnet.replace(/\.0$/, '.1')
}

export function serverConfig(o: ServerOptions): string {
  return lines(
    `server ${o.subnet} 255.255.255.0`,
    'topology subnet',
    'proto udp4',
    `local ${o.bind}`,
    `port ${o.port}`,
    'dev tun',
    `cert ${o.identity.certPath}`,
    `key ${o.identity.keyPath}`,
    'dh none',
    '<peer-fingerprint>',
    ...o.clients.map((c) => c.fingerprint),
    '</peer-fingerprint>',
    // Per-client in server mode (openvpn(8) --ping-restart): a client gone quiet is dropped after 60 s,
    // longer than any test step, so a drop never hides a proxy fault.
    'ping 5',
    'ping-restart 60',
    // "peer N (cn) floated from A to B" is logged at D_MULTI_MEDIUM, verb 4 (openvpn src/openvpn/errors.h);
    // at verb 3 a server floats a client silently.
    'verb 4',
    'suppress-timestamps',
  )
}

export interface ClientOptions {
  identity: Identity
  server: Identity
  remote: string
  port: number
}

export function clientConfig(o: ClientOptions): string {
  return lines(
    'client',
    'dev tun',
    'proto udp4',
    `remote ${o.remote} ${o.port}`,
    'nobind',
    `cert ${o.identity.certPath}`,
    `key ${o.identity.keyPath}`,
    `peer-fingerprint ${o.server.fingerprint}`,
    // A moved client hears nothing from its old server's session; ping-restart makes it start over
    // (and so re-handshake through the new route) within 20 s. Pings every 5 s keep the UDP flow warm,
    // as OpenVPN's usual keepalive does; the idle the test waits out is idle of user traffic.
    'ping 5',
    'ping-restart 20',
    'verb 3',
    'suppress-timestamps',
  )
}

/**
 * Writes the config to `dir` and starts `openvpn` inside `ns`; resolves once it reports init complete.
 * `watch`: processes the start depends on (the proxy, the server) whose exit fails the wait at once.
 */
export async function startOpenVpn(lab: Lab, ns: string, dir: string, name: string, config: string, watch: LabProcess[] = []): Promise<LabProcess> {
  const path = join(dir, `${name}.conf`)
  await writeFile(path, config)
  const proc = lab.spawn(ns, name, whichCommand('openvpn') ?? 'openvpn', ['--config', path])
  await proc.waitFor(INIT_COMPLETE, {timeoutMs: 30_000, watch})
  return proc
}

/** The IPv4 address the client's tun device got (from the `ip addr add` line OpenVPN logs). */
export function clientTunnelAddress(log: string): string | undefined {
  const all = [...log.matchAll(/net_addr_v4_add: (\d+\.\d+\.\d+\.\d+)\/\d+ dev \S+/g)]
  return all.at(-1)?.[1]
}

/** What a server log says about one client (by certificate CN). */
export interface ClientFacts {
  /** "Peer Connection Initiated" lines: one per TLS session the server set up. */
  connections: number
  /** Every upstream address:port the server saw this client from. */
  addresses: Set<string>
  /** Lines where the server let the client's session move to a new address (openvpn(8) --float). */
  floats: string[]
}

/**
 * Reads a server log: for each client CN, its sessions and source addresses. A proxy that splits or
 * re-creates a flow shows as a second address, a "float" line, or a second connection (docs/FIELD-NOTES.md:
 * OpenVPN 2.6 floats authenticated clients, so a working tunnel alone proves nothing).
 */
export function serverLogFacts(log: string): Map<string, ClientFacts> {
  const facts = new Map<string, ClientFacts>()
  const of = (cn: string): ClientFacts => {
    let f = facts.get(cn)
    if (!f) facts.set(cn, (f = {connections: 0, addresses: new Set(), floats: []}))
    return f
  }
  for (const line of log.split('\n')) {
    const peer = /\[([^\]]+)\] Peer Connection Initiated with \[AF_INET6?\](\S+)/.exec(line)
    if (peer) {
      of(peer[1]).connections++
      of(peer[1]).addresses.add(peer[2])
    }
    const tagged = /^([^/\s]+)\/(\S+?:\d+) /.exec(line)
    if (tagged) of(tagged[1]).addresses.add(tagged[2])
    const float = /\((\S+)\) floated from /.exec(line)
    if (float) of(float[1]).floats.push(line)
  }
  return facts
}

/** Every "peer N (cn) floated from A to B" line (openvpn src/openvpn/multi.c), whoever it is about. */
export function floatLines(log: string): string[] {
  return log.split('\n').filter((l) => / floated from /.test(l))
}

function lines(...items: string[]): string {
  return items.join('\n') + '\n'
}

// ---------------------------------------------------------------------------------------------------
// Traffic probes. Node is on every machine that runs these tests; the scripts run with `node -e` in the
// namespaces and speak one JSON object per stdout line.

/** TCP sink (sha256 of each connection's bytes) and UDP echo, both bound to one address in `ns`. */
const PROBE_SERVER = `
const net = require('node:net'), dgram = require('node:dgram'), {createHash} = require('node:crypto')
const host = process.argv[1]
const tcp = net.createServer((s) => {
  const h = createHash('sha256'); let bytes = 0
  s.on('data', (c) => { h.update(c); bytes += c.length })
  s.on('end', () => { const r = {event: 'received', bytes, sha256: h.digest('hex')}; console.log(JSON.stringify(r)); s.end(JSON.stringify(r)) })
  s.on('error', (e) => console.log(JSON.stringify({event: 'error', message: e.message})))
})
const udp = dgram.createSocket('udp4').on('message', (m, r) => udp.send(m, r.port, r.address))
tcp.listen(0, host, () => udp.bind(0, host, () =>
  console.log(JSON.stringify({event: 'ready', tcpPort: tcp.address().port, udpPort: udp.address().port}))))
`

/** Sends argv[3] random bytes to argv[1]:argv[2], then prints its own sha256 and the sink's reply. */
const PROBE_SENDER = `
const net = require('node:net'), {createHash, randomBytes} = require('node:crypto')
const [host, port, total] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])]
const h = createHash('sha256'); let sent = 0, reply = ''
const s = net.connect(port, host, function pump() {
  while (sent < total) {
    const chunk = randomBytes(Math.min(1 << 20, total - sent)); h.update(chunk); sent += chunk.length
    if (!s.write(chunk)) return s.once('drain', pump)
  }
  s.end()
})
s.setEncoding('utf8').on('data', (d) => { reply += d })
s.on('end', () => console.log(JSON.stringify({event: 'sent', bytes: sent, sha256: h.digest('hex'), reply: JSON.parse(reply)})))
s.on('error', (e) => { console.error(e.message); process.exit(1) })
`

/** Sends `count` datagrams one by one and waits for each echo; exits 1 if one is not echoed in time. */
const PROBE_PING = `
const dgram = require('node:dgram')
const [host, port, count] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])]
const s = dgram.createSocket('udp4'); let seq = 0, timer
const next = () => {
  if (seq === count) { console.log(JSON.stringify({event: 'echoed', count})); return s.close() }
  const payload = 'ping ' + seq++
  timer = setTimeout(() => { console.error('no echo of "' + payload + '" within 3 s'); process.exit(1) }, 3000)
  s.send(payload, port, host)
}
s.on('message', (m) => { if (m.toString() === 'ping ' + (seq - 1)) { clearTimeout(timer); next() } })
s.connect(port, host, next)
`

export interface ProbeServer {
  proc: LabProcess
  host: string
  tcpPort: number
  udpPort: number
}

/** Starts the sink/echo probe on `host` (an address that exists in `ns`, e.g. a tunnel address). */
export async function startProbeServer(lab: Lab, ns: string, name: string, host: string): Promise<ProbeServer> {
  const proc = lab.spawn(ns, name, process.execPath, ['-e', PROBE_SERVER, host])
  const m = await proc.waitFor(/^\{"event":"ready".*\}$/, {timeoutMs: 10_000})
  const {tcpPort, udpPort} = JSON.parse(m[0]) as {tcpPort: number; udpPort: number}
  return {proc, host, tcpPort, udpPort}
}

/** Round trips of `count` UDP datagrams from `ns` to the probe; throws if any is lost. */
export async function udpPing(lab: Lab, ns: string, probe: ProbeServer, count = 3): Promise<void> {
  await lab.run(ns, process.execPath, ['-e', PROBE_PING, probe.host, String(probe.udpPort), String(count)])
}

/** ICMP echo with iputils `ping` when installed: undefined when it is not, so callers can fall back. */
export async function icmpPing(lab: Lab, ns: string, host: string): Promise<string | undefined> {
  const ping = whichCommand('ping')
  if (!ping) return undefined
  return lab.run(ns, ping, ['-c', '3', '-i', '0.2', '-W', '2', host])
}

export interface Transfer {
  sent: {bytes: number; sha256: string}
  received: {bytes: number; sha256: string}
}

/**
 * Sends `bytes` random bytes from `ns` to the probe's TCP sink. The received side is read from the
 * probe's own output, not from the sender, so a corrupted reply cannot make the sides agree.
 */
export async function sendRandom(lab: Lab, ns: string, probe: ProbeServer, bytes: number, timeoutMs = 60_000): Promise<Transfer> {
  const from = probe.proc.mark()
  const out = await lab.run(ns, process.execPath, ['-e', PROBE_SENDER, probe.host, String(probe.tcpPort), String(bytes)], timeoutMs)
  const sent = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as {bytes: number; sha256: string}
  const m = await probe.proc.waitFor(/^\{"event":"received".*\}$/, {timeoutMs: 5000, fromLine: from})
  const received = JSON.parse(m[0]) as {bytes: number; sha256: string}
  return {sent: {bytes: sent.bytes, sha256: sent.sha256}, received: {bytes: received.bytes, sha256: received.sha256}}
}
