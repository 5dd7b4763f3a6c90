/**
 * UdpProxy: one UDP listener with per-client session persistence. A flow is the datagrams of one
 * client (address+port, or address only with `udp.key: address`) on this listener; it is decided
 * once, like a TCP connection, and then keeps its server and its own connected upstream socket for
 * its whole life. Replies read on that socket go back to the client from the listener's socket, so
 * the client always hears from the address it sent to (measured with OpenVPN, test/e2e/openvpn.test.ts: a proxy that mixes clients or
 * re-creates flows breaks OpenVPN and hides it by "floating").
 *
 *   client ─▶ listener socket ─flow key─▶ UdpFlow ─connected socket─▶ server
 *   client ◀─ listener socket ◀────────── UdpFlow ◀──────────────────  server
 *
 * Idle flows are closed by the registry's coarse tick, not by a timer per flow.
 */
import dgram from 'node:dgram'
import type {AddressInfo} from 'node:net'
import type {ListenerConfig} from '../config/types.js'
import {DivertError} from '../errors.js'
import type {Server} from '../backends/backend.js'
import {encodeProxyV2} from '../backends/proxy-protocol.js'
import {isRefusal, type Decision} from '../rules/router.js'
import type {Session, SessionTransport} from '../session/registry.js'
import type {CloseCause, SessionMeta, Tap} from '../session/types.js'
import {addressOf, formatAddress, type Address} from '../addr/address.js'
import {RefusalLog} from './refusals.js'
import {Admission} from './limits.js'
import type {ProxyContext} from './tcp-proxy.js'
import {defaultSockets, udpSocket} from './sockets.js'
import {transparentFd} from './transparent.js'

/** Datagrams held per flow while its upstream socket connects (a few ms); more are dropped. */
const CONNECT_QUEUE_MAX = 64

export class UdpProxy {
  /** Replaced on reload when only options changed (same bind, same protocol). */
  config: ListenerConfig
  private readonly ctx: ProxyContext
  private readonly socket: dgram.Socket
  /**
   * Live flows by client address, then by port (`udp.key: address` files every flow under port 0).
   * Two levels because rinfo brings a new address string with every datagram: hashing it is
   * unavoidable, building an "address|port" key from it per datagram is not.
   */
  private readonly flows = new Map<string, Map<number, UdpFlow>>()
  private flowTotal = 0
  private draining = false
  private local?: Address
  private readonly refusals: RefusalLog
  readonly admission: Admission

