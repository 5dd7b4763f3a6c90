/**
 * The kernel splice: a SOCKHASH of the spliced sockets keyed by socket cookie, a HASH of cookie →
 * peer cookie, a HASH of cookie → {bytes redirected, bytes kept, the peer's base write_seq}, and one
 * sk_skb stream-verdict program attached to the SOCKHASH that sends every skb a member socket receives to its peer's send path
 * (bpf_sk_redirect_hash without BPF_F_INGRESS). Bytes of a spliced pair never reach user space.
 *
 *   client sock ─skb─▶ verdict ─redirect─▶ psock backlog of server sock ─▶ its send queue (and back)
 *
 * No stream parser: since Linux 5.10 a verdict program alone is enough (sk_psock_start_verdict reads
 * whole skbs through tcp_read_skb), which is also the cheaper path. When the peer is not (yet) in the
 * SOCKHASH the redirect fails; the program then keeps that skb and every later one on the socket
 * itself (SK_PASS: user space reads them as usual), so the bytes of one direction never go two ways
 * at once and cannot overtake each other. The same fallback bounds a peer that stops reading
 * (PEER_BACKLOG_LIMIT): the kernel itself puts no limit on what it queues for the peer.
 */
import {assemble, asm, label, type Insn} from './asm.js'
import {BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_SOCKHASH, BPF_NOEXIST, BPF_PROG_TYPE_SK_SKB, BPF_SK_SKB_STREAM_VERDICT, HELPER, mapCreate, mapDelete, mapLookup, mapUpdate, progAttach, progLoad} from './bpf.js'
import {kernelOffset} from './btf.js'
import {closeFd, getOption, SOL_SOCKET, SO_COOKIE} from '../sys/libc.js'

const SK_DROP = 0, SK_PASS = 1
/**
 * struct counts: bytes redirected to the peer, bytes kept on the socket, and the peer's write_seq
 * when the first byte was redirected (bit 32 set: recorded).
 */
const REDIRECTED = 0, KEPT = 8, PEER_BASE = 16, COUNTS_SIZE = 24
/** Offset of `len` in struct __sk_buff. */
const SKB_LEN = 0

/**
 * Most bytes one socket may have redirected that its peer has not yet taken into its send queue.
 * sk_psock_skb_redirect queues on the peer's psock (ingress_skb) without any limit, and the source
 * socket's receive window stays open because tcp_read_skb took the skbs off its queue: a peer that
 * stops reading would let the sender fill kernel memory (256 MiB measured). Past this bound the
 * socket keeps its bytes (SK_PASS: charged to its receive buffer, so TCP's window closes) and
 * divert takes the direction back (Splice.reclaim) with Node's own back-pressure. 4 MiB is the
 * default tcp_wmem maximum (tcp(7)): as much again as the peer's send queue itself may hold.
 */
export const PEER_BACKLOG_LIMIT = 4 * 1024 * 1024

/** r0 = bpf_map_lookup_elem(map, fp + keyAt): the value, or for a SOCKHASH a referenced socket; NULL when absent. */
function lookup(mapFd: number, keyAt: number): Insn[][] {
  return [asm.loadMapFd(1, mapFd), [asm.movReg(2, 10), asm.addImm(2, keyAt), asm.call(HELPER.mapLookupElem)]]
}

/**
 * The verdict program: counts[cookie] must exist (else the skb is passed untouched); once a socket
 * has kept a byte it keeps all later ones; so does a socket whose peer's backlog passed
 * PEER_BACKLOG_LIMIT; otherwise it redirects to peers[cookie] and counts.
 *
 * The backlog is what the socket redirected less what reached the peer's send queue: the peer's
 * tcp_sock.write_seq (read through bpf_skc_to_tcp_sock from the SOCKHASH entry, a referenced socket
 * released at once) against its value at the first redirect. Since the splice is made while divert
 * holds no byte, nothing else writes to the peer in this direction; write_seq is u32, so the
 * difference is taken modulo 2^32 (a backlog is far below 4 GiB).
 */
export function verdictProgram(countsFd: number, peersFd: number, sockhashFd: number, writeSeqOffset: number): Buffer {
  return assemble([
    asm.movReg(6, 1),
    // An empty skb (the FIN's) is dropped: redirected, it reached the peer's backlog after divert had
    // shut the peer's writing half, and the failed send left EPIPE on the peer (sk_psock_report_error).
    asm.loadW(2, 6, SKB_LEN),
    asm.movImm(0, SK_DROP),
    asm.jeqImm(2, 0, 'exit'),
    asm.call(HELPER.getSocketCookie),
    asm.storeDw(10, -8, 0),
    ...lookup(countsFd, -8),
    asm.jeqImm(0, 0, 'pass'),
    asm.movReg(7, 0),
    asm.loadDw(1, 7, KEPT),
    asm.jneImm(1, 0, 'keep'),
    ...lookup(peersFd, -8),
    asm.jeqImm(0, 0, 'keep'),
    asm.loadDw(1, 0, 0),
    asm.storeDw(10, -16, 1),
    // r9 = the peer's write_seq.
    ...lookup(sockhashFd, -16),
    asm.jeqImm(0, 0, 'keep'),
    asm.movReg(8, 0),
    asm.movReg(1, 0),
    asm.call(HELPER.skcToTcpSock),
    asm.jeqImm(0, 0, 'release'),
    asm.loadW(9, 0, writeSeqOffset),
    asm.movReg(1, 8),
    asm.call(HELPER.skRelease),
    // r1 = the base, recorded at the first redirect.
    asm.loadDw(1, 7, PEER_BASE),
    asm.jneImm(1, 0, 'bound'),
    asm.movImm(1, 1),
    asm.lshImm(1, 32),
    asm.orReg(1, 9),
    asm.storeDw(7, PEER_BASE, 1),
    label('bound'),
    asm.loadDw(2, 7, REDIRECTED),
    asm.addReg(1, 2),
    asm.subReg(1, 9),
    asm.movReg32(1, 1),
    asm.jgtImm(1, PEER_BACKLOG_LIMIT, 'keep'),
    asm.movReg(1, 6),
    asm.loadMapFd(2, sockhashFd),
    asm.movReg(3, 10),
    asm.addImm(3, -16),
    asm.movImm(4, 0),
    asm.call(HELPER.skRedirectHash),
    asm.jneImm(0, SK_PASS, 'keep'),
    asm.loadW(1, 6, SKB_LEN),
    asm.atomicAddDw(7, REDIRECTED, 1),
    label('exit'),
    asm.exit(),
    label('release'),
    asm.movReg(1, 8),
    asm.call(HELPER.skRelease),
    label('keep'),
    asm.loadW(1, 6, SKB_LEN),
    asm.atomicAddDw(7, KEPT, 1),
    label('pass'),
    asm.movImm(0, SK_PASS),
    asm.exit(),
  ])
}

