/**
 * The injectable edge between the proxies and the network: how an upstream TCP connection is opened.
 * Tests swap it to simulate black holes and failures without touching real servers.
 */
import net from 'node:net'
import {normalizeAddress} from '../rules/cidr.js'
import type {Peer} from '../session/types.js'
import type {Endpoint} from './endpoint.js'

export type Connector = (to: Endpoint) => net.Socket

/** TCP_NODELAY from the start: without it small writes meet the 40 ms delayed-ACK stall (FIELD-NOTES). */
export const tcpConnector: Connector = (to) => net.connect({host: to.host, port: to.port, noDelay: true, allowHalfOpen: true})

/** The normalised remote side of an accepted socket, or undefined if it is already gone. */
export function remotePeer(socket: net.Socket): Peer | undefined {
  const raw = socket.remoteAddress
  const port = socket.remotePort
  if (raw === undefined || port === undefined) return undefined
  const address = normalizeAddress(raw)
  return {address, port, family: address.includes(':') ? 6 : 4}
}

export function localPeer(socket: net.Socket): Peer | undefined {
  const raw = socket.localAddress
  const port = socket.localPort
  if (raw === undefined || port === undefined) return undefined
  const address = normalizeAddress(raw)
  return {address, port, family: address.includes(':') ? 6 : 4}
}

export function endpointPeer(e: Endpoint): Peer {
  const address = normalizeAddress(e.host)
  return {address, port: e.port, family: address.includes(':') ? 6 : 4}
}
