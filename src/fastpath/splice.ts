/**
 * FastPath: hands a TCP session's two sockets to the kernel (sockhash.ts) once divert holds none
 * of its bytes, and keeps half-close, taps and byte counts right while the kernel moves the bytes.
 *
 *   TcpConnection ─splice(a, b)─▶ Splice ─┬─ counters (bytes the kernel moved, for `divert sessions`)
 *                                          ├─ whenFlushed (a FIN passes only after the bytes before it)
 *                                          ├─ takeBack (a tap attached: bytes go through divert again)
 *                                          └─ reclaim (a peer stopped reading: one direction comes back)
 *
 * Ordering: a splice is made in one synchronous step while Node holds no byte of the session (nothing
 * buffered for writing or unread); bytes still in a socket's receive queue then go through the
 * program in order, pushed by an SO_RCVLOWAT write (tcp_set_rcvlowat calls sk_data_ready, which the
 * psock replaced with its verdict reader). The kernel sends redirected bytes from a work queue
 * (sk_psock_backlog), so a FIN or a byte written by divert waits until the peer's send queue holds
 * everything redirected before it (`whenFlushed`).
 */
import type net from 'node:net'
import type {Logger} from 'pino'
import {Sockhash} from './sockhash.js'
import {VerifierError} from './bpf.js'
import {fdOf, getOption, ioctlInt, IPPROTO_TCP, recvNow, setIntOption, SIOCOUTQ, SOL_SOCKET, SO_RCVLOWAT, TCP_INFO} from '../sys/libc.js'

/** Offsets in struct tcp_info (include/uapi/linux/tcp.h): tcpi_state (u8) and tcpi_bytes_acked (u64). */
const TCPI_STATE = 0, TCPI_BYTES_ACKED = 120, TCP_INFO_SIZE = 232
/** TCP_CLOSE in include/net/tcp_states.h: before divert's own FIN, only a reset puts a socket there. */
const TCP_CLOSE = 7
/** How often a FIN or take-back polls the kernel's send queue while it waits: 2 ms, doubling to 100 ms. */
const FLUSH_POLL_MS = 2
const FLUSH_POLL_MAX_MS = 100

/** `fast_path: auto` found no kernel fast path at start: why, in one line (the kernel's or verifier's words). */
export interface FastPathUnavailable {
  reason: string
}

export class FastPath {
  /** Sessions handed to the kernel since start, and those whose bytes it moves now (Splice.inKernel). */
  spliced = 0
  active = 0

  private warned = false

  private constructor(private readonly sockhash: Sockhash, private readonly logger: Logger) {}

  /**
   * Loads the kernel side; without CAP_BPF/CAP_NET_ADMIN/CAP_PERFMON or kernel support it logs once
   * (the whole error; a warning when the config asked for `fast_path: auto`, info when it is the
   * default) and returns why, in one line, for `divert status`.
   */
  static open(logger: Logger, maxSockets?: number, asked = true): FastPath | FastPathUnavailable {
    try {
      return new FastPath(Sockhash.open(maxSockets), logger)
    } catch (error) {
      // Asked for in the config: a warning. By default (an unprivileged run, most often): one info line.
      const level = asked ? 'warn' : 'info'
      logger[level]({err: error}, `kernel fast path unavailable (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON and a kernel with BPF sockmap and BTF): every byte goes through divert${asked ? '' : '; fast_path: off skips the attempt'}`)
      return {reason: oneLine(error)}
    }
  }

  /**
   * Splices a and b when divert holds none of their bytes; undefined when it still does (try later)
   * or a socket is not open both ways.
   */
  splice(a: net.Socket, b: net.Socket, reset: (s: net.Socket) => void = () => undefined): Splice | 'later' | undefined {
    if (!idle(a) || !idle(b)) return 'later'
    const fa = fdOf(a), fb = fdOf(b)
    if (fa === undefined || fb === undefined) return undefined
    let cookies: [bigint, bigint]
    try {
      if (!moveQueued(fa, a, b) || !moveQueued(fb, b, a)) return 'later'
      cookies = this.sockhash.splice(fa, fb)
      for (const fd of [fa, fb]) setIntOption(fd, SOL_SOCKET, SO_RCVLOWAT, 1, 'setsockopt(SO_RCVLOWAT)')
    } catch (error) {
      // E.g. the SOCKHASH is full. A socket already in it keeps its bytes for divert (no peer).
      if (!this.warned) this.logger.warn({err: error}, 'a session could not be handed to the kernel fast path; it goes through divert')
      this.warned = true
      return undefined
    }
    this.spliced++
    this.active++
    return new Splice(this, a, b, ...cookies, reset)
  }

  /** @internal */
  get map(): Sockhash {
    return this.sockhash
  }

  close(): void {
    this.sockhash.close()
  }
}

