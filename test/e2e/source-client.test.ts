/**
 * `source: client` end to end: divert on a router between a device LAN and a server LAN, and a staging
 * server that reports the peer address it sees. With `source: client` it sees the device's own address
 * (TCP, and UDP with the device's own port); without it, the router's. `mark:` is on the upstream
 * packets (an nftables counter on the router's output path).
 *
 *   dev 192.0.2.2 ─▶ gw 192.0.2.1 (divert) │ gw 198.51.100.1 ─▶ srv 198.51.100.2 (staging: "who am I talking to")
 *   replies to 192.0.2.2 ◀─ srv's default route via gw ◀─ gw: socket transparent → mark 1 → table 100 → local
 *
 * The router's reply path is what README "Upstream source address" tells a `source: client` user to
 * install; the test installs it by hand in the router namespace, in an nftables table of its own.
 * Every namespace, veth and rule lives in namespaces this test creates and removes.
 */
import {execFile} from 'node:child_process'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {promisify} from 'node:util'
import assert from 'node:assert/strict'
import {after, before, describe, it} from 'node:test'
import {once} from 'node:events'
import {writeFileSync} from 'node:fs'
import {Lab, netnsUnavailableReason, whichCommand, type LabProcess} from '../helpers/netns.js'
import {installReplyPath, NFT} from '../helpers/reply-path.js'
import {runCli, spawnDaemon, tempDir as makeTempDir} from '../helpers/daemon.js'
import {freePort} from '../helpers/servers.js'

const execFileP = promisify(execFile)
const DIVERT_BIN = process.env.DIVERT_E2E_BIN ?? fileURLToPath(new URL('../../../bin/run.js', import.meta.url))
const NET = {dev: '192.0.2.2', gwDev: '192.0.2.1', gwSrv: '198.51.100.1', srv: '198.51.100.2'}
const MARK = 0x2a
const PREFIX = `dvs${process.pid}`

const skipReason = netnsUnavailableReason() ?? (whichCommand('nft') ? undefined : 'needs nft (Debian package nftables) for the router\'s reply path')

/** The staging server: answers every TCP connection and UDP datagram with the peer it sees. */
const STAGING = `
const net = require('node:net'), dgram = require('node:dgram')
const tcp = net.createServer((s) => s.end(s.remoteAddress + ':' + s.remotePort + '\\n'))
const udp = dgram.createSocket('udp4', (m, r) => udp.send(r.address + ':' + r.port, r.port, r.address))
tcp.listen(0, '${NET.srv}', () => udp.bind(0, '${NET.srv}', () => console.log('ports tcp=' + tcp.address().port + ' udp=' + udp.address().port)))
`

/** The device: one TCP connection or one UDP datagram to divert; prints its own port and what staging said. */
const DEVICE = `
const net = require('node:net'), dgram = require('node:dgram')
const [proto, host, port] = process.argv.slice(1)
const fail = (e) => { console.error(String(e)); process.exit(1) }
setTimeout(() => fail('no answer within 5 s'), 5000).unref()
if (proto === 'tcp') {
  const s = net.connect(Number(port), host)
  let text = ''
  s.on('data', (d) => (text += d)).on('end', () => console.log(s.localPort + ' ' + text.trim())).on('error', fail)
} else {
  const s = dgram.createSocket('udp4', (m) => { console.log(s.address().port + ' ' + m); s.close() })
  s.bind(0, () => s.send('who', Number(port), host))
}
`

interface World {
  lab: Lab
  dir: string
  ns: {dev: string; gw: string; srv: string}
  divert: LabProcess
  admin: string
  /** Listener name → its bound port on the router. */
  ports: Record<string, number>
}

