/**
 * Acceptance: OpenVPN 2.6 tunnels run through divert's UDP proxy, and `divert add` moves one client to
 * another OpenVPN server while the other client keeps its session.
 *
 *   cli1, cli2 (openvpn clients) → mid (divert, UDP 172.31.250.1:1194) → srv (openvpn :1194 = vpn1, :1195 = vpn2)
 *
 * Every address, tun device and route lives in network namespaces this test creates and deletes; mid
 * does not forward IP, so the only path from a client to a server is through divert. Proof comes from
 * the servers' side (docs/FIELD-NOTES.md: OpenVPN 2.6 floats authenticated clients, so a working tunnel
 * alone could hide a proxy that splits flows): one connection and one upstream address per client, no
 * "float" lines, and one divert session per client whose counters grow.
 */
import {execFile} from 'node:child_process'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as delay} from 'node:timers/promises'
import {fileURLToPath} from 'node:url'
import {promisify} from 'node:util'
import assert from 'node:assert/strict'
import {after, afterEach, before, describe, it} from 'node:test'
import {Lab, netnsUnavailableReason, type LabProcess} from '../helpers/netns.js'
import {
  INIT_COMPLETE, clientConfig, clientTunnelAddress, floatLines, icmpPing, makeIdentity, openvpnUnavailableReason, peerConnected,
  sendRandom, serverConfig, serverLogFacts, serverTunnelAddress, startOpenVpn, startProbeServer, udpPing,
  type ClientFacts, type Identity, type ProbeServer,
} from '../helpers/openvpn.js'

const execFileP = promisify(execFile)

/** The CLI under test; DIVERT_E2E_BIN points the same test at an installed or packed build. */
const DIVERT_BIN = process.env.DIVERT_E2E_BIN ?? fileURLToPath(new URL('../../../bin/run.js', import.meta.url))

/** 172.31.250.0/24 split into /30s; nothing outside the test's namespaces carries these addresses. */
const NET = {
  listener: '172.31.250.1',
  cli1: '172.31.250.5', mid1: '172.31.250.6',
  cli2: '172.31.250.9', mid2: '172.31.250.10',
  srv: '172.31.250.65', midSrv: '172.31.250.66',
}
const VPN1 = {port: 1194, subnet: '10.198.0.0'}
const VPN2 = {port: 1195, subnet: '10.199.0.0'}
const TRANSFER_BYTES = 20 * 1024 * 1024
/** Longer than OpenVPN's 5 s pings and than a 20 s ping-restart: a flow lost while idle would show. */
const IDLE_MS = 32_000

const skipReason = netnsUnavailableReason() ?? openvpnUnavailableReason()

interface DivertSession {
  id: string
  protocol: string
  client: string
  backend: string
  server: string
  bytesIn: number
  bytesOut: number
}

interface Divert {
  proc: LabProcess
  /** Runs a divert CLI command against this daemon's admin socket and returns its stdout. */
  cli(args: string[]): Promise<string>
  sessions(): Promise<DivertSession[]>
}

