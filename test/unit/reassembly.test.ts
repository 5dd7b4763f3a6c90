import {test, describe} from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {reassemble, type Flow} from '../../src/capture/reassembly.js'
import {decoded, TcpConversation, udpSegment, type Addr, type Segment} from '../helpers/frames.js'

const C: Addr = {address: '10.0.0.2', port: 51000}
const S: Addr = {address: '10.0.0.1', port: 8080}
const T0 = 1_700_000_000_000_000

const flowsOf = (segs: Segment[]): Flow[] => reassemble(segs.map(decoded))
const text = (chunks: {data: Buffer}[]): string => Buffer.concat(chunks.map((c) => c.data)).toString()
const one = (segs: Segment[]): Flow => {
  const flows = flowsOf(segs)
  assert.equal(flows.length, 1, `expected one flow, got ${flows.length}`)
  return flows[0]
}

describe('reassemble: TCP', () => {
  test('a whole connection: roles from the SYN, both streams, FINs, timing', () => {
    const conv = new TcpConversation(C, S, {t0: T0}).handshake().send('client', 'GET / HTTP/1.0\r\n\r\n').send('server', 'HTTP/1.0 200 OK\r\n\r\nbody')
    conv.fin('server').fin('client')
    const f = one(conv.segments)
    assert.equal(f.id, 'tcp/0')
    assert.equal(f.protocol, 'tcp')
    assert.deepEqual(f.client, {...C, family: 4})
    assert.deepEqual(f.server, {...S, family: 4})
    assert.equal(f.roleBasis, 'syn')
    assert.equal(text(f.clientChunks), 'GET / HTTP/1.0\r\n\r\n')
    assert.equal(text(f.serverChunks), 'HTTP/1.0 200 OK\r\n\r\nbody')
    assert.equal(f.clientFin, true)
    assert.equal(f.serverFin, true)
    assert.equal(f.clientFinTs, T0 + 6000)
    assert.equal(f.reset, false)
    assert.deepEqual(f.gaps, [])
    assert.equal(f.firstTs, T0)
    assert.equal(f.lastTs, T0 + 6000)
    assert.equal(f.clientChunks[0].ts, T0 + 3000)
    assert.equal(f.packets, 7)
  })

  test('the SYN+ACK alone still tells the roles (SYN not captured)', () => {
    const conv = new TcpConversation(C, S).handshake().send('client', 'hi')
    const f = one(conv.segments.slice(1))
    assert.equal(f.roleBasis, 'syn-ack')
    assert.equal(f.client.port, C.port)
    assert.equal(text(f.clientChunks), 'hi')
  })

  test('out-of-order segments are placed by sequence number; timing never runs backwards', () => {
    const conv = new TcpConversation(C, S, {t0: T0}).handshake().send('client', 'one ').send('client', 'two ').send('client', 'three')
    const [syn, synack, ack, a, b, c] = conv.segments
    const f = one([syn, synack, ack, c, a, b].map((s, i) => ({...s, ts: T0 + i * 1000})))
    assert.equal(text(f.clientChunks), 'one two three')
    assert.deepEqual(f.gaps, [])
    const ts = f.clientChunks.map((x) => x.ts)
    assert.deepEqual(ts, [...ts].sort((x, y) => x - y))
    // 'three' arrived first but is readable only once 'two ' (the last to arrive) is in.
    assert.equal(ts[ts.length - 1], T0 + 5000)
  })

  test('retransmitted segments are dropped', () => {
    const conv = new TcpConversation(C, S).handshake().send('client', 'abc').send('client', 'def')
    const segs = conv.segments
    const f = one([...segs, segs[3], segs[4], segs[3]])
    assert.equal(text(f.clientChunks), 'abcdef')
  })

  test('overlaps: the bytes received first win', () => {
    const base = new TcpConversation(C, S).handshake()
    const isn1 = base.nextSeq('client')
    const first = new TcpConversation(C, S).handshake().raw('client', isn1, 'AAAA').raw('client', isn1 + 2, 'XXYY')
    assert.equal(text(one(first.segments).clientChunks), 'AAAAYY')
    const later = new TcpConversation(C, S).handshake().raw('client', isn1 + 2, 'XXYY').raw('client', isn1, 'AAAA')
    assert.equal(text(one(later.segments).clientChunks), 'AAXXYY')
    const inside = new TcpConversation(C, S).handshake().raw('client', isn1 + 1, 'b').raw('client', isn1 + 4, 'e').raw('client', isn1, 'ABCDEF')
    assert.equal(text(one(inside.segments).clientChunks), 'AbCDeF')
  })

  test('a hole is reported as a gap and skipped; a missing tail before the FIN too', () => {
    const conv = new TcpConversation(C, S).handshake().send('client', 'aaaa').send('client', 'LOST').send('client', 'cc').send('client', 'TAIL').fin('client')
    const segs = conv.segments.filter((s) => !['LOST', 'TAIL'].includes(s.payload.toString()))
    const f = one(segs)
    assert.equal(text(f.clientChunks), 'aaaacc')
    assert.deepEqual(f.gaps, [
      {direction: 'client', offset: 4, length: 4},
      {direction: 'client', offset: 10, length: 4},
    ])
  })

  test('a gap in the server direction names the server', () => {
    const conv = new TcpConversation(C, S).handshake().send('server', 'hello ').send('server', 'world').send('server', '!')
    const f = one(conv.segments.filter((s) => s.payload.toString() !== 'world'))
    assert.equal(text(f.serverChunks), 'hello !')
    assert.deepEqual(f.gaps, [{direction: 'server', offset: 6, length: 5}])
  })

  test('sequence numbers wrap around 2^32, in order and out of order', () => {
    const conv = new TcpConversation(C, S, {clientIsn: 0xfffffffa, serverIsn: 0xffffffff}).handshake()
    conv.send('client', 'abcd').send('client', 'efgh').send('client', 'ijkl').send('server', 'xyz').fin('client')
    assert.ok(conv.nextSeq('client') < 10, 'the test must actually cross the wrap')
    const f = one(conv.segments)
    assert.equal(text(f.clientChunks), 'abcdefghijkl')
    assert.equal(text(f.serverChunks), 'xyz')
    assert.deepEqual(f.gaps, [])
    const [s1, s2, s3, d1, d2, d3, ...rest] = conv.segments
    assert.equal(text(one([s1, s2, s3, d3, d2, d1, ...rest]).clientChunks), 'abcdefghijkl')
  })

  test('a capture that starts mid-connection: lowest byte seen starts the stream, roles guessed', () => {
    const conv = new TcpConversation(C, S).handshake().send('client', 'first').send('server', 'reply').send('client', 'second')
    const [, , , a, b, c] = conv.segments
    const f = one([c, b, a])
    assert.equal(f.roleBasis, 'higher-port')
    assert.equal(f.client.port, C.port)
    assert.equal(text(f.clientChunks), 'firstsecond')
    assert.equal(text(f.serverChunks), 'reply')
    assert.deepEqual(f.gaps, [])
  })

  test('mid-connection roles: well-known port, then a server known from another flow, then the first sender', () => {
    const low = new TcpConversation({address: '10.0.0.2', port: 2000}, {address: '10.0.0.1', port: 22}).handshake().send('server', 'SSH-2.0\r\n')
    const f = one(low.segments.slice(3))
    assert.equal(f.roleBasis, 'well-known-port')
    assert.equal(f.server.port, 22)
    assert.equal(f.client.port, 2000)

    // The server listens on a port above the client's, so only the other, handshaken flow tells.
    const srv = {address: '10.0.0.1', port: 60000}
    const seen = new TcpConversation({address: '10.0.0.3', port: 40000}, srv).handshake().send('client', 'x')
    const mid = new TcpConversation({address: '10.0.0.2', port: 40001}, srv, {t0: T0 + 10_000_000}).handshake().send('server', 'banner')
    const flows = flowsOf([...seen.segments, ...mid.segments.slice(3)])
    assert.equal(flows[1].roleBasis, 'known-server')
    assert.equal(flows[1].server.port, 60000)
    assert.equal(text(flows[1].serverChunks), 'banner')

    const same = new TcpConversation({address: '10.0.0.9', port: 5000}, {address: '10.0.0.1', port: 5000}).handshake().send('server', 'first')
    const g = one(same.segments.slice(3))
    assert.equal(g.roleBasis, 'first-sender')
    assert.equal(g.client.address, '10.0.0.1')
  })

  test('a new SYN on the same 4-tuple after FIN starts a new flow; trailing ACKs stay with the old one', () => {
    const a = new TcpConversation(C, S, {t0: T0, clientIsn: 100}).handshake().send('client', 'first').fin('client').fin('server')
    const lastAck = {...a.segments[3], ts: T0 + 6000, flags: 'A', payload: Buffer.alloc(0)}
    const b = new TcpConversation(C, S, {t0: T0 + 1_000_000, clientIsn: 900_000}).handshake().send('client', 'second').rst('client')
    const flows = flowsOf([...a.segments, lastAck, ...b.segments])
    assert.equal(flows.length, 2)
    assert.deepEqual(flows.map((f) => f.id), ['tcp/0', 'tcp/1'])
    assert.equal(text(flows[0].clientChunks), 'first')
    assert.equal(flows[0].packets, 7)
    assert.equal(text(flows[1].clientChunks), 'second')
    assert.equal(flows[1].reset, true)
    assert.equal(flows[1].clientReset, true)
    assert.equal(flows[1].clientFin, false)
  })

  test('a retransmitted SYN does not split the connection', () => {
    const conv = new TcpConversation(C, S).handshake().send('client', 'x')
    const [syn, ...rest] = conv.segments
    const f = one([syn, {...syn, ts: syn.ts + 500}, ...rest])
    assert.equal(text(f.clientChunks), 'x')
  })

  test('RST: flagged, and its diagnostic payload is not stream data', () => {
    const conv = new TcpConversation(C, S).handshake().send('client', 'data')
    conv.segments.push({...conv.segments[3], src: S, dst: C, flags: 'R', seq: 5001, payload: Buffer.from('connection reset: reason')})
    const f = one(conv.segments)
    assert.equal(f.reset, true)
    assert.equal(f.serverReset, true)
    assert.equal(text(f.serverChunks), '')
  })

  test('IPv6 connections', () => {
    const c6 = {address: '2001:db8::2', port: 50000}
    const s6 = {address: '2001:db8::1', port: 443}
    const conv = new TcpConversation(c6, s6).handshake().send('client', 'v6 ').send('client', 'data').send('server', 'ok')
    const [h1, h2, h3, x, y, z] = conv.segments
    const f = one([h1, h2, h3, y, x, z])
    assert.deepEqual(f.client, {...c6, family: 6})
    assert.equal(f.server.address, '2001:db8::1')
    assert.equal(text(f.clientChunks), 'v6 data')
    assert.equal(text(f.serverChunks), 'ok')
  })

  test('flows are numbered per protocol in order of first packet', () => {
    const x = new TcpConversation(C, S, {t0: T0}).handshake()
    const y = new TcpConversation({...C, port: 51001}, S, {t0: T0 + 100}).handshake()
    const u = udpSegment(T0 + 50, C, {address: '10.0.0.1', port: 53}, 'q')
    const flows = flowsOf([x.segments[0], u, y.segments[0], ...x.segments.slice(1), ...y.segments.slice(1)])
    assert.deepEqual(flows.map((f) => f.id), ['tcp/0', 'udp/0', 'tcp/1'])
  })

  test('property: any reordering and duplication of the segments gives back the stream', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({minLength: 1, maxLength: 40}), {minLength: 1, maxLength: 20}),
        fc.integer({min: 0, max: 0xffffffff}),
        fc.array(fc.nat(), {maxLength: 30}),
        (pieces, isn, shuffle) => {
          const conv = new TcpConversation(C, S, {clientIsn: isn}).handshake()
          for (const p of pieces) conv.send('client', Buffer.from(p))
          const data = conv.segments.slice(3)
          for (const n of shuffle) {
            const i = n % data.length
            const j = (n >> 3) % data.length
            if (n % 3 === 0) data.push(data[i])
            else [data[i], data[j]] = [data[j], data[i]]
          }
          const f = one([...conv.segments.slice(0, 3), ...data])
          assert.deepEqual(Buffer.concat(f.clientChunks.map((c) => c.data)), Buffer.concat(pieces.map((p) => Buffer.from(p))))
          assert.deepEqual(f.gaps, [])
        },
      ),
      {numRuns: 300},
    )
  })
})

