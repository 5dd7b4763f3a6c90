/**
 * Expiry, idle timeouts and health-check intervals on a fake clock (test/helpers/clock.ts) injected
 * into an in-process daemon: real loopback sockets, no real time waited for any timeout. Each test
 * steps the clock to one millisecond before a deadline and then onto it, so "not before" and "at"
 * are both exact.
 *
 *   test ─advance(ms)─▶ FakeClock ─▶ expiry timer / coarse tick ─▶ daemon ⇄ loopback servers
 *
 * The coarse tick (1 s here) is the idle timeouts' granularity: traffic is noticed by the first
 * tick after it, and a session closes at the first tick where it has been idle that long.
 */
import {test, describe, before, after} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {FakeClock} from '../helpers/clock.js'
import {closed, connect, readBytes, readLine, startServer, until, whoAnswers, type TestServer} from '../helpers/servers.js'
import {silent, startUdpEcho, UdpClient, type UdpEcho} from '../helpers/udp.js'
import {adminOf} from '../faults/kit.js'
import type {AdminClient} from '../../src/admin/client.js'
import type {Session} from '../../src/session/registry.js'

const SECOND = 1000
const TICK_MS = SECOND

describe('issue 12.4: time on a fake clock', () => {
  const clock = new FakeClock()
  let d: InProcess
  let admin: AdminClient
  let prod: TestServer, staging: TestServer, sink: TestServer, checked: TestServer
  let uprod: UdpEcho, umute: UdpEcho
  const sockets: net.Socket[] = []
  const udpClients: UdpClient[] = []

  before(async () => {
    ;[prod, staging] = await Promise.all([startServer('prod'), startServer('staging')])
    sink = await startServer('sink', (socket) => socket.resume())
    checked = await startServer('checked', (socket) => socket.destroy())
    ;[uprod, umute] = await Promise.all([startUdpEcho('uprod'), startUdpEcho('umute', {reply: silent})])
    d = await startInProcess(`
state: ./state.json
listeners:
  - { name: main, bind: "127.0.0.1:0", backend: prod }
  - { name: quiet, bind: "127.0.0.1:0", backend: prod, timeouts: { client: 5s } }
  - { name: mute, bind: "127.0.0.1:0", backend: sink }
  - { name: answer, bind: "127.0.0.1:0", backend: slowecho }
  - { name: vpn, protocol: udp, bind: "127.0.0.1:0", backend: uprod, udp: { idle_timeout: 5s } }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
  sink: { servers: [ { address: "${sink.address}" } ], timeouts: { server: 5s } }
  slowecho: { servers: [ { address: "${prod.address}" } ], timeouts: { server: 5s } }
  uprod: { servers: [ { address: "${uprod.address}" } ] }
  umute: { servers: [ { address: "${umute.address}" } ] }
  checked: { servers: [ { address: "${checked.address}" } ], health: { interval: 10s, timeout: 1s, rise: 1, fall: 1 } }
rules:
  - { source: 127.0.0.92, to: umute }
`, {clock, tickMs: TICK_MS})
    admin = adminOf(d)
  })

  after(async () => {
    for (const s of sockets) s.destroy()
    await Promise.all(udpClients.map((c) => c.close()))
    await admin?.close()
    await d?.stop()
    await Promise.all([prod, staging, sink, checked, uprod, umute].map((s) => s?.close()))
  })

  const port = (listener: string): number => d.daemon.proxies.get(listener)!.address()!.port
  const storedSources = (): string[] => JSON.parse(readFileSync(join(d.dir, 'state.json'), 'utf8')).rules.map((r: {source: string}) => r.source)
  const closes = (id: string): Array<Record<string, any>> => d.logs.find('session closed').filter((l) => l.session === id)

  const find = (listener: string, address: string): Session | undefined => [...d.daemon.registry.matching({listener})].find((x) => x.client.address === address)

  /** The live session of `listener` from `address`, once the daemon has accepted it. */
  async function sessionOf(listener: string, address: string): Promise<Session> {
    await until(() => find(listener, address) !== undefined, 5000, `a ${listener} session from ${address}`)
    return find(listener, address)!
  }

  /** A TCP session, whose socket is still open on the daemon's side (nothing has killed it). */
  function stillOpen(s: Session): boolean {
    return !s.closed && !(s.transport as unknown as {client: net.Socket}).client.destroyed
  }

  async function tcpClient(listener: string, from: string): Promise<net.Socket> {
    const s = await connect({port: port(listener), localAddress: from})
    sockets.push(s)
    return s
  }

  async function udpClient(from: string): Promise<UdpClient> {
    const c = await UdpClient.open({local: from})
    udpClients.push(c)
    return c
  }

  test('issue 12.4: a health check runs every interval on the daemon\'s clock: a server that stopped is seen down at the next check, not before', async () => {
    const server = d.daemon.backends.get('checked')!.servers[0]
    // First, before the clock ever moved: the check at start is the only one so far.
    await until(() => server.lastCheck !== undefined, 5000, 'the check at start')
    const first = server.lastCheck!
    assert.ok(first.ok && server.up)
    await clock.advance(5 * SECOND) // any multiple of the tick: the tests' times stay on the tick grid
    await checked.close()
    await clock.advance(first.at + 10 * SECOND - clock.now() - 1)
    assert.deepEqual([server.up, server.lastCheck], [true, first], 'no check 1 ms before the interval is over')
    await clock.advance(1)
    await until(() => !server.up, 5000, 'the check at the interval to fail')
    assert.equal(server.lastCheck?.at, first.at + 10 * SECOND)
    assert.match(server.lastCheck?.error ?? '', /ECONNREFUSED/)
  })

  test('issue 12.4: a rule added --for 30m is in force until exactly its expiresAt (clock + lifetime), then gone from routing, the list and the state file', async () => {
    const lifetime = 30 * 60 * SECOND
    const added = await admin.addRule({source: '127.0.0.91', to: 'staging', for: '30m'})
    const expiresAt = clock.now() + lifetime
    assert.equal(added.rule.expiresAt, new Date(expiresAt).toISOString(), 'expiresAt is the clock\'s time plus the lifetime')
    assert.equal((await admin.rules()).find((r) => r.id === added.rule.id)?.expiresAt, added.rule.expiresAt, 'divert list shows the same expiresAt')
    assert.equal(await whoAnswers(port('main'), '127.0.0.91'), 'staging')

    await clock.advance(lifetime - 1)
    assert.equal(await whoAnswers(port('main'), '127.0.0.91'), 'staging', 'in force 1 ms before expiresAt')
    assert.deepEqual(storedSources(), ['127.0.0.91'])
    assert.equal(d.logs.find(/expired/).length, 0)

    await clock.advance(1)
    assert.equal(await whoAnswers(port('main'), '127.0.0.91'), 'prod', 'at expiresAt new sessions go to the listener\'s backend')
    await d.daemon.ruleService.exclusive(async () => undefined) // the expiry the timer queued is done
    assert.equal((await admin.rules()).find((r) => r.id === added.rule.id), undefined, 'gone from divert list')
    assert.deepEqual(storedSources(), [], 'gone from the state file')
    const audit = d.logs.find(/expired/)
    assert.deepEqual(audit.map((l) => [l.action, l.rule?.id]), [['rule.expired', added.rule.id]])
  })

  test('issue 12.4: a silent UDP flow closes exactly udp.idle_timeout after the tick that saw its last datagram', async () => {
    const c = await udpClient('127.0.0.90')
    assert.equal((await c.request('hello', port('vpn'))).payload.toString(), 'uprod:hello')
    const flow = await sessionOf('vpn', '127.0.0.90')
    await clock.advance(TICK_MS + 5 * SECOND - 1)
    assert.ok(!flow.closed, 'open 1 ms before the idle timeout')
    await clock.advance(1)
    assert.ok(flow.closed, 'closed at the idle timeout')
    assert.equal(closes(flow.id)[0]?.cause, 'idle-timeout')
  })

  test('issue 12.4: a datagram refreshes a UDP flow\'s idle time, also one whose backend never answers', async () => {
    const [talker, ignored] = await Promise.all([udpClient('127.0.0.93'), udpClient('127.0.0.92')])
    await talker.request('1', port('vpn'))
    await ignored.send('into the void', port('vpn'))
    await until(() => umute.received.length === 1, 5000, 'the datagram to reach the mute backend')
    const [a, b] = [await sessionOf('vpn', '127.0.0.93'), await sessionOf('vpn', '127.0.0.92')]
    await clock.advance(3 * SECOND)
    await talker.request('2', port('vpn'))
    await ignored.send('again', port('vpn'))
    await until(() => umute.received.length === 2, 5000, 'the second datagram to reach the mute backend')
    // Seen by the tick at 4 s: idle from then on.
    await clock.advance(SECOND + 5 * SECOND - 1)
    assert.ok(!a.closed && !b.closed, 'both open 1 ms before the idle timeout counted from the refresh')
    await clock.advance(1)
    assert.ok(a.closed && b.closed, 'both closed at it')
    assert.deepEqual([closes(a.id)[0]?.cause, closes(b.id)[0]?.cause], ['idle-timeout', 'idle-timeout'])
    assert.equal(closes(b.id)[0]?.bytesOut, 0, 'the mute backend never answered')
  })

  test('issue 12.4: timeouts.client ends a TCP session whose client is silent, exactly at the timeout, with cause client-timeout', async () => {
    const s = await tcpClient('quiet', '127.0.0.94')
    assert.equal(await readLine(s), 'prod', 'the server talks; only the client is silent')
    await endsAfter(s, await sessionOf('quiet', '127.0.0.94'), 5 * SECOND, 'client-timeout')
  })

  test('issue 12.4: backend timeouts.server ends a TCP session whose server is silent, exactly at the timeout, with cause server-timeout', async () => {
    const s = await tcpClient('mute', '127.0.0.95')
    s.write('one')
    const session = await sessionOf('mute', '127.0.0.95')
    await clock.advance(2 * SECOND)
    s.write('the client keeps talking')
    await endsAfter(s, session, 3 * SECOND, 'server-timeout')
  })

  test('issue 12.4: bytes from the server refresh timeouts.server', async () => {
    const s = await tcpClient('answer', '127.0.0.96')
    assert.equal(await readLine(s), 'prod') // seen by the tick at 1 s
    const session = await sessionOf('answer', '127.0.0.96')
    await clock.advance(3 * SECOND)
    s.write('ping')
    assert.equal((await readBytes(s, 4)).toString(), 'ping') // seen by the tick at 4 s
    await endsAfter(s, session, SECOND + 5 * SECOND, 'server-timeout')
  })

  /** Steps the clock to 1 ms before `ms` from now (the session still open), then onto it: closed, with `cause`. */
  async function endsAfter(s: net.Socket, session: Session, ms: number, cause: string): Promise<void> {
    const gone = closed(s)
    await clock.advance(ms - 1)
    assert.ok(stillOpen(session), `open 1 ms before the ${cause}`)
    await clock.advance(1)
    await gone
    await until(() => closes(session.id).length === 1, 5000, 'the session closed line')
    assert.equal(closes(session.id)[0].cause, cause)
  }
})
