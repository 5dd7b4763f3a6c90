/**
 * Fuzzing the capture path (issue 7 §6): decodeFrame never throws on any bytes of any link type;
 * readCapture on corrupted, truncated and random files resolves or rejects with PCAP_FORMAT /
 * PCAP_CORRUPT, never hangs (each read races a timer); reassembly of any packet sequence never throws
 * and gives back exactly the bytes of a stream however its segments were reordered or repeated.
 *
 *   random bytes | generated capture ─▶ mutate ─▶ readCapture ─▶ decodeFrame ─▶ Reassembler ─▶ Flow[]
 */
import {describe, it, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {isIP} from 'node:net'
import fc from 'fast-check'
import {decodeFrame, LINKTYPE, TCP_FLAGS, type DecodedPacket} from '../../src/capture/decode.js'
import {readCapture, type Capture} from '../../src/capture/pcap-reader.js'
import {reassemble, type Flow} from '../../src/capture/reassembly.js'
import {DivertError} from '../../src/errors.js'
import {capture, decoded, linkFrame, pcapHeader, segmentPacket, type Segment} from '../helpers/frames.js'

const FIXTURES = new URL('../../../test/fixtures/pcap/', import.meta.url)
/** A read that takes longer than this has hung: a fixture-sized file is read in a few ms. */
const HANG_MS = 5000
/** DIVERT_FUZZ_SCALE=10 runs ten times as many cases (a deeper run before a release). */
const runs = (n: number): number => Math.max(1, Math.round(n * Number(process.env.DIVERT_FUZZ_SCALE ?? 1)))
// A failing property reports the assertion that failed, not only the counterexample.
fc.configureGlobal({includeErrorInReport: true})

const LINKTYPES = Object.values(LINKTYPE)
const FILE_HEADER = 24
const RECORD_HEADER = 16

// ─── decodeFrame ───────────────────────────────────────────────────────────────────────────────

/** Decodes and checks what any result must satisfy; returns it for sharper checks. */
function decodeChecked(linktype: number, frame: Buffer, ts: number): ReturnType<typeof decodeFrame> {
  let r
  try {
    r = decodeFrame(linktype, frame, ts)
  } catch (e) {
    assert.fail(`decodeFrame(${linktype}) threw ${String((e as Error)?.stack ?? e)} on ${frame.toString('hex')}`)
  }
  if (r.skip !== undefined) {
    assert.ok(typeof r.skip === 'string' && r.skip.length > 0)
    return r
  }
  const p = r.packet
  assert.equal(p.ts, ts)
  for (const peer of [p.src, p.dst]) {
    assert.equal(isIP(peer.address), peer.family, `${peer.address} is IPv${peer.family}`)
    assert.ok(Number.isInteger(peer.port) && peer.port >= 0 && peer.port <= 65535)
  }
  // The payload is a view into the frame, never past its end (no reads of foreign memory).
  assert.equal(p.payload.buffer, frame.buffer)
  assert.ok(p.payload.byteOffset >= frame.byteOffset && p.payload.byteOffset + p.payload.length <= frame.byteOffset + frame.length)
  if (p.protocol === 'tcp') assert.ok(p.flags !== undefined && p.seq !== undefined && p.ack !== undefined)
  return r
}

const addr4 = fc.ipV4()
const addr6 = fc.uint8Array({minLength: 16, maxLength: 16}).map((b) => [...Array(8).keys()].map((i) => ((b[2 * i] << 8) | b[2 * i + 1]).toString(16)).join(':'))
const port = fc.integer({min: 0, max: 65535})
const payload = fc.uint8Array({maxLength: 64}).map((b) => Buffer.from(b))

const segment: fc.Arbitrary<Segment> = fc.tuple(fc.boolean(), addr4, addr4, addr6, addr6, port, port, fc.boolean(), fc.constantFrom('S', 'SA', 'A', 'PA', 'FA', 'R', 'RA', 'FPU', ''), fc.nat({max: 2 ** 32 - 1}), payload)
  .map(([v6, a, b, a6, b6, sp, dp, tcp, flags, seq, data]) => ({
    ts: 1_700_000_000_000_000, src: {address: v6 ? a6 : a, port: sp}, dst: {address: v6 ? b6 : b, port: dp},
    protocol: tcp ? 'tcp' : 'udp', ...(tcp ? {flags, seq, ack: 0} : {}), payload: data,
  }))

const linkOpts = fc.record({
  vlan: fc.array(fc.integer({min: 0, max: 4095}), {maxLength: 3}),
  nullOrder: fc.constantFrom('le' as const, 'be' as const),
  af6: fc.constantFrom(24, 28, 30),
  pad: fc.boolean(),
})

/** LINKTYPE_IPV4 and LINKTYPE_IPV6 carry one family only: pick the one that fits the packet. */
function fitting(lt: number, seg: Segment): number {
  const v6 = isIP(seg.src.address) === 6
  if (lt === LINKTYPE.IPV4 && v6) return LINKTYPE.IPV6
  if (lt === LINKTYPE.IPV6 && !v6) return LINKTYPE.IPV4
  return lt
}

/** A well-formed frame of `linktype` carrying one generated TCP or UDP segment. */
const frame = fc.tuple(fc.constantFrom(...LINKTYPES), segment, linkOpts).map(([linktype, seg, opts]) => {
  const lt = fitting(linktype, seg)
  return {lt, seg, bytes: linkFrame(lt, segmentPacket(seg), opts)}
})

/** Overwrite one byte; one edit in five also cuts the buffer short. */
const byteEdit = fc.record({
  at: fc.nat(),
  value: fc.integer({min: 0, max: 255}),
  cut: fc.oneof({weight: 4, arbitrary: fc.constant(undefined)}, {weight: 1, arbitrary: fc.nat()}),
})

function damage(buf: Buffer, edits: {at: number; value: number; cut?: number}[]): Buffer {
  let out = Buffer.from(buf)
  for (const e of edits) {
    if (out.length > 0) out[e.at % out.length] = e.value
    if (e.cut !== undefined) out = out.subarray(0, e.cut % (out.length + 1))
  }
  return out
}

// ─── readCapture ───────────────────────────────────────────────────────────────────────────────

let dir: string
let seq = 0

/** Writes `bytes` to a fresh file and reads it; a hang fails instead of stalling the suite. */
async function read(bytes: Buffer): Promise<Capture | DivertError> {
  const path = join(dir, `f${seq++}.pcap`)
  writeFileSync(path, bytes)
  const abort = new AbortController()
  let timer: NodeJS.Timeout | undefined
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abort.abort()
      reject(new Error(`readCapture hung for ${HANG_MS}ms on ${bytes.length} bytes: ${bytes.subarray(0, 64).toString('hex')}…`))
    }, HANG_MS)
  })
  try {
    return await Promise.race([readCapture(path, {signal: abort.signal}), hung])
  } catch (e) {
    assert.ok(e instanceof DivertError, `readCapture rejected with ${String((e as Error)?.stack ?? e)}`)
    assert.ok(e.code === 'DIVERT_ERR_PCAP_FORMAT' || e.code === 'DIVERT_ERR_PCAP_CORRUPT', `${e.code}: ${e.message}`)
    assert.ok(e.message.includes(path), 'the message names the file')
    return e
  } finally {
    clearTimeout(timer)
    rmSync(path, {force: true})
  }
}

