/**
 * The socket factory (src/net/sockets.ts) on loopback: the injected connector, `source:` (a local IP
 * or the client's own address), `mark:`, a socket that cannot be prepared, and the privilege check.
 * Loopback addresses other than 127.0.0.1 are local, so binding them needs no routing set-up.
 */
import {describe, it, after} from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import net from 'node:net'
import {once} from 'node:events'
import {checkUpstreamPrivileges, createSocketFactory} from '../../src/net/sockets.js'
import {tcpConnector} from '../../src/net/connector.js'
import {addressOf, type Address} from '../../src/addr/address.js'
import * as sys from '../../src/sys/libc.js'
import {DivertError} from '../../src/errors.js'
import {startServer, connect, echo, readLine, freePort, until, type Behaviour, type TestServer} from '../helpers/servers.js'
import {startInProcess} from '../helpers/daemon.js'
import {startUdpEcho, type UdpEcho} from '../helpers/udp.js'

const root = process.getuid?.() === 0
const closers: Array<() => unknown> = []
after(async () => {
  for (const c of closers.reverse()) await c()
})

async function tcpServer(): Promise<TestServer> {
  const s = await startServer('srv')
  closers.push(() => s.close())
  return s
}

async function udpServer(): Promise<UdpEcho> {
  const s = await startUdpEcho('srv')
  closers.push(() => s.close())
  return s
}

const at = (s: {host: string; port: number}): Address => addressOf(s.host, s.port)

/** Connects, waits for the echo server's greeting, and returns where the server saw the connection come from. */
async function seenBy(server: TestServer, socket: net.Socket): Promise<{address: string; port: number}> {
  closers.push(() => socket.destroy())
  await once(socket, 'connect')
  await once(socket, 'data')
  const mine = socket.localPort
  const theirs = [...server.sockets].find((s) => s.remotePort === mine)
  assert.ok(theirs, `the server has a socket from port ${mine}`)
  return {address: addressOf(theirs.remoteAddress!, 0).address, port: theirs.remotePort!}
}

/** Sends one datagram from the factory's socket and returns the source the server recorded. */
async function udpSeenBy(server: UdpEcho, socket: dgram.Socket): Promise<string> {
  closers.push(() => socket.close())
  await new Promise<void>((resolve, reject) => socket.connect(server.port, server.host, (e?: Error) => (e ? reject(e) : resolve())))
  socket.send('x')
  await once(socket, 'message')
  return server.received.at(-1)!.from
}

describe('issue 12: the socket factory', () => {
  it('opens plain TCP sockets through the injected connector (the black-hole test seam)', async () => {
    const server = await tcpServer()
    const seen: Address[] = []
    const sockets = createSocketFactory({connect: (to) => (seen.push(to), tcpConnector(to))})
    const from = await seenBy(server, sockets.tcp(at(server), {keepaliveMs: 5000}))
    assert.deepEqual(seen, [at(server)])
    assert.equal(from.address, '127.0.0.1')
  })

  it('source: <IP> binds TCP and UDP upstream sockets to that local address', async () => {
    const sockets = createSocketFactory()
    const tcp = await tcpServer()
    assert.equal((await seenBy(tcp, sockets.tcp(at(tcp), {source: '127.0.0.2'}))).address, '127.0.0.2')
    const udp = await udpServer()
    assert.match(await udpSeenBy(udp, sockets.udp(at(udp), {source: '127.0.0.2'})), /^127\.0\.0\.2:\d+$/)
  })

  it('source: client binds the client\'s address (TCP: any port; UDP: the client\'s port while it is free, else another)', {skip: root ? false : 'IP_TRANSPARENT needs CAP_NET_ADMIN'}, async () => {
    const sockets = createSocketFactory()
    const client = {address: '127.0.0.3', port: 40_000 + (process.pid % 20_000), family: 4 as const}
    const tcp = await tcpServer()
    assert.equal((await seenBy(tcp, sockets.tcp(at(tcp), {source: 'client'}, client))).address, '127.0.0.3')
    const udp = await udpServer()
    const first = sockets.udp(at(udp), {source: 'client'}, client)
    assert.equal(await udpSeenBy(udp, first), `127.0.0.3:${client.port}`)
    // The same client on a second flow: its port is taken here now, so the second socket gets another.
    const second = await udpSeenBy(udp, sockets.udp(at(udp), {source: 'client'}, client))
    assert.match(second, /^127\.0\.0\.3:\d+$/)
    assert.notEqual(second, `127.0.0.3:${client.port}`)
  })

  it('source: client without a client (a health check) leaves the source to the host', async () => {
    const tcp = await tcpServer()
    assert.equal((await seenBy(tcp, createSocketFactory().tcp(at(tcp), {source: 'client'}))).address, '127.0.0.1')
  })

  it('mark: sets SO_MARK on the upstream socket', {skip: root ? false : 'SO_MARK needs CAP_NET_ADMIN'}, async () => {
    const tcp = await tcpServer()
    const socket = createSocketFactory().tcp(at(tcp), {mark: 0x2a})
    await seenBy(tcp, socket)
    const fd = (socket as unknown as {_handle: {fd: number}})._handle.fd
    assert.equal(sys.getOption(fd, sys.SOL_SOCKET, sys.SO_MARK, 4).readUInt32LE(), 0x2a)
  })

  it('a socket that cannot be prepared fails alone: TCP as a connect error, UDP as a throw', async () => {
    const sockets = createSocketFactory()
    // 203.0.113.0/24 is documentation space, never local: bind(2) says EADDRNOTAVAIL.
    const tcp = sockets.tcp({address: '127.0.0.1', port: 9, family: 4}, {source: '203.0.113.9'})
    const [error] = await once(tcp, 'error') as [NodeJS.ErrnoException]
    assert.equal(error.code, 'EADDRNOTAVAIL')
    assert.match(error.message, /bind 203\.0\.113\.9:0/)
    assert.throws(() => sockets.udp({address: '127.0.0.1', port: 9, family: 4}, {source: '203.0.113.9'}), (e: sys.SysError) => e.code === 'EADDRNOTAVAIL')
    const v6client = {address: '::1', port: 5, family: 6 as const}
    const [mixed] = await once(sockets.tcp({address: '127.0.0.1', port: 9, family: 4}, {source: 'client'}, v6client), 'error') as [NodeJS.ErrnoException]
    assert.equal(mixed.code, 'EAFNOSUPPORT')
  })

  it('the privilege check names the backend, the option and what is missing, in one line', () => {
    const denied = (): string => 'needs CAP_NET_ADMIN to set IP_TRANSPARENT (EPERM): run divert as root, or grant it (systemd AmbientCapabilities=CAP_NET_ADMIN)'
    assert.throws(() => checkUpstreamPrivileges([{name: 'prod'}, {name: 'staging', source: 'client'}], denied), (e: DivertError) =>
      e.code === 'DIVERT_ERR_CAPABILITY_MISSING' && !e.message.includes('\n') && /^backend staging: source: client needs CAP_NET_ADMIN/.test(e.message))
    assert.throws(() => checkUpstreamPrivileges([{name: 'b', mark: 1}], denied), /backend b: mark needs CAP_NET_ADMIN/)
    // Options that need nothing are never probed.
    checkUpstreamPrivileges([{name: 'p', source: '127.0.0.2', mark: 0}], () => assert.fail('probed'))
    if (root) checkUpstreamPrivileges([{name: 's', source: 'client', mark: 1}])
  })
})

