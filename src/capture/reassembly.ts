/**
 * Flow reassembly: decoded packets → one Flow per TCP connection or UDP conversation, with each
 * direction's bytes in order and the recorded timing kept for pacing a replay.
 *
 *   DecodedPacket* → group by 5-tuple (a new SYN splits connections) → per direction: unwrap seq,
 *   place segments (first-received bytes win), report gaps → Flow { clientChunks, serverChunks, gaps }
 *
 * Choices, in the order a reader will ask about them:
 * - Client: the sender of a SYN without ACK (RFC 9293 §3.5), else the receiver of a SYN+ACK. When the
 *   capture starts mid-connection neither was seen, and the roles are guessed (Flow.roleBasis says how):
 *   1. an endpoint that is the server of a handshaken connection elsewhere in the capture is the server;
 *   2. else a port below 1024 is the server's;
 *   3. else the higher port is the client's (ephemeral ranges, 32768–60999 on Linux and 49152–65535
 *      per RFC 6335 §6, sit above most service ports);
 *   4. equal ports: the first sender is the client.
 * - Sequence numbers are unwrapped mod 2^32 relative to the highest offset seen (RFC 9293 §3.4
 *   arithmetic), so wraparound and streams over 4 GiB stay in order.
 * - Overlaps: bytes already received win over a later retransmission covering them, the way a
 *   receiver trims a segment to RCV.NXT (RFC 9293 §3.10.7.4) and Linux treats in-order data; we do
 *   not model Linux's out-of-order queue, which may prefer a later segment that covers an earlier one.
 * - A hole that no segment fills is a Gap {direction, offset, length} (offsets from the first byte
 *   after the SYN, or from the lowest byte seen when there was no SYN); replay skips it.
 * - A chunk's timestamp is when its bytes became readable in order: the latest capture time among it
 *   and the bytes before it, so out-of-order arrival never makes pacing run backwards.
 * - A RST's payload (RFC 9293 §3.5.3 diagnostic text) is not stream data and is dropped.
 */
import type {Protocol} from '../config/types.js'
import type {Address} from '../addr/address.js'
import {TCP_FLAGS, type DecodedPacket} from './decode.js'

export interface Chunk {
  /** Microseconds since the epoch. */
  ts: number
  data: Buffer
}

export type Direction = 'client' | 'server'

export interface Gap {
  /** Whose bytes are missing: 'client' = client→server. */
  direction: Direction
  offset: number
  length: number
}

export type RoleBasis = 'syn' | 'syn-ack' | 'known-server' | 'well-known-port' | 'higher-port' | 'first-sender' | 'first-datagram'

export interface Flow {
  /** `tcp/N` or `udp/N`, numbered per protocol from 0 in order of first packet (as tshark's tcp.stream). */
  id: string
  protocol: Protocol
  client: Address
  server: Address
  /** How the client was told apart from the server (see the module comment). */
  roleBasis: RoleBasis
  firstTs: number
  lastTs: number
  clientChunks: Chunk[]
  serverChunks: Chunk[]
  clientFin: boolean
  /** When the client's (last) FIN was captured: replay half-closes at that point of the schedule. */
  clientFinTs?: number
  serverFin: boolean
  clientReset: boolean
  serverReset: boolean
  /** Either side sent a RST. */
  reset: boolean
  gaps: Gap[]
  packets: number
}

interface Segment {
  seq: number
  data: Buffer
  ts: number
}

/** One direction of a flow, named by its sender. */
class Half {
  readonly segments: Segment[] = []
  synSeq?: number
  finSeq?: number
  finTs?: number
  rst = false
  constructor(readonly peer: Address) {}
}

const endpointKey = (p: Address): string => `${p.address}|${p.port}`

class FlowBuilder {
  /** [sender of the first packet, its peer]. */
  readonly halves: [Half, Half]
  readonly firstTs: number
  clientIndex?: 0 | 1
  basis?: RoleBasis
  lastTs: number
  packets = 0

  constructor(readonly id: string, readonly protocol: Protocol, first: DecodedPacket) {
    this.halves = [new Half(first.src), new Half(first.dst)]
    this.lastTs = first.ts
    this.firstTs = first.ts
  }

  halfOf(src: Address): 0 | 1 {
    return endpointKey(src) === endpointKey(this.halves[0].peer) ? 0 : 1
  }

