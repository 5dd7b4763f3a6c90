/**
 * Endpoints: `host:port` strings as written in configs and on the command line, with IPv6 in
 * brackets (`[::1]:8080`, RFC 3986 §3.2.2), and the canonical `address:port` form sessions report.
 */
import {isIP} from 'node:net'
import {DivertError} from '../errors.js'

export interface Endpoint {
  host: string
  port: number
  family: 4 | 6
}

/** Parses `IP:port` / `[IPv6]:port`. Only IP literals: divert resolves no names (no DNS at accept time). */
export function parseEndpoint(text: string, what = 'address'): Endpoint {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):(\d+)$/.exec(text)
  if (!m) {
    throw new DivertError('INVALID_ADDRESS', `${what} "${text}" is not IP:port (IPv6 as [addr]:port, e.g. 127.0.0.1:8080 or [::1]:8080)`)
  }
  const host = m[1]
  const family = isIP(host)
  if (family === 0) {
    throw new DivertError('INVALID_ADDRESS', `${what} "${text}": "${host}" is not an IP address (divert takes IP literals, not host names)`)
  }
  const port = Number(m[2])
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new DivertError('INVALID_ADDRESS', `${what} "${text}": port ${m[2]} is outside 0-65535`)
  }
  return {host, port, family: family as 4 | 6}
}

export function formatEndpoint(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

export function endpointString(e: Endpoint): string {
  return formatEndpoint(e.host, e.port)
}
