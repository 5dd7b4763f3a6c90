/**
 * Address: one IP address and port, the one vocabulary for a listener's bind, a backend server, a
 * session's client and server, and a PROXY header's source and destination. Written `IP:port`, IPv6
 * in brackets (`[::1]:8080`, RFC 3986 §3.2.2). `address` is normalised: IPv4-mapped IPv6 (what a
 * dual-stack socket reports for an IPv4 client, RFC 4291 §2.5.5.2) is folded to dotted IPv4, so one
 * client has one spelling wherever it is compared, keyed or shown.
 *
 *   config text ─parseAddress─▶ Address ◀─addressOf─ what a socket reports;  Address ─formatAddress─▶ text
 *
 * The bottom layer: this folder imports nothing from the rest of divert but the error catalogue.
 */
import {isIP} from 'node:net'
import {DivertError} from '../errors.js'
import {normalizeAddress} from './cidr.js'

export interface Address {
  /** An IP literal, IPv4-mapped IPv6 folded to IPv4. */
  address: string
  port: number
  family: 4 | 6
}

/**
 * Parses `IP:port` / `[IPv6]:port`. Only IP literals: divert resolves no names (no DNS at accept
 * time). A zone id (`[fe80::1%eth0]:23`) is kept: a link-local server cannot be reached without it.
 */
export function parseAddress(text: string, what = 'address'): Address {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):(\d+)$/.exec(text)
  if (!m) {
    throw new DivertError('INVALID_ADDRESS', `${what} "${text}" is not IP:port (IPv6 as [addr]:port, e.g. 127.0.0.1:8080 or [::1]:8080)`)
  }
  if (isIP(m[1]) === 0) {
    throw new DivertError('INVALID_ADDRESS', `${what} "${text}": "${m[1]}" is not an IP address (divert takes IP literals, not host names)`)
  }
  const port = Number(m[2])
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new DivertError('INVALID_ADDRESS', `${what} "${text}": port ${m[2]} is outside 0-65535`)
  }
  const pct = m[1].indexOf('%')
  const address = pct < 0 ? normalizeAddress(m[1]) : m[1]
  return {address, port, family: familyOf(address)}
}

/** `address:port`, IPv6 in brackets: the form configs, logs, `divert sessions` and the admin API use. */
export function formatAddress(a: {address: string; port: number}): string {
  return a.address.includes(':') ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}

/** An Address from what a socket reports (rinfo, remoteAddress): IPv4-mapped folded, zone id stripped. */
export function addressOf(raw: string, port: number): Address {
  const address = normalizeAddress(raw)
  return {address, port, family: familyOf(address)}
}

/** The fields net.Socket reports about its two ends (a structural type: no socket needed in tests). */
export interface SocketEnds {
  remoteAddress?: string
  remotePort?: number
  localAddress?: string
  localPort?: number
}

/** The normalised remote side of a connected socket, or undefined if it is already gone. */
export function remoteOf(socket: SocketEnds): Address | undefined {
  const {remoteAddress: raw, remotePort: port} = socket
  return raw === undefined || port === undefined ? undefined : addressOf(raw, port)
}

/** The normalised local side of a socket (for an accepted one: the address the client reached). */
export function localOf(socket: SocketEnds): Address | undefined {
  const {localAddress: raw, localPort: port} = socket
  return raw === undefined || port === undefined ? undefined : addressOf(raw, port)
}

function familyOf(address: string): 4 | 6 {
  return address.includes(':') ? 6 : 4
}
