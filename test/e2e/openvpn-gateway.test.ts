/**
 * Issue 13 acceptance, the transparent variant of the OpenVPN test: divert runs in gateway mode and
 * stands in for the production OpenVPN server; a rule sends one device's tunnel to the staging
 * OpenVPN server, which sees the device's own address (`source: client`), while the device still
 * dials production's address and hears from it.
 *
 *   dev 192.0.2.10 ─ gw (divert: udp listener bound to 198.51.100.10:1194, transparent) ─ srv: prod vpn 198.51.100.10:1194,
 *                                                                                        staging vpn 198.51.100.20:1194
 *
 * Everything lives in namespaces this test creates (prefix dvgo + pid) and removes in `after`.
 */
import {execFile} from 'node:child_process'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'
import assert from 'node:assert/strict'
import {after, before, describe, it} from 'node:test'
import {Lab, netnsUnavailableReason, whichCommand, type LabProcess} from '../helpers/netns.js'
import {BIN} from '../helpers/daemon.js'
import {
  clientConfig, icmpPing, makeIdentity, openvpnUnavailableReason, peerConnected, serverConfig, serverLogFacts, serverTunnelAddress, startOpenVpn,
} from '../helpers/openvpn.js'

const execFileP = promisify(execFile)
const NET = {gw: '192.0.2.1', dev: '192.0.2.10', gwSrv: '198.51.100.1', prod: '198.51.100.10', staging: '198.51.100.20'}
const PROD = {port: 1194, subnet: '10.198.0.0'}
const STAGING = {port: 1194, subnet: '10.199.0.0'}

const skipReason = netnsUnavailableReason() ?? openvpnUnavailableReason() ?? (whichCommand('nft') ? undefined : 'needs `nft` (apt-get install nftables)')

describe('issue 13: an OpenVPN device diverted in gateway mode (network namespaces)', {skip: skipReason}, () => {
  const lab = new Lab(`dvgo${process.pid}`)
  let dir = ''
  let ns: {dev: string; gw: string; srv: string}
  let prod: LabProcess
  let staging: LabProcess
  let admin = ''

  const divert = async (...args: string[]): Promise<string> => (await execFileP(process.execPath, [BIN, ...args, '--admin', admin], {timeout: 20_000})).stdout

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'divert-openvpn-gw-'))
    ns = {dev: await lab.namespace('dev'), gw: await lab.namespace('gw'), srv: await lab.namespace('srv')}
    await lab.link({ns: ns.dev, ifname: 'eth0', cidr: `${NET.dev}/24`}, {ns: ns.gw, ifname: 'lan', cidr: `${NET.gw}/24`})
    await lab.link({ns: ns.gw, ifname: 'srv', cidr: `${NET.gwSrv}/24`}, {ns: ns.srv, ifname: 'eth0', cidr: `${NET.prod}/24`})
    await lab.address(ns.srv, 'eth0', `${NET.staging}/24`)
    await lab.run(ns.dev, 'ip', ['route', 'add', 'default', 'via', NET.gw])
    await lab.run(ns.srv, 'ip', ['route', 'add', 'default', 'via', NET.gwSrv])
    await lab.run(ns.gw, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'])
    const ids = {server: await makeIdentity(dir, 'server'), dev: await makeIdentity(dir, 'dev')}
    prod = await startOpenVpn(lab, ns.srv, dir, 'vpn-prod', serverConfig({identity: ids.server, clients: [ids.dev], bind: NET.prod, ...PROD}))
    staging = await startOpenVpn(lab, ns.srv, dir, 'vpn-staging', serverConfig({identity: ids.server, clients: [ids.dev], bind: NET.staging, ...STAGING}))
    admin = join(dir, 'admin.sock')
    const config = join(dir, 'divert.yaml')
    await writeFile(config, `
transparent: { table: dvgo${process.pid} }
listeners:
  - { name: vpn, protocol: udp, bind: "${NET.prod}:${PROD.port}", transparent: true, backend: original, intercept: {} }
backends:
  staging-vpn: { source: client, servers: [ { address: "${NET.staging}:${STAGING.port}" } ], health: { check: none } }
`)
    const d = lab.spawn(ns.gw, 'divert', process.execPath, [BIN, 'start', '-c', config, '--log-format', 'json', '--drain', '1s', '--admin', admin])
    await d.waitFor(/"msg":"divert ready"/, {timeoutMs: 20_000})
    await divert('add', NET.dev, '--to', 'staging-vpn', '--listener', 'vpn')
    const client = clientConfig({identity: ids.dev, server: ids.server, remote: NET.prod, port: PROD.port})
    await startOpenVpn(lab, ns.dev, dir, 'dev', client, [d, staging])
    await staging.waitFor(peerConnected('dev'), {timeoutMs: 10_000})
  }, {timeout: 90_000})

  after(async () => {
    await lab.close()
    if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('issue 13: the device dials production\'s address; the staging server sees the device\'s own address; production sees nothing', async () => {
    const seen = serverLogFacts(staging.text()).get('dev')
    assert.equal(seen?.connections, 1)
    assert.deepEqual([...seen!.addresses].map((a) => a.split(':')[0]), [NET.dev], `staging saw ${[...seen!.addresses].join(', ')}`)
    assert.equal(serverLogFacts(prod.text()).get('dev'), undefined, 'production saw the device')
    const flows = JSON.parse(await divert('sessions', '--json')) as Array<{client: string; backend: string; destination: string}>
    assert.equal(flows.length, 1)
    assert.equal(flows[0].backend, 'staging-vpn')
    assert.equal(flows[0].destination, `${NET.prod}:${PROD.port}`)
    assert.match(flows[0].client, new RegExp(`^${NET.dev.replace(/\./g, '\\.')}:`))
  })

  it('issue 13: the tunnel carries traffic to the staging server', async () => {
    await icmpPing(lab, ns.dev, serverTunnelAddress(STAGING.subnet))
  })
})