  closed(): boolean {
    const [a, b] = this.halves
    return a.rst || b.rst || (a.finSeq !== undefined && b.finSeq !== undefined)
  }

  /** A SYN that repeats this connection's own (same ISN) rather than opening a new one. */
  continues(p: DecodedPacket): boolean {
    const h = this.halves[this.halfOf(p.src)]
    const synAck = ((p.flags ?? 0) & TCP_FLAGS.ACK) !== 0
    if (h.synSeq === p.seq) return true
    return synAck && h.synSeq === undefined && !this.closed()
  }

  addTcp(p: DecodedPacket): void {
    this.note(p)
    const flags = p.flags ?? 0
    const i = this.halfOf(p.src)
    const h = this.halves[i]
    let seq = p.seq ?? 0
    if (flags & TCP_FLAGS.SYN) {
      h.synSeq = seq
      seq = (seq + 1) >>> 0
      const fromClient = (flags & TCP_FLAGS.ACK) === 0
      if (this.basis !== 'syn') {
        this.clientIndex = fromClient ? i : ((1 - i) as 0 | 1)
        this.basis = fromClient ? 'syn' : 'syn-ack'
      }
    }
    if (flags & TCP_FLAGS.RST) {
      h.rst = true
      return
    }
    if (p.payload.length > 0) h.segments.push({seq, data: p.payload, ts: p.ts})
    if (flags & TCP_FLAGS.FIN) {
      h.finSeq = (seq + p.payload.length) >>> 0
      h.finTs = p.ts
    }
  }

  addDatagram(p: DecodedPacket): void {
    this.note(p)
    this.halves[this.halfOf(p.src)].segments.push({seq: 0, data: p.payload, ts: p.ts})
  }

  private note(p: DecodedPacket): void {
    this.packets++
    if (p.ts > this.lastTs) this.lastTs = p.ts
  }

  roles(knownServers: Set<string>): [0 | 1, RoleBasis] {
    if (this.clientIndex !== undefined && this.basis) return [this.clientIndex, this.basis]
    if (this.protocol === 'udp') return [0, 'first-datagram']
    const [a, b] = this.halves.map((h) => h.peer)
    const ka = knownServers.has(endpointKey(a))
    if (ka !== knownServers.has(endpointKey(b))) return [ka ? 1 : 0, 'known-server']
    const wa = a.port < 1024
    if (wa !== b.port < 1024) return [wa ? 1 : 0, 'well-known-port']
    if (a.port !== b.port) return [a.port > b.port ? 0 : 1, 'higher-port']
    return [0, 'first-sender']
  }

  build(knownServers: Set<string>): Flow {
    const [ci, roleBasis] = this.roles(knownServers)
    const client = this.halves[ci]
    const server = this.halves[1 - ci]
    const c = this.protocol === 'tcp' ? orderStream(client) : datagrams(client)
    const s = this.protocol === 'tcp' ? orderStream(server) : datagrams(server)
    return {
      id: this.id,
      protocol: this.protocol,
      client: client.peer,
      server: server.peer,
      roleBasis,
      firstTs: this.firstTs,
      lastTs: this.lastTs,
      clientChunks: c.chunks,
      serverChunks: s.chunks,
      clientFin: client.finSeq !== undefined,
      ...(client.finTs === undefined ? {} : {clientFinTs: client.finTs}),
      serverFin: server.finSeq !== undefined,
      clientReset: client.rst,
      serverReset: server.rst,
      reset: client.rst || server.rst,
      gaps: [...c.gaps.map((g) => ({direction: 'client' as const, ...g})), ...s.gaps.map((g) => ({direction: 'server' as const, ...g}))],
      packets: this.packets,
    }
  }
}

/** Groups packets into flows as they come; `finish()` reassembles them. */
export class Reassembler {
  private readonly current = new Map<string, FlowBuilder>()
  private readonly builders: FlowBuilder[] = []
  private readonly counters = {tcp: 0, udp: 0}

  push(p: DecodedPacket): void {
    const [x, y] = [endpointKey(p.src), endpointKey(p.dst)].sort()
    const key = `${p.protocol} ${x} ${y}`
    let b = this.current.get(key)
    if (p.protocol === 'udp') {
      ;(b ?? this.start(key, p)).addDatagram(p)
      return
    }
    if (b && ((p.flags ?? 0) & TCP_FLAGS.SYN) !== 0 && !b.continues(p)) b = undefined
    ;(b ?? this.start(key, p)).addTcp(p)
  }

