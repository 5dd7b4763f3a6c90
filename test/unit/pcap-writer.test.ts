/**
 * The pcap writer, checked by decoding its bytes with an independent decoder: every checksum is
 * recomputed (16-bit words, RFC 1071), lengths and seq/ack progression are checked per frame.
 */
import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  MAX_TCP_SEGMENT,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  TcpStreamSynth,
  pcapGlobalHeader,
  udpFrame,
} from '../../src/capture/pcap-writer.js'
import type {Address} from '../../src/addr/address.js'

// ─── an independent decoder ───────────────────────────────────────────────────────────────────

function onesSum(bytes: Uint8Array, sum = 0): number {
  for (let i = 0; i < bytes.length; i += 2) sum += (bytes[i] << 8) | (i + 1 < bytes.length ? bytes[i + 1] : 0)
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  return sum
}

interface Decoded {
  tsSec: number
  tsUsec: number
  inclLen: number
  origLen: number
  ethDst: string
  ethSrc: string
  family: 4 | 6
  src: string
  dst: string
  ttl: number
  ipId?: number
  df?: boolean
  proto: number
  sport: number
  dport: number
  seq?: number
  ack?: number
  flags?: number
  options?: Buffer
  udpLen?: number
  l4Checksum: number
  payload: Buffer
}

function mac(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':')
}

function ipText(b: Buffer): string {
  if (b.length === 4) return [...b].join('.')
  const words: string[] = []
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i).toString(16))
  return words.join(':')
}

/** Decodes one pcap record and asserts its lengths and checksums. */
function decode(rec: Buffer): Decoded {
  const inclLen = rec.readUInt32LE(8)
  const origLen = rec.readUInt32LE(12)
  assert.equal(inclLen, rec.length - 16, 'incl_len = frame length')
  assert.equal(origLen, inclLen, 'orig_len = incl_len (nothing truncated)')
  const f = rec.subarray(16)
  const type = f.readUInt16BE(12)
  const ip = f.subarray(14)
  let family: 4 | 6
  let l4: Buffer
  let pseudo: Buffer
  const out: Partial<Decoded> = {}
  if (type === 0x0800) {
    family = 4
    assert.equal(ip[0], 0x45, 'IPv4, IHL 5')
    assert.equal(ip.readUInt16BE(2), ip.length, 'IPv4 total length')
    assert.equal(onesSum(ip.subarray(0, 20)), 0xffff, 'IPv4 header checksum')
    out.ipId = ip.readUInt16BE(4)
    out.df = (ip.readUInt16BE(6) & 0x4000) !== 0
    assert.equal(ip.readUInt16BE(6) & 0x3fff, 0, 'no fragment offset, MF clear')
    out.ttl = ip[8]
    out.proto = ip[9]
    out.src = ipText(ip.subarray(12, 16))
    out.dst = ipText(ip.subarray(16, 20))
    l4 = ip.subarray(20)
    pseudo = Buffer.concat([ip.subarray(12, 20), Buffer.from([0, out.proto, l4.length >> 8, l4.length & 0xff])])
  } else {
    assert.equal(type, 0x86dd, 'ethertype IPv4 or IPv6')
    family = 6
    assert.equal(ip[0] >> 4, 6)
    assert.equal(ip.readUInt16BE(4), ip.length - 40, 'IPv6 payload length')
    out.proto = ip[6]
    out.ttl = ip[7]
    out.src = ipText(ip.subarray(8, 24))
    out.dst = ipText(ip.subarray(24, 40))
    l4 = ip.subarray(40)
    const len = Buffer.alloc(8)
    len.writeUInt32BE(l4.length, 0)
    len[7] = out.proto
    pseudo = Buffer.concat([ip.subarray(8, 40), len])
  }
  assert.equal(onesSum(l4, onesSum(pseudo)), 0xffff, `${out.proto === 6 ? 'TCP' : 'UDP'} checksum over the IPv${family} pseudo-header`)
  out.sport = l4.readUInt16BE(0)
  out.dport = l4.readUInt16BE(2)
  if (out.proto === 6) {
    out.seq = l4.readUInt32BE(4)
    out.ack = l4.readUInt32BE(8)
    const hdr = (l4[12] >> 4) * 4
    out.flags = l4[13]
    out.options = l4.subarray(20, hdr)
    out.l4Checksum = l4.readUInt16BE(16)
    out.payload = l4.subarray(hdr)
  } else {
    assert.equal(out.proto, 17)
    out.udpLen = l4.readUInt16BE(4)
    assert.equal(out.udpLen, l4.length, 'UDP length')
    out.l4Checksum = l4.readUInt16BE(6)
    assert.notEqual(out.l4Checksum, 0, 'UDP checksum present')
    out.payload = l4.subarray(8)
  }
  return {
    ...(out as Decoded),
    tsSec: rec.readUInt32LE(0),
    tsUsec: rec.readUInt32LE(4),
    inclLen,
    origLen,
    ethDst: mac(f.subarray(0, 6)),
    ethSrc: mac(f.subarray(6, 12)),
    family,
  }
}

