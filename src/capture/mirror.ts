/**
 * The mirror tap: copies what one session's client sends to a server of a mirror backend, on its
 * own connection (TCP) or connected socket (UDP). Replies are read and thrown away.
 *
 *   client ─▶ proxy ─▶ server
 *               └─ MirrorTap ─▶ mirror server (bounded buffer; overflow or failure drops the copy, never the session)
 */
import dgram from 'node:dgram'
import net from 'node:net'
import pino, {type Logger} from 'pino'
import {encodeProxyV1, encodeProxyV2} from '../backends/proxy-protocol.js'
import type {ProxyProtocolVersion} from '../config/types.js'
import {formatAddress, type Address} from '../addr/address.js'
import {defaultSockets} from '../net/sockets.js'
import type {CloseCause, SessionMeta, Tap} from '../session/types.js'

export type MirrorState = 'connecting' | 'active' | 'overflow' | 'failed' | 'closed'

export interface MirrorTarget {
  backend: string
  server: Address
  proxyProtocol?: ProxyProtocolVersion
}

export interface MirrorOptions {
  /** Bytes the mirror may hold that its kernel socket has not taken yet (while connecting, too). */
  bufferBytes: number
  /** Where the mirror's sockets come from: the daemon passes its socket factory with the mirror backend's options. */
  connect?: (ep: Address) => net.Socket
  udpSocket?: (family: 4 | 6) => dgram.Socket
  logger?: Logger
  /** Told about every byte the mirror drops (for metrics). */
  onDrop?: (bytes: number) => void
  /** TCP: give up connecting after this long; also the grace to flush after a clean close (default 5 s). */
  connectTimeoutMs?: number
  /**
   * PROXY header destination: the address the client connected to. SessionMeta does not carry the
   * listener's local address, so the default is the session's server.
   */
  local?: Pick<Address, 'address' | 'port'>
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000
/** One shared disabled logger: building a pino instance per session would cost more than the session. */
const SILENT = pino({enabled: false})

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? 'ERROR'
}

/** Builds the mirror tap of one session; never throws (a mirror that cannot start reports 'failed'). */
export function createMirrorTap(meta: SessionMeta, target: MirrorTarget, opts: MirrorOptions): Tap {
  const mirror = meta.protocol === 'udp' ? new UdpMirror(meta, target, opts) : new TcpMirror(meta, target, opts)
  return mirror.tap()
}

/**
 * The mirror tap of a session whose mirror backend has no server up when the session starts: it
 * counts what would have been copied and shows `failed`, so `divert sessions` tells the user the
 * mirror is not working instead of showing nothing.
 */
export function createUnavailableMirrorTap(backend: string, opts: Pick<MirrorOptions, 'onDrop'> = {}): Tap {
  let dropped = 0
  const drop = (chunk: Buffer): void => {
    dropped += chunk.length
    opts.onDrop?.(chunk.length)
  }
  return {
    clientData: drop,
    describe: () => ({mirror: {backend, server: null, state: 'failed' satisfies MirrorState, bytes: 0, dropped, error: 'NO_SERVER'}}),
  }
}

abstract class Mirror {
  protected state: MirrorState = 'connecting'
  protected bytes = 0
  protected dropped = 0
  protected error?: string
  protected readonly logger: Logger

  constructor(protected readonly meta: SessionMeta, protected readonly target: MirrorTarget, protected readonly opts: MirrorOptions) {
    this.logger = opts.logger ?? SILENT
  }

  abstract tap(): Tap

  protected get live(): boolean {
    return this.state === 'connecting' || this.state === 'active'
  }

  describe(): Record<string, unknown> {
    const error = this.error === undefined ? {} : {error: this.error}
    return {mirror: {backend: this.target.backend, server: formatAddress(this.target.server), state: this.state, bytes: this.bytes, dropped: this.dropped, ...error}}
  }

  protected drop(bytes: number): void {
    if (bytes === 0) return
    this.dropped += bytes
    this.opts.onDrop?.(bytes)
  }

  protected proxyHeader(transport: 'stream' | 'dgram'): Buffer | undefined {
    const version = this.target.proxyProtocol
    if (!version) return undefined
    const src = {address: this.meta.client.address, port: this.meta.client.port}
    const dst = this.opts.local ?? {address: this.meta.server.address, port: this.meta.server.port}
    return version === 'v1' ? encodeProxyV1(src, dst) : encodeProxyV2(src, dst, transport)
  }

  /** Stops mirroring this session after an error; the session itself is not touched. */
  protected fail(code: string, err?: unknown): void {
    if (!this.live) return
    this.state = 'failed'
    this.error = code
    this.logger.warn({err, session: this.meta.id, backend: this.target.backend, server: formatAddress(this.target.server)}, `mirror failed: ${code}; this session is no longer mirrored`)
  }

  /** Tap methods run on the proxy's data path: a bug here costs the copy, never the session. */
  protected guard(fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.fail(errorCode(err), err)
      this.onGuardFailure()
    }
  }

  protected abstract onGuardFailure(): void
}

class TcpMirror extends Mirror {
  private socket?: net.Socket
  private timer?: NodeJS.Timeout
  private ended = false

  tap(): Tap {
    this.guard(() => this.open())
    return {
      clientData: (chunk) => this.guard(() => this.write(chunk)),
      clientEnd: () => this.guard(() => this.end()),
      close: (cause, reset) => this.guard(() => this.close(cause, reset)),
      describe: () => this.describe(),
    }
  }