function isCapture(r: Capture | DivertError): r is Capture {
  return !(r instanceof DivertError)
}

const pcapOpts = fc.record({nanosecond: fc.boolean(), bigEndian: fc.boolean()})

/** A valid capture of generated segments, and the byte offset where each record ends. */
const validCapture = fc.tuple(fc.constantFrom(...LINKTYPES), fc.array(segment, {maxLength: 8}), pcapOpts, linkOpts).map(([linktype, all, opts, link]) => {
  const lt = all.length > 0 ? fitting(linktype, all[0]) : linktype
  const segs = all.filter((s) => fitting(lt, s) === lt)
  const bytes = capture(lt, segs, {...opts, ...link})
  const ends: number[] = [FILE_HEADER]
  let at = FILE_HEADER
  while (at < bytes.length) {
    const caplen = opts.bigEndian ? bytes.readUInt32BE(at + 8) : bytes.readUInt32LE(at + 8)
    at += RECORD_HEADER + caplen
    ends.push(at)
  }
  return {bytes, ends, segs, lt}
})

/** Record headers that may lie about their length (0, a little off, huge) over random data. */
const lyingRecord = fc.tuple(fc.uint8Array({maxLength: 80}), fc.oneof(
  fc.constant(undefined),
  fc.integer({min: -4, max: 4}),
  fc.constantFrom(262144, 262145, 0x7fffffff, 0xffffffff),
), fc.nat({max: 2 ** 32 - 1})).map(([data, lie, origLen]) => ({data: Buffer.from(data), lie, origLen}))

