/**
 * The pcap writer: turns the bytes of a proxied session back into the packets a capture on the wire
 * would show, as classic pcap records (libpcap "pcap-savefile"(5); draft-ietf-opsawg-pcap §4, §5).
 * Pure: no I/O, no clock; the caller passes timestamps in microseconds since the epoch.
 *
 *   session bytes → TcpStreamSynth.data() / udpFrame() → [record header | Ethernet | IPv4/IPv6 | TCP/UDP | payload]
 *
 * Each frame is computed into one Buffer (the payload is copied once). Link type 1 (Ethernet) with
 * locally administered MACs, so Wireshark and tcpdump decode it as they would a capture on `lo`.
 */
import {DivertError} from '../errors.js'
import {addressBytes} from '../addr/cidr.js'
import type {Address} from '../addr/address.js'

/** Microseconds since the epoch. */
export type Micros = number | bigint

export const PCAP_GLOBAL_HEADER_LEN = 24
export const PCAP_RECORD_HEADER_LEN = 16
/** LINKTYPE_ETHERNET (tcpdump.org link-layer header types). */
export const LINKTYPE_ETHERNET = 1
/** Largest TCP payload of one IPv4 segment: 65,535 total length − 20 (IPv4) − 20 (TCP), RFC 791 §3.1. */
export const MAX_TCP_SEGMENT = 65_495
/** Largest UDP payload: IPv4 65,535 − 20 − 8 (RFC 768); IPv6 payload length 65,535 − 8 (RFC 8200 §3). */
export const MAX_UDP_PAYLOAD = {4: 65_507, 6: 65_527} as const

export const CLIENT_MAC = Uint8Array.from([0x02, 0, 0, 0, 0, 0x01])
export const SERVER_MAC = Uint8Array.from([0x02, 0, 0, 0, 0, 0x02])

const ETH_LEN = 14
const IPV4_LEN = 20
const IPV6_LEN = 40
const TCP_LEN = 20
const UDP_LEN = 8
const PROTO_TCP = 6
const PROTO_UDP = 17
const TTL = 64

export const TCP_FIN = 0x01
export const TCP_SYN = 0x02
export const TCP_RST = 0x04
export const TCP_PSH = 0x08
export const TCP_ACK = 0x10

/**
 * SYN options: MSS 65,495 (what Linux announces on loopback), NOP, window scale 7 (RFC 7323 §2.2).
 * With scaling the advertised 65,535 means 8 MiB, so the synthetic receiver never looks "full".
 */
const SYN_OPTIONS = Uint8Array.from([2, 4, MAX_TCP_SEGMENT >> 8, MAX_TCP_SEGMENT & 0xff, 1, 3, 3, 7])
const WINDOW = 65_535
/** The receiver ACKs once this much is unacknowledged, well inside the scaled window above. */
const ACK_EVERY = 1024 * 1024

/** `a1b2c3d4` in the writer's byte order (little-endian here), version 2.4, microsecond timestamps. */
export function pcapGlobalHeader(snaplen = 262_144, linktype = LINKTYPE_ETHERNET): Buffer {
  const b = Buffer.alloc(PCAP_GLOBAL_HEADER_LEN)
  b.writeUInt32LE(0xa1b2c3d4, 0)
  b.writeUInt16LE(2, 4)
  b.writeUInt16LE(4, 6)
  // thiszone and sigfigs stay 0: "SHOULD be 0" (draft-ietf-opsawg-pcap §4).
  b.writeUInt32LE(snaplen, 16)
  b.writeUInt32LE(linktype, 20)
  return b
}

/** Where one endpoint sits on the synthetic wire. */
interface Station {
  ip: Uint8Array
  port: number
  mac: Uint8Array
}

interface Wire {
  family: 4 | 6
  client: Station
  server: Station
}

function ipOf(peer: Address): {family: 4 | 6; bytes: Uint8Array} {
  const parsed = addressBytes(peer.address)
  if (!parsed) throw new DivertError('RECORD_FAILED', `cannot record a packet for "${peer.address}": not an IP address`)
  return parsed
}

