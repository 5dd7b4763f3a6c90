/**
 * GET /metrics (prom-client) of an in-process daemon, scraped through its admin socket after real
 * sessions over loopback: up and start time, process metrics, the per-session histograms, mirror
 * drops, and mirror copies counted on their server.
 *
 *   client 127.0.0.7x ─▶ daemon main ─▶ prod (echo)
 *                          └─ mirror tap ─▶ slow (never reads) / sink (reads, leastconn)
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import type net from 'node:net'
import {join} from 'node:path'
import {Writable} from 'node:stream'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {closed, connect, readBytes, readLine, startServer, until, type TestServer} from '../helpers/servers.js'
import type {AdminClient} from '../../src/admin/client.js'
import {adminOf, metric, metrics} from '../faults/kit.js'

/** A disk that takes bytes and never says they are written, until released. */
class StalledDisk extends Writable {
  private held: Array<() => void> = []
  private stalled = true
  override _write(_chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    if (this.stalled) this.held.push(cb)
    else cb()
  }

  release(): void {
    this.stalled = false
    for (const cb of this.held.splice(0)) cb()
  }
}

describe('issue 12.7: /metrics through prom-client', () => {
  let d: InProcess
  let admin: AdminClient
  let prod: TestServer, slow: TestServer, sink: TestServer
  let port: number
  const stalled = new StalledDisk()

  before(async () => {
    prod = await startServer('prod')
    slow = await startServer('slow', (s) => s.pause())
    sink = await startServer('sink', (s) => s.resume())
    d = await startInProcess(`
capture: { mirror_buffer: 64KiB }
listeners:
  - { name: main, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  slow: { servers: [ { address: "${slow.address}" } ] }
  sink: { balance: leastconn, servers: [ { address: "${sink.address}" } ] }
`)
    port = d.daemon.proxies.get('main')!.address()!.port
    admin = adminOf(d)
  })

  after(async () => {
    stalled.release()
    await admin?.close()
    await d?.stop()
    await Promise.all([prod, slow, sink].map((s) => s?.close()))
  })

  /** Sessions the daemon has recorded as closed, all causes. */
  const closedCount = (): number => d.daemon.registry.counters().reduce((n, c) => n + Object.values(c.closedBy).reduce((a, b) => a + b, 0), 0)

  /** One echo session from `source`: greeting, `bytes` echoed back, then a clean close the daemon has recorded. */
  async function session(source: string, bytes: number, whileLive?: () => Promise<void>): Promise<void> {
    const closedBefore = closedCount()
    const c: net.Socket = await connect({port, localAddress: source})
    assert.equal(await readLine(c), 'prod')
    const chunk = Buffer.alloc(64 * 1024, 7)
    for (let sent = 0; sent < bytes; sent += chunk.length) {
      const back = readBytes(c, chunk.length)
      c.write(chunk)
      await back
    }
    await whileLive?.()
    const done = closed(c)
    c.end()
    await done
    await until(() => closedCount() > closedBefore, 5000, 'session recorded as closed')
  }

  test('issue 12.7: divert_up is 1, divert_start_time_seconds is the start, process and event-loop metrics are present', async () => {
    const m = await metrics(d)
    assert.equal(m.get('divert_up'), 1)
    const start = m.get('divert_start_time_seconds')
    assert.ok(start !== undefined && Math.abs(start - d.daemon.startedAt / 1000) < 0.001, `divert_start_time_seconds ${start} is the daemon's start`)
    assert.ok(Math.abs(start - Date.now() / 1000) < 120, `divert_start_time_seconds ${start} is close to now`)
    for (const name of ['process_start_time_seconds', 'process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
      assert.ok([...m.keys()].some((k) => k === name || k.startsWith(`${name}{`)), `${name} is exported`)
    }
  })

  test('issue 12.7: the connect and session duration histograms count one observation per session', async () => {
    const before = await metrics(d)
    const count = (m: Map<string, number>): [number, number] => [
      metric(m, 'divert_connect_duration_seconds_count', {listener: 'main', backend: 'prod'}),
      metric(m, 'divert_session_duration_seconds_count', {listener: 'main', backend: 'prod', protocol: 'tcp'}),
    ]
    for (let i = 0; i < 3; i++) await session('127.0.0.70', 64 * 1024)
    const m = await metrics(d)
    const [connects, sessions] = count(m)
    const [connects0, sessions0] = count(before)
    assert.deepEqual({connects: connects - connects0, sessions: sessions - sessions0}, {connects: 3, sessions: 3})
    assert.equal(metric(m, 'divert_session_duration_seconds_bucket', {listener: 'main', backend: 'prod', protocol: 'tcp', le: '+Inf'}), sessions)
  })

  test('issue 12.7: a mirror server that never reads: the bytes the mirror drops are in divert_mirror_dropped_bytes_total', async () => {
    await admin.addRule({source: '127.0.0.71', mirror: 'slow'})
    // 16 MiB through a 64 KiB mirror buffer to a server that never reads: past the kernel's socket buffers too.
    await session('127.0.0.71', 16 * 1024 * 1024)
    const m = await metrics(d)
    const dropped = metric(m, 'divert_mirror_dropped_bytes_total', {backend: 'slow'})
    assert.ok(dropped > 0, `divert_mirror_dropped_bytes_total{backend="slow"} is ${dropped}`)
    assert.ok(dropped <= 16 * 1024 * 1024)
  })

  test('issue 12.7: a leastconn mirror server counts the mirrored session while it lives, and 0 after', async () => {
    await admin.addRule({source: '127.0.0.72', mirror: 'sink'})
    const labels = {backend: 'sink', server: sink.address}
    await session('127.0.0.72', 64 * 1024, async () => {
      const m = await metrics(d)
      assert.deepEqual({active: metric(m, 'divert_server_sessions_active', labels), total: metric(m, 'divert_server_sessions_total', labels)}, {active: 1, total: 1})
    })
    const m = await metrics(d)
    assert.deepEqual({active: metric(m, 'divert_server_sessions_active', labels), total: metric(m, 'divert_server_sessions_total', labels)}, {active: 0, total: 1})
  })

  test('issue 12.7: a recording whose disk falls behind: the packets it drops are in divert_recording_dropped_total', async () => {
    const path = join(d.daemon.config.file, '..', 'slow.pcap')
    // The daemon's own RecordingSet, holding the file first with a disk that never finishes a write
    // and a small queue; the rule below takes another reference on the same recording.
    await d.daemon.recordings.acquire(path, {maxBytes: 1e9, queueBytes: 64 * 1024, openStream: async () => stalled})
    await admin.addRule({source: '127.0.0.73', record: path})
    await session('127.0.0.73', 1024 * 1024)
    const dropped = metric(await metrics(d), 'divert_recording_dropped_total', {file: path})
    assert.ok(dropped > 0, `divert_recording_dropped_total{file="${path}"} is ${dropped}`)
  })
})
