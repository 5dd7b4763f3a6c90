/**
 * TcpProxy: one TCP listener. Accepts a client, asks the router where it goes, connects to that
 * server (PROXY header first when the backend wants one) and moves bytes both ways with
 * back-pressure (a full socket buffer pauses the other side's reads until 'drain'), passing half-closes
 * through and turning a reset on one side into a reset on the other.
 *
 *   client ⇄ TcpProxy ⇄ server; taps observe (only sessions that have taps pay per-chunk work)
 */
import net from 'node:net'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import {realClock, type Clock} from '../clock.js'
import {DEFAULTS, type ListenerConfig} from '../config/types.js'
import type {Server} from '../backends/backend.js'
import {encodeProxyV1, encodeProxyV2} from '../backends/proxy-protocol.js'
import {isRefusal, type Decision, type Router} from '../rules/router.js'
import type {Session, SessionRegistry, SessionTransport} from '../session/registry.js'
import type {CloseCause, SessionMeta, Tap} from '../session/types.js'
import {ConnectDeadlines, type DeadlineList, type DeadlineWaiter} from './connector.js'
import {defaultSockets, type SocketFactory} from './sockets.js'
import {formatAddress, localOf, remoteOf, type Address} from '../addr/address.js'
import {RefusalLog} from './refusals.js'
import {Admission, type GlobalLimit} from './limits.js'
import {bytesFrom, type FastPath, type Splice} from '../fastpath/splice.js'
import {transparentFd} from './transparent.js'
import {abort} from './reset.js'

export interface ProxyContext {
  router: Router
  registry: SessionRegistry
  logger: Logger
  /** Where upstream sockets come from (the daemon's one factory; default: Node's own connect). */
  sockets?: SocketFactory
  /** Builds the mirror/record taps a decision asks for. */
  tapsFor?: (decision: Decision, meta: SessionMeta) => Tap | undefined
  /** The session cap over all listeners (`limits.max_connections`). */
  global?: GlobalLimit
  /** Counts sessions refused (no server, limits) per listener, for /metrics. */
  onRefused?: (listener: string, reason: string) => void
  /** The daemon's clock (connect deadlines, rate limits, refusal log); realClock when absent. */
  clock?: Clock
  /** The kernel fast path (`fast_path: auto` and the kernel allows it): untapped sessions are spliced. */
  fastPath?: FastPath
}

/**
 * Bytes (both ways) a session moves through divert before it is handed to the kernel. Splicing and
 * releasing a pair cost 3–4× the CPU of proxying 64 KiB through Node (measured, README "Kernel fast
 * path"), so the hand-over waits until the session has moved about what a splice costs: a session
 * that ends right after it pays at most twice the cheaper choice, and short request/response
 * sessions never pay at all.
 */
export const SPLICE_AFTER_BYTES = 256 * 1024
/** While divert still holds bytes of the session (or the kernel does, unread), the next try waits this many. */
const SPLICE_RETRY_BYTES = 4 * 1024

export class TcpProxy {
  /** Replaced on reload when only options changed (same bind, same protocol). */
  config: ListenerConfig
  private readonly ctx: ProxyContext
  private readonly server: net.Server
  /** @internal every upstream socket of this listener comes from here. */
  readonly sockets: SocketFactory
  private readonly refusals: RefusalLog
  /** @internal global, per-listener and per-source limits; TcpConnection releases its slot. */
  readonly admission: Admission
  /** @internal connect timeouts of this listener's pending upstream connections. */
  readonly deadlines: ConnectDeadlines

