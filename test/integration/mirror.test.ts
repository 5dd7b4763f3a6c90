/**
 * The mirror tap against loopback servers: bytes and PROXY headers arrive; a mirror server that is
 * down or too slow costs the mirror, never the caller.
 */
import {afterEach, describe, it} from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import {EventEmitter, once} from 'node:events'
import net from 'node:net'
import {Writable} from 'node:stream'
import pino from 'pino'
import {decodeProxyHeader} from '../../src/backends/proxy-protocol.js'
import {createMirrorTap, type MirrorOptions, type MirrorTarget} from '../../src/capture/mirror.js'
import type {Address} from '../../src/addr/address.js'
import type {SessionMeta} from '../../src/session/types.js'

// ─── helpers ──────────────────────────────────────────────────────────────────────────────────

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

interface Received {
  data: Buffer
  ended: boolean
  closed: Promise<unknown>
}

/** A TCP server on 127.0.0.1:0 that records what each connection sends (or never reads, if `stall`). */
async function tcpServer(opts: {stall?: boolean} = {}): Promise<{ep: Address; next: () => Promise<Received>}> {
  const sockets = new Set<net.Socket>()
  const accepted = new EventEmitter()
  const server = net.createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
    const r: Received = {data: Buffer.alloc(0), ended: false, closed: once(s, 'close')}
    if (opts.stall) s.pause()
    else s.on('data', (d: Buffer) => (r.data = Buffer.concat([r.data, d])))
    s.on('end', () => (r.ended = true))
    accepted.emit('conn', r)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  cleanups.push(async () => {
    for (const s of sockets) s.destroy()
    server.close()
    await once(server, 'close')
  })
  const {port} = server.address() as net.AddressInfo
  return {ep: {address: '127.0.0.1', port, family: 4}, next: async () => (await once(accepted, 'conn'))[0] as Received}
}

/** A port that was just bound and released: connecting to it is refused. */
async function closedPort(): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const {port} = server.address() as net.AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

function meta(over: Partial<SessionMeta> = {}): SessionMeta {
  return {
    id: 'sess-1',
    protocol: 'tcp',
    listener: 'telnet',
    backend: 'prod',
    client: {address: '192.0.2.10', port: 40_000, family: 4},
    server: {address: '198.51.100.7', port: 23, family: 4},
    startedAt: 0,
    ...over,
  }
}

function logs(): {logger: pino.Logger; events: EventEmitter} {
  const events = new EventEmitter()
  const sink = new Writable({
    write(chunk, _enc, cb) {
      events.emit('line', JSON.parse(String(chunk)))
      cb()
    },
  })
  return {logger: pino({level: 'debug'}, sink), events}
}

/** Connects like the default, but hands the socket to the test too. */
function trackingConnect(): {connect: MirrorOptions['connect'] & {}; socket: () => net.Socket} {
  let last: net.Socket | undefined
  const connect = (ep: Address): net.Socket => {
    last = net.connect({host: ep.address, port: ep.port})
    cleanups.push(() => void last?.destroy())
    return last
  }
  return {connect, socket: () => last!}
}

function mirrorState(tap: ReturnType<typeof createMirrorTap>): {state: string; bytes: number; dropped: number; error?: string} {
  return tap.describe!().mirror as {state: string; bytes: number; dropped: number; error?: string}
}

// ─── TCP ──────────────────────────────────────────────────────────────────────────────────────