describe('reassemble: UDP', () => {
  test('a flow per client address+port; the first sender is the client; datagrams keep their times', () => {
    const dns = {address: '10.0.0.53', port: 53}
    const a = {address: '10.0.0.2', port: 40000}
    const b = {address: '10.0.0.2', port: 40001}
    const flows = flowsOf([
      udpSegment(T0, a, dns, 'q1'),
      udpSegment(T0 + 10, b, dns, 'q2'),
      udpSegment(T0 + 20, dns, a, 'r1'),
      udpSegment(T0 + 30, a, dns, 'q3'),
      udpSegment(T0 + 40, dns, b, 'r2'),
    ])
    assert.equal(flows.length, 2)
    const [fa, fb] = flows
    assert.equal(fa.id, 'udp/0')
    assert.equal(fa.roleBasis, 'first-datagram')
    assert.deepEqual(fa.client, {...a, family: 4})
    assert.deepEqual(fa.server, {...dns, family: 4})
    assert.deepEqual(fa.clientChunks.map((c) => [c.ts, c.data.toString()]), [[T0, 'q1'], [T0 + 30, 'q3']])
    assert.deepEqual(fa.serverChunks.map((c) => [c.ts, c.data.toString()]), [[T0 + 20, 'r1']])
    assert.equal(fb.client.port, 40001)
    assert.equal(text(fb.serverChunks), 'r2')
    assert.equal(fa.lastTs, T0 + 30)
  })

  test('duplicate datagrams are kept: UDP has no sequence numbers to tell a retransmission', () => {
    const f = one([udpSegment(T0, C, S, 'x'), udpSegment(T0 + 1, C, S, 'x')])
    assert.equal(f.clientChunks.length, 2)
  })
})
