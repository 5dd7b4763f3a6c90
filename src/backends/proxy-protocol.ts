/**
 * PROXY protocol headers (HAProxy doc/proxy-protocol.txt): what divert writes first on an upstream
 * connection (or prepends to every datagram of a UDP flow, proxy-protocol.txt §2.2) so the server sees the real client, and a
 * decoder for tests and the example echo backends.
 *
 *   client peer + proxy's local address ─▶ encodeProxyV1 | encodeProxyV2 ─▶ header bytes
 *   a connection of the proxy's own (health check) ─▶ encodeProxyLocal ─▶ header bytes
 *   received bytes ─▶ decodeProxyHeader ─▶ {version, command, source, destination, length} | need more
 */
import {isIPv4, isIPv6} from 'node:net'
import {DivertError} from '../errors.js'
import type {Address} from '../addr/address.js'
import {formatAddressBytes, normalizeAddress, parseIPv6} from '../addr/cidr.js'

/** What a header names of each side: an Address whose family the encoder works out itself (any string is checked). */
type AddressPort = Pick<Address, 'address' | 'port'>

export type ProxyTransport = 'stream' | 'dgram'

export interface ProxyHeader {
  version: 1 | 2
  command: 'PROXY' | 'LOCAL'
  transport: ProxyTransport | 'unknown'
  /** The original client; absent for LOCAL, UNKNOWN and AF_UNSPEC/AF_UNIX headers. */
  source?: AddressPort
  destination?: AddressPort
  /** Bytes the header occupies at the start of the input; the payload starts here. */
  length: number
}

/** §2.2: the 12-byte v2 signature; it contains a NUL, so it is never a C string. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
const V1_PREFIX = Buffer.from('PROXY ', 'latin1')
/** §2.1: the longest v1 line, "PROXY UNKNOWN" with two full IPv6 addresses, is 107 bytes with CRLF. */
const V1_MAX_LENGTH = 107
const V2_FIXED = 16
const V2_ADDR_LEN = {4: 12, 6: 36} as const
/** §2.2: AF_UNIX addresses are 108 bytes each. */
const V2_UNIX_ADDR_LEN = 216
const CR = 0x0d
const LF = 0x0a

// ─── encoders ──────────────────────────────────────────────────────────────────────────────────

/**
 * "PROXY TCP4 src dst sport dport\r\n" (§2.1). When the two sides are of different families the
 * IPv4 one is written IPv4-mapped (::ffff:a.b.c.d) under TCP6, as HAProxy's make_proxy_line_v1 does.
 */
export function encodeProxyV1(src: AddressPort, dst: AddressPort): Buffer {
  const s = checked(src, 'source')
  const d = checked(dst, 'destination')
  const v6 = s.family === 6 || d.family === 6
  const sa = v6 && s.family === 4 ? `::ffff:${s.address}` : s.address
  const da = v6 && d.family === 4 ? `::ffff:${d.address}` : d.address
  return Buffer.from(`PROXY ${v6 ? 'TCP6' : 'TCP4'} ${sa} ${da} ${src.port} ${dst.port}\r\n`, 'latin1')
}

/**
 * The v2 binary header (§2.2): signature, 0x21 (version 2, PROXY), family/transport byte
 * (0x11/0x12 TCP/UDP over IPv4, 0x21/0x22 over IPv6), address length, then source address,
 * destination address, source port, destination port, all in network order. No TLVs.
 */
export function encodeProxyV2(src: AddressPort, dst: AddressPort, transport: ProxyTransport): Buffer {
  const s = checked(src, 'source')
  const d = checked(dst, 'destination')
  const family: 4 | 6 = s.family === 6 || d.family === 6 ? 6 : 4
  const addrLen = V2_ADDR_LEN[family]
  const buf = Buffer.allocUnsafe(V2_FIXED + addrLen)
  V2_SIGNATURE.copy(buf, 0)
  buf[12] = 0x21
  buf[13] = (family === 4 ? 0x10 : 0x20) | (transport === 'dgram' ? 0x02 : 0x01)
  buf.writeUInt16BE(addrLen, 14)
  const size = family === 4 ? 4 : 16
  writeAddress(buf, V2_FIXED, s, family)
  writeAddress(buf, V2_FIXED + size, d, family)
  buf.writeUInt16BE(src.port, V2_FIXED + 2 * size)
  buf.writeUInt16BE(dst.port, V2_FIXED + 2 * size + 2)
  return buf
}