  finish(): Flow[] {
    const known = new Set<string>()
    for (const b of this.builders) {
      if (b.clientIndex !== undefined) known.add(endpointKey(b.halves[1 - b.clientIndex].peer))
    }
    return this.builders.map((b) => b.build(known))
  }

  private start(key: string, p: DecodedPacket): FlowBuilder {
    const b = new FlowBuilder(`${p.protocol}/${this.counters[p.protocol]++}`, p.protocol, p)
    this.current.set(key, b)
    this.builders.push(b)
    return b
  }
}

export function reassemble(packets: Iterable<DecodedPacket>): Flow[] {
  const r = new Reassembler()
  for (const p of packets) r.push(p)
  return r.finish()
}

function datagrams(h: Half): {chunks: Chunk[]; gaps: {offset: number; length: number}[]} {
  return {chunks: h.segments.map((s) => ({ts: s.ts, data: s.data})), gaps: []}
}

const SEQ_SPACE = 2 ** 32

/** Maps 32-bit sequence numbers to offsets from an anchor, taking the nearest wrap (RFC 9293 §3.4). */
class SeqUnwrapper {
  private high = 0
  constructor(private readonly anchor: number) {}

  offset(seq: number): number {
    const ref = (this.anchor + this.high) % SEQ_SPACE
    // `| 0` is ToInt32: the signed distance mod 2^32, i.e. the nearest copy of `seq`.
    const off = this.high + ((seq - ref) | 0)
    if (off > this.high) this.high = off
    return off
  }
}

interface Piece {
  start: number
  end: number
  data: Buffer
  ts: number
}

/** Non-overlapping, sorted pieces of one direction; bytes placed first are kept. */
class Coverage {
  readonly pieces: Piece[] = []

  add(start: number, data: Buffer, ts: number, floor: number): void {
    const end = start + data.length
    let s = Math.max(start, floor)
    if (s >= end) return
    const last = this.pieces[this.pieces.length - 1]
    if (!last || s >= last.end) {
      this.pieces.push({start: s, end, data: data.subarray(s - start), ts})
      return
    }
    for (let i = this.firstEndingAfter(s); s < end; ) {
      const p = this.pieces[i]
      if (p && p.start <= s) {
        s = Math.max(s, p.end)
        i++
        continue
      }
      const stop = p ? Math.min(p.start, end) : end
      this.pieces.splice(i, 0, {start: s, end: stop, data: data.subarray(s - start, stop - start), ts})
      i++
      s = stop
    }
  }

  private firstEndingAfter(offset: number): number {
    let lo = 0
    let hi = this.pieces.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (this.pieces[mid].end > offset) hi = mid
      else lo = mid + 1
    }
    return lo
  }
}

function orderStream(h: Half): {chunks: Chunk[]; gaps: {offset: number; length: number}[]} {
  const handshaken = h.synSeq !== undefined
  const anchor = handshaken ? ((h.synSeq as number) + 1) >>> 0 : (h.segments[0]?.seq ?? h.finSeq ?? 0)
  const unwrap = new SeqUnwrapper(anchor)
  const cover = new Coverage()
  // Before the SYN's sequence number there is no stream; without a SYN the lowest byte seen starts it.
  const floor = handshaken ? 0 : -Infinity
  for (const s of h.segments) cover.add(unwrap.offset(s.seq), s.data, s.ts, floor)
  const fin = h.finSeq === undefined ? undefined : unwrap.offset(h.finSeq)
  const origin = handshaken ? 0 : Math.min(cover.pieces[0]?.start ?? 0, fin ?? Infinity)
  return walk(cover.pieces, origin, fin)
}

function walk(pieces: Piece[], origin: number, fin: number | undefined): {chunks: Chunk[]; gaps: {offset: number; length: number}[]} {
  const chunks: Chunk[] = []
  const gaps: {offset: number; length: number}[] = []
  let cursor = origin
  let ts = -Infinity
  for (const p of pieces) {
    if (p.start > cursor) gaps.push({offset: cursor - origin, length: p.start - cursor})
    ts = Math.max(ts, p.ts)
    chunks.push({ts, data: p.data})
    cursor = p.end
  }
  if (fin !== undefined && fin > cursor) gaps.push({offset: cursor - origin, length: fin - cursor})
  return {chunks, gaps}
}
