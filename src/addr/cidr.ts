/**
 * IP addresses and prefixes as the rule table sees them. An address becomes a family plus a
 * 16-byte (v6) or 4-byte (v4) buffer; IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack
 * socket reports for an IPv4 client, RFC 4291 §2.5.5.2) is folded to IPv4 so IPv4 rules match it.
 *
 *   text ─ readAddress ─▶ 32-bit words (hot path, no allocation) ─▶ bytes / Prefix / canonical text
 *
 * One parser serves both the hot path and config parsing, so what a rule accepts and what a lookup
 * accepts cannot drift apart; test/unit/cidr.test.ts checks it against node:net's isIP.
 * The bottom layer (with address.ts): it imports nothing from the rest of divert but the error catalogue.
 */
import {DivertError} from '../errors.js'

export interface Prefix {
  family: 4 | 6
  /** Network bytes with host bits cleared: 4 bytes for v4, 16 for v6. */
  bytes: Uint8Array
  length: number
}

const MAPPED_V4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i
const COLON = 58
const DOT = 46

/** The eight 16-bit groups of the IPv6 address being read (module scratch: readAddress must not allocate). */
const GROUPS = new Uint16Array(8)
const SCRATCH = new Int32Array(4)

/**
 * Dotted-quad IPv4 between `start` and `end` as an unsigned number, or -1. Strict like node:net's
 * isIPv4: exactly four decimal parts 0-255 and no leading zeros (`010.0.0.1` could mean octal 8 to
 * inet_aton(3), so it is refused rather than guessed).
 */
function readV4(s: string, start: number, end: number): number {
  let value = 0
  let part = 0
  let digits = 0
  let dots = 0
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i)
    if (c === DOT) {
      if (digits === 0 || dots === 3) return -1
      value = value * 256 + part
      part = 0
      digits = 0
      dots++
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && part === 0) return -1
      part = part * 10 + (c - 48)
      digits++
      if (part > 255) return -1
    } else {
      return -1
    }
  }
  return digits === 0 || dots !== 3 ? -1 : value * 256 + part
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 97 && c <= 102) return c - 87
  if (c >= 65 && c <= 70) return c - 55
  return -1
}

/**
 * Reads the groups of an RFC 4291 §2.2 text address into GROUPS. Returns count * 16 + (position of
 * `::`, or -1) + 1, packed into one number so the hot path allocates nothing; -1 when malformed.
 */
function readGroups(s: string, end: number): number {
  let n = 0
  let gap = -1
  let i = 0
  if (end >= 2 && s.charCodeAt(0) === COLON && s.charCodeAt(1) === COLON) {
    gap = 0
    i = 2
  }
  while (i < end) {
    const start = i
    let v = 0
    for (let h = 0; i < end; i++) {
      h = hexValue(s.charCodeAt(i))
      if (h < 0) break
      v = v * 16 + h
    }
    if (i < end && s.charCodeAt(i) === DOT) {
      // RFC 4291 §2.2 form 3: a dotted IPv4 tail fills the last two groups.
      const v4 = readV4(s, start, end)
      if (v4 < 0 || n > 6) return -1
      GROUPS[n++] = v4 >>> 16
      GROUPS[n++] = v4 & 0xffff
      break
    }
    const digits = i - start
    if (digits === 0 || digits > 4 || n === 8) return -1
    GROUPS[n++] = v
    if (i === end) break
    if (s.charCodeAt(i) !== COLON) return -1
    i++
    if (i < end && s.charCodeAt(i) === COLON) {
      if (gap >= 0) return -1
      gap = n
      i++
    } else if (i === end) {
      return -1
    }
  }
  return n * 16 + gap + 1
}

function readV6(s: string, end: number, out: Int32Array): boolean {
  const packed = readGroups(s, end)
  if (packed < 0) return false
  const n = packed >> 4
  const gap = (packed & 15) - 1
  // `::` stands for one or more zero groups (RFC 4291 §2.2 form 2), so with it at most 7 are written.
  if (gap < 0 ? n !== 8 : n > 7) return false
  const zeros = 8 - n
  const at = gap < 0 ? 8 : gap
  for (let w = 0; w < 4; w++) {
    const k = w * 2
    const hi = k < at ? GROUPS[k] : k < at + zeros ? 0 : GROUPS[k - zeros]
    const lo = k + 1 < at ? GROUPS[k + 1] : k + 1 < at + zeros ? 0 : GROUPS[k + 1 - zeros]
    out[w] = (hi << 16) | lo
  }
  return true
}

/** Zone ids (RFC 4007 §11) in the characters node:net accepts: letters, digits, `.`, `:`, `-`. */
function validZone(s: string, start: number): boolean {
  if (start >= s.length) return false
  for (let i = start; i < s.length; i++) {
    const c = s.charCodeAt(i)
    const ok = (c >= 48 && c <= 58) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 45 || c === DOT
    if (!ok) return false
  }
  return true
}

/**
 * Reads an IP address into `out` as 32-bit big-endian words and returns its family, or 0 when
 * `text` is not an IP address. IPv4 (and IPv4-mapped IPv6, folded) fills out[0] and zeroes the rest;
 * IPv6 fills all four. A zone id (`fe80::1%eth0`) is accepted and ignored. Allocates nothing, so the
 * rule table can call it for every new session.
 */
