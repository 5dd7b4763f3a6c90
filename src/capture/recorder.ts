/**
 * Recordings: one pcap file per path, written by the taps of every session a `record` rule names.
 *
 *   session bytes → Tap → TcpStreamSynth / udpFrame → bounded write queue → file (openRecordingFile: new 0600, or ours)
 *
 * The queue is the write stream's own buffer, capped at `queueBytes`: past it, new packets are dropped
 * and counted, so a slow disk never slows a session. RecordingSet shares one writer per file between
 * the rules that name it. A file that already holds a recording (daemon restarted, rule re-added) is
 * continued after its last whole record, never wiped.
 */
import {resolve} from 'node:path'
import {finished} from 'node:stream/promises'
import type {Writable} from 'node:stream'
import pino, {type Logger} from 'pino'
import {DivertError} from '../errors.js'
import type {CloseCause, SessionMeta, Tap} from '../session/types.js'
import {MAX_TCP_SEGMENT, PCAP_GLOBAL_HEADER_LEN, TcpStreamSynth, pcapGlobalHeader, udpFrame} from './pcap-writer.js'
import {openRecordingFile} from './recording-file.js'

export type RecordingState = 'recording' | 'full' | 'failed' | 'closed'

export interface RecordingOptions {
  /** Largest file size, global header included; the recording stops at the last whole record below it. */
  maxBytes: number
  /** Bytes that may wait for the disk before new packets are dropped (default 8 MiB). */
  queueBytes?: number
  logger?: Logger
  /** Epoch milliseconds (fractional allowed), for packet timestamps. */
  now?: () => number
  /**
   * Opens the byte sink, which then gets a fresh pcap header. Default: openRecordingFile (a new file,
   * 0600, or our own recording continued; anything else refused). Tests inject slow or failing sinks.
   */
  openStream?: (path: string) => Promise<Writable>
}

export interface RecordingStats {
  path: string
  state: RecordingState
  bytesWritten: number
  packets: number
  droppedPackets: number
}

const DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
/** One shared disabled logger: building a pino instance per session would cost more than the session. */
const SILENT = pino({enabled: false})

function defaultNow(): number {
  return performance.timeOrigin + performance.now()
}

/** Per-session counters shown by `divert sessions`. */
interface TapCounters {
  bytes: number
  dropped: number
}

export class Recording {
  private state: RecordingState = 'recording'
  private bytes = 0
  private packets = 0
  private dropped = 0
  private closing?: Promise<void>
  private readonly maxBytes: number
  private readonly queueBytes: number
  private readonly logger: Logger
  private readonly now: () => number

  private constructor(readonly path: string, private readonly stream: Writable, opts: RecordingOptions) {
    this.maxBytes = opts.maxBytes
    this.queueBytes = opts.queueBytes ?? DEFAULT_QUEUE_BYTES
    this.logger = opts.logger ?? SILENT
    this.now = opts.now ?? defaultNow
    stream.on('error', (err) => this.fail(err))
  }

  static async open(path: string, opts: RecordingOptions): Promise<Recording> {
    const abs = resolve(path)
    if (!(opts.maxBytes >= PCAP_GLOBAL_HEADER_LEN)) {
      throw new DivertError('RECORD_FAILED', `cannot record to ${abs}: max size ${opts.maxBytes} bytes is below the ${PCAP_GLOBAL_HEADER_LEN}-byte pcap header; raise capture.max_size`)
    }
    let opened: {stream: Writable; resumeAt: number}
    try {
      opened = opts.openStream ? {stream: await opts.openStream(abs), resumeAt: 0} : await openRecordingFile(abs)
    } catch (err) {
      if (err instanceof DivertError) throw err
      const code = (err as NodeJS.ErrnoException).code ?? 'error'
      throw new DivertError('RECORD_FAILED', `cannot record to ${abs}: ${code} (${(err as Error).message}); check the path and its permissions`, {cause: err})
    }
    const rec = new Recording(abs, opened.stream, opts)
    if (opened.resumeAt > 0) rec.resume(opened.resumeAt)
    else rec.writeHeader()
    return rec
  }

  get currentState(): RecordingState {
    return this.state
  }