  private open(): void {
    const socket = this.opts.connect ? this.opts.connect(this.target.server) : defaultSockets.tcp(this.target.server)
    this.socket = socket
    socket.on('error', (err) => this.fail(errorCode(err), err))
    socket.once('connect', () => this.onConnect())
    socket.on('close', () => this.onClose())
    // Factory sockets allow half-open (the proxy needs it); a mirror has nothing to say after the server's FIN.
    socket.on('end', () => socket.end())
    socket.setNoDelay(true)
    // Replies are discarded: reading them keeps the mirror server from blocking on a full window.
    socket.resume()
    this.arm(this.opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, () => this.state === 'connecting' && this.abort('ETIMEDOUT'))
    const header = this.proxyHeader('stream')
    if (header) socket.write(header)
  }

  private onConnect(): void {
    this.disarm()
    if (this.state === 'connecting') this.state = 'active'
  }

  private onClose(): void {
    this.disarm()
    if (!this.live) return
    if (this.ended) this.state = 'closed'
    else this.fail('EOF')
  }

  private write(chunk: Buffer): void {
    const socket = this.socket
    if (!this.live || !socket || !socket.writable) return this.drop(chunk.length)
    // writableLength counts what Node holds for the kernel, including writes made while connecting.
    if (socket.writableLength + chunk.length > this.opts.bufferBytes) return this.overflow(chunk.length)
    // Counted when the kernel takes the bytes; a destroyed socket calls back with an error: dropped.
    const n = chunk.length
    socket.write(chunk, (err) => (err ? this.drop(n) : (this.bytes += n)))
  }

  private overflow(bytes: number): void {
    this.state = 'overflow'
    this.socket?.destroy()
    this.drop(bytes)
    this.logger.warn({session: this.meta.id, backend: this.target.backend, server: formatAddress(this.target.server), bufferBytes: this.opts.bufferBytes}, 'mirror overflow: the mirror server reads too slowly; this session is no longer mirrored')
  }

  private end(): void {
    this.ended = true
    if (this.live) this.socket?.end()
  }

  /**
   * A reset session resets the mirror too. After a clean close the mirror keeps its FIN-terminated
   * connection a short while, so bytes still queued (e.g. while connecting) reach the mirror server.
   */
  private close(_cause: CloseCause, reset: boolean): void {
    const socket = this.socket
    const wasLive = this.live
    if (wasLive) this.state = 'closed'
    if (!socket || socket.destroyed) return
    if (reset || !wasLive || socket.writableLength === 0) {
      this.disarm()
      socket.destroy()
      return
    }
    this.ended = true
    socket.end()
    this.arm(this.opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS, () => socket.destroy())
  }

  private abort(code: string): void {
    this.fail(code)
    this.socket?.destroy()
  }

  protected onGuardFailure(): void {
    this.disarm()
    this.socket?.destroy()
  }

  private arm(ms: number, fn: () => void): void {
    this.disarm()
    this.timer = setTimeout(fn, ms)
    this.timer.unref()
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
  }
}

class UdpMirror extends Mirror {
  private socket?: dgram.Socket
  /** Datagrams sent before the socket finished connecting (dgram refuses portless sends until then). */
  private pending: Buffer[] = []
  /** Bytes queued here or handed to send() and not yet called back. */
  private held = 0
  private header?: Buffer

  tap(): Tap {
    this.guard(() => this.open())
    return {
      clientData: (chunk) => this.guard(() => this.datagram(chunk)),
      close: () => this.guard(() => this.close()),
      describe: () => this.describe(),
    }
  }

  private open(): void {
    // PROXY v1 has no UDP form (proxy-protocol.txt §2.1); v2 prefixes every datagram (§2.2).
    this.header = this.target.proxyProtocol === 'v2' ? this.proxyHeader('dgram') : undefined
    const family = this.target.server.family
    const socket = this.opts.udpSocket ? this.opts.udpSocket(family) : defaultSockets.udp(this.target.server)
    this.socket = socket
    // ICMP port unreachable surfaces here on a connected socket: note it, keep mirroring.
    socket.on('error', (err) => this.onError(err))
    socket.connect(this.target.server.port, this.target.server.address, () => this.onConnect())
  }

  private onConnect(): void {
    if (this.state !== 'connecting') return
    this.state = 'active'
    const queued = this.pending
    this.pending = []
    for (const d of queued) {
      this.held -= d.length
      this.send(d)
    }
  }

  private onError(err: Error): void {
    if (this.state === 'connecting') {
      this.fail(errorCode(err), err)
      this.drop(this.held)
      this.pending = []
      this.held = 0
      return
    }
    this.error = errorCode(err)
  }

  private datagram(chunk: Buffer): void {
    if (!this.live || this.held + chunk.length > this.opts.bufferBytes) return this.drop(chunk.length)
    if (this.state === 'active') return this.send(chunk)
    this.pending.push(chunk)
    this.held += chunk.length
  }

  private send(chunk: Buffer): void {
    const n = chunk.length
    this.held += n
    const done = (err: Error | null): void => {
      this.held -= n
      if (err) {
        this.error = errorCode(err)
        this.drop(n)
      } else this.bytes += n
    }
    this.socket!.send(this.header ? [this.header, chunk] : chunk, done)
  }

  private close(): void {
    if (this.live) this.state = 'closed'
    this.drop(this.pending.reduce((n, d) => n + d.length, 0))
    this.pending = []
    this.closeSocket()
  }

  protected onGuardFailure(): void {
    this.closeSocket()
  }

  private closeSocket(): void {
    const socket = this.socket
    this.socket = undefined
    try {
      socket?.close()
    } catch {
      // already closed
    }
  }
}