describe('mirror tap (TCP)', () => {
  it('copies the client→server bytes to the mirror server, then ends', async () => {
    const srv = await tcpServer()
    const {connect, socket} = trackingConnect()
    const target: MirrorTarget = {backend: 'staging', server: srv.ep}
    const tap = createMirrorTap(meta(), target, {bufferBytes: 1 << 20, connect})
    const conn = srv.next()
    assert.equal(mirrorState(tap).state, 'connecting')
    tap.clientData!(Buffer.from('hello '))
    await once(socket(), 'connect')
    assert.equal(mirrorState(tap).state, 'active')
    tap.serverData?.(Buffer.from('never mirrored'))
    tap.clientData!(Buffer.from('mirror'))
    tap.clientEnd!()
    const r = await conn
    await r.closed
    assert.equal(r.data.toString(), 'hello mirror')
    assert.equal(r.ended, true)
    tap.close!('client-closed', false)
    assert.deepEqual(tap.describe!(), {mirror: {backend: 'staging', server: srv.ep.address + ':' + srv.ep.port, state: 'closed', bytes: 12, dropped: 0}})
  })

  it('sends a PROXY v2 header first, naming the real client', async () => {
    const srv = await tcpServer()
    const tap = createMirrorTap(meta(), {backend: 'staging', server: srv.ep, proxyProtocol: 'v2'}, {bufferBytes: 1 << 20})
    const conn = srv.next()
    tap.clientData!(Buffer.from('payload'))
    tap.clientEnd!()
    const r = await conn
    await r.closed
    const h = decodeProxyHeader(r.data)!
    assert.equal(h.version, 2)
    assert.equal(h.transport, 'stream')
    assert.deepEqual(h.source, {address: '192.0.2.10', port: 40_000})
    assert.deepEqual(h.destination, {address: '198.51.100.7', port: 23})
    assert.equal(r.data.subarray(h.length).toString(), 'payload')
  })

  it('sends a PROXY v1 line with the destination given as local', async () => {
    const srv = await tcpServer()
    const tap = createMirrorTap(meta(), {backend: 'staging', server: srv.ep, proxyProtocol: 'v1'}, {bufferBytes: 1 << 20, local: {address: '203.0.113.1', port: 2323}})
    const conn = srv.next()
    tap.clientData!(Buffer.from('x'))
    tap.clientEnd!()
    const r = await conn
    await r.closed
    assert.equal(r.data.toString(), 'PROXY TCP4 192.0.2.10 203.0.113.1 40000 2323\r\nx')
  })

  it('delivers what was queued while connecting even when the session closes at once', async () => {
    const srv = await tcpServer()
    const tap = createMirrorTap(meta(), {backend: 'staging', server: srv.ep}, {bufferBytes: 1 << 20})
    const conn = srv.next()
    tap.clientData!(Buffer.from('short-lived'))
    tap.clientEnd!()
    tap.close!('client-closed', false)
    const r = await conn
    await r.closed
    assert.equal(r.data.toString(), 'short-lived')
  })

  it('resets the mirror connection when the session is reset', async () => {
    const srv = await tcpServer()
    const {connect, socket} = trackingConnect()
    const tap = createMirrorTap(meta(), {backend: 'staging', server: srv.ep}, {bufferBytes: 1 << 20, connect})
    const r = await srv.next()
    tap.close!('client-reset', true)
    assert.equal(socket().destroyed, true)
    await r.closed
    assert.equal(mirrorState(tap).state, 'closed')
  })

  it('a mirror server that is down: state failed, drops counted, tap calls never throw', async () => {
    const port = await closedPort()
    const {logger, events} = logs()
    const {connect, socket} = trackingConnect()
    let reported = 0
    const tap = createMirrorTap(meta(), {backend: 'staging', server: {address: '127.0.0.1', port, family: 4}}, {bufferBytes: 1 << 20, logger, connect, onDrop: (n) => (reported += n)})
    const closed = new Promise((resolve) => socket().on('close', resolve)) // once() would reject on 'error'
    const warned = once(events, 'line')
    tap.clientData!(Buffer.alloc(100))
    const [line] = await warned
    assert.match(line.msg, /mirror failed: ECONNREFUSED/)
    tap.clientData!(Buffer.alloc(50))
    tap.clientEnd!()
    tap.close!('client-closed', false)
    // Node calls back the writes made while connecting with the error before the socket's 'close'.
    await closed
    const s = mirrorState(tap)
    assert.deepEqual([s.state, s.error, s.bytes, s.dropped], ['failed', 'ECONNREFUSED', 0, 150])
    assert.equal(reported, 150)
  })

  it('a connector that throws: state failed, no throw', () => {
    const tap = createMirrorTap(meta(), {backend: 'staging', server: {address: '127.0.0.1', port: 1, family: 4}}, {
      bufferBytes: 1024,
      connect: () => {
        throw Object.assign(new Error('no sockets left'), {code: 'EMFILE'})
      },
    })
    tap.clientData!(Buffer.alloc(10))
    tap.close!('client-closed', false)
    const s = mirrorState(tap)
    assert.deepEqual([s.state, s.error, s.dropped], ['failed', 'EMFILE', 10])
  })

  it('a mirror server that never reads: overflow, and 8 MiB of client data still passes promptly', async () => {
    const srv = await tcpServer({stall: true})
    const {connect, socket} = trackingConnect()
    let reported = 0
    const tap = createMirrorTap(meta(), {backend: 'staging', server: srv.ep}, {bufferBytes: 256 * 1024, connect, onDrop: (n) => (reported += n)})
    await Promise.all([srv.next(), once(socket(), 'connect')])
    const chunk = Buffer.alloc(64 * 1024, 1)
    const t0 = performance.now()
    for (let i = 0; i < 128; i++) tap.clientData!(chunk)
    const elapsed = performance.now() - t0
    assert.ok(elapsed < 1000, `8 MiB of clientData took ${elapsed} ms`)
    assert.equal(mirrorState(tap).state, 'overflow')
    assert.equal(socket().destroyed, true)
    await once(socket(), 'close')
    await new Promise((r) => setImmediate(r))
    const s = mirrorState(tap)
    assert.ok(s.dropped > 0)
    assert.equal(s.bytes + s.dropped, 8 * 1024 * 1024, 'every byte is either handed to the kernel or counted as dropped')
    assert.equal(reported, s.dropped)
    tap.close!('client-closed', false)
    assert.equal(mirrorState(tap).state, 'overflow')
  })
})

