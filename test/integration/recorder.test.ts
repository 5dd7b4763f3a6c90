/**
 * Recording and RecordingSet against real files (and injected slow or failing sinks), read back with
 * a small pcap decoder and, when installed, with tshark.
 */
import {after, before, describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {execFile} from 'node:child_process'
import {EventEmitter, once} from 'node:events'
import {createWriteStream} from 'node:fs'
import {chmod, mkdtemp, readFile, rm, stat, symlink, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, relative} from 'node:path'
import {Writable} from 'node:stream'
import {promisify} from 'node:util'
import pino from 'pino'
import {Recording, RecordingSet} from '../../src/capture/recorder.js'
import type {SessionMeta} from '../../src/session/types.js'
import type {DivertError} from '../../src/errors.js'

const run = promisify(execFile)

// ─── helpers ──────────────────────────────────────────────────────────────────────────────────

interface Packet {
  tsUsec: number
  proto: number
  src: string
  sport: number
  flags: number
  seq: number
  payload: Buffer
}

/** Walks a classic pcap file record by record; throws unless the last record ends exactly at EOF. */
function parsePcap(file: Buffer): Packet[] {
  assert.equal(file.readUInt32LE(0), 0xa1b2c3d4, 'pcap magic')
  const out: Packet[] = []
  let off = 24
  while (off < file.length) {
    assert.ok(off + 16 <= file.length, `record header at ${off} is cut short`)
    const len = file.readUInt32LE(off + 8)
    assert.ok(off + 16 + len <= file.length, `record at ${off} is cut short`)
    out.push(decodeFrame(file.subarray(off + 16, off + 16 + len), file.readUInt32LE(off + 4)))
    off += 16 + len
  }
  assert.equal(off, file.length, 'file ends at a record boundary')
  return out
}

function decodeFrame(f: Buffer, tsUsec: number): Packet {
  const v4 = f.readUInt16BE(12) === 0x0800
  const ip = f.subarray(14)
  const proto = v4 ? ip[9] : ip[6]
  const src = v4 ? [...ip.subarray(12, 16)].join('.') : ip.subarray(8, 24).toString('hex')
  const l4 = ip.subarray(v4 ? 20 : 40)
  if (proto === 17) return {tsUsec, proto, src, sport: l4.readUInt16BE(0), flags: 0, seq: 0, payload: l4.subarray(8)}
  return {tsUsec, proto, src, sport: l4.readUInt16BE(0), flags: l4[13], seq: l4.readUInt32BE(4), payload: l4.subarray((l4[12] >> 4) * 4)}
}

const FIN = 0x01
const SYN = 0x02
const RST = 0x04
const ACK = 0x10

function meta(over: Partial<SessionMeta> = {}): SessionMeta {
  return {
    id: 'sess-1',
    protocol: 'tcp',
    listener: 'telnet',
    backend: 'prod',
    client: {address: '127.0.0.1', port: 40_000, family: 4},
    server: {address: '127.0.0.2', port: 2323, family: 4},
    startedAt: 1_700_000_000_000,
    ...over,
  }
}

/** A fake clock in epoch ms, advancing 1.5 ms per reading. */
function fakeNow(): () => number {
  let t = 1_700_000_000_000
  return () => (t += 1.5)
}

/** A pino logger whose lines the test can read and wait for. */
function captureLogs(): {logger: pino.Logger; lines: {level: number; msg: string}[]; events: EventEmitter} {
  const lines: {level: number; msg: string}[] = []
  const events = new EventEmitter()
  const sink = new Writable({
    write(chunk, _enc, cb) {
      const line = JSON.parse(String(chunk))
      lines.push(line)
      events.emit('line', line)
      cb()
    },
  })
  return {logger: pino({level: 'debug'}, sink), lines, events}
}

/** A sink that takes bytes only when the test lets it: a disk that has stalled. */
class StalledSink extends Writable {
  readonly chunks: Buffer[] = []
  private held: (() => void)[] = []
  private stalled = true
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.chunks.push(chunk)
    if (this.stalled) this.held.push(cb)
    else cb()
  }
  release(): void {
    this.stalled = false
    for (const cb of this.held.splice(0)) cb()
  }
}

