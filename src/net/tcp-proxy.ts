/**
 * TcpProxy: one TCP listener. Accepts a client, asks the router where it goes, connects to that
 * server (PROXY header first when the backend wants one) and moves bytes both ways with Node's own
 * back-pressure (pipe), passing half-closes through and turning a reset on one side into a reset on
 * the other.
 *
 *   client ⇄ TcpProxy ⇄ server; taps observe (only sessions that have taps pay per-chunk work)
 */
import net from 'node:net'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import type {ListenerConfig} from '../config/types.js'
import type {Server} from '../backends/backend.js'
import {encodeProxyV1, encodeProxyV2} from '../backends/proxy-protocol.js'
import {isRefusal, type Decision, type Router} from '../rules/router.js'
import type {Session, SessionRegistry, SessionTransport} from '../session/registry.js'
import type {CloseCause, Peer, SessionMeta, Tap} from '../session/types.js'
import {endpointPeer, remotePeer, localPeer, tcpConnector, type Connector} from './connector.js'
import {endpointString, formatEndpoint} from './endpoint.js'
import {RefusalLog} from './refusals.js'
import {Admission, type GlobalLimit} from './limits.js'

export interface ProxyContext {
  router: Router
  registry: SessionRegistry
  logger: Logger
  connect?: Connector
  /** Builds the mirror/record taps a decision asks for. */
  tapsFor?: (decision: Decision, meta: SessionMeta) => Tap | undefined
  /** The session cap over all listeners (`limits.max_connections`). */
  global?: GlobalLimit
  /** Counts sessions refused (no server, limits) per listener, for /metrics. */
  onRefused?: (listener: string, reason: string) => void
}

export class TcpProxy {
  /** Replaced on reload when only options changed (same bind, same protocol). */
  config: ListenerConfig
  private readonly ctx: ProxyContext
  private readonly server: net.Server
  private readonly connect: Connector
  private readonly refusals: RefusalLog
  /** @internal global, per-listener and per-source limits; TcpConnection releases its slot. */
  readonly admission: Admission

  constructor(config: ListenerConfig, ctx: ProxyContext) {
    this.config = config
    this.ctx = ctx
    this.connect = ctx.connect ?? tcpConnector
    this.server = net.createServer({allowHalfOpen: true, noDelay: true}, (socket) => this.accept(socket))
    this.server.on('error', (error) => ctx.logger.error({err: error, listener: config.name}, 'listener error'))
    this.refusals = new RefusalLog(config.name, ctx.logger, Date.now, ctx.onRefused)
    this.admission = new Admission(() => this.config, ctx.global ?? {live: 0, max: 0}, Date.now)
  }

  /** The coarse tick's work for this listener: forget idle per-source limit state. */
  sweep(): void {
    this.admission.sweep()
  }

  /** Binds the listener; a port in use or a permission error names the address. */
  listen(): Promise<void> {
    const {bind, name} = this.config
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        reject(new DivertError('LISTEN_FAILED', `listener ${name} cannot bind ${endpointString(bind)}: ${describeListenError(error)}`, {cause: error}))
      }
      this.server.once('error', onError)
      // ipv6Only false: "[::]:port" is dual stack, as DESIGN.md §4 promises.
      this.server.listen({host: bind.host, port: bind.port, ipv6Only: false, backlog: 1024}, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
  }

  address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo
  }

  /**
   * Stops accepting; live sessions go on (the daemon drains them). Resolves once the listening
   * socket is closed — not when the last connection ends, which is what net.Server's callback waits for.
   */
  async close(): Promise<void> {
    if (this.server.listening) this.server.close()
  }

  private accept(client: net.Socket): void {
    client.on('error', noop) // replaced by the connection's handler; guards the refusal path
    const peer = remotePeer(client)
    if (!peer) return void client.destroy()
    const limited = this.admission.admit(peer.address)
    if (limited) return this.refuse(client, peer, limited)
    const decision = this.ctx.router.decide(this.config, peer.address)
    if (isRefusal(decision)) {
      this.admission.release(peer.address)
      return this.refuse(client, peer, decision.refused, decision.rule?.id)
    }
    if (decision.fallbackFrom) {
      this.ctx.logger.warn({listener: this.config.name, client: formatEndpoint(peer.address, peer.port), rule: decision.rule?.id ?? null, from: decision.fallbackFrom, to: decision.backend.name}, 'backend down: falling back to the default backend')
    }
    new TcpConnection(this, client, peer, decision)
  }

  private refuse(client: net.Socket, peer: Peer, reason: string, rule?: string): void {
    this.refusals.refuse(peer, reason, rule)
    client.destroy()
  }

  /** @internal used by TcpConnection */
  get context(): ProxyContext {
    return this.ctx
  }

  /** @internal */
  get connector(): Connector {
    return this.connect
  }
}

