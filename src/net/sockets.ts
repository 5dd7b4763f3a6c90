/**
 * The socket factory: every upstream socket divert opens — the TCP proxy's, UDP flows', mirrors',
 * health checks' and replay's — comes from here, with the backend's options applied the same way
 * everywhere (undici's buildConnector is the model: one place that knows how a connection is made).
 *
 *   caller ─tcp/udp(to, backend options, client)─▶ SocketFactory ─▶ net.Socket (connecting) | dgram.Socket (unconnected)
 *                                                      └─ source/mark: socket() + setsockopt + bind via sys/libc, then Node takes the fd
 *
 * Options: `keepalive` (TCP), `source: <IP>` (bind that local address), `source: client` (bind the
 * client's own address with IP_TRANSPARENT, ip(7), so the server sees the device, not divert), and
 * `mark` (SO_MARK, socket(7), for policy routing). Without source or mark the socket is Node's own,
 * as before. A socket that cannot be prepared (EADDRINUSE, EADDRNOTAVAIL…) fails its one session:
 * a TCP socket reports the error as its connect's, a UDP open throws to the flow that asked.
 */
import dgram from 'node:dgram'
import net, {isIP} from 'node:net'
import type {Address} from '../addr/address.js'
import {DivertError} from '../errors.js'
import * as sys from '../sys/libc.js'
import {tcpConnector, type Connector} from './connector.js'

/** The per-backend options of upstream sockets (BackendConfig satisfies it). */
export interface UpstreamOptions {
  /** TCP keepalive idle time (0 = off; absent = leave the socket as Node made it). */
  keepaliveMs?: number
  /** `client`: the client's own address (IP_TRANSPARENT); an IP: that local address; absent: the host picks. */
  source?: string
  /** SO_MARK on every upstream socket (0 = none). */
  mark?: number
}

export interface SocketFactory {
  /** A TCP socket connecting to `to`; never throws (a failure arrives as the socket's 'error'). */
  tcp(to: Address, options?: UpstreamOptions, client?: Address): net.Socket
  /** An unconnected UDP socket for talking to `to` (the caller connects it). Throws if it cannot be prepared. */
  udp(to: Address, options?: UpstreamOptions, client?: Address): dgram.Socket
}

export interface SocketFactoryEdges {
  /** How a plain TCP socket is opened (tests swap it to simulate black holes). */
  connect?: Connector
}

/** The factory with Node's own connect: what replay and mirrors use when nothing else is given. */
export function createSocketFactory(edges: SocketFactoryEdges = {}): SocketFactory {
  const connect = edges.connect ?? tcpConnector
  return {
    tcp(to, options = {}, client) {
      let socket: net.Socket
      if (!options.source && !options.mark) socket = connect(to)
      else {
        try {
          socket = preparedTcp(to, options, client)
        } catch (error) {
          socket = failedTcp(error as Error)
        }
      }
      if (options.keepaliveMs) socket.setKeepAlive(true, options.keepaliveMs)
      return socket
    },
    udp(to, options = {}, client) {
      if (!options.source && !options.mark) return udpSocket(to.family)
      const family = to.family
      const fd = preparedFd(to, options, client, sys.SOCK_DGRAM)
      const socket = udpSocket(family)
      try {
        socket.bind({fd})
      } catch (error) {
        sys.closeFd(fd)
        throw error
      }
      return socket
    },
  }
}

/** The default factory (no injected edges). */
export const defaultSockets: SocketFactory = createSocketFactory()

/**
 * The `lookup` of every UDP socket. Every address divert sends to or connects to is an IP literal
 * (config and rinfo), yet dgram runs each unconnected send, bind and connect through dns.lookup,
 * which answers a literal one tick later. This answers in the same call: a reply is sent without a
 * closure and a tick of its own, and an upstream socket is bound and connected when connect()
 * returns (lib/internal/dgram.js lookup4/lookup6 call it as lookup(address, family, callback)).
 */
function literalLookup(address: string, _family: unknown, callback: (error: Error | null, address: string, family: number) => void): void {
  const family = isIP(address)
  if (family === 0) callback(new DivertError('INVALID_ADDRESS', `"${address}" is not an IP address`), address, 0)
  else callback(null, address, family)
}

/** A UDP socket that resolves nothing (see literalLookup); a udp6 one is dual stack. */
export function udpSocket(family: 4 | 6): dgram.Socket {
  return dgram.createSocket({type: family === 6 ? 'udp6' : 'udp4', lookup: literalLookup as never})
}

/** A socket made by sys/libc with the options set and bound, then handed to Node to connect. */
function preparedTcp(to: Address, options: UpstreamOptions, client: Address | undefined): net.Socket {
  const fd = preparedFd(to, options, client, sys.SOCK_STREAM)
  let socket: net.Socket
  try {
    socket = new net.Socket({fd, allowHalfOpen: true, readable: true, writable: true})
  } catch (error) {
    sys.closeFd(fd)
    throw error
  }
  // TCP_NODELAY as tcpConnector sets it: small writes must not wait for delayed ACKs (Nagle, RFC 896, meets RFC 1122 delayed ACK).
  return socket.setNoDelay(true).connect({host: to.address, port: to.port})
}

