/**
 * Raw frame builder for crafting test captures: TCP/UDP segments over IPv4/IPv6, wrapped in any link
 * type divert decodes, written as classic pcap (µs or ns, either byte order). Checksums are left 0:
 * divert does not verify them (see src/capture/decode.ts).
 *
 *   Conversation (who sends what, when) → Segment[] → IP packet → link frame → pcap file
 */
import {isIPv6} from 'node:net'
import {LINKTYPE, TCP_FLAGS, type DecodedPacket} from '../../src/capture/decode.js'
import {parseIPv4, parseIPv6} from '../../src/addr/cidr.js'

export interface Addr {
  address: string
  port: number
}

export interface Segment {
  /** µs since the epoch. */
  ts: number
  src: Addr
  dst: Addr
  protocol: 'tcp' | 'udp'
  /** TCP flags as letters: S A F R P U (e.g. 'SA', 'PA', 'FA'). */
  flags?: string
  seq?: number
  ack?: number
  payload: Buffer
}

export function flagBits(flags: string): number {
  const map: Record<string, number> = {F: TCP_FLAGS.FIN, S: TCP_FLAGS.SYN, R: TCP_FLAGS.RST, P: TCP_FLAGS.PSH, A: TCP_FLAGS.ACK, U: TCP_FLAGS.URG}
  return [...flags].reduce((bits, c) => bits | (map[c] ?? 0), 0)
}

export function tcpHeader(seg: Segment, options = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(20 + options.length)
  h.writeUInt16BE(seg.src.port, 0)
  h.writeUInt16BE(seg.dst.port, 2)
  h.writeUInt32BE((seg.seq ?? 0) >>> 0, 4)
  h.writeUInt32BE((seg.ack ?? 0) >>> 0, 8)
  h[12] = (h.length / 4) << 4
  h[13] = flagBits(seg.flags ?? '')
  h.writeUInt16BE(65535, 14)
  options.copy(h, 20)
  return Buffer.concat([h, seg.payload])
}

export function udpHeader(seg: Segment): Buffer {
  const h = Buffer.alloc(8)
  h.writeUInt16BE(seg.src.port, 0)
  h.writeUInt16BE(seg.dst.port, 2)
  h.writeUInt16BE(8 + seg.payload.length, 4)
  return Buffer.concat([h, seg.payload])
}

export interface IpOptions {
  /** IPv4 header options (padded to 4 bytes by the caller). */
  ipv4Options?: Buffer
  /** IPv4 fragment: offset in 8-byte units and the MF flag. */
  fragment?: {offset: number; more: boolean}
  /** IPv6 extension headers to insert before the transport header, in order. */
  ext?: {type: number; length?: number}[]
  /** Total/payload length field 0, as TSO captures show. */
  zeroLength?: boolean
}

export function ipPacket(src: string, dst: string, proto: number, body: Buffer, opts: IpOptions = {}): Buffer {
  return isIPv6(src) ? ipv6(src, dst, proto, body, opts) : ipv4(src, dst, proto, body, opts)
}

function ipv4(src: string, dst: string, proto: number, body: Buffer, opts: IpOptions): Buffer {
  const options = opts.ipv4Options ?? Buffer.alloc(0)
  const h = Buffer.alloc(20 + options.length)
  h[0] = 0x40 | (h.length / 4)
  h.writeUInt16BE(opts.zeroLength ? 0 : h.length + body.length, 2)
  const frag = opts.fragment ? (opts.fragment.more ? 0x2000 : 0) | opts.fragment.offset : 0x4000
  h.writeUInt16BE(frag, 6)
  h[8] = 64
  h[9] = proto
  Buffer.from(parseIPv4(src)!).copy(h, 12)
  Buffer.from(parseIPv4(dst)!).copy(h, 16)
  options.copy(h, 20)
  return Buffer.concat([h, body])
}

function ipv6(src: string, dst: string, proto: number, body: Buffer, opts: IpOptions): Buffer {
  const exts = opts.ext ?? []
  const extBufs: Buffer[] = exts.map((e, i) => {
    const units = e.length ?? 0
    const len = e.type === 51 ? (units + 2) * 4 : (units + 1) * 8
    const b = Buffer.alloc(len)
    b[0] = i + 1 < exts.length ? exts[i + 1].type : proto
    b[1] = units
    return b
  })
  const rest = Buffer.concat([...extBufs, body])
  const h = Buffer.alloc(40)
  h[0] = 0x60
  h.writeUInt16BE(opts.zeroLength ? 0 : rest.length, 4)
  h[6] = exts.length > 0 ? exts[0].type : proto
  h[7] = 64
  Buffer.from(parseIPv6(src)!).copy(h, 8)
  Buffer.from(parseIPv6(dst)!).copy(h, 24)
  return Buffer.concat([h, rest])
}

