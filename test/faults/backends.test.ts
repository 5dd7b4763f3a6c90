/**
 * Backend faults, each on its own listener of one in-process daemon: a server process killed -9
 * mid-stream, a port that refuses, a black hole (connect timeout) against a server that accepts and
 * then says nothing (server timeout), a server that resets, one that reads slowly. Each case checks
 * what the user sees — the client's end, the "session closed" line and its cause, /metrics, `divert
 * sessions` — and that a control session through the same daemon noticed nothing.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {spawn, type ChildProcess} from 'node:child_process'
import {once} from 'node:events'
import {createHash, randomBytes} from 'node:crypto'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {startServer, connect, readLine, readBytes, closed, ending, freePort, freeUdpPort, until, type TestServer} from '../helpers/servers.js'
import {UdpClient} from '../helpers/udp.js'
import {tcpConnector} from '../../src/net/connector.js'
import {ControlSession, closedLine, metric, metrics, sessions} from './kit.js'

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** An echo server in its own process, so that it can really die (kill -9 by its pid). */
async function startChildEcho(name: string): Promise<{proc: ChildProcess; port: number}> {
  const script = `const net=require('net');const s=net.createServer((c)=>{c.on('error',()=>{});c.write(${JSON.stringify(name + '\n')});c.pipe(c)});s.listen(0,'127.0.0.1',()=>console.log(s.address().port))`
  const proc = spawn(process.execPath, ['-e', script], {stdio: ['ignore', 'pipe', 'inherit']})
  const [line] = (await once(proc.stdout!, 'data')) as [Buffer]
  return {proc, port: Number(line.toString().trim())}
}