/** An IPv4 address as IPv4-mapped IPv6 (RFC 4291 §2.5.5.2), for a session whose two sides differ in family. */
function mapped(bytes: Uint8Array): Uint8Array {
  if (bytes.length === 16) return bytes
  const out = new Uint8Array(16)
  out[10] = 0xff
  out[11] = 0xff
  out.set(bytes, 12)
  return out
}

function wireFor(client: Address, server: Address): Wire {
  const c = ipOf(client)
  const s = ipOf(server)
  const family = c.family === 4 && s.family === 4 ? 4 : 6
  const ip = (b: Uint8Array): Uint8Array => (family === 6 ? mapped(b) : b)
  return {
    family,
    client: {ip: ip(c.bytes), port: client.port, mac: CLIENT_MAC},
    server: {ip: ip(s.bytes), port: server.port, mac: SERVER_MAC},
  }
}

/** RFC 1071 §2(C): a 32-bit-word sum folds to the same 16-bit one's-complement sum; safe below 2^53. */
function sumWords(buf: Buffer, start: number, end: number, acc = 0): number {
  let i = start
  for (; i + 4 <= end; i += 4) acc += buf.readUInt32BE(i)
  for (; i + 2 <= end; i += 2) acc += buf.readUInt16BE(i)
  if (i < end) acc += buf[i] << 8
  return acc
}

function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc % 0x10000) + Math.floor(acc / 0x10000)
  return ~acc & 0xffff
}

function writeRecordHeader(buf: Buffer, ts: Micros): void {
  let sec: number
  let usec: number
  if (typeof ts === 'bigint') {
    sec = Number(ts / 1_000_000n)
    usec = Number(ts % 1_000_000n)
  } else {
    const whole = Math.round(ts)
    sec = Math.floor(whole / 1e6)
    usec = whole - sec * 1e6
  }
  const len = buf.length - PCAP_RECORD_HEADER_LEN
  buf.writeUInt32LE(sec >>> 0, 0)
  buf.writeUInt32LE(usec, 4)
  buf.writeUInt32LE(len, 8)
  buf.writeUInt32LE(len, 12)
}

interface FrameSpec {
  family: 4 | 6
  from: Station
  to: Station
  proto: number
  l4Len: number
  ipId: number
  ts: Micros
}

/**
 * Allocates one frame and writes record header, Ethernet and IP (RFC 791 §3.1 / RFC 8200 §3).
 * Returns the buffer, the L4 offset and the pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1).
 */
function ipFrame(spec: FrameSpec): {buf: Buffer; l4: number; pseudo: number} {
  const ipLen = spec.family === 4 ? IPV4_LEN : IPV6_LEN
  const ip = PCAP_RECORD_HEADER_LEN + ETH_LEN
  const l4 = ip + ipLen
  const buf = Buffer.allocUnsafe(l4 + spec.l4Len)
  buf.fill(0, 0, l4)
  writeRecordHeader(buf, spec.ts)
  buf.set(spec.to.mac, PCAP_RECORD_HEADER_LEN)
  buf.set(spec.from.mac, PCAP_RECORD_HEADER_LEN + 6)
  buf.writeUInt16BE(spec.family === 4 ? 0x0800 : 0x86dd, PCAP_RECORD_HEADER_LEN + 12)
  let addrStart: number
  if (spec.family === 4) {
    buf[ip] = 0x45
    buf.writeUInt16BE(IPV4_LEN + spec.l4Len, ip + 2)
    buf.writeUInt16BE(spec.ipId & 0xffff, ip + 4)
    buf.writeUInt16BE(0x4000, ip + 6) // DF: we never fragment
    buf[ip + 8] = TTL
    buf[ip + 9] = spec.proto
    buf.set(spec.from.ip, ip + 12)
    buf.set(spec.to.ip, ip + 16)
    buf.writeUInt16BE(fold(sumWords(buf, ip, ip + IPV4_LEN)), ip + 10)
    addrStart = ip + 12
  } else {
    buf.writeUInt32BE(0x60000000, ip)
    buf.writeUInt16BE(spec.l4Len, ip + 4)
    buf[ip + 6] = spec.proto
    buf[ip + 7] = TTL
    buf.set(spec.from.ip, ip + 8)
    buf.set(spec.to.ip, ip + 24)
    addrStart = ip + 8
  }
  // Source and destination are adjacent in both headers; the v6 upper-layer length is 32 bits
  // but below 2^16, so both pseudo-headers sum to addresses + protocol + L4 length.
  const pseudo = sumWords(buf, addrStart, l4) + spec.proto + spec.l4Len
  return {buf, l4, pseudo}
}