async function buildLab(lab: Lab): Promise<World['ns']> {
  const ns = {dev: await lab.namespace('dev'), gw: await lab.namespace('gw'), srv: await lab.namespace('srv')}
  await lab.link({ns: ns.dev, ifname: 'dvs-gw', cidr: `${NET.dev}/24`}, {ns: ns.gw, ifname: 'dvs-dev', cidr: `${NET.gwDev}/24`})
  await lab.link({ns: ns.gw, ifname: 'dvs-srv', cidr: `${NET.gwSrv}/24`}, {ns: ns.srv, ifname: 'dvs-gw', cidr: `${NET.srv}/24`})
  await lab.route(ns.dev, 'default', NET.gwDev)
  await lab.route(ns.srv, 'default', NET.gwSrv)
  // The reply path README asks for, plus an output counter of the packets that carry the backend's mark.
  await installReplyPath(lab, ns.gw, tempDir, PREFIX, `  chain out {
    type route hook output priority mangle; policy accept;
    meta mark ${MARK} counter
  }
`)
  return ns
}

let tempDir = ''

/** Starts divert in the router namespace with a transparent and a plain backend for each protocol. */
async function startDivert(lab: Lab, gw: string, dir: string, staging: {tcp: number; udp: number}): Promise<Pick<World, 'divert' | 'admin' | 'ports'>> {
  const admin = join(dir, 'admin.sock')
  const config = join(dir, 'divert.yaml')
  const tcp = `${NET.srv}:${staging.tcp}`
  const udp = `${NET.srv}:${staging.udp}`
  const listener = (name: string, protocol: string, backend: string) => ({name, protocol, bind: `${NET.gwDev}:0`, backend})
  await writeFile(config, JSON.stringify({
    listeners: [listener('tcp-client', 'tcp', 'tcp-client'), listener('tcp-host', 'tcp', 'tcp-host'), listener('udp-client', 'udp', 'udp-client'), listener('udp-host', 'udp', 'udp-host')],
    backends: {
      'tcp-client': {servers: [{address: tcp}], source: 'client', mark: MARK},
      'tcp-host': {servers: [{address: tcp}]},
      'udp-client': {servers: [{address: udp}], source: 'client', health: {check: 'none'}},
      'udp-host': {servers: [{address: udp}], health: {check: 'none'}},
    },
  }, null, 2))
  const divert = lab.spawn(gw, 'divert', process.execPath, [DIVERT_BIN, 'start', '-c', config, '--log-format', 'json', '--drain', '1s', '--admin', admin])
  await divert.waitFor(/"msg":"divert ready"/, {timeoutMs: 20_000})
  const {stdout} = await execFileP(process.execPath, [DIVERT_BIN, 'status', '--json', '--admin', admin], {timeout: 20_000})
  const status = JSON.parse(stdout) as {listeners: Array<{name: string; address: string}>}
  const ports = Object.fromEntries(status.listeners.map((l) => [l.name, Number(/:(\d+)$/.exec(l.address)![1])]))
  return {divert, admin, ports}
}

/** The device's port and the `address:port` staging saw, for one connection or datagram through `listener`. */
async function ask(w: World, proto: 'tcp' | 'udp', listener: string): Promise<{devicePort: number; seen: string}> {
  const out = await w.lab.run(w.ns.dev, process.execPath, ['-e', DEVICE, proto, NET.gwDev, String(w.ports[listener])], 10_000)
  const [devicePort, seen] = out.trim().split(' ')
  return {devicePort: Number(devicePort), seen}
}