describe('backend faults', () => {
  let d: InProcess
  let control: ControlSession
  let calm: TestServer, silent: TestServer, resetter: TestServer, slow: TestServer
  let child: {proc: ChildProcess; port: number}
  const port: Record<string, number> = {}
  let refusedPort: number, blackHolePort: number, deadUdpPort: number
  const slowReceived: Buffer[] = []
  let silentSockets = 0

  before(async () => {
    calm = await startServer('calm')
    silent = await startServer('silent', (socket) => {
      silentSockets++
      socket.pause() // accepts, never reads, never answers
    })
    resetter = await startServer('resetter', (socket) => {
      let got = 0
      socket.on('data', (c: Buffer) => {
        got += c.length
        if (got >= 100 * 1024) socket.resetAndDestroy()
      })
    })
    slow = await startServer('slow', (socket) => {
      // Reads 128 KiB every 10 ms: a backend far slower than a loopback client.
      socket.pause()
      const tick = setInterval(() => {
        const c = socket.read(Math.min(128 * 1024, socket.readableLength)) as Buffer | null
        if (c) slowReceived.push(c)
      }, 10)
      socket.on('end', () => {
        clearInterval(tick)
        let c
        while ((c = socket.read() as Buffer | null)) slowReceived.push(c)
        socket.end(`got ${slowReceived.reduce((n, b) => n + b.length, 0)}\n`)
      })
      socket.on('close', () => clearInterval(tick))
    })
    child = await startChildEcho('dying')
    refusedPort = await freePort()
    blackHolePort = await freePort()
    deadUdpPort = await freeUdpPort()
    port.udpdead = await freeUdpPort()
    for (const l of ['ctl', 'dying', 'refusing', 'refusinghc', 'blackhole', 'silent', 'reset', 'slow']) port[l] = await freePort()
    const none = 'health: { check: none }'
    d = await startInProcess(`
listeners:
  - { name: ctl, bind: "127.0.0.1:${port.ctl}", backend: calm }
  - { name: dying, bind: "127.0.0.1:${port.dying}", backend: dying }
  - { name: refusing, bind: "127.0.0.1:${port.refusing}", backend: refusing }
  - { name: refusinghc, bind: "127.0.0.1:${port.refusinghc}", backend: refusinghc }
  - { name: blackhole, bind: "127.0.0.1:${port.blackhole}", backend: blackhole }
  - { name: silent, bind: "127.0.0.1:${port.silent}", backend: silent }
  - { name: reset, bind: "127.0.0.1:${port.reset}", backend: reset }
  - { name: slow, bind: "127.0.0.1:${port.slow}", backend: slow }
  - { name: udpdead, protocol: udp, bind: "127.0.0.1:${port.udpdead}", backend: udpdead, udp: { idle_timeout: 400ms } }
backends:
  calm: { servers: [ { address: "${calm.address}" } ], ${none} }
  dying: { servers: [ { address: "127.0.0.1:${child.port}" } ], ${none} }
  refusing: { servers: [ { address: "127.0.0.1:${refusedPort}" } ], ${none} }
  refusinghc: { servers: [ { address: "127.0.0.1:${refusedPort}" } ], health: { interval: 100ms, timeout: 100ms, rise: 1, fall: 1 } }
  blackhole: { servers: [ { address: "127.0.0.1:${blackHolePort}" } ], timeouts: { connect: 300ms }, ${none} }
  silent: { servers: [ { address: "${silent.address}" } ], timeouts: { connect: 300ms, server: 600ms }, ${none} }
  reset: { servers: [ { address: "${resetter.address}" } ], ${none} }
  slow: { servers: [ { address: "${slow.address}" } ], ${none} }
  udpdead: { servers: [ { address: "127.0.0.1:${deadUdpPort}" } ], ${none} }
`, {
      tickMs: 50,
      // The black hole: a socket that never connects, standing in for a server that drops SYNs.
      connect: (to) => (to.port === blackHolePort ? new net.Socket() : tcpConnector(to)),
    })
    control = await ControlSession.open(d, port.ctl)
  })

  after(async () => {
    control?.close()
    if (child && child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL')
    await d?.stop()
    await Promise.all([calm, silent, resetter, slow].map((s) => s?.close()))
  })

  test('a backend killed -9 mid-stream: the client is ended, the cause is logged and counted; new sessions are refused by the dead port', async () => {
    const s = await connect({port: port.dying, localAddress: '127.0.0.11', allowHalfOpen: true})
    const client = `127.0.0.11:${s.localPort}`
    assert.equal(await readLine(s), 'dying')
    const back = readBytes(s, 256 * 1024)
    s.write(randomBytes(256 * 1024))
    await back
    const end = ending(s)
    // Keep bytes in flight while the process dies, and stop it first so that some of them are unread
    // in its socket when it dies: the kernel then answers with a reset at once (a process that had
    // read everything would send a FIN first and a reset only for what follows it, which the fast-path
    // suite tests on its own).
    const pump = setInterval(() => s.writable && s.write(randomBytes(64 * 1024)), 5)
    child.proc.kill('SIGSTOP')
    await sleep(50)
    const exited = once(child.proc, 'exit')
    child.proc.kill('SIGKILL')
    const seen = await end
    clearInterval(pump)
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'server-reset')
    assert.equal(seen.reset, true, `a reset from the server reaches the client as a reset (client: ${seen.error?.code ?? 'FIN'}, log: ${line.cause})`)
    assert.equal(line.backend, 'dying')
    assert.ok(line.bytesIn >= 256 * 1024)

    // Only once the process is gone is its listening socket closed (until then it may still accept).
    await exited
    const again = await connect({port: port.dying, localAddress: '127.0.0.11'})
    const againClient = `127.0.0.11:${again.localPort}`
    const refused = await closed(again)
    assert.equal(refused.error?.code, 'ECONNRESET', 'a failed connect resets the client: never mistaken for a clean close')
    const line2 = await closedLine(d, againClient)
    assert.equal(line2.cause, 'connect-refused')
    assert.equal(line2.error, `ECONNREFUSED connecting to 127.0.0.1:${child.port}`)
    const m = await metrics(d)
    assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'dying', cause: line.cause}), 1)
    assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'dying', cause: 'connect-refused'}), 1)
    assert.equal(metric(m, 'divert_sessions_active', {listener: 'dying'}), 0)
    await control.assertUntouched()
  })

  test('a refusing port: the client gets a reset at once; with a health check the server goes down and new clients are refused and counted', async () => {
    const started = Date.now()
    const s = await connect({port: port.refusing, localAddress: '127.0.0.12'})
    const client = `127.0.0.12:${s.localPort}`
    const seen = await closed(s)
    assert.equal(seen.error?.code, 'ECONNRESET')
    assert.ok(Date.now() - started < 2000, 'no waiting for a timeout')
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'connect-refused')
    assert.equal(line.error, `ECONNREFUSED connecting to 127.0.0.1:${refusedPort}`)

    await until(() => d.daemon.backends.get('refusinghc')!.servers[0].up === false, 5000, 'refusinghc marked down')
    const r = await connect({port: port.refusinghc, localAddress: '127.0.0.12'})
    await closed(r)
    const refusal = d.logs.find('session refused').find((l) => l.listener === 'refusinghc')
    assert.ok(refusal, 'a "session refused" line')
    assert.equal(refusal.reason, 'no server of default backend refusinghc is up')
    const m = await metrics(d)
    assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'refusing', cause: 'connect-refused'}), 1)
    assert.ok(metric(m, 'divert_sessions_refused_total', {listener: 'refusinghc'}) >= 1)
    assert.equal(metric(m, 'divert_server_up', {backend: 'refusinghc'}), 0)
    assert.equal(metric(m, 'divert_server_up', {backend: 'calm'}), 1)
    await control.assertUntouched()
  })

  test('black hole vs silent server: no SYN answer is a connect-timeout at 300ms; an accepted but mute server is a server-timeout at 600ms', async () => {
    const t0 = Date.now()
    const bh = await connect({port: port.blackhole, localAddress: '127.0.0.13'})
    const bhClient = `127.0.0.13:${bh.localPort}`
    const bhEnd = closed(bh)
    const mute = await connect({port: port.silent, localAddress: '127.0.0.13'})
    const muteClient = `127.0.0.13:${mute.localPort}`
    const muteEnd = closed(mute)
    mute.write('hello?')
    await until(async () => (await sessions(d)).some((x) => x.listener === 'silent'), 5000, 'the silent session listed')
    const listed = (await sessions(d)).find((x) => x.listener === 'silent')!
    assert.equal(listed.bytesOut, 0, 'divert sessions shows nothing came back')

    const bhSeen = await bhEnd
    const bhLine = await closedLine(d, bhClient)
    assert.equal(bhLine.cause, 'connect-timeout')
    assert.equal(bhLine.error, `no connection to 127.0.0.1:${blackHolePort} within 300ms`)
    assert.equal(bhSeen.error?.code, 'ECONNRESET')
    const bhAfter = bhLine.durationMs
    assert.ok(bhAfter >= 290 && bhAfter < 2000, `connect timeout after ${bhAfter}ms`)

    await muteEnd
    const muteLine = await closedLine(d, muteClient)
    assert.equal(muteLine.cause, 'server-timeout', 'connected, so not a connect timeout')
    assert.ok(muteLine.durationMs >= 590 && muteLine.durationMs < 3000, `server timeout after ${muteLine.durationMs}ms`)
    assert.equal(muteLine.bytesIn, 6)
    assert.ok(silentSockets >= 1, 'the silent server did accept')
    assert.ok(Date.now() - t0 < 5000)
    const m = await metrics(d)
    assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'blackhole', cause: 'connect-timeout'}), 1)
    assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'silent', cause: 'server-timeout'}), 1)
    await control.assertUntouched()
  })

  test('a server that resets mid-stream: the client gets the reset, the line says server-reset', async () => {
    const s = await connect({port: port.reset, localAddress: '127.0.0.14'})
    const client = `127.0.0.14:${s.localPort}`
    const end = closed(s)
    s.write(randomBytes(512 * 1024))
    const seen = await end
    assert.equal(seen.error?.code, 'ECONNRESET')
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'server-reset')
    assert.equal(line.error, 'server ECONNRESET')
    assert.equal(metric(await metrics(d), 'divert_sessions_closed_total', {listener: 'reset', cause: 'server-reset'}), 1)
    await control.assertUntouched()
  })

  test('a server that reads slowly: back-pressure reaches the client, every byte arrives intact, the control session stays prompt', async () => {
    const payload = randomBytes(16 * 1024 * 1024)
    const s = await connect({port: port.slow, localAddress: '127.0.0.15'})
    const client = `127.0.0.15:${s.localPort}`
    const writeDone = new Promise<void>((resolve) => s.end(payload, resolve))
    // While the upload crawls, the control session must answer well within its 1 s budget, ten times over.
    let blocked = false
    for (let i = 0; i < 10; i++) {
      blocked ||= s.writableLength > 1024 * 1024
      await control.exchange(16 * 1024, 1000)
    }
    assert.ok(blocked, 'the client could not write ahead: back-pressure reached it')
    const reply = await readLine(s, 30_000)
    await writeDone
    assert.equal(reply, `got ${payload.length}`)
    assert.equal(sha(Buffer.concat(slowReceived)), sha(payload))
    const line = await closedLine(d, client, 10_000)
    assert.equal(line.bytesIn, payload.length)
    assert.ok(['client-closed', 'server-closed'].includes(line.cause), line.cause)
    await control.assertUntouched()
  })

  test('a UDP backend port with nothing bound: the flow stays (ICMP unreachable is counted, not fatal) and idles out with the count in its line', async () => {
    const c = await UdpClient.open({local: '127.0.0.16'})
    const client = `127.0.0.16:${c.port}`
    try {
      for (let i = 0; i < 3; i++) {
        await c.send(`datagram ${i}`, port.udpdead)
        await new Promise((r) => setTimeout(r, 50))
      }
      const listed = (await sessions(d)).find((x) => x.client === client)
      assert.ok(listed, 'divert sessions lists the flow')
      assert.equal(listed.packetsIn, 3)
      assert.equal(listed.packetsOut, 0)
    } finally {
      await c.close()
    }
    const line = await closedLine(d, client)
    assert.equal(line.cause, 'idle-timeout')
    assert.ok(line.upstreamErrors >= 1, `upstreamErrors ${line.upstreamErrors}: the unreachable port is visible in the line`)
    assert.equal(c.replies.length, 0)
    await control.assertUntouched()
  })

  test('after all of that: no error-level log line, and the control session is the one opened first', async () => {
    assert.deepEqual(d.logs.lines.filter((l) => l.level >= 50), [])
    assert.ok((await sessions(d)).some((x) => x.id === control.id))
  })
})