  constructor(config: ListenerConfig, ctx: ProxyContext) {
    this.config = config
    this.ctx = ctx
    this.sockets = ctx.sockets ?? defaultSockets
    this.server = net.createServer({allowHalfOpen: true, noDelay: true}, (socket) => this.accept(socket))
    this.server.on('error', (error: NodeJS.ErrnoException) => this.onServerError(error))
    const clock = ctx.clock ?? realClock
    this.deadlines = new ConnectDeadlines(clock)
    this.refusals = new RefusalLog(config.name, ctx.logger, clock.now, ctx.onRefused)
    this.admission = new Admission(() => this.config, ctx.global ?? {live: 0, max: 0}, clock.now, 2)
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
        reject(new DivertError('LISTEN_FAILED', `listener ${name} cannot bind ${formatAddress(bind)}: ${describeListenError(error)}`, {cause: error}))
      }
      this.server.once('error', onError)
      // ipv6Only false: "[::]:port" is dual stack, as the README's config reference promises.
      const where = this.config.transparent ? {fd: transparentFd(this.config)} : {host: bind.address, port: bind.port, ipv6Only: false}
      this.server.listen({...where, backlog: 1024}, () => {
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
    client.on('error', onClientError) // before any refusal: an error on an unowned socket is ignored
    const peer = remoteOf(client)
    if (!peer) return void client.destroy()
    const limited = this.admission.admit(peer.address)
    if (limited) return this.refuse(client, peer, limited)
    // On a transparent listener the local side of the connection is where the client's SYN was addressed.
    const destination = this.config.transparent ? localOf(client) : undefined
    const decision = this.ctx.router.decide(this.config, peer.address, destination ? {destination} : undefined)
    if (isRefusal(decision)) {
      this.admission.release(peer.address)
      return this.refuse(client, peer, decision.refused, decision.rule?.id)
    }
    if (decision.fallbackFrom) {
      this.ctx.logger.warn({listener: this.config.name, client: formatAddress(peer), rule: decision.rule?.id ?? null, from: decision.fallbackFrom, to: decision.backend.name}, 'backend down: falling back to the default backend')
    }
    new TcpConnection(this, client, peer, decision, destination)
  }

  /**
   * accept(2) out of descriptors is a refused client, counted and logged like one (at most once per
   * interval), not an error line per attempt. libuv first closes the pending connections through its
   * spare descriptor (uv__emfile_trick in src/unix/stream.c) — those Node never reports; only when
   * that spare is gone too does the error reach 'error' here.
   */
  private onServerError(error: NodeJS.ErrnoException): void {
    if (error.code === 'EMFILE' || error.code === 'ENFILE') return this.refusals.refuse(undefined, `accept failed: ${error.code} (out of file descriptors)`)
    this.ctx.logger.error({err: error, listener: this.config.name}, 'listener error')
  }

  private refuse(client: net.Socket, peer: Address, reason: string, rule?: string): void {
    this.refusals.refuse(peer, reason, rule)
    client.destroy()
  }

  /** @internal used by TcpConnection */
  get context(): ProxyContext {
    return this.ctx
  }
}

/**
 * One proxied connection: both sockets, the session record and how it ended. Its event handlers are
 * module-level functions that find the connection through a symbol on the socket, so a connection
 * costs one object and no closures (a pipe() pair cost ~30 closures and once-wrappers per connection;
 * with them gone and a shared connect-deadline list, idle RSS fell from 13.4 to 6.4 KB per connection).
 */
class TcpConnection implements SessionTransport, DeadlineWaiter {
  readonly upstream: net.Socket
  readonly session: Session
  tap?: Tap
  private readonly server: Server
  private cause?: CloseCause
  private reset = false
  connected = false
  private open = 2
  private error?: string
  /** Who half-closed first: the cause of a clean end. */
  firstFin?: CloseCause
  /** The kernel moves this session's bytes (src/fastpath); `untilSplice` counts down to the attempt. */
  spliced?: Splice
  untilSplice = Infinity
  // DeadlineWaiter: links in the listener's connect-deadline list.
  deadlineAt = 0
  deadlineNext?: DeadlineWaiter = undefined
  deadlinePrev?: DeadlineWaiter = undefined
  deadlineList?: DeadlineList = undefined

