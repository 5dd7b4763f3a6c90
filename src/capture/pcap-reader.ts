/**
 * Reading a classic pcap file into decoded TCP/UDP packets, over pcap-parser, with the checks
 * pcap-parser lacks: pcapng and unknown magic numbers, nanosecond files, unsupported link types and
 * absurd record lengths each become a DivertError that says what to do; a cut last record is reported
 * (`truncated`) after the whole records before it are read.
 *
 *   file → sniff header → (ns magic rewritten to µs) → pcap-parser records → decodeFrame → onPacket
 *
 * File layout: draft-ietf-opsawg-pcap §3-§5 (24-byte file header, 16-byte record headers).
 */
import {open} from 'node:fs/promises'
import {createReadStream} from 'node:fs'
import {Transform, type TransformCallback, type Readable} from 'node:stream'
import {createRequire} from 'node:module'
import type {EventEmitter} from 'node:events'
import {DivertError} from '../errors.js'
import {decodeFrame, isSupportedLinktype, linktypeName, supportedLinktypes, type DecodedPacket} from './decode.js'

export interface SkipCount {
  reason: string
  count: number
}

export interface CaptureHeader {
  linktype: number
  nanosecond: boolean
  littleEndian: boolean
  snaplen: number
}

/** A file whose last record is cut short (copied while tcpdump was still writing it). */
export interface Truncation {
  /** Byte offset where the cut record starts, after `records` whole ones. */
  offset: number
  /** Bytes of the cut record that are in the file. */
  present: number
  /** Bytes its header promised beyond those (a lower bound when the header itself is cut). */
  missing: number
  /** What to tell the user: where, how short, and that the whole packets before it were read. */
  warning: string
}

export interface Capture extends CaptureHeader {
  /** Decoded TCP/UDP packets, in file order; empty when `onPacket` took them. */
  packets: DecodedPacket[]
  /** Whole records in the file (decoded or skipped). */
  records: number
  skipped: SkipCount[]
  /** Set when the last record is cut: the records before it were read, as tcpdump and tshark do. */
  truncated?: Truncation
}

export interface ReadCaptureOptions {
  /** Receives each decoded packet instead of collecting it (keeps memory flat for big files). */
  onPacket?: (packet: DecodedPacket) => void
  signal?: AbortSignal
}

interface PcapRecord {
  header: {timestampSeconds: number; timestampMicroseconds: number; capturedLength: number; originalLength: number}
  data: Buffer
}
interface PcapParser extends EventEmitter {
  stream: Readable
}
const require = createRequire(import.meta.url)
const pcapParser = require('pcap-parser') as {parse(input: Readable): PcapParser}

const FILE_HEADER = 24
const RECORD_HEADER = 16
/** libpcap refuses records longer than this for every link type we decode (MAXIMUM_SNAPLEN in pcap-int.h). */
const MAX_CAPLEN = 262144
const PCAPNG_MAGIC = 0x0a0d0d0a

const MAGICS: Record<number, {nanosecond: boolean}> = {
  0xa1b2c3d4: {nanosecond: false},
  0xa1b23c4d: {nanosecond: true},
}

/** Reads and decodes every record of `path`. Rejects with PCAP_FORMAT / PCAP_CORRUPT, never hangs. */
export async function readCapture(path: string, opts: ReadCaptureOptions = {}): Promise<Capture> {
  const {first, size} = await readFirstBytes(path)
  const header = parseFileHeader(path, first, size)
  const packets: DecodedPacket[] = []
  const onPacket = opts.onPacket ?? ((p: DecodedPacket) => void packets.push(p))
  const {records, skipped, truncated} = await streamRecords(path, header, onPacket, opts.signal)
  return {...header, packets, records, skipped, ...(truncated ? {truncated} : {})}
}

async function readFirstBytes(path: string): Promise<{first: Buffer; size: number}> {
  let handle
  try {
    handle = await open(path, 'r')
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    throw new DivertError('PCAP_READ', `cannot open capture file ${path}: ${code === 'ENOENT' ? 'no such file' : String((e as Error).message)}`, {cause: e})
  }
  try {
    const stat = await handle.stat()
    if (!stat.isFile()) throw new DivertError('PCAP_READ', `${path} is not a regular file: give the path of a .pcap file`)
    const size = stat.size
    const first = Buffer.alloc(Math.min(FILE_HEADER, size))
    await handle.read(first, 0, first.length, 0)
    return {first, size}
  } catch (e) {
    if (e instanceof DivertError) throw e
    throw new DivertError('PCAP_CORRUPT', `cannot read capture file ${path}: ${(e as Error).message}`, {cause: e})
  } finally {
    await handle.close()
  }
}