  stats(): RecordingStats {
    return {path: this.path, state: this.state, bytesWritten: this.bytes, packets: this.packets, droppedPackets: this.dropped}
  }

  /** A tap for one session; never throws, even for a session it cannot describe as packets. */
  tap(meta: SessionMeta): Tap {
    const counters: TapCounters = {bytes: 0, dropped: 0}
    const describe = (): Record<string, unknown> => ({record: {path: this.path, state: this.state, bytes: counters.bytes, dropped: counters.dropped}})
    try {
      return meta.protocol === 'udp' ? this.udpTap(meta, counters, describe) : this.tcpTap(meta, counters, describe)
    } catch (err) {
      this.logger.warn({err, session: meta.id, path: this.path}, 'recording skipped for this session')
      return {describe}
    }
  }

  /** Flushes and closes the file; idempotent. Live sessions' taps become no-ops. */
  close(): Promise<void> {
    this.closing ??= this.finish()
    return this.closing
  }

  private async finish(): Promise<void> {
    if (this.state !== 'failed') this.state = 'closed'
    if (this.stream.destroyed) return
    if (!this.stream.writableEnded) this.stream.end()
    await finished(this.stream).catch(() => undefined)
  }

  private get accepting(): boolean {
    return this.state === 'recording'
  }

  /** Whether the queue has room for more; when not, the caller skips even building the packets. */
  private get behind(): boolean {
    return this.stream.writableLength >= this.queueBytes
  }

  private tcpTap(meta: SessionMeta, counters: TapCounters, describe: () => Record<string, unknown>): Tap {
    const synth = new TcpStreamSynth(meta.client, meta.server)
    this.emit(synth.handshake(this.micros()), counters)
    const data = (fromClient: boolean, chunk: Buffer): void => {
      if (!this.accepting || chunk.length === 0) return
      if (this.behind) {
        synth.advance(fromClient, chunk.length)
        this.drop(Math.ceil(chunk.length / MAX_TCP_SEGMENT), counters)
        return
      }
      this.emit(synth.data(fromClient, chunk, this.micros()), counters)
    }
    const fin = (fromClient: boolean): void => {
      if (this.accepting) this.emit(synth.fin(fromClient, this.micros()), counters)
    }
    return {
      clientData: (chunk) => this.guard(meta, () => data(true, chunk)),
      serverData: (chunk) => this.guard(meta, () => data(false, chunk)),
      clientEnd: () => this.guard(meta, () => fin(true)),
      serverEnd: () => this.guard(meta, () => fin(false)),
      close: (cause, reset) => this.guard(meta, () => this.closeTcp(synth, cause, reset, counters)),
      describe,
    }
  }

  /**
   * RST from the side the cause names; otherwise the FINs not yet seen (the cause's side first), so
   * the stream always ends with both FINs and the final ACK.
   */
  private closeTcp(synth: TcpStreamSynth, cause: CloseCause, reset: boolean, counters: TapCounters): void {
    if (!this.accepting || synth.closed) return
    const fromClient = cause.startsWith('client-')
    const ts = this.micros()
    if (reset) {
      this.emit(synth.reset(fromClient, ts), counters)
      return
    }
    for (const side of [fromClient, !fromClient]) {
      if (!synth.finSent(side)) this.emit(synth.fin(side, ts), counters)
    }
  }

  private udpTap(meta: SessionMeta, counters: TapCounters, describe: () => Record<string, unknown>): Tap {
    const datagram = (fromClient: boolean, payload: Buffer): void => {
      if (!this.accepting) return
      if (this.behind) return this.drop(1, counters)
      const [src, dst] = fromClient ? [meta.client, meta.server] : [meta.server, meta.client]
      this.emit([udpFrame(src, dst, payload, this.micros(), fromClient)], counters)
    }
    return {
      clientData: (chunk) => this.guard(meta, () => datagram(true, chunk)),
      serverData: (chunk) => this.guard(meta, () => datagram(false, chunk)),
      describe,
    }
  }

