/**
 * Decoding of one captured frame into the TCP segment or UDP datagram it carries, or the reason it
 * is skipped. Pure: no I/O, no state.
 *
 *   frame → link header (Ethernet+VLAN | SLL | SLL2 | raw IP | NULL/LOOP) → IPv4 | IPv6 (+ext) → TCP | UDP
 *
 * Checksums are not verified: captures taken on the sending host carry checksums the NIC (or, on
 * loopback, nobody) fills in later, so they are routinely "wrong" in perfectly good captures.
 */
import type {Protocol} from '../config/types.js'
import type {Address} from '../addr/address.js'
import {formatAddressBytes} from '../addr/cidr.js'

/** Link-layer header types we decode (https://www.tcpdump.org/linktypes.html). */
export const LINKTYPE = {
  NULL: 0,
  ETHERNET: 1,
  /** DLT_RAW as most BSDs and Linux number it in live captures; some write it into files. */
  RAW_DLT12: 12,
  /** DLT_RAW on OpenBSD. */
  RAW_DLT14: 14,
  RAW: 101,
  LOOP: 108,
  LINUX_SLL: 113,
  IPV4: 228,
  IPV6: 229,
  LINUX_SLL2: 276,
} as const

const LINKTYPE_NAMES = new Map<number, string>([
  [LINKTYPE.NULL, 'BSD loopback (NULL)'],
  [LINKTYPE.ETHERNET, 'Ethernet'],
  [LINKTYPE.RAW_DLT12, 'raw IP (DLT 12)'],
  [LINKTYPE.RAW_DLT14, 'raw IP (DLT 14)'],
  [LINKTYPE.RAW, 'raw IP'],
  [LINKTYPE.LOOP, 'OpenBSD loopback (LOOP)'],
  [LINKTYPE.LINUX_SLL, 'Linux cooked (SLL)'],
  [LINKTYPE.IPV4, 'raw IPv4'],
  [LINKTYPE.IPV6, 'raw IPv6'],
  [LINKTYPE.LINUX_SLL2, 'Linux cooked v2 (SLL2)'],
])

/** TCP control bits (RFC 9293 §3.1). */
export const TCP_FLAGS = {FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20} as const

export interface DecodedPacket {
  /** Capture time in microseconds since the epoch. */
  ts: number
  src: Address
  dst: Address
  protocol: Protocol
  /** TCP only: control bits, see TCP_FLAGS. */
  flags?: number
  /** TCP only: sequence number of the first byte (of the SYN, for a SYN). */
  seq?: number
  ack?: number
  payload: Buffer
}

export type DecodeResult = {packet: DecodedPacket; skip?: undefined} | {skip: string; packet?: undefined}

export function isSupportedLinktype(linktype: number): boolean {
  return LINKTYPE_NAMES.has(linktype)
}

export function linktypeName(linktype: number): string {
  return LINKTYPE_NAMES.get(linktype) ?? `link type ${linktype}`
}

export function supportedLinktypes(): string {
  return [...LINKTYPE_NAMES].map(([n, name]) => `${n} ${name}`).join(', ')
}

const ETHERTYPE_IPV4 = 0x0800
const ETHERTYPE_IPV6 = 0x86dd
/** 802.1Q, 802.1ad (QinQ) and the pre-standard 0x9100 outer tag. */
const VLAN_TPIDS = new Set([0x8100, 0x88a8, 0x9100])
/** BSD AF_INET6 differs per OS: 24 NetBSD/OpenBSD/BSDi, 28 FreeBSD/DragonFly, 30 macOS (LINKTYPE_NULL doc). */
const AF_INET = 2
const AF_INET6 = new Set([24, 28, 30])

/** Where the IP header starts and which version the link layer announced (0 = look at the header). */
interface L3 {
  offset: number
  version: 0 | 4 | 6
}

const skip = (reason: string): DecodeResult => ({skip: reason})

