/**
 * Acceptance, transparent variant of openvpn.test.ts: an OpenVPN 2.6 server behind divert with
 * `source: client` sees the device's real address and port, not divert's, and the tunnel works.
 *
 *   cli (openvpn client 172.31.251.5) → mid (divert, UDP 172.31.251.1:1194, source: client) → srv (openvpn 172.31.251.65:1194)
 *   srv's route to the client's /30 points at mid; mid delivers those replies to divert's transparent socket
 *
 * mid gets by hand what README "Upstream source address" asks of a `source: client` user: an nftables
 * table of this test's own (`socket transparent 1 meta mark set 1`) and the fwmark policy route.
 */
import {execFile} from 'node:child_process'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {promisify} from 'node:util'
import assert from 'node:assert/strict'
import {after, before, describe, it} from 'node:test'
import {Lab, netnsUnavailableReason, whichCommand, type LabProcess} from '../helpers/netns.js'
import {installReplyPath} from '../helpers/reply-path.js'
import {
  clientConfig, icmpPing, makeIdentity, openvpnUnavailableReason, peerConnected, serverConfig, serverLogFacts,
  serverTunnelAddress, startOpenVpn, startProbeServer, udpPing, type ProbeServer,
} from '../helpers/openvpn.js'

const execFileP = promisify(execFile)
const DIVERT_BIN = process.env.DIVERT_E2E_BIN ?? fileURLToPath(new URL('../../../bin/run.js', import.meta.url))
const PREFIX = `dvs${process.pid}`
const NET = {listener: '172.31.251.1', cli: '172.31.251.5', midCli: '172.31.251.6', cliNet: '172.31.251.4/30', srv: '172.31.251.65', midSrv: '172.31.251.66'}
const VPN = {port: 1194, subnet: '10.197.0.0'}

const skipReason = netnsUnavailableReason() ?? openvpnUnavailableReason() ?? (whichCommand('nft') ? undefined : 'needs nft (Debian package nftables)')

interface World {
  ns: {cli: string; mid: string; srv: string}
  vpn: LabProcess
  cli: LabProcess
  divert: LabProcess
  probe: ProbeServer
  admin: string
}

async function buildLab(lab: Lab, dir: string): Promise<World['ns']> {
  const ns = {cli: await lab.namespace('cli'), mid: await lab.namespace('mid'), srv: await lab.namespace('srv')}
  await lab.link({ns: ns.cli, ifname: 'dvs-mid', cidr: `${NET.cli}/30`}, {ns: ns.mid, ifname: 'dvs-cli', cidr: `${NET.midCli}/30`})
  await lab.link({ns: ns.mid, ifname: 'dvs-srv', cidr: `${NET.midSrv}/30`}, {ns: ns.srv, ifname: 'dvs-mid', cidr: `${NET.srv}/30`})
  await lab.address(ns.mid, 'lo', `${NET.listener}/32`)
  await lab.route(ns.cli, `${NET.listener}/32`, NET.midCli)
  // The server answers the device's own address: that route must lead back through divert's host.
  await lab.route(ns.srv, NET.cliNet, NET.midSrv)
  await installReplyPath(lab, ns.mid, dir, PREFIX)
  return ns
}

async function startDivert(lab: Lab, ns: string, dir: string): Promise<{divert: LabProcess; admin: string}> {
  const admin = join(dir, 'admin.sock')
  const config = join(dir, 'divert.yaml')
  await writeFile(config, JSON.stringify({
    listeners: [{name: 'vpn', protocol: 'udp', bind: `${NET.listener}:${VPN.port}`, backend: 'vpn'}],
    backends: {vpn: {servers: [{address: `${NET.srv}:${VPN.port}`}], health: {check: 'none'}, source: 'client'}},
  }, null, 2))
  const divert = lab.spawn(ns, 'divert', process.execPath, [DIVERT_BIN, 'start', '-c', config, '--log-format', 'json', '--drain', '1s', '--admin', admin])
  await divert.waitFor(/"msg":"divert ready"/, {timeoutMs: 20_000})
  return {divert, admin}
}

describe('issue 13: OpenVPN behind divert with source: client (network namespaces)', {skip: skipReason ?? false}, () => {
  const lab = new Lab(PREFIX)
  let dir = ''
  let w: World

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'divert-openvpn-transparent-'))
    const ns = await buildLab(lab, dir)
    const ids = {server: await makeIdentity(dir, 'server'), cli: await makeIdentity(dir, 'cli1')}
    const vpn = await startOpenVpn(lab, ns.srv, dir, 'vpn', serverConfig({identity: ids.server, clients: [ids.cli], bind: NET.srv, ...VPN}))
    const probe = await startProbeServer(lab, ns.srv, 'probe', serverTunnelAddress(VPN.subnet))
    const {divert, admin} = await startDivert(lab, ns.mid, dir)
    const cli = await startOpenVpn(lab, ns.cli, dir, 'cli1', clientConfig({identity: ids.cli, server: ids.server, remote: NET.listener, port: VPN.port}), [divert, vpn])
    await vpn.waitFor(peerConnected('cli1'), {timeoutMs: 10_000})
    w = {ns, vpn, cli, divert, probe, admin}
  }, {timeout: 90_000})

  after(async () => {
    await lab.close()
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('the OpenVPN server sees the device\'s own address and port, and the tunnel carries traffic', async () => {
    const {stdout} = await execFileP(process.execPath, [DIVERT_BIN, 'sessions', '--json', '--admin', w.admin], {timeout: 20_000})
    const sessions = JSON.parse(stdout) as Array<{client: string; backend: string}>
    assert.equal(sessions.length, 1, stdout)
    assert.match(sessions[0].client, new RegExp(`^${NET.cli.replaceAll('.', '\\.')}:\\d+$`))
    const facts = serverLogFacts(w.vpn.text()).get('cli1')
    assert.ok(facts, `the server logged no session for cli1:\n${w.vpn.text()}`)
    assert.deepEqual([...facts.addresses], [sessions[0].client], 'the server saw the device itself, at the address:port divert accepted it from')
    await icmpPing(lab, w.ns.cli, w.probe.host)
    await udpPing(lab, w.ns.cli, w.probe)
    w.divert.assertRunning()
    w.cli.assertRunning()
  })
})