/** One proxied connection: both sockets, the session record and how it ended. */
class TcpConnection implements SessionTransport {
  private readonly upstream: net.Socket
  private readonly session: Session
  private readonly tap?: Tap
  private readonly server: Server
  private readonly ctx: ProxyContext
  private cause?: CloseCause
  private reset = false
  private connected = false
  private open = 2
  private error?: string
  /** Who half-closed first: the cause of a clean end. */
  private firstFin?: CloseCause

  constructor(private readonly proxy: TcpProxy, private readonly client: net.Socket, peer: Peer, decision: Decision) {
    this.ctx = proxy.context
    this.server = decision.server
    this.server.acquire()
    const backend = decision.backend
    const serverPeer = endpointPeer(this.server.address)
    this.upstream = proxy.connector(this.server.address)
    this.session = this.ctx.registry.add({
      protocol: 'tcp', listener: proxy.config.name, client: peer, backend: backend.name, server: serverPeer,
      rule: decision.rule?.id, transport: this,
    })
    const local = localPeer(client) ?? peer
    const meta: SessionMeta = {id: this.session.id, protocol: 'tcp', listener: proxy.config.name, backend: backend.name, rule: decision.rule?.id, client: peer, server: serverPeer, local, startedAt: this.session.startedAt}
    this.tap = this.ctx.tapsFor?.(decision, meta)
    if (this.tap) this.session.taps = [this.tap]

    const pp = backend.config.proxyProtocol
    if (pp) this.upstream.write(proxyHeader(pp, peer, local))
    this.upstream.setTimeout(backend.config.connectTimeoutMs)
    this.wire()
  }

  private wire(): void {
    const {client, upstream} = this
    client.removeListener('error', noop)
    upstream.once('connect', () => {
      this.connected = true
      upstream.setTimeout(0)
    })
    upstream.on('timeout', () => this.onConnectTimeout())
    client.on('error', (e: NodeJS.ErrnoException) => this.onError('client', e))
    upstream.on('error', (e: NodeJS.ErrnoException) => this.onError('server', e))
    client.on('end', () => {
      this.firstFin ??= 'client-closed'
      this.tap?.clientEnd?.()
    })
    upstream.on('end', () => {
      this.firstFin ??= 'server-closed'
      this.tap?.serverEnd?.()
    })
    if (this.tap) {
      const tap = this.tap
      client.on('data', (chunk: Buffer) => tap.clientData?.(chunk))
      upstream.on('data', (chunk: Buffer) => tap.serverData?.(chunk))
    }
    client.on('close', () => this.onSocketClose())
    upstream.on('close', () => this.onSocketClose())
    // pipe() gives back-pressure both ways and ends the other side on FIN (half-close passes through).
    client.pipe(upstream)
    upstream.pipe(client)
  }

  private onConnectTimeout(): void {
    if (this.connected) return
    this.end('connect-timeout', true, `no connection to ${this.server.key} within ${this.upstream.timeout}ms`)
  }

  private onError(side: 'client' | 'server', e: NodeJS.ErrnoException): void {
    if (side === 'server' && !this.connected) {
      const cause: CloseCause = e.code === 'ECONNREFUSED' ? 'connect-refused' : 'connect-failed'
      return this.end(cause, true, `${e.code ?? 'error'} connecting to ${this.server.key}`)
    }
    const resetCause = side === 'client' ? 'client-reset' : 'server-reset'
    const errorCause = side === 'client' ? 'client-error' : 'server-error'
    this.end(e.code === 'ECONNRESET' ? resetCause : errorCause, true, `${side} ${e.code ?? e.message}`)
  }

  /** Abortive end: the other side gets a reset, so an error is never mistaken for a clean close. */
  private end(cause: CloseCause, reset: boolean, error?: string): void {
    if (!this.cause) {
      this.cause = cause
      this.reset = reset
      this.error = error
    }
    for (const s of [this.client, this.upstream]) {
      if (s.destroyed) continue
      if (reset && typeof s.resetAndDestroy === 'function' && s.readyState !== 'opening') s.resetAndDestroy()
      else s.destroy()
    }
  }

  private onSocketClose(): void {
    if (--this.open > 0) return
    this.proxy.admission.release(this.session.client.address)
    this.server.release()
    const cause = this.cause ?? this.firstFin ?? 'client-closed'
    this.ctx.registry.close(this.session, cause, this.reset, this.error ? {error: this.error} : undefined)
  }

  // SessionTransport
  bytesIn(): number {
    return this.client.bytesRead
  }

  bytesOut(): number {
    return this.client.bytesWritten
  }

  kill(cause: CloseCause): void {
    this.end(cause, false)
  }
}

function proxyHeader(version: 'v1' | 'v2', client: Peer, local: Peer): Buffer {
  return version === 'v1' ? encodeProxyV1(client, local) : encodeProxyV2(client, local, 'stream')
}

function describeListenError(error: NodeJS.ErrnoException): string {
  switch (error.code) {
    case 'EADDRINUSE': return 'the address is already in use (another divert, or another program, listens there)'
    case 'EACCES': return 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)'
    case 'EADDRNOTAVAIL': return 'no local interface has that address'
    default: return error.message
  }
}

function noop(): void {}