/** The IP packet carrying `seg`. */
export function segmentPacket(seg: Segment, opts: IpOptions = {}): Buffer {
  const body = seg.protocol === 'tcp' ? tcpHeader(seg) : udpHeader(seg)
  return ipPacket(seg.src.address, seg.dst.address, seg.protocol === 'tcp' ? 6 : 17, body, opts)
}

export interface LinkOptions {
  /** 802.1Q/802.1ad tags (VLAN ids), outermost first (Ethernet only). */
  vlan?: number[]
  /** Byte order of the LINKTYPE_NULL AF field. */
  nullOrder?: 'le' | 'be'
  /** AF_INET6 value for NULL/LOOP (24, 28 or 30). */
  af6?: number
  /** Pad Ethernet frames to the 60-byte minimum, as NICs do. */
  pad?: boolean
}

const ethertypeOf = (ip: Buffer): number => (ip[0] >> 4 === 6 ? 0x86dd : 0x0800)

/** Wraps an IP packet (or any payload, with `ethertype`) in the link header of `linktype`. */
export function linkFrame(linktype: number, ip: Buffer, opts: LinkOptions = {}, ethertype = ethertypeOf(ip)): Buffer {
  switch (linktype) {
    case LINKTYPE.ETHERNET:
      return ethernet(ip, ethertype, opts)
    case LINKTYPE.LINUX_SLL: {
      const h = Buffer.alloc(16)
      h.writeUInt16BE(0, 0)
      h.writeUInt16BE(772, 2)
      h.writeUInt16BE(6, 4)
      h.writeUInt16BE(ethertype, 14)
      return Buffer.concat([h, ip])
    }
    case LINKTYPE.LINUX_SLL2: {
      const h = Buffer.alloc(20)
      h.writeUInt16BE(ethertype, 0)
      h.writeUInt32BE(1, 4)
      h.writeUInt16BE(772, 8)
      h[10] = 0
      h[11] = 6
      return Buffer.concat([h, ip])
    }
    case LINKTYPE.NULL:
    case LINKTYPE.LOOP: {
      const af = ethertype === 0x86dd ? (opts.af6 ?? 30) : ethertype === 0x0800 ? 2 : 99
      const h = Buffer.alloc(4)
      if (linktype === LINKTYPE.LOOP || opts.nullOrder === 'be') h.writeUInt32BE(af)
      else h.writeUInt32LE(af)
      return Buffer.concat([h, ip])
    }
    default:
      return ip
  }
}

function ethernet(ip: Buffer, ethertype: number, opts: LinkOptions): Buffer {
  const tags = (opts.vlan ?? []).map((id, i) => {
    const t = Buffer.alloc(4)
    t.writeUInt16BE(i === 0 && (opts.vlan?.length ?? 0) > 1 ? 0x88a8 : 0x8100, 0)
    t.writeUInt16BE(id & 0x0fff, 2)
    return t
  })
  // Each tag is TPID + TCI; the TPID of the next tag (or the real ethertype) follows it.
  const h = Buffer.alloc(12)
  const parts: Buffer[] = [h]
  for (const t of tags) parts.push(t.subarray(0, 2), t.subarray(2, 4))
  const type = Buffer.alloc(2)
  type.writeUInt16BE(ethertype)
  parts.push(type, ip)
  const frame = Buffer.concat(parts)
  return opts.pad && frame.length < 60 ? Buffer.concat([frame, Buffer.alloc(60 - frame.length)]) : frame
}

export interface PcapRecord {
  /** µs since the epoch (ns files: multiplied by 1000, plus `extraNs`). */
  ts: number
  data: Buffer
  extraNs?: number
  origLen?: number
}

export interface PcapOptions {
  nanosecond?: boolean
  bigEndian?: boolean
  snaplen?: number
  /** Override the version fields. */
  version?: [number, number]
}

export function pcapHeader(linktype: number, opts: PcapOptions = {}): Buffer {
  const h = Buffer.alloc(24)
  const be = opts.bigEndian === true
  const u32 = (v: number, o: number): number => (be ? h.writeUInt32BE(v >>> 0, o) : h.writeUInt32LE(v >>> 0, o))
  const u16 = (v: number, o: number): number => (be ? h.writeUInt16BE(v, o) : h.writeUInt16LE(v, o))
  u32(opts.nanosecond ? 0xa1b23c4d : 0xa1b2c3d4, 0)
  u16(opts.version?.[0] ?? 2, 4)
  u16(opts.version?.[1] ?? 4, 6)
  u32(opts.snaplen ?? 262144, 16)
  u32(linktype, 20)
  return h
}

export function pcapRecord(rec: PcapRecord, opts: PcapOptions = {}): Buffer {
  const h = Buffer.alloc(16)
  const be = opts.bigEndian === true
  const u32 = (v: number, o: number): number => (be ? h.writeUInt32BE(v >>> 0, o) : h.writeUInt32LE(v >>> 0, o))
  const sec = Math.floor(rec.ts / 1e6)
  const usec = rec.ts - sec * 1e6
  u32(sec, 0)
  u32(opts.nanosecond ? usec * 1000 + (rec.extraNs ?? 0) : usec, 4)
  u32(rec.data.length, 8)
  u32(rec.origLen ?? rec.data.length, 12)
  return Buffer.concat([h, rec.data])
}