describe('issue 13: source: client — the backend sees the device\'s own address', {skip: skipReason ?? false}, () => {
  let w: World
  before(async () => {
    tempDir = await mkdtemp(join(tmpdir(), 'divert-source-client-'))
    const lab = new Lab(PREFIX)
    try {
      const ns = await buildLab(lab)
      const staging = lab.spawn(ns.srv, 'staging', process.execPath, ['-e', STAGING])
      const [, tcpPort, udpPort] = await staging.waitFor(/^ports tcp=(\d+) udp=(\d+)$/, {timeoutMs: 10_000})
      w = {lab, dir: tempDir, ns, ...await startDivert(lab, ns.gw, tempDir, {tcp: Number(tcpPort), udp: Number(udpPort)})}
    } catch (error) {
      await lab.close()
      throw error
    }
  })
  after(async () => {
    await w?.lab.close(w?.dir)
    if (tempDir) await rm(tempDir, {recursive: true, force: true})
  })

  it('TCP: with source: client staging sees the device\'s address; without it, the router\'s', async () => {
    assert.match((await ask(w, 'tcp', 'tcp-client')).seen, new RegExp(`^${NET.dev.replaceAll('.', '\\.')}:\\d+$`))
    assert.match((await ask(w, 'tcp', 'tcp-host')).seen, new RegExp(`^${NET.gwSrv.replaceAll('.', '\\.')}:\\d+$`))
  })

  it('UDP: with source: client staging sees the device\'s address and port; without it, the router\'s', async () => {
    const direct = await ask(w, 'udp', 'udp-client')
    assert.equal(direct.seen, `${NET.dev}:${direct.devicePort}`)
    assert.match((await ask(w, 'udp', 'udp-host')).seen, new RegExp(`^${NET.gwSrv.replaceAll('.', '\\.')}:\\d+$`))
  })

  it('mark: the upstream packets of a marked backend carry the mark (nft counter on the router)', async () => {
    const packets = async (): Promise<number> => {
      const listing = await w.lab.run(w.ns.gw, NFT, ['list', 'chain', 'inet', PREFIX, 'out'])
      return Number(/packets (\d+)/.exec(listing)?.[1] ?? NaN)
    }
    const before = await packets()
    await ask(w, 'tcp', 'tcp-host')
    assert.equal(await packets(), before, 'an unmarked backend adds nothing')
    await ask(w, 'tcp', 'tcp-client')
    assert.ok((await packets()) > before, 'the marked backend\'s packets are counted')
    w.divert.assertRunning()
  })
})

const SETPRIV = whichCommand('setpriv')
/** Runs the daemon without CAP_NET_ADMIN and CAP_NET_RAW (either lets a socket set IP_TRANSPARENT or SO_MARK). */
const NO_NET_ADMIN = [SETPRIV ?? 'setpriv', '--bounding-set', '-net_admin,-net_raw', '--inh-caps', '-net_admin,-net_raw', '--']

describe('issue 13: without CAP_NET_ADMIN', {skip: process.getuid?.() !== 0 ? 'needs root to drop capabilities from' : SETPRIV ? false : 'needs setpriv (util-linux)'}, () => {
  it('start and reload refuse source: client and mark: with one line naming what is missing', async () => {
    const {dir, cleanup} = makeTempDir('divert-nocap-')
    const file = join(dir, 'divert.yaml')
    const admin = join(dir, 'admin.sock')
    const config = (extra: string): string => `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: staging }\nbackends:\n  staging: { servers: [ { address: "127.0.0.1:9" } ]${extra} }\n`
    const port = await freePort()
    try {
      writeFileSync(file, config(', source: client'))
      const refused = await spawnDaemon(file, {admin, dir, wrapper: NO_NET_ADMIN, waitReady: false})
      const code = refused.proc.exitCode ?? (await once(refused.proc, 'exit'))[0]
      assert.equal(code, 4)
      const lines = refused.stderr.join('').split('\n').filter((l) => l.trim() !== '')
      assert.equal(lines.length, 1, lines.join('\n'))
      assert.match(lines[0], /^divert: backend staging: source: client needs CAP_NET_ADMIN \(or CAP_NET_RAW\) to set IP_TRANSPARENT \(EPERM\)/)

      writeFileSync(file, config(''))
      const daemon = await spawnDaemon(file, {admin, dir, wrapper: NO_NET_ADMIN})
      try {
        writeFileSync(file, config(', mark: 7'))
        const reload = await runCli(['reload', '--admin', admin])
        assert.equal(reload.code, 4, reload.stderr)
        assert.match(reload.stderr.trim(), /^divert: backend staging: mark needs CAP_NET_ADMIN \(or CAP_NET_RAW\) to set SO_MARK \(EPERM\)/)
        assert.equal((await runCli(['status', '--admin', admin])).code, 0, 'the daemon goes on with the old config')
      } finally {
        await daemon.stop()
      }
    } finally {
      cleanup()
    }
  })
})