/** Starts the divert daemon in `ns` with one UDP listener and the two OpenVPN backends. */
async function startDivert(lab: Lab, ns: string, dir: string): Promise<Divert> {
  const admin = join(dir, 'admin.sock')
  const config = join(dir, 'divert.yaml')
  const server = (port: number) => ({servers: [{address: `${NET.srv}:${port}`}], health: {check: 'none'}})
  // JSON is valid YAML (docs/DESIGN.md §4).
  await writeFile(config, JSON.stringify({
    state: join(dir, 'divert-state.json'),
    listeners: [{name: 'vpn', protocol: 'udp', bind: `${NET.listener}:1194`, backend: 'vpn1', udp: {idle_timeout: '300s'}}],
    backends: {vpn1: server(VPN1.port), vpn2: server(VPN2.port)},
  }, null, 2))
  // A short drain: at cleanup the OpenVPN flows would otherwise hold the daemon for the default 10 s.
  const proc = lab.spawn(ns, 'divert', process.execPath, [DIVERT_BIN, 'start', '-c', config, '--log-format', 'json', '--drain', '1s', '--admin', admin])
  await proc.waitFor(/"msg":"divert ready"/, {timeoutMs: 20_000})
  const cli = async (args: string[]): Promise<string> => {
    try {
      return (await execFileP(process.execPath, [DIVERT_BIN, ...args, '--admin', admin], {timeout: 20_000})).stdout
    } catch (err) {
      const e = err as {stderr?: string; message: string}
      throw new Error(`divert ${args.join(' ')} failed: ${e.stderr || e.message}`, {cause: err})
    }
  }
  const sessions = async (): Promise<DivertSession[]> => {
    const out = JSON.parse(await cli(['sessions', '--json'])) as DivertSession[] | {sessions: DivertSession[]}
    return Array.isArray(out) ? out : out.sessions
  }
  return {proc, cli, sessions}
}

/** State shared by the steps below, which run in order on one lab. */
interface World {
  lab: Lab
  dir: string
  ns: {cli1: string; cli2: string; mid: string; srv: string}
  ids: {server: Identity; cli1: Identity; cli2: Identity}
  vpn1: LabProcess
  vpn2: LabProcess
  probe1: ProbeServer
  probe2: ProbeServer
  divert: Divert
  cli1: LabProcess
  cli2: LabProcess
}

async function buildLab(lab: Lab): Promise<World['ns']> {
  const ns = {cli1: await lab.namespace('cli1'), cli2: await lab.namespace('cli2'), mid: await lab.namespace('mid'), srv: await lab.namespace('srv')}
  await lab.link({ns: ns.cli1, ifname: 'v-mid', cidr: `${NET.cli1}/30`}, {ns: ns.mid, ifname: 'v-cli1', cidr: `${NET.mid1}/30`})
  await lab.link({ns: ns.cli2, ifname: 'v-mid', cidr: `${NET.cli2}/30`}, {ns: ns.mid, ifname: 'v-cli2', cidr: `${NET.mid2}/30`})
  await lab.link({ns: ns.mid, ifname: 'v-srv', cidr: `${NET.midSrv}/30`}, {ns: ns.srv, ifname: 'v-mid', cidr: `${NET.srv}/30`})
  // The listener address sits on mid's loopback so that both client links reach the same socket.
  await lab.address(ns.mid, 'lo', `${NET.listener}/32`)
  await lab.route(ns.cli1, `${NET.listener}/32`, NET.mid1)
  await lab.route(ns.cli2, `${NET.listener}/32`, NET.mid2)
  return ns
}

async function startWorld(lab: Lab, dir: string): Promise<World> {
  const ns = await buildLab(lab)
  const ids = {server: await makeIdentity(dir, 'server'), cli1: await makeIdentity(dir, 'cli1'), cli2: await makeIdentity(dir, 'cli2')}
  const clients = [ids.cli1, ids.cli2]
  const [vpn1, vpn2] = await Promise.all([
    startOpenVpn(lab, ns.srv, dir, 'vpn1', serverConfig({identity: ids.server, clients, bind: NET.srv, ...VPN1})),
    startOpenVpn(lab, ns.srv, dir, 'vpn2', serverConfig({identity: ids.server, clients, bind: NET.srv, ...VPN2})),
  ])
  const probe1 = await startProbeServer(lab, ns.srv, 'probe-vpn1', serverTunnelAddress(VPN1.subnet))
  const probe2 = await startProbeServer(lab, ns.srv, 'probe-vpn2', serverTunnelAddress(VPN2.subnet))
  const divert = await startDivert(lab, ns.mid, dir)
  const client = (id: Identity) => clientConfig({identity: id, server: ids.server, remote: NET.listener, port: 1194})
  const [cli1, cli2] = await Promise.all([
    startOpenVpn(lab, ns.cli1, dir, 'cli1', client(ids.cli1), [divert.proc, vpn1]),
    startOpenVpn(lab, ns.cli2, dir, 'cli2', client(ids.cli2), [divert.proc, vpn1]),
  ])
  // The client's log and the server's arrive on separate pipes: wait for the server's side too.
  await Promise.all(['cli1', 'cli2'].map((cn) => vpn1.waitFor(peerConnected(cn), {timeoutMs: 10_000})))
  return {lab, dir, ns, ids, vpn1, vpn2, probe1, probe2, divert, cli1, cli2}
}