let dir: string
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'divert-recorder-'))
})
after(async () => {
  await rm(dir, {recursive: true, force: true})
})

// ─── tests ────────────────────────────────────────────────────────────────────────────────────

describe('Recording.open', () => {
  it('creates the file owner-only; an empty existing file is refused and left as it was (mode 0644)', async () => {
    const fresh = join(dir, 'mode.pcap')
    const rec = await Recording.open(fresh, {maxBytes: 1e6})
    await rec.close()
    const st = await stat(fresh)
    assert.equal(st.mode & 0o777, 0o600)
    assert.equal(st.size, 24)
    assert.deepEqual(parsePcap(await readFile(fresh)), [])
    const empty = join(dir, 'empty.pcap')
    await writeFile(empty, '')
    await chmod(empty, 0o644)
    await assert.rejects(Recording.open(empty, {maxBytes: 1e6}), (e: DivertError) => e.code === 'DIVERT_ERR_RECORD_FAILED' && /is not a divert recording \(it is empty\)/.test(e.message))
    assert.equal((await stat(empty)).mode & 0o777, 0o644)
    assert.equal((await stat(empty)).size, 0)
  })

  it('refuses to overwrite a file that is not a divert recording, or to follow a symlink', async () => {
    const path = join(dir, 'notes.txt')
    await writeFile(path, 'somebody else\'s notes')
    await assert.rejects(Recording.open(path, {maxBytes: 1e6}), (e: DivertError) => e.code === 'DIVERT_ERR_RECORD_FAILED' && /not a divert recording: refusing to overwrite/.test(e.message))
    assert.equal(await readFile(path, 'utf8'), 'somebody else\'s notes')
    const link = join(dir, 'link.pcap')
    await symlink(path, link)
    await assert.rejects(Recording.open(link, {maxBytes: 1e6}), (e: DivertError) => e.code === 'DIVERT_ERR_RECORD_FAILED' && /symbolic link/.test(e.message))
    assert.equal(await readFile(path, 'utf8'), 'somebody else\'s notes')
  })


  it('refuses a path whose directory does not exist, naming it', async () => {
    const path = join(dir, 'no-such-dir', 'x.pcap')
    await assert.rejects(Recording.open(path, {maxBytes: 1e6}), (err: Error & {code?: string}) => {
      assert.equal(err.code, 'DIVERT_ERR_RECORD_FAILED')
      assert.match(err.message, /no-such-dir does not exist/)
      return true
    })
  })

  it('refuses a max size smaller than the pcap header', async () => {
    await assert.rejects(Recording.open(join(dir, 'tiny.pcap'), {maxBytes: 10}), {code: 'DIVERT_ERR_RECORD_FAILED'})
  })
})

