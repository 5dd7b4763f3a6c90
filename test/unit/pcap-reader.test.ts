import {test, describe, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {mkdtempSync, rmSync, writeFileSync, readFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join, dirname, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {decodeFrame, LINKTYPE, TCP_FLAGS, type DecodedPacket} from '../../src/capture/decode.js'
import {readCapture} from '../../src/capture/pcap-reader.js'
import {reassemble} from '../../src/capture/reassembly.js'
import {DivertError} from '../../src/errors.js'
import {capture, ipPacket, linkFrame, pcapFile, pcapHeader, pcapngStart, pcapRecord, segmentPacket, tcpHeader, TcpConversation, udpSegment, type Segment} from '../helpers/frames.js'

const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/pcap')
const C = {address: '192.0.2.10', port: 40001}
const S = {address: '198.51.100.5', port: 8080}
const C6 = {address: '2001:db8::10', port: 40001}
const S6 = {address: '2001:db8::5', port: 443}
const T0 = 1_700_000_000_123_456

const tcpSeg = (src = C, dst = S, payload = 'hello', flags = 'PA'): Segment => ({ts: T0, src, dst, protocol: 'tcp', flags, seq: 0xfffffff0, ack: 77, payload: Buffer.from(payload)})

function decodeOk(linktype: number, frame: Buffer): DecodedPacket {
  const r = decodeFrame(linktype, frame, T0)
  assert.ok(r.packet, `expected a packet, got skip "${r.skip}"`)
  return r.packet
}

function decodeSkip(linktype: number, frame: Buffer): string {
  const r = decodeFrame(linktype, frame, T0)
  assert.ok(r.skip !== undefined, 'expected the frame to be skipped')
  return r.skip
}

describe('decodeFrame: link types', () => {
  const ip = segmentPacket(tcpSeg())
  const ip6 = segmentPacket(tcpSeg(C6, S6, 'six'))

  const cases: [string, number, Buffer, Buffer][] = [
    ['Ethernet', LINKTYPE.ETHERNET, linkFrame(LINKTYPE.ETHERNET, ip), linkFrame(LINKTYPE.ETHERNET, ip6)],
    ['Ethernet + 802.1Q', LINKTYPE.ETHERNET, linkFrame(LINKTYPE.ETHERNET, ip, {vlan: [42]}), linkFrame(LINKTYPE.ETHERNET, ip6, {vlan: [42]})],
    ['Ethernet + QinQ', LINKTYPE.ETHERNET, linkFrame(LINKTYPE.ETHERNET, ip, {vlan: [100, 42]}), linkFrame(LINKTYPE.ETHERNET, ip6, {vlan: [100, 42]})],
    ['Linux SLL', LINKTYPE.LINUX_SLL, linkFrame(LINKTYPE.LINUX_SLL, ip), linkFrame(LINKTYPE.LINUX_SLL, ip6)],
    ['Linux SLL2', LINKTYPE.LINUX_SLL2, linkFrame(LINKTYPE.LINUX_SLL2, ip), linkFrame(LINKTYPE.LINUX_SLL2, ip6)],
    ['raw IP (101)', LINKTYPE.RAW, ip, ip6],
    ['raw IP (DLT 12)', LINKTYPE.RAW_DLT12, ip, ip6],
    ['raw IP (DLT 14)', LINKTYPE.RAW_DLT14, ip, ip6],
    ['NULL little-endian', LINKTYPE.NULL, linkFrame(LINKTYPE.NULL, ip), linkFrame(LINKTYPE.NULL, ip6, {af6: 30})],
    ['NULL big-endian', LINKTYPE.NULL, linkFrame(LINKTYPE.NULL, ip, {nullOrder: 'be'}), linkFrame(LINKTYPE.NULL, ip6, {nullOrder: 'be', af6: 28})],
    ['LOOP', LINKTYPE.LOOP, linkFrame(LINKTYPE.LOOP, ip), linkFrame(LINKTYPE.LOOP, ip6, {af6: 24})],
  ]
  for (const [name, linktype, v4, v6] of cases) {
    test(`${name}: IPv4 and IPv6 TCP`, () => {
      const p = decodeOk(linktype, v4)
      assert.deepEqual(p.src, {address: '192.0.2.10', port: 40001, family: 4})
      assert.deepEqual(p.dst, {address: '198.51.100.5', port: 8080, family: 4})
      assert.equal(p.payload.toString(), 'hello')
      const q = decodeOk(linktype, v6)
      assert.deepEqual(q.src, {address: '2001:db8::10', port: 40001, family: 6})
      assert.equal(q.dst.address, '2001:db8::5')
      assert.equal(q.payload.toString(), 'six')
    })
  }

  test('raw IPv4 (228) and raw IPv6 (229)', () => {
    assert.equal(decodeOk(LINKTYPE.IPV4, ip).payload.toString(), 'hello')
    assert.equal(decodeOk(LINKTYPE.IPV6, ip6).payload.toString(), 'six')
  })

  test('NULL takes every BSD AF_INET6 value (24, 28, 30)', () => {
    for (const af6 of [24, 28, 30]) assert.equal(decodeOk(LINKTYPE.NULL, linkFrame(LINKTYPE.NULL, ip6, {af6})).src.family, 6)
  })

  test('Ethernet padding to 60 bytes is not payload', () => {
    const p = decodeOk(LINKTYPE.ETHERNET, linkFrame(LINKTYPE.ETHERNET, segmentPacket(tcpSeg(C, S, '', 'A')), {pad: true}))
    assert.equal(p.payload.length, 0)
  })

  test('non-IP frames are skipped with a reason', () => {
    assert.equal(decodeSkip(LINKTYPE.ETHERNET, linkFrame(LINKTYPE.ETHERNET, Buffer.alloc(28), {}, 0x0806)), 'not IP (ethertype 0x0806)')
    assert.equal(decodeSkip(LINKTYPE.ETHERNET, linkFrame(LINKTYPE.ETHERNET, Buffer.alloc(28), {}, 46)), 'not IP (802.3 LLC frame)')
    assert.equal(decodeSkip(LINKTYPE.NULL, linkFrame(LINKTYPE.NULL, Buffer.alloc(28), {}, 0x1234)), 'not IP (address family 99)')
    assert.equal(decodeSkip(LINKTYPE.ETHERNET, Buffer.alloc(10)), 'truncated frame')
    assert.equal(decodeSkip(LINKTYPE.LINUX_SLL2, Buffer.alloc(19)), 'truncated frame')
  })
})

describe('decodeFrame: IP and transport', () => {
  test('TCP header fields: flags, seq, ack, data offset with options', () => {
    const seg = tcpSeg(C, S, 'data', 'SA')
    const body = tcpHeader(seg, Buffer.from([2, 4, 5, 180, 1, 1, 1, 0]))
    const p = decodeOk(LINKTYPE.RAW, ipPacket(C.address, S.address, 6, body))
    assert.equal(p.protocol, 'tcp')
    assert.equal(p.flags, TCP_FLAGS.SYN | TCP_FLAGS.ACK)
    assert.equal(p.seq, 0xfffffff0)
    assert.equal(p.ack, 77)
    assert.equal(p.payload.toString(), 'data')
    assert.equal(p.ts, T0)
  })

  test('UDP datagram', () => {
    const p = decodeOk(LINKTYPE.RAW, segmentPacket(udpSegment(T0, C, S, 'dgram')))
    assert.equal(p.protocol, 'udp')
    assert.equal(p.flags, undefined)
    assert.equal(p.payload.toString(), 'dgram')
  })

  test('IPv4 options are stepped over', () => {
    const p = decodeOk(LINKTYPE.RAW, segmentPacket(tcpSeg(), {ipv4Options: Buffer.from([1, 1, 1, 0, 1, 1, 1, 0])}))
    assert.equal(p.payload.toString(), 'hello')
  })

  test('IPv4 fragments are skipped (MF set, or a non-zero offset)', () => {
    assert.equal(decodeSkip(LINKTYPE.RAW, segmentPacket(tcpSeg(), {fragment: {offset: 0, more: true}})), 'IPv4 fragment')
    assert.equal(decodeSkip(LINKTYPE.RAW, segmentPacket(tcpSeg(), {fragment: {offset: 185, more: false}})), 'IPv4 fragment')
  })

  test('IPv6 hop-by-hop, routing, destination options and AH headers are stepped over', () => {
    const ext = [{type: 0}, {type: 43, length: 2}, {type: 60, length: 1}, {type: 51, length: 4}]
    const p = decodeOk(LINKTYPE.RAW, segmentPacket(tcpSeg(C6, S6, 'behind ext'), {ext}))
    assert.equal(p.payload.toString(), 'behind ext')
    assert.equal(p.dst.port, 443)
  })

  test('IPv6 fragments are skipped', () => {
    assert.equal(decodeSkip(LINKTYPE.RAW, segmentPacket(tcpSeg(C6, S6), {ext: [{type: 0}, {type: 44}]})), 'IPv6 fragment')
  })

  test('non-TCP/UDP is skipped with its protocol number', () => {
    assert.equal(decodeSkip(LINKTYPE.RAW, ipPacket(C.address, S.address, 1, Buffer.alloc(8))), 'not TCP/UDP (IP protocol 1)')
    assert.equal(decodeSkip(LINKTYPE.RAW, ipPacket(C6.address, S6.address, 58, Buffer.alloc(8))), 'not TCP/UDP (IP protocol 58)')
  })

  test('a packet cut by the snapshot length is skipped, not half-decoded', () => {
    const full = segmentPacket(tcpSeg(C, S, 'x'.repeat(100)))
    assert.equal(decodeSkip(LINKTYPE.RAW, full.subarray(0, 80)), 'packet cut short by the snapshot length')
    assert.equal(decodeSkip(LINKTYPE.RAW, segmentPacket(tcpSeg(), {zeroLength: true}).subarray(0, 30)), 'truncated TCP header')
  })

  test('total length 0 (TSO capture on the sender) takes the whole frame', () => {
    assert.equal(decodeOk(LINKTYPE.RAW, segmentPacket(tcpSeg(C, S, 'big'), {zeroLength: true})).payload.toString(), 'big')
    assert.equal(decodeOk(LINKTYPE.RAW, segmentPacket(tcpSeg(C6, S6, 'big6'), {zeroLength: true})).payload.toString(), 'big6')
  })

  test('malformed headers are skipped', () => {
    const bad = segmentPacket(tcpSeg())
    bad[0] = 0x43
    assert.equal(decodeSkip(LINKTYPE.IPV4, bad), 'malformed IPv4 header')
    assert.equal(decodeSkip(LINKTYPE.RAW, Buffer.from([0x20, 0, 0, 0])), 'not IP (IP version 2)')
  })
})

describe('readCapture', () => {
  let dir: string
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'divert-pcap-'))
  })
  after(() => rmSync(dir, {recursive: true, force: true}))

  const file = (name: string, bytes: Buffer): string => {
    const p = join(dir, name)
    writeFileSync(p, bytes)
    return p
  }

  const conversation = (): Segment[] =>
    new TcpConversation(C, S, {t0: T0}).handshake().send('client', 'GET /\n').send('server', 'OK\n').fin('client').fin('server').segments

  async function rejects(path: string, code: string, pattern: RegExp): Promise<void> {
    await assert.rejects(readCapture(path), (e: unknown) => {
      assert.ok(e instanceof DivertError, `expected a DivertError, got ${String(e)}`)
      assert.equal(e.code, code)
      assert.match(e.message, pattern)
      return true
    })
  }

  test('microsecond pcap, little- and big-endian, keeps timestamps', async () => {
    for (const bigEndian of [false, true]) {
      const cap = await readCapture(file(`us-${bigEndian}.pcap`, capture(LINKTYPE.ETHERNET, conversation(), {bigEndian})))
      assert.equal(cap.linktype, 1)
      assert.equal(cap.nanosecond, false)
      assert.equal(cap.littleEndian, !bigEndian)
      assert.equal(cap.records, 7)
      assert.equal(cap.packets.length, 7)
      assert.deepEqual(cap.packets.map((p) => p.ts), conversation().map((s) => s.ts))
      assert.equal(cap.packets[3].payload.toString(), 'GET /\n')
    }
  })

  test('nanosecond pcap (a1b23c4d, either byte order) is read, sub-second converted to µs', async () => {
    for (const bigEndian of [false, true]) {
      const segs = conversation()
      const bytes = pcapFile(LINKTYPE.LINUX_SLL2, segs.map((s) => ({ts: s.ts, extraNs: 999, data: linkFrame(LINKTYPE.LINUX_SLL2, segmentPacket(s))})), {nanosecond: true, bigEndian})
      assert.equal(bytes.readUInt32BE(0), bigEndian ? 0xa1b23c4d : 0x4d3cb2a1)
      const cap = await readCapture(file(`ns-${bigEndian}.pcap`, bytes))
      assert.equal(cap.nanosecond, true)
      assert.deepEqual(cap.packets.map((p) => p.ts), segs.map((s) => s.ts))
    }
  })

  test('every supported link type reads from a file', async () => {
    for (const lt of [0, 1, 12, 14, 101, 108, 113, 228, 276]) {
      const cap = await readCapture(file(`lt-${lt}.pcap`, capture(lt, conversation())))
      assert.equal(cap.packets.length, 7, `link type ${lt}`)
      assert.deepEqual(cap.skipped, [])
    }
  })

  test('skipped packets are counted by reason', async () => {
    const icmp = ipPacket(C.address, S.address, 1, Buffer.alloc(8))
    const frag = segmentPacket(tcpSeg(), {fragment: {offset: 0, more: true}})
    const records = [icmp, icmp, frag, segmentPacket(tcpSeg())].map((ip, i) => ({ts: T0 + i, data: linkFrame(LINKTYPE.ETHERNET, ip)}))
    records.push({ts: T0 + 9, data: linkFrame(LINKTYPE.ETHERNET, Buffer.alloc(28), {}, 0x0806)})
    const cap = await readCapture(file('skips.pcap', pcapFile(LINKTYPE.ETHERNET, records)))
    assert.equal(cap.records, 5)
    assert.equal(cap.packets.length, 1)
    assert.deepEqual(cap.skipped, [
      {reason: 'not TCP/UDP (IP protocol 1)', count: 2},
      {reason: 'IPv4 fragment', count: 1},
      {reason: 'not IP (ethertype 0x0806)', count: 1},
    ])
  })

  test('onPacket receives packets instead of collecting them', async () => {
    const seen: DecodedPacket[] = []
    const cap = await readCapture(file('cb.pcap', capture(LINKTYPE.RAW, conversation())), {onPacket: (p) => seen.push(p)})
    assert.equal(seen.length, 7)
    assert.equal(cap.packets.length, 0)
  })

  test('records spanning read chunks (a file of several hundred KiB) are all read', async () => {
    const segs: Segment[] = []
    for (let i = 0; i < 3000; i++) segs.push(udpSegment(T0 + i, C, S, Buffer.alloc(100 + (i % 200), i % 256)))
    const cap = await readCapture(file('big.pcap', capture(LINKTYPE.ETHERNET, segs)))
    assert.equal(cap.packets.length, 3000)
    assert.equal(cap.packets[2999].payload.length, 100 + (2999 % 200))
    assert.equal(cap.packets[2999].payload[0], 2999 % 256)
  })

  test('pcapng is rejected with PCAP_FORMAT and the editcap command', async () => {
    const p = file('x.pcapng', Buffer.concat([pcapngStart(), Buffer.alloc(64)]))
    await rejects(p, 'DIVERT_ERR_PCAP_FORMAT', /is pcapng, not classic pcap: convert it with `editcap -F pcap .*x\.pcapng out\.pcap`/)
    await rejects(join(FIXTURES, 'lo-ethernet.pcapng'), 'DIVERT_ERR_PCAP_FORMAT', /pcapng.*editcap -F pcap/)
  })

  test('an unknown magic number is PCAP_FORMAT and says what the file starts with', async () => {
    await rejects(file('http.txt', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')), 'DIVERT_ERR_PCAP_FORMAT', /starts with bytes 47 45 54 20, not a pcap magic number/)
    await rejects(file('gz.pcap.gz', Buffer.from([0x1f, 0x8b, 8, 0, ...Buffer.alloc(40)])), 'DIVERT_ERR_PCAP_FORMAT', /gzip: run gunzip on it first/)
  })

  test('empty and too-short files are PCAP_CORRUPT', async () => {
    await rejects(file('empty.pcap', Buffer.alloc(0)), 'DIVERT_ERR_PCAP_CORRUPT', /is empty: a pcap file starts with a 24-byte header/)
    await rejects(file('short.pcap', pcapHeader(1).subarray(0, 10)), 'DIVERT_ERR_PCAP_CORRUPT', /has 10 bytes, less than the 24-byte pcap file header/)
    await rejects(file('tiny.pcap', Buffer.from([0xd4, 0xc3])), 'DIVERT_ERR_PCAP_CORRUPT', /has 2 bytes/)
  })

  test('issue 11.19: a file cut inside its last record: the whole packets before it are read, and the warning says how many bytes are missing', async () => {
    const whole = capture(LINKTYPE.ETHERNET, conversation())
    const lastLen = pcapRecord({ts: 0, data: linkFrame(LINKTYPE.ETHERNET, segmentPacket(conversation()[6]))}).length
    const offset = whole.length - lastLen
    const caplen = lastLen - 16
    const body = await readCapture(file('cut-body.pcap', whole.subarray(0, whole.length - 5)))
    assert.equal(body.records, 6)
    assert.equal(body.packets.length, 6)
    assert.deepEqual({...body.truncated, warning: undefined}, {offset, present: lastLen - 5, missing: 5, warning: undefined})
    assert.match(body.truncated!.warning, new RegExp(`cut short at byte offset ${offset}: the file ends inside a packet \\(its header says incl_len ${caplen}, ${caplen - 5} bytes present, 5 bytes short\\); only the 6 whole packets before it are read`))
    const head = await readCapture(file('cut-header.pcap', whole.subarray(0, offset + 7)))
    assert.equal(head.records, 6)
    assert.equal(head.truncated?.missing, 9)
    assert.match(head.truncated!.warning, /the file ends inside a record header \(7 of its 16 bytes present, 9 bytes short\)/)
    await rejects(file('cut-first.pcap', whole.subarray(0, 30)), 'DIVERT_ERR_PCAP_CORRUPT', /is truncated inside its first record: the file ends inside a record header \(6 of its 16 bytes present, 10 bytes short\)/)
    assert.equal((await readCapture(file('whole.pcap', whole))).truncated, undefined)
  })

  test('a header-only file is a valid, empty capture', async () => {
    const cap = await readCapture(file('header-only.pcap', pcapHeader(LINKTYPE.ETHERNET)))
    assert.equal(cap.records, 0)
    assert.deepEqual(cap.packets, [])
  })

  test('an absurd record length is PCAP_CORRUPT at once, without reading the rest', async () => {
    const rec = pcapRecord({ts: T0, data: Buffer.alloc(40)})
    rec.writeUInt32LE(0x7fffffff, 8)
    await rejects(file('huge.pcap', Buffer.concat([pcapHeader(1), rec])), 'DIVERT_ERR_PCAP_CORRUPT', /record 1 at byte offset 24 claims 2147483647 captured bytes/)
  })

  test('unsupported link types and versions are PCAP_FORMAT', async () => {
    await rejects(file('wifi.pcap', pcapHeader(105)), 'DIVERT_ERR_PCAP_FORMAT', /has link type 105, which divert cannot decode; supported link types: 0 BSD loopback/)
    await rejects(file('v1.pcap', pcapHeader(1, {version: [1, 0]})), 'DIVERT_ERR_PCAP_FORMAT', /pcap version 1\.0/)
  })

  test('FCS bits above the link type are ignored', async () => {
    const records = conversation().map((seg) => ({ts: seg.ts, data: linkFrame(LINKTYPE.ETHERNET, segmentPacket(seg))}))
    const cap = await readCapture(file('fcs.pcap', pcapFile(0x14000000 | LINKTYPE.ETHERNET, records)))
    assert.equal(cap.linktype, 1)
    assert.equal(cap.packets.length, 7)
  })

  test('a missing file or a directory is PCAP_READ naming it', async () => {
    await rejects(join(dir, 'nope.pcap'), 'DIVERT_ERR_PCAP_READ', /cannot open capture file .*nope\.pcap: no such file/)
    await rejects(dir, 'DIVERT_ERR_PCAP_READ', /is not a regular file/)
  })

  test('an aborted read rejects', async () => {
    const ac = new AbortController()
    ac.abort()
    await assert.rejects(readCapture(file('abort.pcap', capture(LINKTYPE.RAW, conversation())), {signal: ac.signal}))
  })
})