/**
 * One UDP datagram as a pcap record (RFC 768). `fromClient` only picks the MACs, so that both
 * directions of a flow show the same station addresses.
 */
export function udpFrame(src: Address, dst: Address, payload: Buffer, ts: Micros, fromClient = true): Buffer {
  const wire = fromClient ? wireFor(src, dst) : wireFor(dst, src)
  const [from, to] = fromClient ? [wire.client, wire.server] : [wire.server, wire.client]
  const max = MAX_UDP_PAYLOAD[wire.family]
  if (payload.length > max) {
    throw new DivertError('RECORD_FAILED', `cannot record a ${payload.length}-byte UDP datagram: IPv${wire.family} carries at most ${max} bytes`)
  }
  const l4Len = UDP_LEN + payload.length
  const {buf, l4, pseudo} = ipFrame({family: wire.family, from, to, proto: PROTO_UDP, l4Len, ipId: nextUdpId(), ts})
  buf.writeUInt16BE(src.port, l4)
  buf.writeUInt16BE(dst.port, l4 + 2)
  buf.writeUInt16BE(l4Len, l4 + 4)
  buf.writeUInt16BE(0, l4 + 6)
  payload.copy(buf, l4 + UDP_LEN)
  const sum = fold(sumWords(buf, l4, buf.length, pseudo))
  // RFC 768: a computed 0 is sent as all ones; 0 means "no checksum" (forbidden over IPv6, RFC 8200 §8.1).
  buf.writeUInt16BE(sum === 0 ? 0xffff : sum, l4 + 6)
  return buf
}

let udpId = 0
function nextUdpId(): number {
  udpId = (udpId + 1) & 0xffff
  return udpId
}

/** One side of a synthetic TCP connection. */
interface Side extends Station {
  /** Next sequence number this side sends (RFC 9293 §3.4 SND.NXT), mod 2^32. */
  next: number
  ipId: number
  /** Bytes sent since the other side last acknowledged them. */
  unacked: number
  finSent: boolean
}

function seqAdd(seq: number, n: number): number {
  return (seq + n) % 0x100000000
}

function randomIsn(): number {
  return Math.floor(Math.random() * 0x100000000)
}

/**
 * The packets of one TCP session, rebuilt from its byte stream: handshake, data segments with
 * consistent seq/ack (RFC 9293 §3.4), FINs with a final ACK, or a RST. Calls after a RST, or after
 * both FINs, return no frames.
 */
export class TcpStreamSynth {
  private readonly family: 4 | 6
  private readonly client: Side
  private readonly server: Side
  private done = false

  constructor(client: Address, server: Address, opts: {isn?: () => number} = {}) {
    const wire = wireFor(client, server)
    const isn = opts.isn ?? randomIsn
    this.family = wire.family
    // `next` starts past the SYN, which consumes one sequence number (RFC 9293 §3.4).
    this.client = {...wire.client, next: seqAdd(isn() >>> 0, 1), ipId: 0, unacked: 0, finSent: false}
    this.server = {...wire.server, next: seqAdd(isn() >>> 0, 1), ipId: 0, unacked: 0, finSent: false}
  }

  /** SYN, SYN-ACK, ACK (RFC 9293 §3.5). */
  handshake(ts: Micros): Buffer[] {
    const c = this.client
    const s = this.server
    return [
      this.segment(c, s, TCP_SYN, ts, {seq: seqAdd(c.next, 0xffffffff), ack: 0, options: SYN_OPTIONS}),
      this.segment(s, c, TCP_SYN | TCP_ACK, ts, {seq: seqAdd(s.next, 0xffffffff), options: SYN_OPTIONS}),
      this.segment(c, s, TCP_ACK, ts),
    ]
  }