describe('Recording taps', () => {
  it('records a TCP session: handshake, data both ways, FINs and the final ACK', async () => {
    const path = join(dir, 'tcp.pcap')
    const rec = await Recording.open(path, {maxBytes: 1e7, now: fakeNow()})
    const tap = rec.tap(meta())
    tap.clientData!(Buffer.from('GET / HTTP/1.0\r\n\r\n'))
    tap.serverData!(Buffer.alloc(100_000, 0x41))
    tap.clientEnd!()
    tap.serverEnd!()
    tap.close!('client-closed', false)
    assert.deepEqual(tap.describe!(), {record: {path, state: 'recording', bytes: rec.stats().bytesWritten - 24, dropped: 0}})
    await rec.close()
    const pkts = parsePcap(await readFile(path))
    const flags = pkts.map((p) => p.flags)
    assert.deepEqual(flags.slice(0, 3), [SYN, SYN | ACK, ACK])
    assert.deepEqual(flags.slice(-3), [FIN | ACK, FIN | ACK, ACK])
    const from = (src: string): string => Buffer.concat(pkts.filter((p) => p.src === src).map((p) => p.payload)).toString('latin1')
    assert.equal(from('127.0.0.1'), 'GET / HTTP/1.0\r\n\r\n')
    assert.equal(from('127.0.0.2'), 'A'.repeat(100_000))
    assert.ok(pkts.every((p, i) => i === 0 || p.tsUsec >= pkts[i - 1].tsUsec || p.tsUsec < 1000), 'timestamps from the injected clock')
    assert.deepEqual(rec.stats(), {path, state: 'closed', bytesWritten: (await stat(path)).size, packets: pkts.length, droppedPackets: 0})
  })

  it('writes the RST from the side the cause names', async () => {
    for (const [cause, src] of [['client-reset', '127.0.0.1'], ['server-error', '127.0.0.2'], ['killed', '127.0.0.2']] as const) {
      const path = join(dir, `rst-${cause}.pcap`)
      const rec = await Recording.open(path, {maxBytes: 1e6})
      const tap = rec.tap(meta())
      tap.clientData!(Buffer.from('x'))
      tap.close!(cause, true)
      tap.clientData!(Buffer.from('after the reset'))
      await rec.close()
      const last = parsePcap(await readFile(path)).at(-1)!
      assert.equal(last.flags, RST | ACK, cause)
      assert.equal(last.src, src, cause)
    }
  })

  it('completes a session closed without FINs with both FINs, the cause side first', async () => {
    const path = join(dir, 'nofin.pcap')
    const rec = await Recording.open(path, {maxBytes: 1e6})
    rec.tap(meta()).close!('server-closed', false)
    await rec.close()
    const pkts = parsePcap(await readFile(path))
    assert.deepEqual(pkts.slice(3).map((p) => [p.src, p.flags]), [['127.0.0.2', FIN | ACK], ['127.0.0.1', FIN | ACK], ['127.0.0.2', ACK]])
  })

  it('records a UDP flow datagram by datagram', async () => {
    const path = join(dir, 'udp.pcap')
    const rec = await Recording.open(path, {maxBytes: 1e6})
    const tap = rec.tap(meta({protocol: 'udp', client: {address: '::1', port: 5000, family: 6}, server: {address: '::1', port: 1194, family: 6}}))
    tap.clientData!(Buffer.from('ping'))
    tap.serverData!(Buffer.from('pong'))
    tap.close?.('idle-timeout', false)
    await rec.close()
    const pkts = parsePcap(await readFile(path))
    assert.deepEqual(pkts.map((p) => [p.proto, p.sport, p.payload.toString()]), [[17, 5000, 'ping'], [17, 1194, 'pong']])
  })

  it('stops at max size on a record boundary, logs it once, and later taps are no-ops', async () => {
    const path = join(dir, 'full.pcap')
    const {logger, lines} = captureLogs()
    const rec = await Recording.open(path, {maxBytes: 1000, logger})
    const tap = rec.tap(meta())
    for (let i = 0; i < 20; i++) tap.clientData!(Buffer.alloc(100, i))
    const late = rec.tap(meta({id: 'sess-2'}))
    late.clientData!(Buffer.alloc(10))
    assert.equal(rec.stats().state, 'full')
    await rec.close()
    const file = await readFile(path)
    assert.ok(file.length <= 1000 && file.length > 1000 - 170, `size ${file.length}`)
    const pkts = parsePcap(file)
    // 24 + 78 (SYN) + 78 (SYN-ACK) + 70 (ACK) = 250; each 100-byte segment is a 170-byte record.
    assert.equal(pkts.length, 3 + 4)
    assert.equal(lines.filter((l) => l.msg === 'recording stopped: max size reached').length, 1)
    assert.equal(rec.stats().bytesWritten, file.length)
  })

  it('drops and counts packets when the disk falls behind, without slowing the session', async () => {
    const sink = new StalledSink()
    const rec = await Recording.open(join(dir, 'slow.pcap'), {maxBytes: 1e9, queueBytes: 256 * 1024, openStream: async () => sink})
    const tap = rec.tap(meta())
    const chunk = Buffer.alloc(64 * 1024, 7)
    const t0 = performance.now()
    for (let i = 0; i < 128; i++) tap.clientData!(chunk) // 8 MiB
    const elapsed = performance.now() - t0
    assert.ok(elapsed < 2000, `8 MiB of taps took ${elapsed} ms`)
    const s = rec.stats()
    assert.equal(s.state, 'recording')
    assert.ok(s.droppedPackets > 100, `dropped ${s.droppedPackets}`)
    assert.ok(s.bytesWritten <= 24 + 256 * 1024 + 100, `queued ${s.bytesWritten}`)
    assert.equal((tap.describe!().record as {dropped: number}).dropped, s.droppedPackets)
    tap.clientEnd!()
    sink.release()
    await rec.close()
    const pkts = parsePcap(Buffer.concat(sink.chunks))
    assert.equal(pkts.length, s.packets + 1, 'what was queued, plus the FIN written once the disk caught up')
    const fin = pkts.at(-1)!
    assert.equal(fin.flags, FIN | ACK)
    assert.equal(fin.seq, (pkts[0].seq + 1 + 128 * chunk.length) % 2 ** 32, 'sequence numbers skip the dropped bytes')
  })

  it('fails cleanly on a write error (ENOSPC from /dev/full): one error line, no throw, later taps no-ops', async () => {
    const {logger, lines, events} = captureLogs()
    const rec = await Recording.open(join(dir, 'devfull.pcap'), {maxBytes: 1e9, logger, openStream: async () => createWriteStream('/dev/full')})
    const tap = rec.tap(meta())
    const failed = once(events, 'line')
    tap.clientData!(Buffer.alloc(1000))
    await failed
    assert.equal(rec.stats().state, 'failed')
    const errors = lines.filter((l) => l.level === 50)
    assert.equal(errors.length, 1)
    assert.match(errors[0].msg, /recording failed: ENOSPC/)
    const before = rec.stats()
    tap.clientData!(Buffer.alloc(1000))
    tap.serverData!(Buffer.alloc(1000))
    tap.clientEnd!()
    tap.close!('client-reset', true)
    rec.tap(meta({id: 'sess-2'})).clientData!(Buffer.alloc(10))
    assert.deepEqual(rec.stats(), before)
    await rec.close()
    assert.equal(rec.stats().state, 'failed')
    assert.equal(lines.filter((l) => l.level === 50).length, 1)
  })

  it('close() is idempotent and turns live taps into no-ops', async () => {
    const path = join(dir, 'closed.pcap')
    const rec = await Recording.open(path, {maxBytes: 1e6})
    const tap = rec.tap(meta())
    await Promise.all([rec.close(), rec.close()])
    await rec.close()
    tap.clientData!(Buffer.from('late'))
    tap.close!('client-closed', false)
    assert.equal(rec.stats().state, 'closed')
    assert.equal(parsePcap(await readFile(path)).length, 3)
  })
})

