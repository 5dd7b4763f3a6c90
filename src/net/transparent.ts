/**
 * Transparent listening sockets (gateway mode): the socket gets IP_TRANSPARENT before it is bound
 * (src/sys/libc.ts), then Node takes it over by fd (`net.Server.listen({fd})`, `dgram bind({fd})`).
 * With it a TPROXY rule may hand the socket connections and datagrams addressed to any host, and
 * `localAddress` of an accepted connection is the destination the client dialled (kernel
 * Documentation/networking/tproxy.rst).
 *
 *   ListenerConfig ─openTransparent (socket, IP_TRANSPARENT, bind)─▶ fd ─▶ TcpProxy / UdpProxy
 */
import {DivertError} from '../errors.js'
import type {ListenerConfig} from '../config/types.js'
import {openTransparent, SOCK_DGRAM, SOCK_STREAM} from '../sys/libc.js'
import {formatAddress} from '../addr/address.js'

/** A bound transparent socket for `l`; a failure is LISTEN_FAILED naming the cause and the fix. */
export function transparentFd(l: ListenerConfig): number {
  try {
    return openTransparent(l.protocol === 'tcp' ? SOCK_STREAM : SOCK_DGRAM, l.bind.address, l.bind.port)
  } catch (error) {
    throw new DivertError('LISTEN_FAILED', `listener ${l.name} cannot bind ${l.protocol} ${formatAddress(l.bind)} transparently: ${describe(error)}`, {cause: error})
  }
}

function describe(error: unknown): string {
  switch ((error as NodeJS.ErrnoException).code) {
    case 'EPERM':
    case 'EACCES': return 'IP_TRANSPARENT needs root or CAP_NET_ADMIN (run divert as root, or give it the capability: setcap or systemd AmbientCapabilities=CAP_NET_ADMIN)'
    case 'EADDRINUSE': return 'the address is already in use (another divert, or another program, listens there)'
    default: return (error as Error).message
  }
}
