/**
 * The injectable edge between the proxies and the network: how an upstream TCP connection is opened,
 * and how long it may take (ConnectDeadlines). Tests swap the connector to simulate black holes and
 * failures without touching real servers, and the clock (src/clock.ts) to run deadlines without real time.
 *
 *   TcpProxy ─connector(to)─▶ net.Socket      TcpProxy ─start/connectDone─▶ ConnectDeadlines ─▶ onConnectDeadline
 */
import net from 'node:net'
import {realClock, type Clock, type Timer} from '../clock.js'
import type {Address} from '../addr/address.js'

export type Connector = (to: Address) => net.Socket

/** TCP_NODELAY from the start: without it small writes meet the 40 ms delayed-ACK stall (RFC 1122 §4.2.3.2 delayed ACK meeting Nagle, RFC 896). */
export const tcpConnector: Connector = (to) => net.connect({host: to.address, port: to.port, noDelay: true, allowHalfOpen: true})

/** A pending upstream connect, as ConnectDeadlines links it (fields owned by ConnectDeadlines). */
export interface DeadlineWaiter {
  deadlineAt: number
  deadlineNext?: DeadlineWaiter
  deadlinePrev?: DeadlineWaiter
  deadlineList?: DeadlineList
  /** The timeout passed without connectDone(): the waiter is already unlinked. */
  onConnectDeadline(timeoutMs: number): void
}

/** The waiters that share one timeout value: appended in deadline order, so the head expires first. */
export interface DeadlineList {
  readonly timeoutMs: number
  head?: DeadlineWaiter
  tail?: DeadlineWaiter
  timer?: Timer
}

/**
 * Connect timeouts for every pending upstream connection, without a timer or a listener per
 * connection: one intrusive FIFO list per timeout value and one timer for its oldest entry (the
 * scheme of Node's own timer lists, lib/internal/timers.js, minus a Timeout object per socket —
 * socket.setTimeout() keeps its Timeout referenced for the socket's whole life, ~150 B each).
 */
export class ConnectDeadlines {
  private readonly lists = new Map<number, DeadlineList>()

  constructor(private readonly clock: Clock = realClock) {}

  /** Starts w's countdown: onConnectDeadline(timeoutMs) runs unless connectDone(w) comes first. */
  start(w: DeadlineWaiter, timeoutMs: number): void {
    let list = this.lists.get(timeoutMs)
    if (!list) {
      list = {timeoutMs}
      this.lists.set(timeoutMs, list)
    }
    w.deadlineAt = this.clock.now() + timeoutMs
    w.deadlineList = list
    w.deadlinePrev = list.tail
    w.deadlineNext = undefined
    if (list.tail) list.tail.deadlineNext = w
    else list.head = w
    list.tail = w
    if (list.timer === undefined) this.arm(list, timeoutMs)
  }

  /** Connected, failed or closed: w leaves its list (a no-op when it is in none). */
  connectDone(w: DeadlineWaiter): void {
    const list = w.deadlineList
    if (!list) return
    if (w.deadlinePrev) w.deadlinePrev.deadlineNext = w.deadlineNext
    else list.head = w.deadlineNext
    if (w.deadlineNext) w.deadlineNext.deadlinePrev = w.deadlinePrev
    else list.tail = w.deadlinePrev
    w.deadlineList = w.deadlineNext = w.deadlinePrev = undefined
    // An emptied list keeps its timer: it fires once, finds nothing and disarms.
  }

  /** Waiters still counting down (for tests and /metrics). */
  get size(): number {
    let n = 0
    for (const list of this.lists.values()) for (let w = list.head; w; w = w.deadlineNext) n++
    return n
  }

  private arm(list: DeadlineList, ms: number): void {
    // unref: a pending connect is kept alive by its sockets, never by its deadline.
    list.timer = this.clock.setTimeout(() => this.expire(list), ms).unref()
  }

  private expire(list: DeadlineList): void {
    list.timer = undefined
    const now = this.clock.now()
    let w = list.head
    while (w && w.deadlineAt <= now) {
      this.connectDone(w)
      w.onConnectDeadline(list.timeoutMs)
      w = list.head
    }
    if (w) this.arm(list, w.deadlineAt - now)
    else this.lists.delete(list.timeoutMs)
  }
}