export function readAddress(text: string, out: Int32Array): 0 | 4 | 6 {
  const pct = text.indexOf('%')
  const end = pct < 0 ? text.length : pct
  if (pct >= 0 && !validZone(text, pct + 1)) return 0
  const colon = text.indexOf(':')
  if (colon < 0 || colon >= end) {
    const v4 = pct < 0 ? readV4(text, 0, end) : -1
    if (v4 < 0) return 0
    out[0] = v4 | 0
    out[1] = out[2] = out[3] = 0
    return 4
  }
  if (!readV6(text, end, out)) return 0
  if (out[0] === 0 && out[1] === 0 && out[2] === 0xffff) {
    out[0] = out[3]
    out[1] = out[2] = out[3] = 0
    return 4
  }
  return 6
}

function wordsToBytes(words: Int32Array, count: 1 | 4): Uint8Array {
  const out = new Uint8Array(count * 4)
  for (let w = 0; w < count; w++) {
    out[w * 4] = words[w] >>> 24
    out[w * 4 + 1] = (words[w] >>> 16) & 0xff
    out[w * 4 + 2] = (words[w] >>> 8) & 0xff
    out[w * 4 + 3] = words[w] & 0xff
  }
  return out
}

/** Strips a zone id (`fe80::1%eth0`) and folds IPv4-mapped IPv6 to dotted IPv4. */
export function normalizeAddress(address: string): string {
  const pct = address.indexOf('%')
  const noZone = pct < 0 ? address : address.slice(0, pct)
  const m = MAPPED_V4.exec(noZone)
  if (m) return m[1]
  // Rarer spellings of the same mapped address (`::ffff:7f00:1`, `0:0:0:0:0:ffff:127.0.0.1`).
  if (/ffff/i.test(noZone) && noZone.includes(':') && readAddress(noZone, SCRATCH) === 4) {
    return formatAddressBytes(4, wordsToBytes(SCRATCH, 1))
  }
  return noZone
}

export function parseIPv4(text: string): Uint8Array | undefined {
  const v = readV4(text, 0, text.length)
  if (v < 0) return undefined
  SCRATCH[0] = v | 0
  return wordsToBytes(SCRATCH, 1)
}

/** 16 bytes of an IPv6 address as written (a mapped address is not folded here); zone id ignored. */
export function parseIPv6(text: string): Uint8Array | undefined {
  const pct = text.indexOf('%')
  if (pct >= 0 && !validZone(text, pct + 1)) return undefined
  return readV6(text, pct < 0 ? text.length : pct, SCRATCH) ? wordsToBytes(SCRATCH, 4) : undefined
}

/** Address bytes after normalisation, or undefined when `address` is not an IP. */
export function addressBytes(address: string): {family: 4 | 6; bytes: Uint8Array} | undefined {
  const family = readAddress(address, SCRATCH)
  if (family === 0) return undefined
  return {family, bytes: wordsToBytes(SCRATCH, family === 4 ? 1 : 4)}
}

export function maskBytes(bytes: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(bytes.length)
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, length - i * 8))
    out[i] = bits === 0 ? 0 : bytes[i] & ((0xff << (8 - bits)) & 0xff)
  }
  return out
}

function invalid(text: string, why: string): DivertError {
  return new DivertError('INVALID_ADDRESS', `"${text}" ${why}`)
}

/**
 * Prefix length as written after `/`. An IPv4-mapped IPv6 prefix (`::ffff:10.0.0.0/104`) is folded
 * to IPv4 (`10.0.0.0/8`) like the addresses it would match; it must not reach outside ::ffff:0:0/96.
 */
function prefixLength(text: string, len: string | undefined, family: 4 | 6, mapped: boolean): number {
  const max = family === 4 ? 32 : 128
  if (len === undefined) return max
  const written = Number(len)
  const writtenMax = mapped ? 128 : max
  if (!/^\d{1,3}$/.test(len) || written > writtenMax) {
    throw invalid(text, `has prefix length /${len}: expected a number between 0 and ${writtenMax} for IPv${mapped ? 6 : family}`)
  }
  if (!mapped) return written
  if (written < 96) {
    throw invalid(text, `reaches outside the IPv4-mapped range ::ffff:0:0/96 (RFC 4291 §2.5.5.2); write an IPv6 prefix without the dotted part, or an IPv4 one`)
  }
  return written - 96
}

/**
 * Parses `IP` or `IP/len` (v4 or v6). A bare address is a host prefix (/32, /128). Host bits set
 * below the prefix (`10.0.0.1/8`) are an error, as in `ip route`: the user probably meant something else.
 * Zone ids are refused: a rule matches a source address on every interface, so `%eth0` would be ignored.
 */
export function parseCidr(text: string): Prefix {
  const [addr, len, extra] = String(text).trim().split('/')
  if (addr.includes('%')) {
    throw invalid(text, `has a zone id: rules match a source address on every interface; write it without "${addr.slice(addr.indexOf('%'))}"`)
  }
  const parsed = extra === undefined ? addressBytes(addr) : undefined
  if (!parsed) {
    throw invalid(text, 'is not an IP address or CIDR (expected e.g. 192.168.100.1, 10.0.0.0/8, 2001:db8::/64)')
  }
  const length = prefixLength(text, len, parsed.family, parsed.family === 4 && addr.includes(':'))
  const bytes = maskBytes(parsed.bytes, length)
  if (!bytes.every((b, i) => b === parsed.bytes[i])) {
    throw invalid(text, `has host bits set below /${length}: did you mean ${formatPrefix({family: parsed.family, bytes, length})}?`)
  }
  return {family: parsed.family, bytes, length}
}

export function formatAddressBytes(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`
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