/** One spliced socket's figures: bytes the kernel sent on to its peer, and bytes it kept for user space. */
export interface SpliceCounters {
  redirected: number
  kept: number
}

export class Sockhash {
  private constructor(private readonly sockhashFd: number, private readonly countsFd: number, private readonly peersFd: number, private readonly progFd: number) {}

  /** Makes the maps and loads and attaches the program; throws SysError/VerifierError when the kernel says no. */
  static open(maxSockets = 65536): Sockhash {
    const fds: number[] = []
    try {
      const sockhash = mapCreate({type: BPF_MAP_TYPE_SOCKHASH, keySize: 8, valueSize: 8, maxEntries: maxSockets, name: 'divert_socks'})
      fds.push(sockhash)
      const counts = mapCreate({type: BPF_MAP_TYPE_HASH, keySize: 8, valueSize: COUNTS_SIZE, maxEntries: maxSockets, name: 'divert_counts'})
      fds.push(counts)
      const peers = mapCreate({type: BPF_MAP_TYPE_HASH, keySize: 8, valueSize: 8, maxEntries: maxSockets, name: 'divert_peers'})
      fds.push(peers)
      const prog = progLoad(BPF_PROG_TYPE_SK_SKB, verdictProgram(counts, peers, sockhash, kernelOffset('tcp_sock', 'write_seq')), 'divert_verdict')
      fds.push(prog)
      progAttach(sockhash, prog, BPF_SK_SKB_STREAM_VERDICT)
      return new Sockhash(sockhash, counts, peers, prog)
    } catch (e) {
      fds.forEach(closeFd)
      throw e
    }
  }

  /**
   * Splices two connected TCP sockets: each one's peer entry first, then the sockets. From the moment
   * a socket is in the SOCKHASH the kernel reads it; until its peer is in too, what it reads stays
   * with it (see the module comment). Returns the two cookies.
   */
  splice(a: number, b: number): [bigint, bigint] {
    const ca = cookieOf(a), cb = cookieOf(b)
    try {
      for (const c of [ca, cb]) mapUpdate(this.countsFd, u64(c), Buffer.alloc(COUNTS_SIZE), BPF_NOEXIST)
      mapUpdate(this.peersFd, u64(ca), u64(cb), BPF_NOEXIST)
      mapUpdate(this.peersFd, u64(cb), u64(ca), BPF_NOEXIST)
      mapUpdate(this.sockhashFd, u64(ca), u64(BigInt(a)), BPF_NOEXIST)
    } catch (e) {
      // Nothing is in the SOCKHASH yet (a full map, most likely): leave no entries behind.
      for (const c of [ca, cb]) this.forget(c)
      throw e
    }
    // Should this one fail, `a` stays in the SOCKHASH with no peer there: it keeps its bytes for
    // divert (the program's fallback) until it closes, when the kernel drops it from the map.
    mapUpdate(this.sockhashFd, u64(cb), u64(BigInt(b)), BPF_NOEXIST)
    return [ca, cb]
  }

  /** The counters of one spliced socket (zero once forgotten). */
  counters(cookie: bigint): SpliceCounters {
    const v = Buffer.alloc(COUNTS_SIZE)
    if (!mapLookup(this.countsFd, u64(cookie), v)) return {redirected: 0, kept: 0}
    return {redirected: Number(v.readBigUInt64LE(REDIRECTED)), kept: Number(v.readBigUInt64LE(KEPT))}
  }

  /** The kernel stops redirecting between the two; what they receive from now on stays with them. */
  unpair(a: bigint, b: bigint): void {
    mapDelete(this.peersFd, u64(a))
    mapDelete(this.peersFd, u64(b))
  }

  /** Takes a socket out of the SOCKHASH (closing it does that too) and forgets its entries. */
  forget(cookie: bigint): void {
    mapDelete(this.sockhashFd, u64(cookie))
    mapDelete(this.peersFd, u64(cookie))
    mapDelete(this.countsFd, u64(cookie))
  }

  close(): void {
    closeFd(this.progFd)
    closeFd(this.peersFd)
    closeFd(this.countsFd)
    closeFd(this.sockhashFd)
  }
}

/** SO_COOKIE (socket(7)): the socket's 64-bit id, unique for the life of the kernel. */
export function cookieOf(fd: number): bigint {
  return getOption(fd, SOL_SOCKET, SO_COOKIE, 8, 'getsockopt(SO_COOKIE)').readBigUInt64LE()
}

function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(n)
  return b
}
