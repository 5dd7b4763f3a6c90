/**
 * Loopback UDP test peers: echo backends that answer `<name>:<payload>` and record every source
 * address:port (and PROXY v2 header) they saw, and clients bound to a chosen loopback source that
 * queue the replies they get with the sender's rinfo. Everything binds port 0, awaits 'listening',
 * and has an idempotent close (docs/STYLE.md §6).
 *
 *   UdpClient ─datagram─▶ divert ─▶ UdpEcho (records source) ─`name:payload`─▶ divert ─▶ UdpClient
 */
import dgram from 'node:dgram'
import {decodeProxyHeader, type ProxyHeader} from '../../src/backends/proxy-protocol.js'

export interface Datagram {
  payload: Buffer
  /** Sender as `address:port` (IPv6 in brackets). */
  from: string
  address: string
  port: number
  /** The PROXY header the datagram started with, when the server expects one. */
  header?: ProxyHeader
}

export type Reply = (d: Datagram, server: UdpEcho) => Buffer | undefined

/** Default: `<name>:<payload>`, so a client can tell which server answered and to which datagram. */
export const tagged: Reply = (d, server) => Buffer.concat([Buffer.from(`${server.name}:`), d.payload])
/** Echo the payload alone (for payloads already at the datagram size limit). */
export const raw: Reply = (d) => d.payload
/** Never answer (a backend that swallows everything). */
export const silent: Reply = () => undefined

export interface UdpEchoOptions {
  host?: string
  reply?: Reply
  /** Each datagram starts with a PROXY header: strip and record it; the reply echoes what follows. */
  proxyProtocol?: boolean
  /** SO_RCVBUF / SO_SNDBUF, for tests with datagrams near 64 KiB. */
  bufferSize?: number
  /** Bind this port (default 0: any free one); rejects with EADDRINUSE when taken. */
  port?: number
}

export interface UdpEcho {
  name: string
  host: string
  port: number
  /** `host:port` for a config (IPv6 in brackets). */
  address: string
  received: Datagram[]
  /** Datagrams that did not start with a valid PROXY header (proxyProtocol servers only). */
  badHeaders: number
  /** Distinct `address:port` sources seen. */
  sources(): Set<string>
  close(): Promise<void>
}

export async function startUdpEcho(name: string, opts: UdpEchoOptions = {}): Promise<UdpEcho> {
  const host = opts.host ?? '127.0.0.1'
  const reply = opts.reply ?? tagged
  const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4')
  let closed: Promise<void> | undefined
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(opts.port ?? 0, host, () => {
      socket.off('error', reject)
      resolve()
    })
  })
  if (opts.bufferSize) tuneBuffers(socket, opts.bufferSize)
  const port = socket.address().port
  const server: UdpEcho = {
    name, host, port, address: endpoint(host, port), received: [], badHeaders: 0,
    sources: () => new Set(server.received.map((d) => d.from)),
    close: () => (closed ??= new Promise<void>((resolve) => socket.close(() => resolve()))),
  }
  socket.on('error', () => undefined)
  socket.on('message', (msg, rinfo) => {
    const d = datagram(msg, rinfo, opts.proxyProtocol ?? false)
    if (!d) return void server.badHeaders++
    server.received.push(d)
    const out = reply(d, server)
    if (out && !closed) socket.send(out, rinfo.port, rinfo.address)
  })
  return server
}

function datagram(msg: Buffer, rinfo: dgram.RemoteInfo, proxyProtocol: boolean): Datagram | undefined {
  const base = {from: endpoint(rinfo.address, rinfo.port), address: rinfo.address, port: rinfo.port}
  if (!proxyProtocol) return {...base, payload: msg}
  try {
    // proxy-protocol.txt §2.2: over DGRAM every datagram carries a whole header, never a partial one.
    const header = decodeProxyHeader(msg)
    return header ? {...base, header, payload: msg.subarray(header.length)} : undefined
  } catch {
    return undefined
  }
}

export interface UdpClientOptions {
  /** Loopback source to bind (127.0.0.x or ::1). */
  local?: string
  localPort?: number
  bufferSize?: number
}

/** A client socket with a reply queue: `next()` resolves with the next datagram that arrives. */
export class UdpClient {
  readonly socket: dgram.Socket
  readonly replies: Datagram[] = []
  private readonly waiters: Array<(d: Datagram) => void> = []
  private read = 0
  private closed?: Promise<void>

  private constructor(socket: dgram.Socket) {
    this.socket = socket
    socket.on('error', () => undefined)
    socket.on('message', (msg, rinfo) => {
      const d: Datagram = {payload: msg, from: endpoint(rinfo.address, rinfo.port), address: rinfo.address, port: rinfo.port}
      this.replies.push(d)
      this.waiters.shift()?.(d)
    })
  }

  static async open(opts: UdpClientOptions = {}): Promise<UdpClient> {
    const local = opts.local ?? '127.0.0.1'
    const socket = dgram.createSocket(local.includes(':') ? 'udp6' : 'udp4')
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(opts.localPort ?? 0, local, () => {
        socket.off('error', reject)
        resolve()
      })
    })
    if (opts.bufferSize) tuneBuffers(socket, opts.bufferSize)
    return new UdpClient(socket)
  }

  get port(): number {
    return this.socket.address().port
  }

  send(payload: Buffer | string, port: number, host = '127.0.0.1'): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(payload, port, host, (e) => (e ? reject(e) : resolve())))
  }

  /** The next reply not yet consumed by next(); rejects after timeoutMs. */
  next(timeoutMs = 3000): Promise<Datagram> {
    if (this.read < this.replies.length) return Promise.resolve(this.replies[this.read++])
    return new Promise((resolve, reject) => {
      const waiter = (d: Datagram): void => {
        clearTimeout(timer)
        this.read++
        resolve(d)
      }
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter)
        if (i >= 0) this.waiters.splice(i, 1)
        reject(new Error(`no UDP reply within ${timeoutMs}ms on ${endpoint(this.socket.address().address, this.port)}`))
      }, timeoutMs)
      this.waiters.push(waiter)
    })
  }

  /** Sends one datagram and waits for the next reply. */
  async request(payload: Buffer | string, port: number, host = '127.0.0.1', timeoutMs = 3000): Promise<Datagram> {
    const reply = this.next(timeoutMs)
    await this.send(payload, port, host)
    return reply
  }

  close(): Promise<void> {
    return (this.closed ??= new Promise<void>((resolve) => this.socket.close(() => resolve())))
  }
}

function tuneBuffers(socket: dgram.Socket, size: number): void {
  socket.setRecvBufferSize(size)
  socket.setSendBufferSize(size)
}

function endpoint(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`
}