export function pcapFile(linktype: number, records: PcapRecord[], opts: PcapOptions = {}): Buffer {
  return Buffer.concat([pcapHeader(linktype, opts), ...records.map((r) => pcapRecord(r, opts))])
}

/** A pcap file of `segments`, each wrapped for `linktype`. */
export function capture(linktype: number, segments: Segment[], opts: PcapOptions & LinkOptions = {}): Buffer {
  return pcapFile(linktype, segments.map((s) => ({ts: s.ts, data: linkFrame(linktype, segmentPacket(s), opts)})), opts)
}

/** The start of a pcapng file: a Section Header Block (pcapng draft §4.1), enough to be recognised. */
export function pcapngStart(): Buffer {
  const b = Buffer.alloc(28)
  b.writeUInt32BE(0x0a0d0d0a, 0)
  b.writeUInt32LE(28, 4)
  b.writeUInt32LE(0x1a2b3c4d, 8)
  b.writeUInt16LE(1, 12)
  b.writeBigInt64LE(-1n, 16)
  b.writeUInt32LE(28, 24)
  return b
}

/** What decodeFrame would make of `seg` (for reassembly tests that skip the byte level). */
export function decoded(seg: Segment): DecodedPacket {
  const family = isIPv6(seg.src.address) ? 6 : 4
  return {
    ts: seg.ts,
    src: {...seg.src, family},
    dst: {...seg.dst, family},
    protocol: seg.protocol,
    ...(seg.protocol === 'tcp' ? {flags: flagBits(seg.flags ?? ''), seq: (seg.seq ?? 0) >>> 0, ack: (seg.ack ?? 0) >>> 0} : {}),
    payload: seg.payload,
  }
}

const toBuf = (d: string | Buffer): Buffer => (typeof d === 'string' ? Buffer.from(d) : d)

/**
 * Scripts one TCP connection: handshake, data each way, FIN or RST, tracking sequence numbers, so a
 * test reads like the exchange it models. `segments` can then be reordered, duplicated or dropped.
 */
export class TcpConversation {
  readonly segments: Segment[] = []
  private seq: {client: number; server: number}
  private now: number

  constructor(readonly client: Addr, readonly server: Addr, opts: {clientIsn?: number; serverIsn?: number; t0?: number} = {}) {
    this.seq = {client: opts.clientIsn ?? 1000, server: opts.serverIsn ?? 5000}
    this.now = opts.t0 ?? 1_700_000_000_000_000
  }

  /** Sets the capture time (µs) of the next segment; without it each segment comes 1 ms after the last. */
  at(ts: number): this {
    this.now = ts
    return this
  }

  nextSeq(side: 'client' | 'server'): number {
    return this.seq[side] >>> 0
  }

  handshake(): this {
    this.push('client', 'S', Buffer.alloc(0), 1)
    this.push('server', 'SA', Buffer.alloc(0), 1)
    return this.push('client', 'A', Buffer.alloc(0), 0)
  }

  send(side: 'client' | 'server', data: string | Buffer): this {
    return this.push(side, 'PA', toBuf(data), toBuf(data).length)
  }

  fin(side: 'client' | 'server'): this {
    return this.push(side, 'FA', Buffer.alloc(0), 1)
  }

  rst(side: 'client' | 'server'): this {
    return this.push(side, 'R', Buffer.alloc(0), 0)
  }

  /** A segment at an explicit sequence number, not advancing the sender's next sequence number. */
  raw(side: 'client' | 'server', seq: number, data: string | Buffer, flags = 'PA'): this {
    this.segments.push(this.segment(side, flags, toBuf(data), seq))
    this.now += 1000
    return this
  }

  private push(side: 'client' | 'server', flags: string, data: Buffer, consumed: number): this {
    this.segments.push(this.segment(side, flags, data, this.seq[side]))
    this.seq[side] = (this.seq[side] + consumed) >>> 0
    this.now += 1000
    return this
  }

  private segment(side: 'client' | 'server', flags: string, payload: Buffer, seq: number): Segment {
    const [src, dst] = side === 'client' ? [this.client, this.server] : [this.server, this.client]
    const other = side === 'client' ? 'server' : 'client'
    return {ts: this.now, src, dst, protocol: 'tcp', flags, seq: seq >>> 0, ack: flags.includes('A') ? this.seq[other] >>> 0 : 0, payload}
  }
}

export function udpSegment(ts: number, src: Addr, dst: Addr, data: string | Buffer): Segment {
  return {ts, src, dst, protocol: 'udp', payload: toBuf(data)}
}