  constructor(config: ListenerConfig, ctx: ProxyContext) {
    this.config = config
    this.ctx = ctx
    this.socket = udpSocket(config.bind.family)
    this.socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo))
    this.socket.on('error', (error) => ctx.logger.error({err: error, listener: config.name}, 'udp listener error'))
    this.refusals = new RefusalLog(config.name, ctx.logger, () => ctx.registry.coarseNow, ctx.onRefused)
    this.admission = new Admission(() => this.config, ctx.global ?? {live: 0, max: 0}, () => ctx.registry.coarseNow, 1)
  }

  get refusedFlows(): number {
    return this.refusals.total
  }

  listen(): Promise<void> {
    const {bind, name} = this.config
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        const why = error.code === 'EADDRINUSE' ? 'the address is already in use' : error.code === 'EACCES' ? 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)' : error.message
        reject(new DivertError('LISTEN_FAILED', `listener ${name} cannot bind udp ${formatAddress(bind)}: ${why}`, {cause: error}))
      }
      this.socket.once('error', onError)
      // A transparent listener binds the address of the server it stands in for (src/net/transparent.ts).
      const where = this.config.transparent ? {fd: transparentFd(this.config)} : {address: bind.address, port: bind.port}
      this.socket.bind({...where, exclusive: true}, () => {
        this.socket.off('error', onError)
        this.tuneBuffer()
        resolve()
      })
    })
  }

  address(): AddressInfo | undefined {
    try {
      return this.socket.address()
    } catch {
      return undefined
    }
  }

  /** Stops opening new flows (drain); live flows go on until they end or destroy(). */
  async close(): Promise<void> {
    this.draining = true
  }

  /** Closes every flow and the listener socket. */
  destroy(): void {
    for (const byPort of [...this.flows.values()]) for (const f of [...byPort.values()]) f.kill('shutdown')
    try {
      this.socket.close()
    } catch {
      // already closed
    }
  }

  /**
   * The bound address as an Address (a wildcard bind names the wildcard: Node has no IP_PKTINFO). It
   * cannot change once bound, so the getsockname() is done once, not for every new flow.
   */
  localPeer(): Address | undefined {
    if (this.local) return this.local
    const a = this.address()
    return (this.local = a ? addressOf(a.address, a.port) : undefined)
  }

  get flowCount(): number {
    return this.flowTotal
  }

  /** @internal */
  reply(msg: Buffer, flow: UdpFlow): void {
    // With a callback a failed send is reported there, not as a listener 'error' logged per datagram.
    this.socket.send(msg, flow.clientPort, flow.clientRaw, flow.onReplyError)
  }

  /** @internal */
  forget(flow: UdpFlow): void {
    const byPort = this.flows.get(flow.clientRaw)
    if (byPort?.get(flow.keyPort) === flow) {
      byPort.delete(flow.keyPort)
      this.flowTotal--
      if (byPort.size === 0) this.flows.delete(flow.clientRaw)
    }
    this.admission.release(flow.address)
  }

  /** The coarse tick's work for this listener: forget idle per-source limit state. */
  sweep(): void {
    this.admission.sweep()
  }

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const port = this.config.udp.key === 'address' ? 0 : rinfo.port
    const flow = this.flows.get(rinfo.address)?.get(port) ?? this.open(port, rinfo)
    flow?.fromClient(msg, rinfo)
  }

  private open(keyPort: number, rinfo: dgram.RemoteInfo): UdpFlow | undefined {
    const peer = addressOf(rinfo.address, rinfo.port)
    const address = peer.address
    if (this.draining) return undefined
    if (this.flowTotal >= this.config.udp.maxFlows) return this.refuse(peer, `udp.max_flows (${this.config.udp.maxFlows}) reached`)
    const limited = this.admission.admit(address)
    if (limited) return this.refuse(peer, limited)
    // A transparent UDP listener stands in for the server at its bind: that is where the client sent.
    const decision = this.ctx.router.decide(this.config, address, this.config.transparent ? {destination: this.config.bind} : undefined)
    if (isRefusal(decision)) {
      this.admission.release(address)
      return this.refuse(peer, decision.refused, decision.rule?.id)
    }
    const flow = new UdpFlow(this, this.ctx, keyPort, rinfo, peer, decision)
    let byPort = this.flows.get(rinfo.address)
    if (!byPort) this.flows.set(rinfo.address, (byPort = new Map()))
    byPort.set(keyPort, flow)
    this.flowTotal++
    flow.connect()
    return flow.live ? flow : undefined
  }

  private refuse(peer: Address, reason: string, rule?: string): undefined {
    this.refusals.refuse(peer, reason, rule)
    return undefined
  }

  private tuneBuffer(): void {
    const want = this.config.udp.recvBufferSize
    try {
      this.socket.setRecvBufferSize(want)
      const got = this.socket.getRecvBufferSize()
      // Linux doubles the value it stores and caps it at net.core.rmem_max (socket(7)).
      if (got < want) this.ctx.logger.warn({listener: this.config.name, wanted: want, got}, 'udp receive buffer capped by the kernel: raise net.core.rmem_max for bursts of new clients')
    } catch (error) {
      this.ctx.logger.warn({listener: this.config.name, err: error}, 'could not set the udp receive buffer size')
    }
  }
}

/** One client's flow: its upstream socket, counters and session record. */
class UdpFlow implements SessionTransport {
  /** The port this flow is filed under in UdpProxy.flows: the client's, or 0 with `udp.key: address`. */
  readonly keyPort: number
  /** The client's normalised address (per-source limits are keyed by it). */
  readonly address: string
  /** The client's address as rinfo gives it: the flow index key and the reply destination. */
  readonly clientRaw: string
  clientPort: number
  private readonly upstream: dgram.Socket
  private readonly session: Session
  private readonly server: Server
  private tap?: Tap
  /** PROXY v2 header of every datagram; re-encoded when the client moves to another port. */
  private header?: Buffer
  private readonly local: Address
  private inBytes = 0
  private outBytes = 0
  private inPackets = 0
  private outPackets = 0
  private upstreamErrors = 0
  private replyErrors = 0
  private connectError?: string
  /** Why the factory could not prepare the upstream socket (connect() then fails the flow). */
  private openError?: Error
  private closed = false
  /** Datagrams that arrived before the upstream socket finished connecting. */
  private queue?: Buffer[] = []

  constructor(private readonly proxy: UdpProxy, private readonly ctx: ProxyContext, keyPort: number, rinfo: dgram.RemoteInfo, peer: Address, decision: Decision) {
    this.keyPort = keyPort
    this.address = peer.address
    this.clientRaw = rinfo.address
    this.clientPort = rinfo.port
    this.server = decision.server
    this.server.acquire()
    const to = this.server.address
    const serverPeer = to
    this.upstream = this.openUpstream(decision, peer)
    this.upstream.on('message', (msg) => this.fromServer(msg))
    // ICMP port unreachable arrives as ECONNREFUSED on a connected socket: count it, keep the flow.
    this.upstream.on('error', () => this.upstreamErrors++)
    this.session = ctx.registry.add({
      protocol: 'udp', listener: proxy.config.name, client: peer, backend: decision.backend.name, server: serverPeer,
      rule: decision.rule?.id, transport: this, destination: proxy.config.transparent ? proxy.config.bind : undefined,
    })
    const local = (this.local = proxy.localPeer() ?? serverPeer)
    const meta: SessionMeta = {id: this.session.id, protocol: 'udp', listener: proxy.config.name, backend: decision.backend.name, rule: decision.rule?.id, client: peer, server: serverPeer, local, startedAt: this.session.startedAt}
    this.tap = ctx.tapsFor?.(decision, meta)
    if (this.tap) this.session.taps = [this.tap]
    if (decision.backend.config.proxyProtocol === 'v2') this.header = encodeProxyV2(peer, local, 'dgram')
  }