function oneLine(error: unknown): string {
  if (error instanceof VerifierError) return error.summary
  return (error instanceof Error ? error.message : String(error)).split('\n')[0]
}

/** Bytes divert read from a socket itself (moveQueued), which Node's bytesRead does not count. */
const taken = new WeakMap<net.Socket, number>()
/** Reads per socket in one attempt (64 KiB each) before the attempt gives up for now. */
const MAX_QUEUED_READS = 16

/**
 * Empties the kernel's receive queue of `from` (fd) into `to`, synchronously, so the splice starts
 * with no skb half-read. The psock reader takes whole skbs off the queue (tcp_read_skb ignores
 * copied_seq): an skb Node had read part of would be sent on whole, bytes twice. After a read that
 * finds the queue empty, every later skb is new and whole (nothing left to coalesce into).
 * False when the queue did not empty, the stream ended, or `to` could not take the bytes at once.
 */
function moveQueued(fd: number, from: net.Socket, to: net.Socket): boolean {
  for (let i = 0; i < MAX_QUEUED_READS; i++) {
    const buf = Buffer.allocUnsafe(64 * 1024)
    let n: number
    try {
      n = recvNow(fd, buf)
    } catch {
      return false // a reset: Node's next read or write reports it
    }
    if (n < 0) return to.writableLength === 0
    if (n === 0) return false
    taken.set(from, (taken.get(from) ?? 0) + n)
    to.write(buf.subarray(0, n))
  }
  return false
}

/**
 * Every byte ever queued on a socket for sending: tcpi_bytes_acked (tcp(7) TCP_INFO; RFC 4898
 * tcpEStatsAppHCThruOctetsAcked) plus what is still unacknowledged or unsent (SIOCOUTQ).
 */
function queuedTotal(fd: number, info = tcpInfo(fd)): number {
  return Number(info.readBigUInt64LE(TCPI_BYTES_ACKED)) + ioctlInt(fd, SIOCOUTQ, 'ioctl(SIOCOUTQ)')
}

function tcpInfo(fd: number): Buffer {
  return getOption(fd, IPPROTO_TCP, TCP_INFO, TCP_INFO_SIZE, 'getsockopt(TCP_INFO)')
}

/** Every byte read from `s`: by Node, by divert itself before a splice, and by the kernel after it. */
export function bytesFrom(s: net.Socket, spliced?: Splice): number {
  return s.bytesRead + (taken.get(s) ?? 0) + (spliced?.redirected(s) ?? 0)
}

/** Nothing buffered by Node either way, both halves open. */
function idle(s: net.Socket): boolean {
  return !s.destroyed && s.readable && s.writable && s.writableLength === 0 && s.readableLength === 0 && !s.connecting
}

export class Splice {
  private released = false
  /** The kernel moves none of the session's bytes any more (taken back, both directions reclaimed, or released). */
  private left = false
  /** Counters of a released splice, kept for the session's last report. */
  private final?: [number, number]
  private frozen?: Map<net.Socket, number>
  /** Sockets whose bytes go through divert again (reclaim): chunks held until the flush, then none. */
  private readonly reclaimed = new Map<net.Socket, Buffer[] | undefined>()

  /**
   * `reset` is told when a socket is found reset while the kernel was sending to it: the kernel's
   * sender (sk_psock_backlog) drops what it cannot send and nothing reaches Node, which no longer
   * polls a socket it read the end of and does not write itself.
   */
  constructor(private readonly fast: FastPath, private readonly a: net.Socket, private readonly b: net.Socket, private readonly ca: bigint, private readonly cb: bigint,
    private readonly reset: (s: net.Socket) => void = () => undefined) {}

  /** Bytes the kernel moved from `from` to its peer. */
  redirected(from: net.Socket): number {
    const i = from === this.a ? 0 : 1
    if (this.final) return this.final[i]
    return this.fast.map.counters(i === 0 ? this.ca : this.cb).redirected
  }

  /**
   * Calls `then` once the peer of `from` has in its send queue every byte the kernel redirected
   * from `from`: its kernel total (tcpi_bytes_acked + SIOCOUTQ) equals what divert wrote to it plus
   * what was redirected. Polls while bytes are in the psock's backlog (a peer that does not read
   * keeps them there); stops when a socket closes, and tells `reset` (instead of `then`) when the
   * peer was reset: the bytes it waits for will never arrive.
   */
  whenFlushed(from: net.Socket, then: () => void): void {
    const to = from === this.a ? this.b : this.a
    let delay = FLUSH_POLL_MS
    const check = (): void => {
      if (to.destroyed || (from.destroyed && !from.readableEnded)) return
      if (this.released) return then()
      const state = this.flushed(from, to)
      if (state === 'reset') return this.reset(to)
      if (state) return then()
      setTimeout(check, delay).unref()
      delay = Math.min(delay * 2, FLUSH_POLL_MAX_MS)
    }
    check()
  }