interface RawRecord {
  data: Buffer
  /** undefined: the true length; -4…4: off by that much; larger: that length outright. */
  lie: number | undefined
  origLen: number
}

function recordsFile(linktype: number, opts: {bigEndian: boolean; nanosecond: boolean}, records: RawRecord[]): Buffer {
  const parts = [pcapHeader(linktype, opts)]
  for (const r of records) {
    const h = Buffer.alloc(RECORD_HEADER)
    const caplen = r.lie === undefined ? r.data.length : r.lie > 4 ? r.lie : Math.max(0, r.data.length + r.lie)
    const u32 = (v: number, o: number): number => (opts.bigEndian ? h.writeUInt32BE(v >>> 0, o) : h.writeUInt32LE(v >>> 0, o))
    u32(1_700_000_000, 0)
    u32(123, 4)
    u32(caplen, 8)
    u32(r.origLen, 12)
    parts.push(h, r.data)
  }
  return Buffer.concat(parts)
}

// ─── reassembly ────────────────────────────────────────────────────────────────────────────────

/** A small pool of endpoints, so random packets land in the same flows often. */
const endpoint = fc.constantFrom(
  {address: '10.0.0.1', port: 40000, family: 4 as const}, {address: '10.0.0.2', port: 80, family: 4 as const},
  {address: '10.0.0.2', port: 40000, family: 4 as const}, {address: '2001:db8::1', port: 443, family: 6 as const},
  {address: '2001:db8::2', port: 50000, family: 6 as const},
)

const randomPacket: fc.Arbitrary<DecodedPacket> = fc.tuple(endpoint, endpoint, fc.boolean(), fc.integer({min: 0, max: 63}),
  fc.oneof(fc.nat({max: 2 ** 32 - 1}), fc.integer({min: 2 ** 32 - 100, max: 2 ** 32 - 1}), fc.nat({max: 200})), fc.nat({max: 2 ** 32 - 1}),
  fc.integer({min: 0, max: 2 ** 40}), payload)
  .map(([src, dst, tcp, flags, s, ack, ts, data]) => ({
    ts, src, dst, protocol: tcp ? 'tcp' : 'udp', ...(tcp ? {flags, seq: s, ack} : {}), payload: data,
  }))

function checkFlows(flows: Flow[], packets: DecodedPacket[]): void {
  assert.equal(flows.reduce((n, f) => n + f.packets, 0), packets.length, 'every packet lands in exactly one flow')
  assert.equal(new Set(flows.map((f) => f.id)).size, flows.length, 'flow ids are unique')
  for (const f of flows) {
    assert.match(f.id, /^(tcp|udp)\/\d+$/)
    assert.ok(f.firstTs <= f.lastTs)
    for (const chunks of [f.clientChunks, f.serverChunks]) {
      if (f.protocol === 'tcp') {
        for (let i = 1; i < chunks.length; i++) assert.ok(chunks[i].ts >= chunks[i - 1].ts, 'pacing never runs backwards')
        for (const c of chunks) assert.ok(c.data.length > 0)
      }
    }
    for (const g of f.gaps) assert.ok(Number.isFinite(g.offset) && g.offset >= 0 && g.length > 0, `gap ${JSON.stringify(g)}`)
  }
}