  constructor(private readonly proxy: TcpProxy, readonly client: net.Socket, peer: Address, decision: Decision, destination?: Address) {
    const ctx = proxy.context
    const server = (this.server = decision.server)
    server.acquire()
    const backend = decision.backend
    const upstream = (this.upstream = proxy.sockets.tcp(server.address, backend.config, peer))
    const serverPeer = server.address
    this.session = ctx.registry.add({
      protocol: 'tcp', listener: proxy.config.name, client: peer, backend: backend.name, server: serverPeer,
      rule: decision.rule?.id, transport: this, destination,
    })
    const pp = backend.config.proxyProtocol
    // The listener address is a getsockname() away: only a PROXY header or a tap needs it.
    const wantsTaps = ctx.tapsFor !== undefined && (decision.mirror !== undefined || decision.record !== undefined)
    if (pp || wantsTaps) {
      const local = localOf(client) ?? peer
      if (wantsTaps) this.attachTaps(decision, peer, serverPeer, local)
      if (pp) upstream.write(proxyHeader(pp, peer, local))
    }
    if (backend.config.connectTimeoutMs > 0) proxy.deadlines.start(this, backend.config.connectTimeoutMs)
    keepAlive(client, proxy.config.keepaliveMs)
    if (ctx.fastPath && !this.tap) this.untilSplice = SPLICE_AFTER_BYTES
    wire(this, client, upstream)
  }

  /**
   * The one hand-over point (called from the untapped data handlers once the session moved
   * SPLICE_AFTER_BYTES): with both sockets connected, nothing buffered in divert and no tap, the
   * kernel takes the bytes from here (src/fastpath/splice.ts says how order is kept).
   */
  trySplice(): void {
    const fast = this.proxy.context.fastPath
    this.untilSplice = Infinity
    if (!fast || this.tap || this.firstFin || this.cause || !this.connected) return
    const spliced = fast.splice(this.client, this.upstream, (s) => this.peerReset(s))
    if (spliced === 'later') this.untilSplice = SPLICE_RETRY_BYTES
    else this.spliced = spliced
  }

  private attachTaps(decision: Decision, client: Address, server: Address, local: Address): void {
    const s = this.session
    const meta: SessionMeta = {id: s.id, protocol: 'tcp', listener: s.listener, backend: s.backend, rule: s.rule, client, server, local, startedAt: s.startedAt}
    this.tap = this.proxy.context.tapsFor?.(decision, meta)
    if (this.tap) s.taps = [this.tap]
  }

  /** A tap given mid-session (a rule added): an untapped connection switches to the tapped handlers. */
  setTap(tap: Tap): void {
    this.untilSplice = Infinity
    this.spliced?.takeBack()
    if (!this.tap) {
      swapListener(this.client, 'data', onClientData, onClientDataTapped)
      swapListener(this.upstream, 'data', onServerData, onServerDataTapped)
    }
    this.tap = tap
    this.session.taps = [tap]
  }

  onConnected(): void {
    this.connected = true
    this.proxy.deadlines.connectDone(this)
    this.proxy.context.registry.connected(this.session)
  }

  onConnectDeadline(timeoutMs: number): void {
    if (this.connected || this.upstream.destroyed) return
    this.end('connect-timeout', true, `no connection to ${this.server.key} within ${timeoutMs}ms`)
  }

  onError(side: 'client' | 'server', e: NodeJS.ErrnoException): void {
    // ECONNRESET before 'connect' was seen: the server accepted and reset at once (libuv reads the
    // reset through SO_ERROR as the connect's result), so it is the server's reset, not a failed connect.
    if (side === 'server' && !this.connected && e.code !== 'ECONNRESET') {
      const cause: CloseCause = e.code === 'ECONNREFUSED' ? 'connect-refused' : 'connect-failed'
      // A socket the factory could not prepare names the call that failed (bind …, setsockopt …).
      const step = e.syscall && e.syscall !== 'connect' ? ` (${e.syscall})` : ''
      return this.end(cause, true, `${e.code ?? 'error'} connecting to ${this.server.key}${step}`)
    }
    const resetCause = side === 'client' ? 'client-reset' : 'server-reset'
    const errorCause = side === 'client' ? 'client-error' : 'server-error'
    this.end(isReset(e) ? resetCause : errorCause, true, `${side} ${e.code ?? e.message}`)
  }