/**
 * The header of a connection the proxy makes on its own behalf, such as a health check: v2 with the
 * LOCAL command (0x20) and no address block (§2.2: "the receiver must accept this connection as valid
 * and must use the real connection endpoints"), v1 "PROXY UNKNOWN\r\n" (§2.1). HAProxy's
 * `check-send-proxy` sends the same, and an `accept-proxy` listener logs an error for a connection
 * without one.
 */
export function encodeProxyLocal(version: 'v1' | 'v2'): Buffer {
  if (version === 'v1') return Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
  const buf = Buffer.alloc(V2_FIXED)
  V2_SIGNATURE.copy(buf, 0)
  buf[12] = 0x20
  // Byte 13 (AF_UNSPEC, UNSPEC) and the 16-bit address length stay 0.
  return buf
}

interface CheckedAddress {
  address: string
  family: 4 | 6
}

function checked(peer: AddressPort, what: string): CheckedAddress {
  const port = peer.port
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new DivertError('INVALID_ARGUMENT', `PROXY header ${what} port ${String(port)} is not an integer in 0-65535`)
  }
  const address = normalizeAddress(peer.address)
  if (isIPv4(address)) return {address, family: 4}
  if (isIPv6(address)) return {address, family: 6}
  throw new DivertError('INVALID_ADDRESS', `PROXY header ${what} "${peer.address}" is not an IPv4 or IPv6 address`)
}

function writeAddress(buf: Buffer, offset: number, a: CheckedAddress, family: 4 | 6): void {
  if (family === 4) return writeIPv4(buf, offset, a.address)
  if (a.family === 6) return writeIPv6(buf, offset, a.address)
  // RFC 4291 §2.5.5.2: IPv4-mapped IPv6 is 80 zero bits, 16 one bits, then the IPv4 address.
  buf.fill(0, offset, offset + 10)
  buf[offset + 10] = 0xff
  buf[offset + 11] = 0xff
  writeIPv4(buf, offset + 12, a.address)
}

/** Dotted quad (already validated) straight into the buffer, without split/map garbage. */
function writeIPv4(buf: Buffer, offset: number, text: string): void {
  let octet = 0
  let i = offset
  for (let k = 0; k < text.length; k++) {
    const c = text.charCodeAt(k)
    if (c === 0x2e) {
      buf[i++] = octet
      octet = 0
    } else {
      octet = octet * 10 + (c - 0x30)
    }
  }
  buf[i] = octet
}

/** IPv6 text (validated, zone stripped) into 16 bytes; handles "::" and a dotted-quad tail. */
function writeIPv6(buf: Buffer, offset: number, text: string): void {
  const bytes = parseIPv6(text)
  if (!bytes) throw new DivertError('INVALID_ADDRESS', `PROXY header address "${text}" is not an IPv6 address`)
  buf.set(bytes, offset)
}

// ─── decoder ───────────────────────────────────────────────────────────────────────────────────

/**
 * Decodes a v1 or v2 header at the start of `buf`. Returns undefined while the bytes so far are a
 * valid beginning of a header (read more and call again); throws INVALID_ARGUMENT as soon as they
 * cannot be one. Addresses come back normalised (IPv4-mapped IPv6 folded to IPv4, RFC 5952 text).
 */
export function decodeProxyHeader(buf: Buffer): ProxyHeader | undefined {
  if (buf.length === 0) return undefined
  if (buf[0] === V2_SIGNATURE[0]) return decodeV2(buf)
  if (buf[0] === V1_PREFIX[0]) return decodeV1(buf)
  return invalid(`it starts with byte 0x${hex(buf[0])}, neither "PROXY " (v1) nor the v2 signature`)
}