/**
 * One TCP connection whose two byte streams are known: handshake, both streams cut into segments at
 * random points from random initial sequence numbers (wrapping past 2^32 often), then FINs.
 */
const connection = fc.tuple(
  fc.uint8Array({minLength: 1, maxLength: 400}), fc.uint8Array({maxLength: 400}),
  fc.oneof(fc.nat({max: 2 ** 32 - 1}), fc.integer({min: 2 ** 32 - 300, max: 2 ** 32 - 1})), fc.nat({max: 2 ** 32 - 1}),
  fc.array(fc.integer({min: 1, max: 60}), {minLength: 1, maxLength: 20}),
).map(([c, s, cIsn, sIsn, cuts]) => {
  const client = {address: '192.0.2.1', port: 51000, family: 4 as const}
  const server = {address: '192.0.2.2', port: 8080, family: 4 as const}
  const streams = {client: Buffer.from(c), server: Buffer.from(s)}
  const packets: DecodedPacket[] = []
  let ts = 1_000_000
  const pkt = (from: 'client' | 'server', flags: number, seq: number, data: Buffer): void => {
    const [src, dst] = from === 'client' ? [client, server] : [server, client]
    packets.push({ts: ts++, src, dst, protocol: 'tcp', flags, seq: seq >>> 0, ack: 0, payload: data})
  }
  pkt('client', TCP_FLAGS.SYN, cIsn, Buffer.alloc(0))
  pkt('server', TCP_FLAGS.SYN | TCP_FLAGS.ACK, sIsn, Buffer.alloc(0))
  const data: DecodedPacket[] = []
  for (const [side, isn] of [['client', cIsn], ['server', sIsn]] as const) {
    const bytes = streams[side]
    let at = 0
    for (let i = 0; at < bytes.length; i++) {
      const n = cuts[i % cuts.length]
      pkt(side, TCP_FLAGS.ACK | TCP_FLAGS.PSH, isn + 1 + at, bytes.subarray(at, at + n))
      data.push(packets.pop()!)
      at += n
    }
  }
  const fins = [
    {ts: 0, src: client, dst: server, protocol: 'tcp' as const, flags: TCP_FLAGS.FIN | TCP_FLAGS.ACK, seq: (cIsn + 1 + c.length) >>> 0, ack: 0, payload: Buffer.alloc(0)},
    {ts: 0, src: server, dst: client, protocol: 'tcp' as const, flags: TCP_FLAGS.FIN | TCP_FLAGS.ACK, seq: (sIsn + 1 + s.length) >>> 0, ack: 0, payload: Buffer.alloc(0)},
  ]
  return {handshake: packets, data, fins, streams}
})

/** Walks chunks and gaps in stream order and checks every delivered byte against the true stream. */
function checkStream(chunks: {data: Buffer}[], gaps: {offset: number; length: number}[], stream: Buffer): number {
  const holes = [...gaps].sort((a, b) => a.offset - b.offset)
  let at = 0
  let h = 0
  for (const c of chunks) {
    while (h < holes.length && holes[h].offset === at) at += holes[h++].length
    assert.ok(c.data.equals(stream.subarray(at, at + c.data.length)), `bytes at offset ${at} differ from the stream`)
    at += c.data.length
  }
  while (h < holes.length && holes[h].offset === at) at += holes[h++].length
  assert.equal(h, holes.length, 'every gap sits between delivered bytes')
  return at
}

// ─── properties ────────────────────────────────────────────────────────────────────────────────