export function decodeFrame(linktype: number, frame: Buffer, ts: number): DecodeResult {
  const l3 = linkLayer(linktype, frame)
  if (typeof l3 === 'string') return skip(l3)
  const version = l3.version === 0 ? (frame.length > l3.offset ? frame[l3.offset] >> 4 : 0) : l3.version
  if (version === 4) return ipv4(frame, l3.offset, ts)
  if (version === 6) return ipv6(frame, l3.offset, ts)
  return skip(frame.length > l3.offset ? `not IP (IP version ${version})` : 'truncated frame')
}

function linkLayer(linktype: number, frame: Buffer): L3 | string {
  switch (linktype) {
    case LINKTYPE.ETHERNET:
      return frame.length < 14 ? 'truncated frame' : byEthertype(frame, frame.readUInt16BE(12), 14)
    case LINKTYPE.LINUX_SLL:
      // packet type(2) ARPHRD(2) address length(2) address(8) protocol(2): LINKTYPE_LINUX_SLL doc
      return frame.length < 16 ? 'truncated frame' : byEthertype(frame, frame.readUInt16BE(14), 16)
    case LINKTYPE.LINUX_SLL2:
      // protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) address length(1) address(8)
      return frame.length < 20 ? 'truncated frame' : byEthertype(frame, frame.readUInt16BE(0), 20)
    case LINKTYPE.RAW:
    case LINKTYPE.RAW_DLT12:
    case LINKTYPE.RAW_DLT14:
      return {offset: 0, version: 0}
    case LINKTYPE.IPV4:
      return {offset: 0, version: 4}
    case LINKTYPE.IPV6:
      return {offset: 0, version: 6}
    case LINKTYPE.NULL:
      return frame.length < 4 ? 'truncated frame' : byAddressFamily(nullFamily(frame))
    case LINKTYPE.LOOP:
      return frame.length < 4 ? 'truncated frame' : byAddressFamily(frame.readUInt32BE(0))
    default:
      return `unsupported ${linktypeName(linktype)}`
  }
}

/**
 * LINKTYPE_NULL stores the AF value in the byte order of the machine that captured, which the file
 * does not record. AF values are small, so a value that only makes sense swapped was written
 * big-endian (Wireshark and libpcap's own reader reason the same way).
 */
function nullFamily(frame: Buffer): number {
  const le = frame.readUInt32LE(0)
  return le > 0xffff ? frame.readUInt32BE(0) : le
}

function byAddressFamily(af: number): L3 | string {
  if (af === AF_INET) return {offset: 4, version: 4}
  if (AF_INET6.has(af)) return {offset: 4, version: 6}
  return `not IP (address family ${af})`
}

function byEthertype(frame: Buffer, first: number, offset: number): L3 | string {
  let type = first
  let off = offset
  while (VLAN_TPIDS.has(type)) {
    // IEEE 802.1Q: a 4-byte tag (TCI + the inner ethertype) between the header and the payload.
    if (frame.length < off + 4) return 'truncated frame'
    type = frame.readUInt16BE(off + 2)
    off += 4
  }
  if (type === ETHERTYPE_IPV4) return {offset: off, version: 4}
  if (type === ETHERTYPE_IPV6) return {offset: off, version: 6}
  // IEEE 802.3: values up to 1500 are a length, not a type (the frame carries LLC).
  if (type <= 1500) return 'not IP (802.3 LLC frame)'
  return `not IP (ethertype 0x${type.toString(16).padStart(4, '0')})`
}

function ipv4(frame: Buffer, off: number, ts: number): DecodeResult {
  if (frame.length < off + 20) return skip('truncated frame')
  const ihl = (frame[off] & 0x0f) * 4
  const total = frame.readUInt16BE(off + 2)
  if (ihl < 20 || frame.length < off + ihl || (total !== 0 && total < ihl)) return skip('malformed IPv4 header')
  // Total length 0 is what TSO/GSO leaves in captures taken on the sending host; the frame holds it all.
  const end = total === 0 ? frame.length : off + total
  if (end > frame.length) return skip('packet cut short by the snapshot length')
  // RFC 791 §3.1: MF flag or a non-zero fragment offset.
  if ((frame.readUInt16BE(off + 6) & 0x3fff) !== 0) return skip('IPv4 fragment')
  const src = formatAddressBytes(4, frame.subarray(off + 12, off + 16))
  const dst = formatAddressBytes(4, frame.subarray(off + 16, off + 20))
  return transport(frame[off + 9], frame.subarray(off + ihl, end), src, dst, 4, ts)
}