function invalid(reason: string): never {
  throw new DivertError('INVALID_ARGUMENT', `not a valid PROXY protocol header: ${reason} (HAProxy proxy-protocol.txt §2)`)
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0')
}

/** True when the first bytes of buf agree with `expected` (as far as both go). */
function agreesWith(buf: Buffer, expected: Buffer): boolean {
  const n = Math.min(buf.length, expected.length)
  return buf.compare(expected, 0, n, 0, n) === 0
}

// v2 (§2.2) ───────────────────────────────────────────────────────────────────────────────────

function decodeV2(buf: Buffer): ProxyHeader | undefined {
  if (!agreesWith(buf, V2_SIGNATURE)) return invalid('the v2 signature (\\r\\n\\r\\n\\0\\r\\nQUIT\\n) does not match')
  if (buf.length < V2_FIXED) return undefined
  const version = buf[12] >> 4
  const command = buf[12] & 0x0f
  if (version !== 2) return invalid(`version nibble is ${version}, only 2 is defined`)
  if (command > 1) return invalid(`command 0x${command.toString(16)} is neither LOCAL (0x0) nor PROXY (0x1)`)
  const length = V2_FIXED + buf.readUInt16BE(14)
  if (buf.length < length) return undefined
  // LOCAL: the proxy's own connection (e.g. a health check); the family and address block are ignored.
  if (command === 0) return {version: 2, command: 'LOCAL', transport: 'unknown', length}
  return decodeV2Proxy(buf, length)
}

function decodeV2Proxy(buf: Buffer, length: number): ProxyHeader {
  const family = buf[13] >> 4
  const proto = buf[13] & 0x0f
  if (family > 3) return invalid(`address family nibble 0x${family.toString(16)} is not UNSPEC, INET, INET6 or UNIX`)
  if (proto > 2) return invalid(`transport nibble 0x${proto.toString(16)} is not UNSPEC, STREAM or DGRAM`)
  const transport = proto === 1 ? 'stream' : proto === 2 ? 'dgram' : 'unknown'
  const blockLen = length - V2_FIXED
  // UNSPEC family or transport: the receiver should ignore any address information.
  if (family === 0 || proto === 0) return {version: 2, command: 'PROXY', transport: 'unknown', length}
  const need = family === 1 ? V2_ADDR_LEN[4] : family === 2 ? V2_ADDR_LEN[6] : V2_UNIX_ADDR_LEN
  if (blockLen < need) return invalid(`address block is ${blockLen} bytes, family 0x${hex(buf[13])} needs ${need}`)
  checkTlvs(buf, V2_FIXED + need, length)
  if (family === 3) return {version: 2, command: 'PROXY', transport, length}
  const size = family === 1 ? 4 : 16
  const at = V2_FIXED
  return {
    version: 2, command: 'PROXY', transport, length,
    source: {address: addressText(buf, at, size), port: buf.readUInt16BE(at + 2 * size)},
    destination: {address: addressText(buf, at + size, size), port: buf.readUInt16BE(at + 2 * size + 2)},
  }
}

/** §2.2: TLVs follow the addresses; like HAProxy (conn_recv_proxy) we require them to end exactly at the header end. */
function checkTlvs(buf: Buffer, from: number, end: number): void {
  let at = from
  while (at < end) {
    if (at + 3 > end) invalid(`a TLV at offset ${at} is cut short by the header length (${end})`)
    at += 3 + buf.readUInt16BE(at + 1)
    if (at > end) invalid(`a TLV runs past the header length (${end})`)
  }
}

function addressText(buf: Buffer, offset: number, size: 4 | 16): string {
  const bytes = buf.subarray(offset, offset + size)
  if (size === 4) return formatAddressBytes(4, bytes)
  if (isMappedV4(bytes)) return formatAddressBytes(4, bytes.subarray(12))
  return formatAddressBytes(6, bytes)
}

function isMappedV4(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false
  return b[10] === 0xff && b[11] === 0xff
}

// v1 (§2.1) ───────────────────────────────────────────────────────────────────────────────────