describe('issue 13: upstream options in the daemon', () => {
  it('a session whose upstream socket cannot be bound ends with the cause logged; the daemon goes on serving', async () => {
    const good = await tcpServer()
    const udp = await udpServer()
    const [pBad, pGood] = [await freePort(), await freePort()]
    const h = await startInProcess(`
listeners:
  - { name: bad, bind: "127.0.0.1:${pBad}", backend: unbindable }
  - { name: badudp, protocol: udp, bind: "127.0.0.1:${pBad}", backend: unbindable-udp }
  - { name: good, bind: "127.0.0.1:${pGood}", backend: local }
backends:
  unbindable: { servers: [ { address: "${good.address}" } ], source: 203.0.113.9 }
  unbindable-udp: { servers: [ { address: "${udp.address}" } ], source: 203.0.113.9, health: { check: none } }
  local: { servers: [ { address: "${good.address}" } ], source: 127.0.0.4 }
`)
    closers.push(() => h.stop())
    // divert resets the client when the upstream fails: the reset may beat the client's own connect.
    const refused = net.connect({port: pBad, host: '127.0.0.1'}).on('error', () => undefined)
    await new Promise((resolve) => refused.once('close', resolve))
    const client = dgram.createSocket('udp4')
    closers.push(() => client.close())
    client.send('x', pBad, '127.0.0.1')
    await until(() => h.logs.find('session closed').length === 2, 5000, 'two close lines')
    const lines = h.logs.find('session closed')
    assert.deepEqual(lines.map((l) => [l.protocol, l.cause, l.error]).sort(), [
      ['tcp', 'connect-failed', `EADDRNOTAVAIL connecting to ${good.address} (bind 203.0.113.9:0)`],
      ['udp', 'connect-failed', 'EADDRNOTAVAIL (bind 203.0.113.9:0)'],
    ])
    const ok = await connect({port: pGood})
    closers.push(() => ok.destroy())
    assert.equal(await readLine(ok), 'srv')
    assert.equal([...good.sockets].find((s) => s.remotePort === undefined || s.remoteAddress === '127.0.0.4')?.remoteAddress, '127.0.0.4')
  })

  it('mirror copies and health checks take their backend\'s source too', async () => {
    const from = {main: [] as string[], copy: [] as string[]}
    const recording = (list: string[]): Behaviour => (socket, server) => {
      list.push(socket.remoteAddress!)
      echo(socket, server)
    }
    const main = await startServer('srv', recording(from.main))
    const copy = await startServer('copy', recording(from.copy))
    closers.push(() => main.close(), () => copy.close())
    const port = await freePort()
    const h = await startInProcess(`
listeners:
  - { name: main, bind: "127.0.0.1:${port}", backend: main }
backends:
  main: { servers: [ { address: "${main.address}" } ], source: 127.0.0.4, health: { interval: 1s, timeout: 1s } }
  copy: { servers: [ { address: "${copy.address}" } ], source: 127.0.0.5 }
rules:
  - { source: 127.0.0.1, mirror: copy }
`)
    closers.push(() => h.stop())
    const client = await connect({port})
    closers.push(() => client.destroy())
    assert.equal(await readLine(client), 'srv')
    client.write('copied\n')
    // One session and at least one health check reach main; the session's copy reaches the mirror.
    await until(() => from.copy.length > 0 && from.main.length > 1, 5000, 'the mirror copy and a health check')
    assert.deepEqual(new Set(from.copy), new Set(['127.0.0.5']))
    assert.deepEqual(new Set(from.main), new Set(['127.0.0.4']))
  })
})