// ─── fixtures ─────────────────────────────────────────────────────────────────────────────────

const C4: Address = {address: '192.0.2.10', port: 40000, family: 4}
const S4: Address = {address: '198.51.100.7', port: 23, family: 4}
const C6: Address = {address: '2001:db8::10', port: 40000, family: 6}
const S6: Address = {address: '2001:db8::7', port: 443, family: 6}
const CLIENT_MAC = '02:00:00:00:00:01'
const SERVER_MAC = '02:00:00:00:00:02'
const TS = 1_700_000_000_123_456

function isns(...values: number[]): () => number {
  let i = 0
  return () => values[i++]
}

function u32(n: number): number {
  return n % 0x100000000
}

/** Checks that every frame's seq/ack follows from the ones before it (RFC 9293 §3.4). */
class SeqTracker {
  next = new Map<string, number>()
  constructor(private readonly client: string) {}
  check(d: Decoded): void {
    const from = d.src === this.client ? 'c' : 's'
    const to = from === 'c' ? 's' : 'c'
    if (d.flags! & TCP_SYN) {
      this.next.set(from, u32(d.seq! + 1))
      if (d.flags! & TCP_ACK) assert.equal(d.ack, this.next.get(to), 'SYN-ACK acks the SYN')
      return
    }
    assert.equal(d.seq, this.next.get(from), `${from} seq continues`)
    if (d.flags! & TCP_ACK) assert.equal(d.ack, this.next.get(to), `${from} acks everything ${to} sent`)
    const consumed = d.payload.length + (d.flags! & TCP_FIN ? 1 : 0)
    this.next.set(from, u32(d.seq! + consumed))
  }
}

// ─── tests ────────────────────────────────────────────────────────────────────────────────────

describe('pcapGlobalHeader', () => {
  it('is classic pcap 2.4, microsecond magic written little-endian, Ethernet', () => {
    assert.equal(pcapGlobalHeader().toString('hex'), 'd4c3b2a1' + '0200' + '0400' + '00000000' + '00000000' + '00000400' + '01000000')
    const h = pcapGlobalHeader(65535, 101)
    assert.equal(h.readUInt32LE(16), 65535)
    assert.equal(h.readUInt32LE(20), 101)
  })
})