  get live(): boolean {
    return !this.closed
  }

  /**
   * The flow's socket from the factory, with its backend's options. One that cannot be prepared (its
   * source address taken or not available) fails this flow in connect(), with the cause in its close line.
   */
  private openUpstream(decision: Decision, peer: Address): dgram.Socket {
    try {
      return (this.ctx.sockets ?? defaultSockets).udp(this.server.address, decision.backend.config, peer)
    } catch (error) {
      this.openError = error as Error
      return udpSocket(this.server.address.family)
    }
  }

  /** Connects the upstream socket; a failure (no route, bad port) ends this flow, never the daemon. */
  connect(): void {
    if (this.openError) return this.connectFailed(this.openError)
    const {address: host, port} = this.server.address
    try {
      // A failed connect calls the callback with the error instead of emitting 'connect' (lib/dgram.js
      // doConnect); sending on the still-unconnected socket would then throw out of the event loop.
      this.upstream.connect(port, host, (error?: Error) => (error ? this.connectFailed(error) : this.flush()))
    } catch (error) {
      this.connectFailed(error as Error)
    }
  }

  private connectFailed(error: NodeJS.ErrnoException): void {
    const step = error.syscall && error.syscall !== 'connect' ? ` (${error.syscall})` : ''
    this.connectError = `${error.code ?? error.message}${step}`
    this.kill('connect-failed')
  }

  readonly onReplyError = (error: Error | null): void => {
    if (error) this.replyErrors++
  }

  fromClient(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (rinfo.port !== this.clientPort) this.moved(rinfo.port)
    this.inBytes += msg.length
    this.inPackets++
    this.tap?.clientData?.(msg)
    if (this.queue) {
      // dgram connect() completes asynchronously and a send without a port before then throws.
      if (this.queue.length < CONNECT_QUEUE_MAX) this.queue.push(msg)
      else this.upstreamErrors++
      return
    }
    this.forward(msg)
  }

  /**
   * With `udp.key: address` a client that moved to another port (re-NAT) keeps its flow and is
   * answered at its new port; the session record (sessions view, close line) and the PROXY header
   * name where it is now. A fresh Address: the first one is shared with the taps' SessionMeta.
   */
  private moved(port: number): void {
    this.clientPort = port
    const client = {...this.session.client, port}
    this.session.client = client
    if (this.header) this.header = encodeProxyV2(client, this.local, 'dgram')
  }

  private forward(msg: Buffer): void {
    // HAProxy proxy-protocol.txt §2.2: over DGRAM the header precedes every datagram.
    this.upstream.send(this.header ? [this.header, msg] : msg, this.onSendError)
  }

  private flush(): void {
    const queued = this.queue ?? []
    this.queue = undefined
    if (this.closed) return
    this.ctx.registry.connected(this.session)
    for (const m of queued) this.forward(m)
  }

  private readonly onSendError = (error: Error | null): void => {
    if (error) this.upstreamErrors++
  }

  private fromServer(msg: Buffer): void {
    this.outBytes += msg.length
    this.outPackets++
    this.tap?.serverData?.(msg)
    this.proxy.reply(msg, this)
  }

  // SessionTransport
  setTap(tap: Tap): void {
    this.tap = tap
    this.session.taps = [tap]
  }

  bytesIn(): number { return this.inBytes }
  bytesOut(): number { return this.outBytes }
  packetsIn(): number { return this.inPackets }
  packetsOut(): number { return this.outPackets }

  kill(cause: CloseCause): void {
    if (this.closed) return
    this.closed = true
    this.proxy.forget(this)
    this.upstream.close()
    this.server.release()
    this.ctx.registry.close(this.session, cause, false, this.closeDetails())
  }

  private closeDetails(): Record<string, unknown> | undefined {
    const d: Record<string, unknown> = {}
    if (this.upstreamErrors) d.upstreamErrors = this.upstreamErrors
    if (this.replyErrors) d.replyErrors = this.replyErrors
    if (this.connectError) d.error = this.connectError
    return Object.keys(d).length > 0 ? d : undefined
  }
}