function decodeV1(buf: Buffer): ProxyHeader | undefined {
  if (!agreesWith(buf, V1_PREFIX)) return invalid('it starts with "P" but not with "PROXY "')
  const end = findLineEnd(buf)
  if (end < 0) {
    if (buf.length >= V1_MAX_LENGTH) return invalid(`no CRLF within the first ${V1_MAX_LENGTH} bytes`)
    checkV1Protocol(buf.toString('latin1', V1_PREFIX.length, Math.min(buf.length, V1_PREFIX.length + 8)), false)
    return undefined
  }
  return parseV1Line(buf.toString('latin1', 0, end), end + 2)
}

/**
 * Index of the CR of the first CRLF, or -1 when none yet. Only printable US-ASCII may precede it,
 * and a lone CR or LF is an error (§2.1: "must not tolerate a single CR or LF").
 */
function findLineEnd(buf: Buffer): number {
  const n = Math.min(buf.length, V1_MAX_LENGTH)
  for (let i = 0; i < n; i++) {
    const c = buf[i]
    if (c === CR) {
      if (i + 1 >= buf.length) return -1
      if (buf[i + 1] !== LF) return invalid(`CR at offset ${i} is not followed by LF`)
      return i
    }
    if (c === LF) return invalid(`LF at offset ${i} without a preceding CR`)
    if (c < 0x20 || c > 0x7e) return invalid(`byte 0x${hex(c)} at offset ${i} in the text header`)
  }
  return -1
}

const V1_PROTOCOLS = ['TCP4', 'TCP6', 'UNKNOWN']

/** Rejects early when the protocol word seen so far cannot become TCP4, TCP6 or UNKNOWN. */
function checkV1Protocol(seen: string, complete: boolean): void {
  const end = seen.search(/[ \r]/)
  const word = end < 0 ? seen : seen.slice(0, end)
  const whole = complete || end >= 0
  if (!V1_PROTOCOLS.some((p) => (whole ? p === word : p.startsWith(word)))) {
    invalid(`protocol "${word}" is not TCP4, TCP6 or UNKNOWN`)
  }
}

function parseV1Line(line: string, length: number): ProxyHeader {
  const rest = line.slice(V1_PREFIX.length)
  // §2.1: with UNKNOWN the receiver ignores whatever follows, up to the CRLF.
  if (rest === 'UNKNOWN' || rest.startsWith('UNKNOWN ')) return {version: 1, command: 'PROXY', transport: 'unknown', length}
  checkV1Protocol(rest, true)
  const parts = rest.split(' ')
  if (parts.length !== 5) return invalid(`"${line}" has ${parts.length - 1} fields after the protocol, expected 4 separated by single spaces`)
  const [proto, sa, da, sp, dp] = parts
  const family = proto === 'TCP4' ? 4 : 6
  return {
    version: 1, command: 'PROXY', transport: 'stream', length,
    source: {address: v1Address(sa, family, 'source'), port: v1Port(sp, 'source')},
    destination: {address: v1Address(da, family, 'destination'), port: v1Port(dp, 'destination')},
  }
}

function v1Address(text: string, family: 4 | 6, what: string): string {
  // Node's isIPv4 refuses leading zeros, as §2.1 requires (no octal confusion).
  if (family === 4) return isIPv4(text) ? text : invalid(`${what} "${text}" is not a dotted-quad IPv4 address`)
  const bytes = !text.includes('%') && isIPv6(text) ? parseIPv6(text) : undefined
  if (!bytes) return invalid(`${what} "${text}" is not an IPv6 address`)
  return isMappedV4(bytes) ? formatAddressBytes(4, bytes.subarray(12)) : formatAddressBytes(6, bytes)
}

function v1Port(text: string, what: string): number {
  // §2.1: decimal in 0..65535, no leading zeros.
  if (!/^(0|[1-9]\d{0,4})$/.test(text) || Number(text) > 65535) return invalid(`${what} port "${text}" is not a decimal in 0-65535 without leading zeros`)
  return Number(text)
}