describe('readCapture: real tcpdump fixtures', () => {
  const expectExchange = (packets: DecodedPacket[]): void => {
    const flows = reassemble(packets)
    assert.equal(flows.length, 2)
    const [tcp, udp] = flows
    assert.equal(tcp.roleBasis, 'syn')
    assert.equal(tcp.server.port, 47613)
    assert.equal(Buffer.concat(tcp.clientChunks.map((c) => c.data)).toString(), 'hello divert\nsecond line\n')
    assert.equal(Buffer.concat(tcp.serverChunks.map((c) => c.data)).toString(), 'HELLO DIVERT\nSECOND LINE\n')
    assert.equal(tcp.clientFin, true)
    assert.equal(tcp.serverFin, true)
    assert.deepEqual(tcp.gaps, [])
    assert.equal(udp.protocol, 'udp')
    assert.equal(udp.serverChunks[0].data.toString(), 'PONG ping 1')
  }

  test('tcpdump -i lo: Ethernet, microseconds', async () => {
    const cap = await readCapture(join(FIXTURES, 'lo-ethernet.pcap'))
    assert.equal(cap.linktype, LINKTYPE.ETHERNET)
    assert.equal(cap.nanosecond, false)
    assert.equal(cap.packets.length, 15)
    expectExchange(cap.packets)
  })

  test('tcpdump -i any --time-stamp-precision=nano: SLL2, nanoseconds', async () => {
    const path = join(FIXTURES, 'any-sll2-nano.pcap')
    assert.equal(readFileSync(path).readUInt32LE(0), 0xa1b23c4d)
    const cap = await readCapture(path)
    assert.equal(cap.linktype, LINKTYPE.LINUX_SLL2)
    assert.equal(cap.nanosecond, true)
    assert.equal(cap.packets.length, 15)
    // ~2023-11 in µs: a ns value misread as µs would land thousands of years out.
    assert.ok(cap.packets[0].ts > 1.6e15 && cap.packets[0].ts < 4e15, `ts ${cap.packets[0].ts}`)
    expectExchange(cap.packets)
  })
})