  /** The kernel found `s` reset while it sent to it (Splice): the same end as a reset Node reports. */
  peerReset(s: net.Socket): void {
    const side = s === this.client ? 'client' : 'server'
    this.end(side === 'client' ? 'client-reset' : 'server-reset', true, `${side} ECONNRESET (seen by the kernel fast path)`)
  }

  /** Abortive end: the other side gets a reset, so an error is never mistaken for a clean close. */
  private end(cause: CloseCause, reset: boolean, error?: string): void {
    if (!this.cause) {
      this.cause = cause
      this.reset = reset
      this.error = error
      this.spliced?.freeze()
    }
    abort(this.client, reset)
    abort(this.upstream, reset)
  }

  onSocketClose(): void {
    this.proxy.deadlines.connectDone(this)
    if (--this.open > 0) return
    this.proxy.admission.release(this.session.client.address)
    this.server.release()
    const cause = this.cause ?? this.firstFin ?? 'client-closed'
    this.proxy.context.registry.close(this.session, cause, this.reset, this.error ? {error: this.error} : undefined)
    this.spliced?.release()
  }

  // SessionTransport
  bytesIn(): number {
    return bytesFrom(this.client, this.spliced)
  }

  bytesOut(): number {
    return this.spliced ? this.spliced.sent(this.client) : this.client.bytesWritten
  }

  kill(cause: CloseCause): void {
    this.end(cause, false)
  }