function factsFor(log: LabProcess, cn: string): ClientFacts {
  return serverLogFacts(log.text()).get(cn) ?? {connections: 0, addresses: new Set(), floats: []}
}

/** One TLS session from one upstream address and no float: the server saw one unbroken flow. */
function assertOneSession(server: LabProcess, cn: string): void {
  const f = factsFor(server, cn)
  const about = server.lines.filter((l) => l.includes(cn) || l.includes(' floated from ')).slice(-30).join('\n  | ')
  assert.equal(f.connections, 1, `${server.name} should show exactly one connection from ${cn}; its lines:\n  | ${about}`)
  assert.equal(f.addresses.size, 1, `${server.name} saw ${cn} from several addresses ${[...f.addresses].join(', ')}`)
  assert.deepEqual(floatLines(server.text()), [], `${server.name} logged floats`)
}

function sessionsOf(all: DivertSession[], address: string): DivertSession[] {
  return all.filter((s) => s.client.startsWith(`${address}:`))
}

function onlySession(all: DivertSession[], address: string): DivertSession {
  const mine = sessionsOf(all, address)
  assert.equal(mine.length, 1, `expected one divert session for ${address}, got ${JSON.stringify(mine)}`)
  return mine[0]
}

async function ping(w: World, ns: string, probe: ProbeServer): Promise<void> {
  await icmpPing(w.lab, ns, probe.host)
  await udpPing(w.lab, ns, probe)
}