describe('TcpStreamSynth over IPv4', () => {
  it('writes the three-way handshake with ISNs, MSS and window-scale options', () => {
    const t = new TcpStreamSynth(C4, S4, {isn: isns(1000, 0xfffffffe)})
    const [syn, synAck, ack] = t.handshake(TS).map(decode)
    assert.equal(syn.flags, TCP_SYN)
    assert.equal(syn.seq, 1000)
    assert.equal(syn.ack, 0)
    assert.equal(synAck.flags, TCP_SYN | TCP_ACK)
    assert.equal(synAck.seq, 0xfffffffe)
    assert.equal(synAck.ack, 1001)
    assert.equal(ack.flags, TCP_ACK)
    assert.equal(ack.seq, 1001)
    assert.equal(ack.ack, 0xffffffff)
    assert.deepEqual([...syn.options!], [2, 4, 0xff, 0xd7, 1, 3, 3, 7])
    assert.deepEqual([...synAck.options!], [2, 4, 0xff, 0xd7, 1, 3, 3, 7])
    assert.equal(ack.options!.length, 0)
    for (const d of [syn, ack]) {
      assert.deepEqual([d.src, d.sport, d.dst, d.dport, d.ethSrc, d.ethDst], ['192.0.2.10', 40000, '198.51.100.7', 23, CLIENT_MAC, SERVER_MAC])
    }
    assert.deepEqual([synAck.src, synAck.sport, synAck.ethSrc, synAck.ethDst], ['198.51.100.7', 23, SERVER_MAC, CLIENT_MAC])
    for (const d of [syn, synAck, ack]) {
      assert.equal(d.ttl, 64)
      assert.equal(d.df, true)
      assert.equal(d.tsSec, 1_700_000_000)
      assert.equal(d.tsUsec, 123_456)
    }
    assert.equal(ack.ipId, syn.ipId! + 1, 'client IP ids increment')
  })

  it('keeps seq/ack consistent across data both ways, FINs and the final ACK (seq wraps past 2^32)', () => {
    const t = new TcpStreamSynth(C4, S4, {isn: isns(0xfffffff0, 7)})
    const tracker = new SeqTracker(C4.address)
    const frames = [
      ...t.handshake(TS),
      ...t.data(true, Buffer.from('hello, server'), TS + 10),
      ...t.data(false, Buffer.from('hello, client, long reply'), TS + 20),
      ...t.data(true, Buffer.from('more'), TS + 30),
      ...t.fin(true, TS + 40),
      ...t.data(false, Buffer.from('bye'), TS + 50),
      ...t.fin(false, TS + 60),
    ].map(decode)
    for (const d of frames) tracker.check(d)
    const flags = frames.map((d) => d.flags)
    assert.deepEqual(flags, [
      TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK,
      TCP_PSH | TCP_ACK, TCP_PSH | TCP_ACK, TCP_PSH | TCP_ACK,
      TCP_FIN | TCP_ACK, TCP_PSH | TCP_ACK, TCP_FIN | TCP_ACK, TCP_ACK,
    ])
    const last = frames.at(-1)!
    assert.equal(last.src, C4.address, 'the final ACK comes from the side that closed first')
    assert.equal(last.ack, tracker.next.get('s'))
    assert.ok(frames[4].seq! < 0x100, 'client seq wrapped')
    assert.deepEqual(frames[8].tsUsec - frames[3].tsUsec, 50)
    assert.equal(t.closed, true)
    assert.deepEqual(t.data(true, Buffer.from('late'), TS), [], 'nothing after the close')
    assert.deepEqual(t.fin(true, TS), [])
  })

  it('splits a 200 KB payload into segments of at most 65,495 bytes that reassemble exactly', () => {
    const t = new TcpStreamSynth(C4, S4, {isn: isns(1, 2)})
    const tracker = new SeqTracker(C4.address)
    t.handshake(TS).map(decode).forEach((d) => tracker.check(d))
    const payload = Buffer.alloc(200_000)
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff
    const segs = t.data(true, payload, TS).map(decode)
    segs.forEach((d) => tracker.check(d))
    assert.deepEqual(segs.map((d) => d.payload.length), [65_495, 65_495, 65_495, 3_515])
    assert.ok(segs.every((d) => d.flags === (TCP_PSH | TCP_ACK)))
    assert.ok(Buffer.concat(segs.map((d) => d.payload)).equals(payload))
    assert.equal(segs[0].inclLen, 14 + 20 + 20 + MAX_TCP_SEGMENT, 'a full segment fills the IPv4 total length')
    const ids = segs.map((d) => d.ipId!)
    assert.deepEqual(ids, ids.map((_, i) => ids[0] + i))
  })

  it('has the receiver ACK every MiB so the scaled window never fills', () => {
    const t = new TcpStreamSynth(C4, S4, {isn: isns(1, 2)})
    const tracker = new SeqTracker(C4.address)
    t.handshake(TS).map(decode).forEach((d) => tracker.check(d))
    const frames = t.data(true, Buffer.alloc(3 * 1024 * 1024), TS).map(decode)
    frames.forEach((d) => tracker.check(d))
    const acks = frames.filter((d) => d.src === S4.address)
    // 1 MiB is passed after 17 full segments (1,113,415 bytes): ACKs follow segments 17 and 34 of 49.
    assert.equal(acks.length, 2)
    assert.deepEqual(acks.map((a) => frames.indexOf(a)), [17, 35])
    assert.ok(acks.every((d) => d.flags === TCP_ACK && d.payload.length === 0))
  })

  it('writes a RST|ACK from the named side at its next seq, then nothing more', () => {
    const t = new TcpStreamSynth(C4, S4, {isn: isns(100, 200)})
    t.handshake(TS)
    t.data(false, Buffer.from('abc'), TS)
    const [rst] = t.reset(false, TS).map(decode)
    assert.equal(rst.flags, TCP_RST | TCP_ACK)
    assert.equal(rst.src, S4.address)
    assert.equal(rst.seq, 204)
    assert.equal(rst.ack, 101)
    assert.deepEqual(t.reset(true, TS), [])
    assert.deepEqual(t.fin(true, TS), [])
  })

  it('advance() leaves a gap in the sequence space for bytes not written', () => {
    const t = new TcpStreamSynth(C4, S4, {isn: isns(100, 200)})
    t.handshake(TS)
    t.advance(true, 5000)
    const [d] = t.data(true, Buffer.from('x'), TS).map(decode)
    assert.equal(d.seq, 5101)
  })

  it('takes bigint timestamps', () => {
    const t = new TcpStreamSynth(C4, S4)
    const [syn] = t.handshake(1_700_000_001_000_999n).map(decode)
    assert.equal(syn.tsSec, 1_700_000_001)
    assert.equal(syn.tsUsec, 999)
  })
})