  kernel(): boolean {
    return this.spliced?.inKernel ?? false
  }
}

/**
 * SO_KEEPALIVE with this idle time: a peer that vanished (NAT state dropped, host gone) would
 * otherwise hold both of the session's fds forever. Node 20's libuv then probes every 1 s, 10 times
 * (uv__tcp_keepalive). On an upstream socket still connecting, Node applies it after 'connect'.
 */
function keepAlive(s: net.Socket, ms = DEFAULTS.keepaliveMs): void {
  if (ms > 0) s.setKeepAlive(true, ms)
}

/**
 * ECONNRESET, or EPIPE from a write: divert never writes after its own FIN, so EPIPE means the
 * peer's reset was already reported to an earlier call (tcp(7); sk_err is read once).
 */
function isReset(e: NodeJS.ErrnoException): boolean {
  return e.code === 'ECONNRESET' || (e.code === 'EPIPE' && e.syscall === 'write')
}

const CONN = Symbol('divert.tcpConnection')
type Owned = net.Socket & {[CONN]: TcpConnection}

function owner(s: net.Socket): TcpConnection {
  return (s as Owned)[CONN]
}

/**
 * The event handlers of both sockets. Half-close passes through: a FIN read on one side ends the
 * other side's writable half (allowHalfOpen keeps the rest open, RFC 9293 §3.6).
 */
function wire(c: TcpConnection, client: net.Socket, upstream: net.Socket): void {
  ;(client as Owned)[CONN] = c
  ;(upstream as Owned)[CONN] = c
  upstream.on('error', onServerError)
  upstream.on('connect', onConnect)
  client.on('data', c.tap ? onClientDataTapped : onClientData)
  upstream.on('data', c.tap ? onServerDataTapped : onServerData)
  client.on('drain', onDrainResumeOther)
  upstream.on('drain', onDrainResumeOther)
  client.on('end', onClientEnd)
  upstream.on('end', onServerEnd)
  client.on('close', onClose)
  upstream.on('close', onClose)
}

function swapListener(s: net.Socket, event: string, from: (this: net.Socket, chunk: Buffer) => void, to: (this: net.Socket, chunk: Buffer) => void): void {
  s.off(event, from)
  s.on(event, to)
}

function onConnect(this: net.Socket): void {
  owner(this).onConnected()
}

function onClientError(this: net.Socket, e: NodeJS.ErrnoException): void {
  // Unowned: a refused client, destroyed before any connection took it.
  ;(this as Partial<Owned>)[CONN]?.onError('client', e)
}

function onServerError(this: net.Socket, e: NodeJS.ErrnoException): void {
  owner(this).onError('server', e)
}

function onClientData(this: net.Socket, chunk: Buffer): void {
  relay(owner(this), this, owner(this).upstream, chunk)
}

function onServerData(this: net.Socket, chunk: Buffer): void {
  relay(owner(this), this, owner(this).client, chunk)
}

/**
 * An untapped chunk from `from` to `to`. Bytes that reach divert while the session is spliced mean
 * the kernel stopped redirecting that direction (its peer stopped reading, src/fastpath): the
 * direction is reclaimed, its chunks written after every byte the kernel moved before them.
 */
function relay(c: TcpConnection, from: net.Socket, to: net.Socket, chunk: Buffer): void {
  if (c.spliced && !c.spliced.passesThrough(from)) return c.spliced.reclaim(from, chunk, (held) => held.reduce((ok, b) => to.write(b) && ok, true))
  c.untilSplice -= chunk.length
  if (!to.write(chunk)) from.pause()
  else if (c.untilSplice <= 0) c.trySplice()
}

function onClientDataTapped(this: net.Socket, chunk: Buffer): void {
  const c = owner(this)
  c.tap?.clientData?.(chunk)
  if (!c.upstream.write(chunk)) this.pause()
}

function onServerDataTapped(this: net.Socket, chunk: Buffer): void {
  const c = owner(this)
  c.tap?.serverData?.(chunk)
  if (!c.client.write(chunk)) this.pause()
}

/** The writer caught up: the reader that filled it may go on (a no-op when it was not paused). */
function onDrainResumeOther(this: net.Socket): void {
  const c = owner(this)
  const other = this === c.client ? c.upstream : c.client
  if (!other.destroyed && !c.spliced?.holding(other)) other.resume()
  if (c.untilSplice <= 0) c.trySplice()
}

const PROBE = Buffer.alloc(0)

/**
 * An 'end' is not always a FIN. When a reset arrives with data still queued, the kernel reports
 * POLLHUP (tcp_poll: the socket is CLOSE) and libuv, after a short read, emits EOF without reading
 * the pending ECONNRESET (uv__stream_io in src/unix/stream.c). A clean FIN leaves the socket in
 * CLOSE_WAIT, where an empty write succeeds; after a reset the same write returns the pending error
 * (tcp_sendmsg → sk_stream_wait_connect), which reaches onError as a reset. So the FIN is passed on
 * only once that probe came back clean. With writes still queued on the socket the probe is not
 * needed (those writes fail with the reset themselves) and would hold the FIN behind a peer that
 * no longer reads, so the FIN passes at once. After divert's own FIN (writable ended) no probe is
 * possible through Node; that case keeps the plain 'end'.
 */
function passEnd(from: net.Socket, finished: (c: TcpConnection) => void): void {
  // A spliced session leaves the kernel at its first FIN (Splice.stop says why).
  owner(from).spliced?.stop()
  if (!from.writable || from.writableLength > 0) return finished(owner(from))
  from.write(PROBE, (error) => {
    if (!error) finished(owner(from))
  })
}

function onClientEnd(this: net.Socket): void {
  owner(this).firstFin ??= 'client-closed'
  passEnd(this, clientFinished)
}

function onServerEnd(this: net.Socket): void {
  owner(this).firstFin ??= 'server-closed'
  passEnd(this, serverFinished)
}

function clientFinished(c: TcpConnection): void {
  c.tap?.clientEnd?.()
  if (c.spliced) c.spliced.whenFlushed(c.client, () => c.upstream.end())
  else c.upstream.end()
}

function serverFinished(c: TcpConnection): void {
  c.tap?.serverEnd?.()
  if (c.spliced) c.spliced.whenFlushed(c.upstream, () => c.client.end())
  else c.client.end()
}

function onClose(this: net.Socket): void {
  owner(this).onSocketClose()
}

function proxyHeader(version: 'v1' | 'v2', client: Address, local: Address): Buffer {
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
