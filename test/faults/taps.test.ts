/**
 * Tap faults: a mirror backend that is down, one that never reads (its buffer fills), a recording
 * on a disk that fills up, and a recording asked for in a read-only directory. A tap never slows or
 * breaks the session it observes (docs/DESIGN.md §2): the client's bytes come back intact while the tap
 * reports its state in `divert sessions` and a log line with the cause, and the control session
 * through the same daemon notices nothing.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import {join} from 'node:path'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {startServer, connect, readLine, readBytes, freePort, whoAnswers, type TestServer} from '../helpers/servers.js'
import type {DivertError} from '../../src/errors.js'
import {ControlSession, Tmpfs, adminOf, closedLine, sessions} from './kit.js'

/** Opens a session from `source` on `port`, moves `n` random bytes through the echo, returns what `divert sessions` said mid-way. */
async function echoThrough(port: number, source: string, n: number, d: InProcess): Promise<{view: Record<string, any>; client: string}> {
  const s = await connect({port, localAddress: source})
  const client = `${source}:${s.localPort}`
  try {
    assert.equal(await readLine(s), 'prod')
    const payload = randomBytes(n)
    const back = readBytes(s, n, 20_000)
    s.write(payload)
    assert.ok((await back).equals(payload), `${n} bytes came back intact`)
    const view = (await sessions(d)).find((x) => x.client === client)
    assert.ok(view, 'divert sessions lists the session')
    return {view, client}
  } finally {
    s.end()
  }
}

describe('tap faults', () => {
  let d: InProcess
  let control: ControlSession
  let calm: TestServer, prod: TestServer, deaf: TestServer
  let full: Tmpfs | string, readOnly: Tmpfs | string
  const port: Record<string, number> = {}
  let downPort: number

  before(async () => {
    calm = await startServer('calm')
    prod = await startServer('prod')
    deaf = await startServer('deaf', (socket) => socket.pause())
    downPort = await freePort()
    for (const l of ['ctl', 'main']) port[l] = await freePort()
    full = Tmpfs.mount(64 * 1024)
    readOnly = Tmpfs.mount(64 * 1024)
    const none = 'health: { check: none }'
    d = await startInProcess(`
capture: { mirror_buffer: 256KiB }
listeners:
  - { name: ctl, bind: "127.0.0.1:${port.ctl}", backend: calm }
  - { name: main, bind: "127.0.0.1:${port.main}", backend: prod }
backends:
  calm: { servers: [ { address: "${calm.address}" } ], ${none} }
  prod: { servers: [ { address: "${prod.address}" } ], ${none} }
  down: { servers: [ { address: "127.0.0.1:${downPort}" } ], ${none} }
  deaf: { servers: [ { address: "${deaf.address}" } ], ${none} }
rules:
  - { source: 127.0.0.31, mirror: down }
  - { source: 127.0.0.32, mirror: deaf }
`, {tickMs: 50})
    control = await ControlSession.open(d, port.ctl)
  })

  after(async () => {
    control?.close()
    await d?.stop()
    await Promise.all([calm, prod, deaf].map((s) => s?.close()))
    for (const t of [full, readOnly]) if (t instanceof Tmpfs) t.unmount()
  })

  test('a mirror backend that is down: the session works, the mirror shows failed with the cause, a log line says so', async () => {
    const {view, client} = await echoThrough(port.main, '127.0.0.31', 1024 * 1024, d)
    assert.equal(view.taps?.mirror?.state, 'failed')
    assert.equal(view.taps?.mirror?.error, 'ECONNREFUSED')
    assert.equal(view.taps?.mirror?.bytes, 0)
    const warned = d.logs.find(/^mirror failed: ECONNREFUSED; this session is no longer mirrored$/)
    assert.ok(warned.some((l) => l.backend === 'down' && l.server === `127.0.0.1:${downPort}`))
    assert.equal((await closedLine(d, client)).cause, 'client-closed')
    await control.assertUntouched()
  })

  test('a mirror that never reads: 8 MiB go through intact, the mirror overflows its 256 KiB buffer and counts the drops', async () => {
    const {view} = await echoThrough(port.main, '127.0.0.32', 8 * 1024 * 1024, d)
    assert.equal(view.taps?.mirror?.state, 'overflow')
    assert.ok(view.taps?.mirror?.dropped > 0, 'drops are counted')
    assert.ok(view.taps.mirror.bytes + view.taps.mirror.dropped <= 8 * 1024 * 1024)
    assert.ok(d.logs.find(/^mirror overflow/).some((l) => l.backend === 'deaf' && l.bufferBytes === 256 * 1024))
    await control.assertUntouched()
  })

  test('a recording on a disk that fills up: the session goes on intact, the recording says failed, an error line names ENOSPC and the file', async (t) => {
    if (typeof full === 'string') return t.skip(full)
    const file = join(full.dir, 'full.pcap')
    const admin = adminOf(d)
    try {
      const added = await admin.addRule({source: '127.0.0.33', record: file})
      const {view, client} = await echoThrough(port.main, '127.0.0.33', 2 * 1024 * 1024, d)
      assert.equal(view.taps?.record?.path, file)
      assert.equal(view.taps?.record?.state, 'failed')
      assert.equal((await closedLine(d, client)).cause, 'client-closed')
      const logged = d.logs.find(`recording failed: ENOSPC writing ${file}; later packets are not recorded`)
      assert.equal(logged.length, 1, 'one error line, not one per packet')
      assert.equal(logged[0].level, 50)
      // The same rule goes on routing its sessions normally; removing it closes the failed file quietly.
      assert.equal(await whoAnswers(port.main, '127.0.0.33'), 'prod')
      await admin.removeRule(added.rule.id)
    } finally {
      await admin.close()
    }
    await control.assertUntouched()
  })

  test('a recording asked for in a read-only directory: the add is refused with EROFS and the path; nothing else changes', async (t) => {
    if (typeof readOnly === 'string') return t.skip(readOnly)
    readOnly.readOnly(true)
    const file = join(readOnly.dir, 'ro.pcap')
    const admin = adminOf(d)
    const rulesBefore = (await admin.rules()).length
    try {
      await assert.rejects(admin.addRule({source: '127.0.0.34', to: 'calm', record: file}), (e: DivertError) => {
        assert.equal(e.code, 'DIVERT_ERR_RECORD_FAILED')
        assert.match(e.message, new RegExp(`^cannot record to ${file.replace(/[.]/g, '\\.')}: EROFS .*check the path and its permissions$`))
        return true
      })
      assert.equal((await admin.rules()).length, rulesBefore, 'no rule was added')
    } finally {
      await admin.close()
    }
    assert.equal(await whoAnswers(port.main, '127.0.0.34'), 'prod', 'the source still goes where it went')
    await control.assertUntouched()
  })

  test('after all of that: the only error-level line is the full disk one', () => {
    const errors = d.logs.lines.filter((l) => l.level >= 50).map((l) => String(l.msg))
    assert.ok(errors.every((m) => /^recording failed: ENOSPC/.test(m)), errors.join('\n'))
  })
})