describe('RecordingSet', () => {
  it('shares one writer per absolute path and closes it with the last release', async () => {
    const set = new RecordingSet()
    const abs = join(dir, 'shared.pcap')
    const [a, b] = await Promise.all([set.acquire(abs, {maxBytes: 1e6}), set.acquire(relative(process.cwd(), abs), {maxBytes: 1e6})])
    assert.equal(a, b)
    assert.equal(set.get(abs), a)
    assert.deepEqual(set.snapshot().map((s) => [s.path, s.refs, s.state]), [[abs, 2, 'recording']])
    await set.release(abs)
    assert.equal(a.stats().state, 'recording')
    await set.release(abs)
    assert.equal(a.stats().state, 'closed')
    assert.equal(set.get(abs), undefined)
    await set.release(abs)
  })

  it('forgets a path that failed to open, and closeAll closes the rest', async () => {
    const set = new RecordingSet()
    await assert.rejects(set.acquire(join(dir, 'missing', 'x.pcap'), {maxBytes: 1e6}), {code: 'DIVERT_ERR_RECORD_FAILED'})
    assert.deepEqual(set.snapshot(), [])
    const r1 = await set.acquire(join(dir, 'all-1.pcap'), {maxBytes: 1e6})
    const r2 = await set.acquire(join(dir, 'all-2.pcap'), {maxBytes: 1e6})
    await set.closeAll()
    assert.deepEqual([r1.stats().state, r2.stats().state], ['closed', 'closed'])
    assert.deepEqual(set.snapshot(), [])
  })
})