// ─── UDP ──────────────────────────────────────────────────────────────────────────────────────

async function udpServer(): Promise<{ep: Address; messages: Buffer[]; next: () => Promise<Buffer>}> {
  const sock = dgram.createSocket('udp4')
  sock.bind(0, '127.0.0.1')
  await once(sock, 'listening')
  cleanups.push(async () => {
    sock.close()
    await once(sock, 'close')
  })
  const messages: Buffer[] = []
  sock.on('message', (m: Buffer, rinfo) => {
    messages.push(m)
    sock.send(Buffer.from('reply, discarded'), rinfo.port, rinfo.address)
  })
  return {ep: {address: '127.0.0.1', port: sock.address().port, family: 4}, messages, next: async () => (await once(sock, 'message'))[0] as Buffer}
}

function trackingUdp(): {udpSocket: (f: 4 | 6) => dgram.Socket; socket: () => dgram.Socket} {
  let last: dgram.Socket | undefined
  return {
    udpSocket: (f) => (last = dgram.createSocket(f === 6 ? 'udp6' : 'udp4')),
    socket: () => last!,
  }
}

describe('mirror tap (UDP)', () => {
  const udpMeta = meta({protocol: 'udp', server: {address: '198.51.100.7', port: 1194, family: 4}})

  it('sends each client datagram on one connected socket, with a PROXY v2 prefix per datagram', async () => {
    const srv = await udpServer()
    const tap = createMirrorTap(udpMeta, {backend: 'vpn-staging', server: srv.ep, proxyProtocol: 'v2'}, {bufferBytes: 1 << 20})
    const first = srv.next()
    tap.clientData!(Buffer.from('one'))
    tap.clientData!(Buffer.from('two'))
    tap.serverData?.(Buffer.from('not mirrored'))
    await first
    while (srv.messages.length < 2) await srv.next()
    const decoded = srv.messages.map((m) => {
      const h = decodeProxyHeader(m)!
      assert.equal(h.transport, 'dgram')
      assert.deepEqual(h.source, {address: '192.0.2.10', port: 40_000})
      return m.subarray(h.length).toString()
    })
    assert.deepEqual(decoded, ['one', 'two'])
    const s = mirrorState(tap)
    assert.deepEqual([s.state, s.bytes, s.dropped], ['active', 6, 0])
    tap.close!('idle-timeout', false)
    assert.equal(mirrorState(tap).state, 'closed')
    tap.clientData!(Buffer.from('late'))
    assert.equal(mirrorState(tap).dropped, 4)
  })

  it('drops datagrams beyond the buffer while connecting', () => {
    const {udpSocket, socket} = trackingUdp()
    const tap = createMirrorTap(udpMeta, {backend: 'vpn-staging', server: {address: '127.0.0.1', port: 9, family: 4}}, {bufferBytes: 100, udpSocket})
    tap.clientData!(Buffer.alloc(60))
    tap.clientData!(Buffer.alloc(60))
    assert.equal(mirrorState(tap).dropped, 60)
    tap.close!('idle-timeout', false)
    assert.equal(mirrorState(tap).dropped, 120, 'what was still queued is dropped at close')
    assert.ok(socket())
  })

  it('survives ICMP port unreachable from a mirror server that is down', async () => {
    const port = await closedPort()
    const {udpSocket, socket} = trackingUdp()
    const tap = createMirrorTap(udpMeta, {backend: 'vpn-staging', server: {address: '127.0.0.1', port, family: 4}}, {bufferBytes: 1 << 20, udpSocket})
    cleanups.push(() => tap.close!('shutdown', false))
    tap.clientData!(Buffer.from('a'))
    await once(socket(), 'connect')
    await once(socket(), 'error')
    tap.clientData!(Buffer.from('b'))
    const s = mirrorState(tap)
    assert.equal(s.state, 'active')
    assert.equal(s.error, 'ECONNREFUSED')
  })
})