/** Extension headers that may precede the transport header (RFC 8200 §4.1), plus AH (RFC 4302). */
const IPV6_HOP_BY_HOP = 0
const IPV6_ROUTING = 43
const IPV6_FRAGMENT = 44
const IPV6_AH = 51
const IPV6_DEST_OPTS = 60
const IPV6_SKIPPABLE = new Set([IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS, IPV6_AH])

function ipv6(frame: Buffer, off: number, ts: number): DecodeResult {
  if (frame.length < off + 40) return skip('truncated frame')
  const payloadLength = frame.readUInt16BE(off + 4)
  // 0 is a jumbogram (RFC 2675) or, again, a TSO/GSO capture on the sender.
  const end = payloadLength === 0 ? frame.length : off + 40 + payloadLength
  if (end > frame.length) return skip('packet cut short by the snapshot length')
  let next = frame[off + 6]
  let p = off + 40
  while (IPV6_SKIPPABLE.has(next) || next === IPV6_FRAGMENT) {
    if (next === IPV6_FRAGMENT) return skip('IPv6 fragment')
    if (p + 8 > end) return skip('malformed IPv6 extension header')
    // RFC 8200 §4.3: length in 8-octet units beyond the first; AH counts 4-octet units minus 2 (RFC 4302 §2.2).
    const len = next === IPV6_AH ? (frame[p + 1] + 2) * 4 : (frame[p + 1] + 1) * 8
    next = frame[p]
    p += len
  }
  if (p > end) return skip('malformed IPv6 extension header')
  const src = formatAddressBytes(6, frame.subarray(off + 8, off + 24))
  const dst = formatAddressBytes(6, frame.subarray(off + 24, off + 40))
  return transport(next, frame.subarray(p, end), src, dst, 6, ts)
}

function transport(proto: number, seg: Buffer, src: string, dst: string, family: 4 | 6, ts: number): DecodeResult {
  if (proto === 6) return tcp(seg, src, dst, family, ts)
  if (proto === 17) return udp(seg, src, dst, family, ts)
  return skip(`not TCP/UDP (IP protocol ${proto})`)
}

function tcp(seg: Buffer, src: string, dst: string, family: 4 | 6, ts: number): DecodeResult {
  if (seg.length < 20) return skip('truncated TCP header')
  const dataOffset = (seg[12] >> 4) * 4
  if (dataOffset < 20 || dataOffset > seg.length) return skip('malformed TCP header')
  return {
    packet: {
      ts,
      src: {address: src, port: seg.readUInt16BE(0), family},
      dst: {address: dst, port: seg.readUInt16BE(2), family},
      protocol: 'tcp',
      flags: seg[13],
      seq: seg.readUInt32BE(4),
      ack: seg.readUInt32BE(8),
      payload: seg.subarray(dataOffset),
    },
  }
}

function udp(seg: Buffer, src: string, dst: string, family: 4 | 6, ts: number): DecodeResult {
  if (seg.length < 8) return skip('truncated UDP header')
  const length = seg.readUInt16BE(4)
  // RFC 768: length covers header and data; 0 marks an IPv6 jumbogram (RFC 2675 §4), so trust the IP length.
  const end = length >= 8 && length <= seg.length ? length : seg.length
  return {
    packet: {
      ts,
      src: {address: src, port: seg.readUInt16BE(0), family},
      dst: {address: dst, port: seg.readUInt16BE(2), family},
      protocol: 'udp',
      payload: seg.subarray(8, end),
    },
  }
}