/**
 * socket(2), the options, bind(2). `source: client` binds the client's address with IP_TRANSPARENT
 * (IPV6_TRANSPARENT for v6), which lets a socket bind an address that is not local (ip(7)); TCP takes
 * port 0, UDP the client's port where it is free (a server that keys on the source port, like
 * OpenVPN, then sees the device's own address:port), else port 0.
 */
function preparedFd(to: Address, options: UpstreamOptions, client: Address | undefined, type: typeof sys.SOCK_STREAM | typeof sys.SOCK_DGRAM): number {
  const bind = bindTarget(to, options, client, type)
  const fd = sys.openSocket(to.family, type)
  try {
    if (options.mark) sys.setIntOption(fd, sys.SOL_SOCKET, sys.SO_MARK, options.mark | 0, 'setsockopt SO_MARK')
    if (bind?.transparent) {
      if (to.family === 6) sys.setIntOption(fd, sys.SOL_IPV6, sys.IPV6_TRANSPARENT, 1, 'setsockopt IPV6_TRANSPARENT')
      else sys.setIntOption(fd, sys.SOL_IP, sys.IP_TRANSPARENT, 1, 'setsockopt IP_TRANSPARENT')
    }
    if (bind) bindWithFallback(fd, bind)
    return fd
  } catch (error) {
    sys.closeFd(fd)
    throw error
  }
}

interface BindTarget {
  address: string
  port: number
  transparent: boolean
}

function bindTarget(to: Address, options: UpstreamOptions, client: Address | undefined, type: number): BindTarget | undefined {
  const source = options.source
  if (!source) return undefined
  if (source !== 'client') return {address: source, port: 0, transparent: false}
  // A health check has no client: the host picks its source.
  if (!client) return undefined
  if (client.family !== to.family) {
    throw new sys.SysError(`source: client (client ${client.address} is IPv${client.family}, server ${to.address} IPv${to.family})`, 97, 'EAFNOSUPPORT')
  }
  return {address: client.address, port: type === sys.SOCK_DGRAM ? client.port : 0, transparent: true}
}

/** bind(2), and for a UDP flow whose client port is taken here (another flow of that client), port 0. */
function bindWithFallback(fd: number, b: BindTarget): void {
  try {
    sys.bindSocket(fd, b.address, b.port)
  } catch (error) {
    if (b.port === 0 || (error as sys.SysError).code !== 'EADDRINUSE') throw error
    sys.bindSocket(fd, b.address, 0)
  }
}

/** A socket that fails as a connect would (one 'error', then 'close'): the session ends with the cause logged. */
function failedTcp(error: Error): net.Socket {
  const socket = new net.Socket({allowHalfOpen: true})
  process.nextTick(() => socket.destroy(error))
  return socket
}

/** A backend's upstream options that need privileges, as one probe each. */
interface Need {
  what: string
  level: number
  name: number
  option: string
}

const TRANSPARENT: Need = {what: 'source: client', level: sys.SOL_IP, name: sys.IP_TRANSPARENT, option: 'IP_TRANSPARENT'}
const MARK: Need = {what: 'mark', level: sys.SOL_SOCKET, name: sys.SO_MARK, option: 'SO_MARK'}

/** Why setting `need` on a fresh socket fails, or undefined when it works. Probed once per process. */
export type PrivilegeProbe = (need: Need) => string | undefined

const probed = new Map<string, string | undefined>()

const probeOnce: PrivilegeProbe = (need) => {
  if (!probed.has(need.option)) probed.set(need.option, probeOption(need))
  return probed.get(need.option)
}

function probeOption(need: Need): string | undefined {
  let fd: number
  try {
    fd = sys.openSocket(4, sys.SOCK_DGRAM)
  } catch (error) {
    return `koffi, which divert calls setsockopt(2) through, could not load (${(error as Error).message}); reinstall divert with its dependencies`
  }
  try {
    sys.setIntOption(fd, need.level, need.name, 1, `setsockopt ${need.option}`)
    return undefined
  } catch (error) {
    const code = (error as sys.SysError).code
    if (code !== 'EPERM' && code !== 'EACCES') return `setsockopt ${need.option} fails: ${(error as Error).message}`
    return `needs CAP_NET_ADMIN (or CAP_NET_RAW) to set ${need.option} (${code}): run divert as root, or grant it (systemd AmbientCapabilities=CAP_NET_ADMIN)`
  } finally {
    sys.closeFd(fd)
  }
}

/**
 * Start and reload refuse a config whose upstream options this process cannot apply, with one line
 * naming the backend, the option and what is missing — rather than failing every session of that
 * backend later. `source: client` needs IP_TRANSPARENT and `mark` SO_MARK, both CAP_NET_ADMIN (ip(7), socket(7)).
 */
export function checkUpstreamPrivileges(backends: Iterable<{name: string} & UpstreamOptions>, probe: PrivilegeProbe = probeOnce): void {
  for (const b of backends) {
    for (const need of [b.source === 'client' ? TRANSPARENT : undefined, b.mark ? MARK : undefined]) {
      const missing = need && probe(need)
      if (missing) throw new DivertError('CAPABILITY_MISSING', `backend ${b.name}: ${need.what} ${missing}`, {details: {backend: b.name, option: need.option}})
    }
  }
}