/** Validates the 24-byte file header (draft-ietf-opsawg-pcap §4). Pure, for tests. */
export function parseFileHeader(path: string, first: Buffer, size: number): CaptureHeader {
  if (size === 0) {
    throw new DivertError('PCAP_CORRUPT', `${path} is empty: a pcap file starts with a 24-byte header (was the capture stopped before it wrote anything?)`)
  }
  if (first.length >= 4) checkMagic(path, first)
  if (size < FILE_HEADER) {
    throw new DivertError('PCAP_CORRUPT', `${path} is truncated: it has ${size} bytes, less than the 24-byte pcap file header`)
  }
  const littleEndian = first.readUInt32LE(0) in MAGICS
  const u16 = (o: number): number => (littleEndian ? first.readUInt16LE(o) : first.readUInt16BE(o))
  const u32 = (o: number): number => (littleEndian ? first.readUInt32LE(o) : first.readUInt32BE(o))
  const nanosecond = MAGICS[u32(0)].nanosecond
  if (u16(4) !== 2) {
    throw new DivertError('PCAP_FORMAT', `${path} is pcap version ${u16(4)}.${u16(6)}; divert reads version 2.4 (what tcpdump writes)`)
  }
  // The upper 16 bits may carry FCS information; the link type is the lower 16 (draft-ietf-opsawg-pcap §4).
  const linktype = u32(20) & 0xffff
  if (!isSupportedLinktype(linktype)) {
    throw new DivertError('PCAP_FORMAT', `${path} has ${linktypeName(linktype)}, which divert cannot decode; supported link types: ${supportedLinktypes()}. Capture with \`tcpdump -i any\` or on an Ethernet interface`)
  }
  return {linktype, nanosecond, littleEndian, snaplen: u32(16)}
}