describe('TcpStreamSynth over IPv6 and mixed families', () => {
  it('writes IPv6 frames with hop limit 64 and pseudo-header checksums', () => {
    const t = new TcpStreamSynth(C6, S6, {isn: isns(5, 6)})
    const tracker = new SeqTracker('2001:db8:0:0:0:0:0:10')
    const frames = [...t.handshake(TS), ...t.data(true, Buffer.alloc(70_000, 1), TS), ...t.data(false, Buffer.from('ok'), TS), ...t.fin(false, TS), ...t.fin(true, TS)].map(decode)
    frames.forEach((d) => tracker.check(d))
    assert.ok(frames.every((d) => d.family === 6 && d.ttl === 64))
    assert.equal(frames[0].src, '2001:db8:0:0:0:0:0:10')
    assert.equal(frames[0].dst, '2001:db8:0:0:0:0:0:7')
    assert.equal(frames.at(-1)!.src, S6.address.replace('::', ':0:0:0:0:0:'), 'final ACK from the server, which closed first')
  })

  it('writes an IPv4 client and an IPv6 server both as IPv6, the IPv4 side mapped', () => {
    const t = new TcpStreamSynth({address: '127.0.0.1', port: 5555, family: 4}, {address: '::1', port: 80, family: 6})
    const [syn, synAck] = t.handshake(TS).map(decode)
    assert.equal(syn.family, 6)
    assert.equal(syn.src, '0:0:0:0:0:ffff:7f00:1')
    assert.equal(syn.dst, '0:0:0:0:0:0:0:1')
    assert.equal(synAck.dst, '0:0:0:0:0:ffff:7f00:1')
  })
})