  /** Tap methods run on the proxy's data path: a bug here costs a packet, never the session. */
  private guard(meta: SessionMeta, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.dropped++
      this.logger.debug({err, session: meta.id, path: this.path}, 'recording: packet not written')
    }
  }

  private emit(frames: Buffer[], counters: TapCounters): void {
    for (const frame of frames) {
      if (this.write(frame)) counters.bytes += frame.length
      else if (this.accepting) counters.dropped++
    }
  }

  private drop(packets: number, counters: TapCounters): void {
    this.dropped += packets
    counters.dropped += packets
  }

  /** Queues one whole record, or refuses it: full file, queue over budget, or not recording. */
  private write(record: Buffer): boolean {
    if (!this.accepting) return false
    if (this.bytes + record.length > this.maxBytes) {
      this.stopFull()
      return false
    }
    if (this.stream.writableLength + record.length > this.queueBytes) {
      this.dropped++
      return false
    }
    this.stream.write(record)
    this.bytes += record.length
    this.packets++
    return true
  }

  /** Continues a file that already holds `bytes` of recording; the size limit counts them. */
  private resume(bytes: number): void {
    this.bytes = bytes
    this.logger.info({path: this.path, bytes}, `recording continues ${this.path} after its ${bytes} bytes already recorded`)
  }

  private writeHeader(): void {
    const header = pcapGlobalHeader()
    this.stream.write(header)
    this.bytes = header.length
  }

  private stopFull(): void {
    this.state = 'full'
    this.logger.warn({path: this.path, bytes: this.bytes, maxBytes: this.maxBytes}, 'recording stopped: max size reached')
    this.stream.end()
  }

  private fail(err: Error): void {
    if (this.state === 'failed') return
    this.state = 'failed'
    const code = (err as NodeJS.ErrnoException).code ?? 'error'
    this.logger.error({err, path: this.path}, `recording failed: ${code} writing ${this.path}; later packets are not recorded`)
    this.stream.destroy()
  }

  private micros(): number {
    return Math.round(this.now() * 1000)
  }
}

interface SetEntry {
  refs: number
  ready: Promise<Recording>
  recording?: Recording
}

export interface RecordingSnapshot extends RecordingStats {
  /** How many rules use this file. */
  refs: number
}

/**
 * The open recordings, keyed by absolute path and counted by the rules that use them: two rules
 * recording to the same file share one writer, and the file closes when the last rule lets go.
 */
export class RecordingSet {
  private readonly entries = new Map<string, SetEntry>()
  /** Packets dropped by recordings already closed, per file, so the metric never goes down. */
  private readonly closedDropped = new Map<string, number>()

  async acquire(path: string, opts: RecordingOptions): Promise<Recording> {
    const key = resolve(path)
    let entry = this.entries.get(key)
    if (!entry) {
      const created: SetEntry = {refs: 0, ready: Recording.open(key, opts)}
      created.ready.then((r) => (created.recording = r), () => this.entries.get(key) === created && this.entries.delete(key))
      this.entries.set(key, created)
      entry = created
    }
    entry.refs++
    return entry.ready
  }

  /** Drops one reference; the last one closes the file. */
  async release(path: string): Promise<void> {
    const key = resolve(path)
    const entry = this.entries.get(key)
    if (!entry) return
    if (--entry.refs > 0) return
    this.entries.delete(key)
    const rec = await entry.ready.catch(() => undefined)
    await rec?.close()
    if (rec) this.closedDropped.set(key, (this.closedDropped.get(key) ?? 0) + rec.stats().droppedPackets)
  }

  /** Packets dropped per file since the daemon started, open and closed recordings alike (for /metrics). */
  dropped(): Map<string, number> {
    const out = new Map(this.closedDropped)
    for (const [key, e] of this.entries) if (e.recording) out.set(key, (out.get(key) ?? 0) + e.recording.stats().droppedPackets)
    return out
  }

  get(path: string): Recording | undefined {
    return this.entries.get(resolve(path))?.recording
  }

  async closeAll(): Promise<void> {
    const entries = [...this.entries.values()]
    this.entries.clear()
    await Promise.all(entries.map(async (e) => (await e.ready.catch(() => undefined))?.close()))
  }

  snapshot(): RecordingSnapshot[] {
    const out: RecordingSnapshot[] = []
    for (const e of this.entries.values()) if (e.recording) out.push({...e.recording.stats(), refs: e.refs})
    return out
  }
}