function checkMagic(path: string, first: Buffer): void {
  const be = first.readUInt32BE(0)
  if (be === PCAPNG_MAGIC) {
    throw new DivertError('PCAP_FORMAT', `${path} is pcapng, not classic pcap: convert it with \`editcap -F pcap ${path} out.pcap\` (or capture with \`tcpdump -w\`)`)
  }
  if (be in MAGICS || first.readUInt32LE(0) in MAGICS) return
  const bytes = [...first.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ')
  throw new DivertError('PCAP_FORMAT', `${path} is not a pcap file: it starts with bytes ${bytes}${magicHint(first)}, not a pcap magic number (a1 b2 c3 d4 or a1 b2 3c 4d, either byte order)`)
}

function magicHint(first: Buffer): string {
  if (first[0] === 0x1f && first[1] === 0x8b) return ' (gzip: run gunzip on it first)'
  const v = first.readUInt32BE(0)
  if (v === 0xa1b2cd34 || v === 0x34cdb2a1) return ' (Kuznetzov "modified" pcap: convert it with `editcap -F pcap`)'
  return ''
}

interface RecordStats {
  records: number
  skipped: SkipCount[]
  truncated?: Truncation
}

/** Runs pcap-parser over the file and decodes each record; resolves when the whole file is read. */
function streamRecords(path: string, header: CaptureHeader, onPacket: (p: DecodedPacket) => void, signal?: AbortSignal): Promise<RecordStats> {
  return new Promise((resolve, reject) => new RecordReader(path, header, onPacket, resolve, reject).start(signal))
}

/** One pass of pcap-parser over a file, settling exactly once: done, corrupt, truncated or aborted. */
class RecordReader {
  private readonly counter: MagicRewriter
  private readonly skips = new Map<string, number>()
  private records = 0
  /** Bytes of whole records (and the file header) pcap-parser handed over. */
  private consumed = FILE_HEADER
  /** incl_len of the last record header seen: the cut record's, when the file ends inside its packet. */
  private lastCaplen = 0
  private settled = false
  private cleanup = (): void => undefined

  constructor(
    private readonly path: string,
    private readonly header: CaptureHeader,
    private readonly onPacket: (p: DecodedPacket) => void,
    private readonly resolve: (s: RecordStats) => void,
    private readonly reject: (e: unknown) => void,
  ) {
    this.counter = new MagicRewriter(header)
  }

  start(signal?: AbortSignal): void {
    const file = createReadStream(this.path)
    file.on('error', (e) => this.fail(new DivertError('PCAP_CORRUPT', `cannot read capture file ${this.path}: ${e.message}`, {cause: e})))
    const onAbort = (): void => this.fail(signal?.reason ?? new Error('aborted'))
    signal?.addEventListener('abort', onAbort, {once: true})
    this.cleanup = () => {
      signal?.removeEventListener('abort', onAbort)
      file.destroy()
      this.counter.destroy()
    }
    file.pipe(this.counter)
    const parser = pcapParser.parse(this.counter)
    parser.on('packetHeader', (h: PcapRecord['header']) => this.checkLength(h.capturedLength))
    parser.on('packet', (rec: PcapRecord) => this.record(rec))
    parser.on('error', (e: Error) => this.fail(new DivertError('PCAP_CORRUPT', `cannot read ${this.path}: ${e.message}`, {cause: e})))
    parser.on('end', () => this.end())
    if (signal?.aborted) onAbort()
  }

  private checkLength(caplen: number): void {
    this.lastCaplen = caplen
    if (caplen <= MAX_CAPLEN) return
    this.fail(new DivertError('PCAP_CORRUPT', `${this.path} is corrupt: record ${this.records + 1} at byte offset ${this.consumed} claims ${caplen} captured bytes, more than any pcap record holds (${MAX_CAPLEN})`))
  }

  private record(rec: PcapRecord): void {
    if (this.settled) return
    this.records++
    this.consumed += RECORD_HEADER + rec.data.length
    const h = rec.header
    const sub = this.header.nanosecond ? Math.floor(h.timestampMicroseconds / 1000) : h.timestampMicroseconds
    const r = decodeFrame(this.header.linktype, rec.data, h.timestampSeconds * 1e6 + sub)
    if (r.skip !== undefined) {
      this.skips.set(r.skip, (this.skips.get(r.skip) ?? 0) + 1)
      return
    }
    // pcap-parser emits from inside the stream's 'data' handler: a throw here would escape as uncaught.
    try {
      this.onPacket(detach(r.packet))
    } catch (e) {
      this.fail(e)
    }
  }

  /**
   * A cut last record is not the end of the world: tcpdump and tshark read the whole packets before it
   * and warn ("truncated dump file", pcap_next_ex(3PCAP)), so do we. With no whole packet at all, there
   * is nothing to read and the file is refused.
   */
  private end(): void {
    if (this.settled) return
    let cut: Truncation | undefined
    if (this.counter.bytes !== this.consumed) {
      cut = truncation(this.path, this.records, this.consumed, this.counter.bytes, this.lastCaplen)
      if (this.records === 0) return this.fail(new DivertError('PCAP_CORRUPT', cut.warning, {details: {offset: cut.offset, missing: cut.missing}}))
    }
    this.settled = true
    this.cleanup()
    this.resolve({records: this.records, skipped: [...this.skips].map(([reason, count]) => ({reason, count})), ...(cut ? {truncated: cut} : {})})
  }

  private fail(e: unknown): void {
    if (this.settled) return
    this.settled = true
    this.cleanup()
    this.reject(e)
  }
}

/**
 * Where the file ends inside its last record, and how short it is: what the header promised (16 bytes
 * of header, then incl_len of packet) minus what is there. A cut header is at least 16 − present short.
 */
function truncation(path: string, records: number, offset: number, size: number, caplen: number): Truncation {
  const present = size - offset
  const inHeader = present < RECORD_HEADER
  const missing = inHeader ? RECORD_HEADER - present : RECORD_HEADER + caplen - present
  const where = inHeader
    ? `inside a record header (${present} of its ${RECORD_HEADER} bytes present, ${missing} bytes short)`
    : `inside a packet (its header says incl_len ${caplen}, ${present - RECORD_HEADER} bytes present, ${missing} bytes short)`
  const warning = `the last record of ${path} is cut short at byte offset ${offset}: the file ends ${where}; ` +
    `only the ${records} whole packets before it are read. ${COPIED_WHILE_RUNNING}`
  return {offset, present, missing, warning: records === 0 ? `${path} is truncated inside its first record: the file ends ${where}. ${COPIED_WHILE_RUNNING}` : warning}
}

const COPIED_WHILE_RUNNING = 'Was it copied while the capture was still running? Stop tcpdump first (it flushes on SIGINT/SIGTERM), or capture with -U'

const EMPTY = Buffer.alloc(0)

/** Copies the payload so the record's buffer (and the read chunk behind it) can be freed. */
function detach(p: DecodedPacket): DecodedPacket {
  p.payload = p.payload.length === 0 ? EMPTY : Buffer.from(p.payload)
  return p
}

/**
 * Counts the bytes that pass (to tell a truncated file from a complete one) and, for a nanosecond
 * file, rewrites the magic to the microsecond one so pcap-parser accepts it; the sub-second field is
 * then nanoseconds, converted by the caller.
 */
class MagicRewriter extends Transform {
  bytes = 0
  private readonly magic?: Buffer

  constructor(header: CaptureHeader) {
    super()
    if (header.nanosecond) {
      this.magic = Buffer.alloc(4)
      if (header.littleEndian) this.magic.writeUInt32LE(0xa1b2c3d4)
      else this.magic.writeUInt32BE(0xa1b2c3d4)
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let out = chunk
    if (this.magic && this.bytes < 4) {
      out = Buffer.from(chunk)
      for (let i = 0; i < out.length && this.bytes + i < 4; i++) out[i] = this.magic[this.bytes + i]
    }
    this.bytes += chunk.length
    done(null, out)
  }
}