// ─── tshark cross-check ───────────────────────────────────────────────────────────────────────

const tshark = await run('sh', ['-c', 'command -v tshark']).then(() => true, () => false)

describe('recordings read back by tshark', {skip: tshark ? false : 'tshark is not installed'}, () => {
  const checks = ['-o', 'tcp.check_checksum:TRUE', '-o', 'ip.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE']
  const sent = {c2s: [] as Buffer[], s2c: [] as Buffer[]}
  let path: string

  before(async () => {
    path = join(dir, 'tshark.pcap')
    const rec = await Recording.open(path, {maxBytes: 1e8})
    const tap = rec.tap(meta())
    const say = (fromClient: boolean, b: Buffer): void => {
      ;(fromClient ? sent.c2s : sent.s2c).push(b)
      ;(fromClient ? tap.clientData! : tap.serverData!)(b)
    }
    say(true, Buffer.from('login: '))
    say(false, Buffer.from(Array.from({length: 200_000}, (_, i) => (i * 7) & 0xff)))
    say(true, Buffer.from('\x00\xff\r\n binary and text'))
    say(false, Buffer.from('bye\n'))
    tap.serverEnd!()
    tap.clientEnd!()
    tap.close!('server-closed', false)
    const v6 = rec.tap(meta({id: 'v6', client: {address: '127.0.0.1', port: 40_001, family: 4}, server: {address: '::1', port: 8080, family: 6}}))
    v6.clientData!(Buffer.from('mixed family'))
    v6.serverData!(Buffer.from('reply'))
    v6.close!('client-closed', false)
    const udp = rec.tap(meta({id: 'udp', protocol: 'udp'}))
    udp.clientData!(Buffer.from('dns?'))
    udp.serverData!(Buffer.alloc(1400, 1))
    await rec.close()
  })

  it('finds no malformed packets, bad checksums or warnings', async () => {
    const {stdout: expert} = await run('tshark', ['-r', path, ...checks, '-q', '-z', 'expert'])
    assert.doesNotMatch(expert, /^(Errors|Warns) \(/m, expert)
    const {stdout: verbose} = await run('tshark', ['-r', path, ...checks, '-V'], {maxBuffer: 64 * 1024 * 1024})
    assert.doesNotMatch(verbose, /Malformed|Bad checksum|\[Checksum Status: Bad\]|Expert Info \((Error|Warning)/)
    assert.match(verbose, /\[Checksum Status: Good\]/)
  })

  it('follows the TCP stream to the exact bytes of each direction', async () => {
    const {stdout} = await run('tshark', ['-r', path, '-q', '-z', 'follow,tcp,raw,0'], {maxBuffer: 64 * 1024 * 1024})
    const body = stdout.split('\n').filter((l) => /^\t?[0-9a-f]+$/.test(l))
    const hex = (tab: boolean): string => body.filter((l) => l.startsWith('\t') === tab).map((l) => l.trim()).join('')
    assert.equal(hex(false), Buffer.concat(sent.c2s).toString('hex'))
    assert.equal(hex(true), Buffer.concat(sent.s2c).toString('hex'))
  })

  it('sees the IPv4 client of a mixed-family session as IPv4-mapped IPv6', async () => {
    const {stdout} = await run('tshark', ['-r', path, '-q', '-z', 'follow,tcp,ascii,1'])
    assert.match(stdout, /Node 0: \[::ffff:127\.0\.0\.1\]:40001/)
    assert.match(stdout, /mixed family/)
  })
})
