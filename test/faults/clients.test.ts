/**
 * Client faults against one in-process daemon: a client that half-closes and still reads, one that
 * resets, one that never reads a firehose, one that goes quiet (client timeout), and a UDP client
 * that vanishes (idle timeout). Each checks the client's and the server's view, the "session closed"
 * line and its cause, /metrics or `divert sessions`, and that a control session noticed nothing.
 * The daemon runs on a fake clock: the timeouts come when the test advances it, not after sleeps.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import type net from 'node:net'
import {createHash, randomBytes} from 'node:crypto'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {startServer, connect, readLine, readBytes, closed, freePort, freeUdpPort, until, type TestServer} from '../helpers/servers.js'
import {startUdpEcho, UdpClient, type UdpEcho} from '../helpers/udp.js'
import {FakeClock} from '../helpers/clock.js'
import {ControlSession, adminOf, closedLine, metric, metrics, sessions} from './kit.js'

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const AFTER_FIN = randomBytes(1024 * 1024)

describe('client faults', () => {
  const clock = new FakeClock()
  let d: InProcess
  let control: ControlSession
  let calm: TestServer, late: TestServer, holder: TestServer, firehose: TestServer
  let udp: UdpEcho
  const port: Record<string, number> = {}
  const held: net.Socket[] = []
  let written = 0

  before(async () => {
    calm = await startServer('calm')
    late = await startServer('late', (socket) => {
      const got: Buffer[] = []
      socket.on('data', (c: Buffer) => got.push(c))
      // Answers only after the client's FIN: the half-open direction must still carry a full MiB.
      socket.on('end', () => {
        socket.write(`${sha(Buffer.concat(got))}\n`)
        socket.end(AFTER_FIN)
      })
    })
    holder = await startServer('holder', (socket) => {
      held.push(socket)
      socket.resume()
    })
    firehose = await startServer('firehose', (socket) => {
      const chunk = Buffer.alloc(64 * 1024, 7)
      const pump = (): void => {
        // Bounded whatever happens: at most 256 MiB.
        while (written < 256 * 1024 * 1024 && !socket.destroyed) {
          written += chunk.length
          if (!socket.write(chunk)) return void socket.once('drain', pump)
        }
      }
      pump()
    })
    udp = await startUdpEcho('udp')
    for (const l of ['ctl', 'late', 'holder', 'firehose', 'quiet']) port[l] = await freePort()
    port.udp = await freeUdpPort()
    const none = 'health: { check: none }'
    d = await startInProcess(`
listeners:
  - { name: ctl, bind: "127.0.0.1:${port.ctl}", backend: calm }
  - { name: late, bind: "127.0.0.1:${port.late}", backend: late }
  - { name: holder, bind: "127.0.0.1:${port.holder}", backend: holder }
  - { name: firehose, bind: "127.0.0.1:${port.firehose}", backend: firehose }
  - { name: quiet, bind: "127.0.0.1:${port.quiet}", backend: calm, timeouts: { client: 400ms } }
  - { name: udp, protocol: udp, bind: "127.0.0.1:${port.udp}", backend: udp, udp: { idle_timeout: 300ms } }
backends:
  calm: { servers: [ { address: "${calm.address}" } ], ${none} }
  late: { servers: [ { address: "${late.address}" } ], ${none} }
  holder: { servers: [ { address: "${holder.address}" } ], ${none} }
  firehose: { servers: [ { address: "${firehose.address}" } ], ${none} }
  udp: { servers: [ { address: "${udp.address}" } ], ${none} }
`, {clock, tickMs: 50})
    control = await ControlSession.open(d, port.ctl)
  })

  after(async () => {
    control?.close()
    await d?.stop()
    await Promise.all([calm, late, holder, firehose, udp].map((s) => s?.close()))
  })

  test('half-close: the client sends and ends, the server answers a full MiB after the FIN, intact; cause client-closed', async () => {
    const s = await connect({port: port.late, localAddress: '127.0.0.21'})
    const client = `127.0.0.21:${s.localPort}`
    const up = randomBytes(300 * 1024)
    s.end(up)
    // readBytes, not readLine: the line and the MiB after it arrive together.
    const all = await readBytes(s, 65 + AFTER_FIN.length)
    assert.equal(all.subarray(0, 65).toString(), `${sha(up)}\n`, 'the server got every byte before the FIN')
    assert.equal(sha(all.subarray(65)), sha(AFTER_FIN))
    await closed(s)
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'client-closed')
    assert.equal(line.bytesIn, up.length)
    assert.equal(line.bytesOut, 65 + AFTER_FIN.length)
    await control.assertUntouched()
  })

  test('a client reset: the server side sees the reset, the line says client-reset', async () => {
    const before = held.length
    const s = await connect({port: port.holder, localAddress: '127.0.0.22'})
    const client = `127.0.0.22:${s.localPort}`
    s.write(randomBytes(64 * 1024))
    await until(() => held.length > before, 5000, 'server accept')
    const serverSide = held[held.length - 1]
    const serverEnd = closed(serverSide)
    await until(() => serverSide.bytesRead === 64 * 1024, 5000, 'bytes at the server')
    s.resetAndDestroy()
    assert.equal((await serverEnd).error?.code, 'ECONNRESET')
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'client-reset')
    assert.equal(metric(await metrics(d), 'divert_sessions_closed_total', {listener: 'holder', cause: 'client-reset'}), 1)
    await control.assertUntouched()
  })

  test('a client that never reads a firehose: the server is held back (bounded), the session is listed, divert kill ends it', async () => {
    const s = await connect({port: port.firehose, localAddress: '127.0.0.23'})
    const client = `127.0.0.23:${s.localPort}`
    s.pause()
    let last = -1
    await until(() => {
      const stable = written > 0 && written === last
      last = written
      return stable
    }, 15_000, 'the firehose to be blocked')
    assert.ok(written < 64 * 1024 * 1024, `the server wrote ${written} bytes into a client that reads nothing`)
    const listed = (await sessions(d)).find((x) => x.client === client)
    assert.ok(listed, 'divert sessions lists it')
    assert.ok(listed.bytesOut < written, 'bytesOut counts what reached the client, not what the server wrote')
    const rss = process.memoryUsage().rss
    await control.assertUntouched()
    const end = closed(s)
    const admin = adminOf(d)
    try {
      assert.deepEqual(await admin.killSession(listed.id), {killed: 1})
    } finally {
      await admin.close()
    }
    s.resume()
    await end
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'killed')
    assert.ok(process.memoryUsage().rss < rss + 64 * 1024 * 1024, 'memory did not balloon')
  })

  test('a client that goes quiet: client-timeout after 400 ms; one that keeps talking outlives it', async () => {
    const quiet = await connect({port: port.quiet, localAddress: '127.0.0.24'})
    const quietClient = `127.0.0.24:${quiet.localPort}`
    const chatty = await connect({port: port.quiet, localAddress: '127.0.0.24'})
    const chattyClient = `127.0.0.24:${chatty.localPort}`
    assert.equal(await readLine(quiet), 'calm')
    assert.equal(await readLine(chatty), 'calm')
    const quietEnd = closed(quiet)
    const started = clock.now()
    while (clock.now() - started < 1200) {
      const back = readBytes(chatty, 5)
      chatty.write('hello')
      assert.equal((await back).toString(), 'hello')
      await clock.advance(100)
    }
    await quietEnd
    const line = await closedLine(d, quietClient)
    assert.equal(line.cause, 'client-timeout')
    assert.ok(line.durationMs >= 390 && line.durationMs < 1500, `after ${line.durationMs}ms`)
    assert.ok(d.daemon.registry.snapshot().some((x) => x.client === chattyClient), 'the talking client is still connected')
    chatty.destroy()
    assert.equal(metric(await metrics(d), 'divert_sessions_closed_total', {listener: 'quiet', cause: 'client-timeout'}), 1)
    await control.assertUntouched()
  })

  test('a UDP client that vanishes: its flow ends by idle timeout and the count returns to zero', async () => {
    const c = await UdpClient.open({local: '127.0.0.25'})
    const client = `127.0.0.25:${c.port}`
    assert.equal((await c.request('ping', port.udp)).payload.toString(), 'udp:ping')
    await c.close()
    await clock.advance(300 + 50) // idle_timeout after the tick that saw the datagram
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'idle-timeout')
    assert.equal(line.protocol, 'udp')
    const m = await metrics(d)
    assert.equal(metric(m, 'divert_sessions_active', {listener: 'udp'}), 0)
    assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'udp', cause: 'idle-timeout'}), 1)
    await control.assertUntouched()
  })

  test('after all of that: no error-level log line', () => {
    assert.deepEqual(d.logs.lines.filter((l) => l.level >= 50), [])
  })
})
