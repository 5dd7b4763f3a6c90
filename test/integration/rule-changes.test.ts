/**
 * Rule changes against live sessions and a reload, through the admin API of an in-process daemon
 * (the CLI's own client): taps follow the rules (a removed mirror rule closes the mirror connection,
 * a record rule added for a live source records it from then on), and rules added while a reload
 * drops a backend are checked against the config in force when they run.
 *
 *   client 127.0.0.6x ─▶ daemon ─▶ prod (echo)
 *                          └─ mirror tap ─▶ mirror (sink) / recorder ─▶ FILE.pcap
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {connect, freePort, freeUdpPort, readBytes, readLine, startServer, until, whoAnswers, type TestServer} from '../helpers/servers.js'
import {silent, startUdpEcho, UdpClient, type UdpEcho} from '../helpers/udp.js'
import {flowsOf, sideBytes} from '../helpers/capture.js'
import type {AdminClient} from '../../src/admin/client.js'
import {adminOf} from '../faults/kit.js'

describe('live sessions follow rule changes', () => {
  let d: InProcess
  let admin: AdminClient
  let prod: TestServer, staging: TestServer, gone: TestServer, mirror: TestServer
  /** Bytes each mirror connection received, in accept order. */
  const mirrored: Buffer[][] = []
  let port: number
  let udpPort: number
  let uprod: UdpEcho, umirror: UdpEcho
  const clients: net.Socket[] = []

  function config(withGone: boolean): string {
    return `
state: ./state.json
listeners:
  - { name: main, bind: "127.0.0.1:${port}", backend: prod }
  - { name: vpn, protocol: udp, bind: "127.0.0.1:${udpPort}", backend: uprod }
backends:
  uprod: { servers: [ { address: "${uprod.address}" } ] }
  umirror: { servers: [ { address: "${umirror.address}" } ] }
  prod: { servers: [ { address: "${prod.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
  mirror: { servers: [ { address: "${mirror.address}" } ] }
${withGone ? `  gone: { servers: [ { address: "${gone.address}" } ] }` : ''}
`
  }

  async function session(from: string): Promise<net.Socket> {
    const s = await connect({port, localAddress: from})
    clients.push(s)
    assert.equal(await readLine(s), 'prod')
    return s
  }

  async function echo(s: net.Socket, text: string): Promise<void> {
    const back = readBytes(s, text.length)
    s.write(text)
    assert.equal((await back).toString(), text, 'the session still echoes')
  }

  before(async () => {
    ;[prod, staging, gone] = await Promise.all(['prod', 'staging', 'gone'].map((n) => startServer(n)))
    mirror = await startServer('mirror', (socket) => {
      const got: Buffer[] = []
      mirrored.push(got)
      socket.on('data', (c: Buffer) => got.push(c))
      socket.on('end', () => socket.end())
    })
    ;[uprod, umirror] = await Promise.all([startUdpEcho('uprod'), startUdpEcho('umirror', {reply: silent})])
    port = await freePort()
    udpPort = await freeUdpPort()
    d = await startInProcess(config(true))
    admin = adminOf(d)
  })

  after(async () => {
    for (const c of clients) c.destroy()
    await admin?.close()
    await d?.stop()
    await Promise.all([prod, staging, gone, mirror, uprod, umirror].map((s) => s?.close()))
  })

  test('issue 11.17: divert rm of a mirror rule closes a live session\'s mirror connection; the session goes on, the mirror gets no more bytes', async () => {
    await admin.addRule({source: '127.0.0.61', mirror: 'mirror'})
    const s = await session('127.0.0.61')
    await echo(s, 'before-rm')
    await until(() => Buffer.concat(mirrored[0] ?? []).toString() === 'before-rm', 5000, 'the mirror got the first bytes')
    await admin.removeRule('127.0.0.61')
    await until(() => mirror.sockets.size === 0, 3000, 'the mirror connection closed')
    await echo(s, 'after-rm')
    assert.equal(Buffer.concat(mirrored[0]).toString(), 'before-rm', 'nothing mirrored after the rm')
    assert.equal(mirror.accepted, 1, 'no new mirror connection')
    const view = (await admin.sessions({source: '127.0.0.61'}))[0]
    assert.equal(view.taps?.mirror, undefined, 'the session shows no mirror any more')
  })

  test('issue 11.17: divert add SRC --record FILE on a source with a live session records that session\'s later bytes (a valid pcap from that point)', async () => {
    const file = join(d.dir, 'late.pcap')
    const s = await session('127.0.0.62')
    await echo(s, 'not-recorded')
    await admin.addRule({source: '127.0.0.62', record: file})
    await echo(s, 'recorded-1')
    await echo(s, 'recorded-2')
    const view = (await admin.sessions({source: '127.0.0.62'}))[0]
    assert.equal((view.taps?.record as {path?: string} | undefined)?.path, file, 'the session shows its recorder')
    await admin.removeRule('127.0.0.62')
    const {flows} = await flowsOf(file)
    assert.equal(flows.length, 1, 'one TCP stream in the file')
    assert.equal(sideBytes(flows[0], 'client').toString(), 'recorded-1recorded-2')
    assert.equal(sideBytes(flows[0], 'server').toString(), 'recorded-1recorded-2')
    await echo(s, 'still-up')
  })

  test('issue 11.17: a live UDP flow gets the mirror of a rule added for its source, and loses it at divert rm', async () => {
    const client = await UdpClient.open({local: '127.0.0.64'})
    try {
      const said = async (text: string): Promise<void> => assert.equal((await client.request(text, udpPort)).payload.toString(), `uprod:${text}`)
      await said('one')
      await admin.addRule({source: '127.0.0.64', mirror: 'umirror'})
      await said('two')
      await until(() => umirror.received.length === 1, 5000, 'the mirror got the datagram sent after the add')
      assert.equal(umirror.received[0].payload.toString(), 'two')
      await admin.removeRule('127.0.0.64')
      assert.equal((await admin.sessions({source: '127.0.0.64'}))[0].taps?.mirror, undefined, 'the flow shows no mirror any more')
      await said('three')
      await said('four')
      assert.deepEqual(umirror.received.map((d) => d.payload.toString()), ['two'], 'nothing mirrored after the rm')
    } finally {
      await client.close()
    }
  })

  test('issue 11.10: rules added while a reload drops a backend are checked against the config in force when they run: every acknowledged one is saved and routes, none names the dropped backend', async () => {
    writeFileSync(join(d.dir, 'divert.yaml'), config(false))
    const reload = d.daemon.reload('test')
    const sources = Array.from({length: 8}, (_, i) => `127.0.0.${70 + i}`)
    const adds = await Promise.allSettled(sources.map((source, i) => admin.addRule({source, to: i % 2 === 0 ? 'staging' : 'gone'})))
    assert.deepEqual((await reload).backends.removed, ['gone'])
    const acked = adds.flatMap((r) => (r.status === 'fulfilled' ? [r.value.rule] : []))
    assert.deepEqual(acked.map((r) => r.source), sources.filter((_, i) => i % 2 === 0), 'the adds naming staging were acknowledged')
    for (const r of adds) if (r.status === 'rejected') assert.equal(r.reason.code, 'DIVERT_ERR_BACKEND_UNKNOWN', r.reason.message)
    const saved = (JSON.parse(readFileSync(join(d.dir, 'state.json'), 'utf8')).rules as Array<{id: string; source: string; to?: string}>).filter((r) => sources.includes(r.source))
    assert.deepEqual(saved.map((r) => r.id).sort(), acked.map((r) => r.id).sort(), 'the state file holds exactly the acknowledged rules')
    assert.ok(saved.every((r) => r.to !== 'gone'))
    assert.deepEqual(await Promise.all(acked.map((r) => whoAnswers(port, r.source))), acked.map(() => 'staging'))
  })
})