  /** Bytes one side sent, as PSH|ACK segments of at most MAX_TCP_SEGMENT bytes. */
  data(fromClient: boolean, payload: Buffer, ts: Micros): Buffer[] {
    if (this.done || payload.length === 0) return []
    const [from, to] = this.sides(fromClient)
    const frames: Buffer[] = []
    for (let off = 0; off < payload.length; off += MAX_TCP_SEGMENT) {
      const body = payload.subarray(off, Math.min(payload.length, off + MAX_TCP_SEGMENT))
      frames.push(this.segment(from, to, TCP_PSH | TCP_ACK, ts, {payload: body}))
      from.next = seqAdd(from.next, body.length)
      from.unacked += body.length
      if (from.unacked >= ACK_EVERY) frames.push(this.segment(to, from, TCP_ACK, ts))
    }
    return frames
  }

  /**
   * Moves one side's sequence number past bytes that are not written (a recorder that fell behind),
   * so later segments keep their true numbers and readers see the gap.
   */
  advance(fromClient: boolean, bytes: number): void {
    const [from] = this.sides(fromClient)
    from.next = seqAdd(from.next, bytes)
  }

  /** FIN|ACK from one side; the second FIN is followed by the final ACK (RFC 9293 §3.6). */
  fin(fromClient: boolean, ts: Micros): Buffer[] {
    const [from, to] = this.sides(fromClient)
    if (this.done || from.finSent) return []
    const frames = [this.segment(from, to, TCP_FIN | TCP_ACK, ts)]
    from.next = seqAdd(from.next, 1)
    from.finSent = true
    if (to.finSent) {
      frames.push(this.segment(to, from, TCP_ACK, ts))
      this.done = true
    }
    return frames
  }

  /** RST|ACK from one side (RFC 9293 §3.10.5: ABORT sends <SEQ=SND.NXT><CTL=RST>). */
  reset(fromClient: boolean, ts: Micros): Buffer[] {
    if (this.done) return []
    const [from, to] = this.sides(fromClient)
    this.done = true
    return [this.segment(from, to, TCP_RST | TCP_ACK, ts)]
  }

  /** Whether the connection is over (both FINs, or a RST). */
  get closed(): boolean {
    return this.done
  }

  /** Whether that side has sent its FIN. */
  finSent(fromClient: boolean): boolean {
    return this.sides(fromClient)[0].finSent
  }

  private sides(fromClient: boolean): [Side, Side] {
    return fromClient ? [this.client, this.server] : [this.server, this.client]
  }

  private segment(
    from: Side,
    to: Side,
    flags: number,
    ts: Micros,
    o: {seq?: number; ack?: number; options?: Uint8Array; payload?: Buffer} = {},
  ): Buffer {
    const optLen = o.options?.length ?? 0
    const dataLen = o.payload?.length ?? 0
    const hdrLen = TCP_LEN + optLen
    from.ipId = (from.ipId + 1) & 0xffff
    const {buf, l4, pseudo} = ipFrame({family: this.family, from, to, proto: PROTO_TCP, l4Len: hdrLen + dataLen, ipId: from.ipId, ts})
    const ack = o.ack ?? to.next
    buf.writeUInt16BE(from.port, l4)
    buf.writeUInt16BE(to.port, l4 + 2)
    buf.writeUInt32BE(o.seq ?? from.next, l4 + 4)
    buf.writeUInt32BE(ack, l4 + 8)
    buf[l4 + 12] = (hdrLen / 4) << 4
    buf[l4 + 13] = flags
    buf.writeUInt16BE(WINDOW, l4 + 14)
    buf.writeUInt32BE(0, l4 + 16) // checksum, urgent pointer
    if (o.options) buf.set(o.options, l4 + TCP_LEN)
    if (o.payload) o.payload.copy(buf, l4 + hdrLen)
    buf.writeUInt16BE(fold(sumWords(buf, l4, buf.length, pseudo)), l4 + 16)
    if (flags & TCP_ACK) to.unacked = 0
    return buf
  }
}