describe('OpenVPN 2.6 through divert (network namespaces)', {skip: skipReason}, () => {
  const lab = new Lab(`dvt${process.pid}`)
  let dir = ''
  let w: World

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'divert-openvpn-'))
    w = await startWorld(lab, dir)
  }, {timeout: 90_000})

  after(async () => {
    // DIVERT_E2E_KEEP_LOGS=1 keeps every process's output (and the configs) for a post-mortem.
    const keep = Boolean(process.env.DIVERT_E2E_KEEP_LOGS) && dir !== ''
    await lab.close(keep ? dir : undefined)
    if (keep) console.error(`# openvpn e2e: logs and configs kept in ${dir}`)
    else if (dir) await rm(dir, {recursive: true, force: true})
  })

  afterEach(() => {
    // Each step leaves every daemon running; a crash shows here with its log, not as a later timeout.
    if (!w) return
    for (const p of [w.divert.proc, w.vpn1, w.vpn2, w.cli1, w.cli2]) p.assertRunning()
  })

  it('brings both tunnels up, each client one UDP session to vpn1', async () => {
    assert.match(clientTunnelAddress(w.cli1.text()) ?? '', /^10\.198\.0\.\d+$/)
    assert.match(clientTunnelAddress(w.cli2.text()) ?? '', /^10\.198\.0\.\d+$/)
    assert.notEqual(clientTunnelAddress(w.cli1.text()), clientTunnelAddress(w.cli2.text()))
    assertOneSession(w.vpn1, 'cli1')
    assertOneSession(w.vpn1, 'cli2')
    assert.equal(factsFor(w.vpn2, 'cli1').connections + factsFor(w.vpn2, 'cli2').connections, 0)
    const sessions = await w.divert.sessions()
    for (const address of [NET.cli1, NET.cli2]) {
      const s = onlySession(sessions, address)
      assert.equal(s.protocol, 'udp')
      assert.equal(s.backend, 'vpn1')
      assert.equal(s.server, `${NET.srv}:${VPN1.port}`)
    }
  })

  it('pings over both tunnels at once', async () => {
    await Promise.all([ping(w, w.ns.cli1, w.probe1), ping(w, w.ns.cli2, w.probe1)])
  })

  it('carries 20 MB intact (sha256 on both sides)', {timeout: 90_000}, async () => {
    const before = onlySession(await w.divert.sessions(), NET.cli1)
    const t = await sendRandom(w.lab, w.ns.cli1, w.probe1, TRANSFER_BYTES)
    assert.equal(t.sent.bytes, TRANSFER_BYTES)
    assert.deepEqual(t.received, t.sent)
    const after = onlySession(await w.divert.sessions(), NET.cli1)
    assert.equal(after.id, before.id)
    assert.ok(after.bytesIn - before.bytesIn >= TRANSFER_BYTES, `cli1's session counted ${after.bytesIn - before.bytesIn} bytes in for a 20 MB upload`)
    assertOneSession(w.vpn1, 'cli1')
  })

  it(`keeps both tunnels and sessions through ${IDLE_MS / 1000} s without user traffic`, {timeout: IDLE_MS + 30_000}, async () => {
    const before = await w.divert.sessions()
    await delay(IDLE_MS)
    await Promise.all([ping(w, w.ns.cli1, w.probe1), ping(w, w.ns.cli2, w.probe1)])
    assertOneSession(w.vpn1, 'cli1')
    assertOneSession(w.vpn1, 'cli2')
    const after = await w.divert.sessions()
    for (const address of [NET.cli1, NET.cli2]) {
      const [was, now] = [onlySession(before, address), onlySession(after, address)]
      assert.equal(now.id, was.id, `${address} got a new divert session while idle`)
      assert.ok(now.bytesIn > was.bytesIn && now.bytesOut > was.bytesOut, `${address}'s counters did not grow`)
    }
    assert.doesNotMatch(w.cli1.text() + w.cli2.text(), /Inactivity timeout|SIGUSR1/, 'a client restarted while idle')
  })

  it('`divert add --to vpn2 --existing kill` moves cli1 to vpn2; cli2 stays on vpn1', {timeout: 90_000}, async () => {
    const cli2Before = onlySession(await w.divert.sessions(), NET.cli2)
    const mark = w.cli1.mark()
    await w.divert.cli(['add', NET.cli1, '--to', 'vpn2', '--existing', 'kill'])
    // ping-restart (20 s) notices the dead session; the new handshake goes through the new route.
    await w.cli1.waitFor(INIT_COMPLETE, {timeoutMs: 60_000, fromLine: mark, watch: [w.divert.proc, w.vpn2]})
    assert.match(clientTunnelAddress(w.cli1.text(mark)) ?? '', /^10\.199\.0\.\d+$/)
    await w.vpn2.waitFor(peerConnected('cli1'), {timeoutMs: 10_000})
    await ping(w, w.ns.cli1, w.probe2)
    assertOneSession(w.vpn2, 'cli1')
    assert.equal(factsFor(w.vpn2, 'cli2').connections, 0, 'cli2 reached vpn2')

    await ping(w, w.ns.cli2, w.probe1)
    assertOneSession(w.vpn1, 'cli2')
    assert.doesNotMatch(w.cli2.text(), /Inactivity timeout|SIGUSR1/, 'cli2 restarted')
    const sessions = await w.divert.sessions()
    const cli2After = onlySession(sessions, NET.cli2)
    assert.equal(cli2After.id, cli2Before.id, 'cli2 lost its divert session')
    assert.equal(cli2After.backend, 'vpn1')
    const cli1Backends = new Set(sessionsOf(sessions, NET.cli1).map((s) => s.backend))
    assert.deepEqual([...cli1Backends], ['vpn2'], `cli1's sessions: ${JSON.stringify(sessionsOf(sessions, NET.cli1))}`)
  })
})