describe('udpFrame', () => {
  it('writes an IPv4 datagram with its checksum and lengths', () => {
    const d = decode(udpFrame(C4, S4, Buffer.from('ping'), TS))
    assert.deepEqual([d.family, d.src, d.sport, d.dst, d.dport, d.ethSrc, d.ethDst], [4, C4.address, 40000, S4.address, 23, CLIENT_MAC, SERVER_MAC])
    assert.equal(d.udpLen, 12)
    assert.equal(d.payload.toString(), 'ping')
    assert.equal(d.df, true)
  })

  it('keeps the client and server MACs for a reply', () => {
    const d = decode(udpFrame(S4, C4, Buffer.from('pong'), TS, false))
    assert.deepEqual([d.src, d.dst, d.ethSrc, d.ethDst], [S4.address, C4.address, SERVER_MAC, CLIENT_MAC])
  })

  it('writes IPv6 and mixed-family datagrams', () => {
    assert.equal(decode(udpFrame(C6, S6, Buffer.alloc(1000, 9), TS)).family, 6)
    const m = decode(udpFrame({address: '10.0.0.1', port: 1, family: 4}, S6, Buffer.from('x'), TS))
    assert.equal(m.src, '0:0:0:0:0:ffff:a00:1')
  })

  it('sends a computed checksum of 0 as 0xffff (RFC 768)', () => {
    const zero = decode(udpFrame(C4, S4, Buffer.alloc(2), TS))
    const payload = Buffer.alloc(2)
    // Adding the first checksum as a payload word brings the sum to 0xffff, so the checksum computes to 0.
    payload.writeUInt16BE(zero.l4Checksum)
    const d = decode(udpFrame(C4, S4, payload, TS))
    assert.equal(d.l4Checksum, 0xffff)
  })

  it('accepts the largest datagram of each family and refuses one byte more', () => {
    assert.equal(decode(udpFrame(C4, S4, Buffer.alloc(65_507), TS)).payload.length, 65_507)
    assert.equal(decode(udpFrame(C6, S6, Buffer.alloc(65_527), TS)).payload.length, 65_527)
    assert.throws(() => udpFrame(C4, S4, Buffer.alloc(65_508), TS), {code: 'DIVERT_ERR_RECORD_FAILED'})
    assert.throws(() => udpFrame(C6, S6, Buffer.alloc(65_528), TS), {code: 'DIVERT_ERR_RECORD_FAILED'})
  })
})

describe('TcpStreamSynth (property)', () => {
  it('reassembles both directions exactly with valid checksums for any chunking', () => {
    const chunk = fc.record({fromClient: fc.boolean(), bytes: fc.uint8Array({minLength: 0, maxLength: 300})})
    fc.assert(
      fc.property(fc.array(chunk, {maxLength: 30}), fc.boolean(), fc.nat({max: 0xffffffff}), (chunks, v6, isn) => {
        const [c, s] = v6 ? [C6, S6] : [C4, S4]
        const t = new TcpStreamSynth(c, s, {isn: isns(isn, 0xffffffff - isn)})
        const frames = [...t.handshake(TS)]
        for (const ch of chunks) frames.push(...t.data(ch.fromClient, Buffer.from(ch.bytes), TS))
        frames.push(...t.fin(true, TS), ...t.fin(false, TS))
        const decoded = frames.map(decode)
        const tracker = new SeqTracker(decoded[0].src)
        decoded.forEach((d) => tracker.check(d))
        const sent = (fromClient: boolean): Buffer => Buffer.concat(chunks.filter((ch) => ch.fromClient === fromClient).map((ch) => Buffer.from(ch.bytes)))
        const got = (src: string): Buffer => Buffer.concat(decoded.filter((d) => d.src === src).map((d) => d.payload))
        assert.ok(got(decoded[0].src).equals(sent(true)))
        assert.ok(got(decoded[0].dst).equals(sent(false)))
      }),
      {numRuns: 200},
    )
  })
})