describe('capture fuzzing (fast-check)', () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'divert-fuzz-pcap-'))
  })
  after(() => rmSync(dir, {recursive: true, force: true}))

  it('decodeFrame on arbitrary bytes never throws, for every supported link type and some others', () => {
    const linktype = fc.oneof(fc.constantFrom(...LINKTYPES), fc.integer({min: 0, max: 0xffff}))
    fc.assert(fc.property(linktype, fc.uint8Array({maxLength: 200}), fc.integer({min: 0, max: 2 ** 52}), (lt, bytes, ts) => {
      decodeChecked(lt, Buffer.from(bytes), ts)
    }), {numRuns: runs(40000)})
  })

  it('decodeFrame gives back every generated segment, and survives any damage to its frame', () => {
    fc.assert(fc.property(frame, fc.array(byteEdit, {maxLength: 4}), ({lt, seg, bytes}, edits) => {
      const r = decodeChecked(lt, bytes, seg.ts)
      assert.ok(r.packet, `skipped a well-formed frame: ${r.skip}`)
      const want = decoded(seg)
      assert.deepEqual({...r.packet, src: r.packet.src.port, dst: r.packet.dst.port}, {...want, src: want.src.port, dst: want.dst.port})
      assert.equal(r.packet.src.family, isIP(seg.src.address))
      // Damage sits anywhere: link header, VLAN tags, IP and TCP/UDP headers, payload; frames shrink.
      decodeChecked(lt, damage(bytes, edits), seg.ts)
    }), {numRuns: runs(10000)})
  })

  it('readCapture of a generated capture truncated anywhere: whole records resolve, a cut record after them is reported, a cut first one is PCAP_CORRUPT', async () => {
    await fc.assert(fc.asyncProperty(validCapture, fc.nat(), async ({bytes, ends, segs, lt}, cut) => {
      const at = cut % (bytes.length + 1)
      const whole = await read(bytes)
      assert.ok(isCapture(whole), `the untouched capture was rejected: ${(whole as Error).message}`)
      assert.equal(whole.records, segs.length)
      assert.equal(whole.linktype, lt)
      assert.deepEqual(whole.packets.map((p) => p.payload), segs.map((s) => s.payload))
      const r = await read(bytes.subarray(0, at))
      const boundary = ends.indexOf(at)
      if (boundary >= 0) {
        assert.ok(isCapture(r), `cut at record boundary ${at} was rejected: ${(r as Error).message}`)
        assert.equal(r.records, boundary)
        assert.equal(r.truncated, undefined)
      } else if (at < ends[Math.min(1, ends.length - 1)]) {
        assert.ok(!isCapture(r) && r.code === 'DIVERT_ERR_PCAP_CORRUPT', `cut at ${at} of ${bytes.length} (boundaries ${ends}) gave ${isCapture(r) ? `${r.records} records` : r.code}`)
      } else {
        const before = ends.filter((e) => e < at).length - 1
        assert.ok(isCapture(r), `cut at ${at} inside record ${before + 1} was rejected: ${(r as Error).message}`)
        assert.equal(r.records, before)
        assert.equal(r.truncated?.offset, ends[before])
        assert.equal(r.truncated?.present, at - ends[before])
        // Bytes short = what the cut record needed minus what is there; with its header cut, what the header needed.
        const present = at - ends[before]
        assert.equal(r.truncated?.missing, present < RECORD_HEADER ? RECORD_HEADER - present : ends[before + 1] - at)
      }
    }), {numRuns: runs(500)})
  })

  it('readCapture of a valid header + random records (lengths true or lying, data random) settles with a DivertError or a result', async () => {
    const file = fc.tuple(fc.constantFrom(...LINKTYPES), pcapOpts, fc.array(lyingRecord, {maxLength: 10}))
    await fc.assert(fc.asyncProperty(file, async ([lt, opts, records]) => {
      const r = await read(recordsFile(lt, opts, records))
      if (records.every((x) => x.lie === undefined)) {
        assert.ok(isCapture(r), `honest records were rejected: ${(r as Error).message}`)
        assert.equal(r.records, records.length)
        assert.equal(r.packets.length + r.skipped.reduce((n, s) => n + s.count, 0), records.length, 'each record is a packet or a counted skip')
      }
    }), {numRuns: runs(1000)})
  })

  it('readCapture of the tcpdump fixtures with bytes overwritten, cut or spliced never hangs and never throws anything else', async () => {
    const fixtures = ['lo-ethernet.pcap', 'any-sll2-nano.pcap', 'lo-ethernet.pcapng'].map((f) => readFileSync(new URL(f, FIXTURES)))
    const splice = fc.record({from: fc.nat(), to: fc.nat(), len: fc.integer({min: 1, max: 64})})
    await fc.assert(fc.asyncProperty(fc.constantFrom(...fixtures), fc.array(byteEdit, {minLength: 1, maxLength: 6}), fc.option(splice, {nil: undefined}), async (fixture, edits, sp) => {
      let bytes = damage(fixture, edits)
      if (sp && bytes.length > 0) {
        const at = sp.to % bytes.length
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(sp.from % bytes.length, (sp.from % bytes.length) + sp.len), bytes.subarray(at)])
      }
      await read(bytes)
    }), {numRuns: runs(1000)})
  })

  it('readCapture of arbitrary bytes (often behind a real magic number) settles with a DivertError or a result', async () => {
    const magics = [0xa1b2c3d4, 0xa1b23c4d, 0xd4c3b2a1, 0x4d3cb2a1, 0x0a0d0d0a, 0xa1b2cd34, 0x1f8b0800]
    const start = fc.oneof(fc.constant(Buffer.alloc(0)), fc.constantFrom(...magics).map((m) => {
      const b = Buffer.alloc(4)
      b.writeUInt32BE(m)
      return b
    }))
    await fc.assert(fc.asyncProperty(start, fc.uint8Array({maxLength: 200}), async (head, rest) => {
      await read(Buffer.concat([head, Buffer.from(rest)]))
    }), {numRuns: runs(800)})
  })

  it('the reassembler takes any sequence of packets without throwing, and accounts for each one', () => {
    fc.assert(fc.property(fc.array(randomPacket, {maxLength: 60}), (packets) => {
      let flows: Flow[]
      try {
        flows = reassemble(packets)
      } catch (e) {
        assert.fail(`reassemble threw ${String((e as Error)?.stack ?? e)}`)
      }
      checkFlows(flows, packets)
    }), {numRuns: runs(10000)})
  })

  it('reordered, duplicated and dropped segments reassemble to the true streams, with a gap exactly where bytes are missing', () => {
    const keys = fc.array(fc.nat({max: 1000}), {maxLength: 60})
    const scenario = fc.tuple(connection, fc.array(fc.nat(), {maxLength: 10}), fc.array(fc.nat(), {maxLength: 3}), keys, fc.boolean())
    fc.assert(fc.property(scenario, fc.context(), ([conn, dupIdx, dropIdx, sortKeys, fin], ctx) => {
      const data = [...conn.data]
      for (const i of dupIdx) if (data.length > 0) data.push(data[i % data.length])
      const dropped = new Set(dropIdx.map((i) => (data.length > 0 ? data[i % data.length] : undefined)))
      const kept = data.filter((p) => !dropped.has(p))
      // The arrival order is generated too (sort keys), so fast-check replays and shrinks it.
      const order = kept.map((p, i) => ({p, k: sortKeys[i] ?? i}))
      order.sort((a, b) => a.k - b.k)
      const packets = [...conn.handshake, ...order.map((o) => o.p), ...(fin ? conn.fins : [])]
      ctx.log(`${packets.length} packets, ${dropped.size} dropped`)
      const flows = reassemble(packets)
      checkFlows(flows, packets)
      assert.equal(flows.length, 1)
      const f = flows[0]
      assert.equal(f.roleBasis, 'syn')
      assert.equal(f.client.port, 51000)
      const clientEnd = checkStream(f.clientChunks, f.gaps.filter((g) => g.direction === 'client'), conn.streams.client)
      const serverEnd = checkStream(f.serverChunks, f.gaps.filter((g) => g.direction === 'server'), conn.streams.server)
      if (dropped.size === 0) {
        assert.equal(Buffer.concat(f.clientChunks.map((c) => c.data)).toString('hex'), conn.streams.client.toString('hex'))
        assert.equal(Buffer.concat(f.serverChunks.map((c) => c.data)).toString('hex'), conn.streams.server.toString('hex'))
        assert.deepEqual(f.gaps, [])
      }
      // With the FINs seen, the stream ends are known: a lost tail is a gap too.
      if (fin) {
        assert.equal(clientEnd, conn.streams.client.length)
        assert.equal(serverEnd, conn.streams.server.length)
      }
    }), {numRuns: runs(5000)})
  })
})
