/**
 * IP addresses and prefixes as the rule table sees them. An address becomes a family plus a
 * 16-byte (v6) or 4-byte (v4) buffer; IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack
 * socket reports for an IPv4 client, RFC 4291 §2.5.5.2) is folded to IPv4 so IPv4 rules match it.
 */
import {isIPv4, isIPv6} from 'node:net'
import {DivertError} from '../errors.js'

export interface Prefix {
  family: 4 | 6
  /** Network bytes with host bits cleared: 4 bytes for v4, 16 for v6. */
  bytes: Uint8Array
  length: number
}

const MAPPED_V4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i

/** Strips a zone id (`fe80::1%eth0`) and folds IPv4-mapped IPv6 to dotted IPv4. */
export function normalizeAddress(address: string): string {
  const noZone = address.includes('%') ? address.slice(0, address.indexOf('%')) : address
  const m = MAPPED_V4.exec(noZone)
  return m ? m[1] : noZone
}

export function parseIPv4(text: string): Uint8Array | undefined {
  if (!isIPv4(text)) return undefined
  return Uint8Array.from(text.split('.').map(Number))
}

export function parseIPv6(text: string): Uint8Array | undefined {
  if (!isIPv6(text)) return undefined
  let s = text
  const out = new Uint8Array(16)
  const tailV4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s)
  if (tailV4) {
    const v4 = parseIPv4(tailV4[1])!
    s = s.slice(0, -tailV4[1].length) + `${((v4[0] << 8) | v4[1]).toString(16)}:${((v4[2] << 8) | v4[3]).toString(16)}`
  }
  const [head, rest] = s.includes('::') ? s.split('::') : [s, undefined]
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').map((h) => parseInt(h, 16)))
  const h = parse(head)
  const r = rest === undefined ? [] : parse(rest)
  const words = rest === undefined ? h : [...h, ...new Array(Math.max(0, 8 - h.length - r.length)).fill(0), ...r]
  if (words.length !== 8) return undefined
  words.forEach((w, i) => {
    out[i * 2] = w >> 8
    out[i * 2 + 1] = w & 0xff
  })
  return out
}

/** Address bytes after normalisation, or undefined when `address` is not an IP. */
export function addressBytes(address: string): {family: 4 | 6; bytes: Uint8Array} | undefined {
  const a = normalizeAddress(address)
  const v4 = parseIPv4(a)
  if (v4) return {family: 4, bytes: v4}
  const v6 = parseIPv6(a)
  if (v6) return {family: 6, bytes: v6}
  return undefined
}

export function maskBytes(bytes: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(bytes.length)
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, length - i * 8))
    out[i] = bits === 0 ? 0 : bytes[i] & ((0xff << (8 - bits)) & 0xff)
  }
  return out
}

/**
 * Parses `IP` or `IP/len` (v4 or v6). A bare address is a host prefix (/32, /128). Host bits set
 * below the prefix (`10.0.0.1/8`) are an error, as in `ip route`: the user probably meant something else.
 */
export function parseCidr(text: string): Prefix {
  const [addr, len, extra] = String(text).trim().split('/')
  const parsed = extra === undefined ? addressBytes(addr) : undefined
  if (!parsed) {
    throw new DivertError('INVALID_ADDRESS', `"${text}" is not an IP address or CIDR (expected e.g. 192.168.100.1, 10.0.0.0/8, 2001:db8::/64)`)
  }
  const max = parsed.family === 4 ? 32 : 128
  const length = len === undefined ? max : Number(len)
  if (len !== undefined && (!/^\d{1,3}$/.test(len) || length > max)) {
    throw new DivertError('INVALID_ADDRESS', `"${text}": prefix length /${len} is not between 0 and ${max} for IPv${parsed.family}`)
  }
  const bytes = maskBytes(parsed.bytes, length)
  if (!bytes.every((b, i) => b === parsed.bytes[i])) {
    throw new DivertError('INVALID_ADDRESS', `"${text}" has host bits set below /${length}: did you mean ${formatPrefix({family: parsed.family, bytes, length})}?`)
  }
  return {family: parsed.family, bytes, length}
}

export function formatAddressBytes(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return Array.from(bytes).join('.')
  const words: number[] = []
  for (let i = 0; i < 16; i += 2) words.push((bytes[i] << 8) | bytes[i + 1])
  // RFC 5952 §4.2: compress the longest run (≥ 2) of zero words, the first on a tie.
  let best = -1
  let bestLen = 1
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && words[j] === 0) j++
    if (j - i > bestLen) { best = i; bestLen = j - i }
    i = j
  }
  const hex = words.map((w) => w.toString(16))
  if (best < 0) return hex.join(':')
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`
}

/** Canonical text of a prefix: host prefixes print as a bare address, others as addr/len. */
export function formatPrefix(p: Prefix): string {
  const addr = formatAddressBytes(p.family, p.bytes)
  return p.length === (p.family === 4 ? 32 : 128) ? addr : `${addr}/${p.length}`
}

export function prefixContains(p: Prefix, address: string): boolean {
  const a = addressBytes(address)
  if (!a || a.family !== p.family) return false
  const masked = maskBytes(a.bytes, p.length)
  return masked.every((b, i) => b === p.bytes[i])
}