  private flushed(from: net.Socket, to: net.Socket): boolean | 'reset' {
    const fd = fdOf(to)
    if (fd === undefined) return true
    const info = tcpInfo(fd)
    if (info[TCPI_STATE] === TCP_CLOSE) return 'reset'
    return queuedTotal(fd, info) >= to.bytesWritten + this.redirected(from)
  }

  /**
   * Bytes that reached `to`'s send queue (what Node's bytesWritten means for a socket divert writes
   * itself): the kernel's total while the socket is open. Bytes the kernel redirected but still holds
   * in its backlog (a peer that does not read) are not there yet. Once the socket is closed, the
   * figure frozen before an abort, or the redirected count (a clean end flushed the backlog first).
   */
  sent(to: net.Socket): number {
    const upper = to.bytesWritten + this.redirected(to === this.a ? this.b : this.a)
    const fd = to.destroyed ? undefined : fdOf(to)
    if (fd === undefined) return this.frozen?.get(to) ?? upper
    try {
      // min(): the kernel's total counts the FIN's sequence number once divert has ended `to`.
      return Math.min(upper, queuedTotal(fd) + to.writableLength)
    } catch {
      return upper
    }
  }

  /** Before an abort drops what the kernel holds: the send counts, while the descriptors are open. */
  freeze(): void {
    this.frozen = new Map([[this.a, this.sent(this.a)], [this.b, this.sent(this.b)]])
  }

  /**
   * Bytes go through divert again (a tap was attached): both sockets pause, the kernel stops
   * redirecting (the program keeps on the socket what it no longer has a peer for), and once the
   * bytes already redirected are in the peers' send queues the sockets resume. The sockets stay in
   * the SOCKHASH: taking them out would drop what the kernel kept for divert to read (sk_psock_drop).
   */
  takeBack(then = (): void => undefined): void {
    this.a.pause()
    this.b.pause()
    this.stop()
    let waiting = 2
    const done = (): void => {
      if (--waiting > 0) return
      for (const s of [this.a, this.b]) if (!this.holding(s)) s.resume()
      then()
    }
    // A verdict that read the peer before unpair() may still add to the counters: look after it ran.
    setTimeout(() => {
      this.whenFlushed(this.a, done)
      this.whenFlushed(this.b, done)
    }, FLUSH_POLL_MS)
  }

  /**
   * The kernel stops redirecting both ways (a FIN was read: Node stops polling that socket, so a
   * reset that reaches it later would only be seen by the kernel's sender, which drops what it
   * cannot send). Bytes that reach divert from here on are reclaimed in order (reclaim), and divert's
   * own writes report the errors.
   */
  stop(): void {
    if (this.left) return
    this.fast.map.unpair(this.ca, this.cb)
    this.leave()
  }

  /** Whether bytes read from `from` go to the peer as they come: its direction was reclaimed and flushed, or the splice is over. */
  passesThrough(from: net.Socket): boolean {
    return this.released || (this.reclaimed.has(from) && !this.holding(from))
  }

  /** Whether chunks of `from` wait for the flush of a reclaim (`from` must stay paused until then). */
  holding(from: net.Socket): boolean {
    return this.reclaimed.get(from) !== undefined
  }

  /**
   * Bytes of `from` reached divert while spliced: the program stopped redirecting them for good (the
   * peer's backlog passed PEER_BACKLOG_LIMIT, sockhash.ts), so this direction goes through divert
   * from here on, under Node's back-pressure. `from` pauses and its chunks wait until the peer's send
   * queue holds every byte the kernel redirected before them; then `deliver` writes them in order,
   * and `from` resumes unless `deliver` says the peer is full (its 'drain' resumes it then).
   */
  reclaim(from: net.Socket, chunk: Buffer, deliver: (chunks: Buffer[]) => boolean): void {
    const held = this.reclaimed.get(from)
    if (held) return void held.push(chunk)
    const chunks = [chunk]
    this.reclaimed.set(from, chunks)
    if (this.reclaimed.size === 2) this.leave()
    from.pause()
    this.whenFlushed(from, () => {
      this.reclaimed.set(from, undefined)
      if (deliver(chunks)) from.resume()
    })
  }

  /**
   * Whether the kernel moves bytes of this session now, in at least one direction: not after a
   * take-back (a tap), once both directions were reclaimed, or after the release.
   */
  get inKernel(): boolean {
    return !this.left
  }

  /** The kernel stopped moving this session's bytes: `fast.active` counts it out, once. */
  private leave(): void {
    if (this.left) return
    this.left = true
    this.fast.active--
  }

  /** The session is over: keep the counters, forget the map entries. */
  release(): void {
    if (this.released) return
    this.final = [this.redirected(this.a), this.redirected(this.b)]
    this.released = true
    this.leave()
    this.fast.map.forget(this.ca)
    this.fast.map.forget(this.cb)
  }
}
