/**
 * The daemon's log output when nobody reads it: `divert start` with stdout a pipe the test stops
 * reading, or closes. Logging must cost neither memory nor liveness: lines beyond a bound are dropped
 * and counted, SIGTERM still ends the process, and a closed pipe is not retried.
 */
import {test, describe, before, after} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {spawn, type ChildProcess} from 'node:child_process'
import {once} from 'node:events'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {BIN, tempDir} from '../helpers/daemon.js'
import {startServer, freePort, readLine, until, whoAnswers, type TestServer} from '../helpers/servers.js'
import {cpuTicks, openFds, rssKiB, writeCalls} from '../helpers/proc.js'

/**
 * Each ends with one "session closed" line (~330 bytes): 1,200 are ~390 KiB, more than the pipe
 * (64 KiB), this test's stream buffer (64 KiB) and the daemon's `--log-buffer 64KiB` hold.
 */
const FLOOD_SESSIONS = 1200

interface Unread {
  proc: ChildProcess
  port: number
  /** Log lines read while the test reads. */
  lines: Array<Record<string, any>>
  /** Reads stdout again (or stops reading), line by line into `lines`. */
  reading(on: boolean): void
  exited: Promise<number | null>
}

/**
 * `divert start` with stdout a pipe this test reads only when told: it is read up to the ready line,
 * then left unread (a paused stream stops reading once its buffer is full, so the pipe fills).
 */
async function startUnread(dir: string, name: string, backend: TestServer): Promise<Unread> {
  const port = await freePort()
  const file = join(dir, `${name}.yaml`)
  writeFileSync(file, `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${backend.address}" } ] }\n`)
  const proc = spawn(process.execPath, [BIN, 'start', '-c', file, '--log-format', 'json', '--admin', join(dir, `${name}.sock`), '--drain', '0s', '--log-buffer', '64KiB'], {stdio: ['ignore', 'pipe', 'pipe']})
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
  const lines: Array<Record<string, any>> = []
  let buf = ''
  const onData = (c: Buffer): void => {
    buf += c.toString('utf8')
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)))
      buf = buf.slice(i + 1)
    }
  }
  const reading = (on: boolean): void => {
    if (on) proc.stdout!.on('data', onData).resume()
    else proc.stdout!.off('data', onData).pause()
  }
  reading(true)
  await until(() => lines.some((l) => l.msg === 'divert ready') || proc.exitCode !== null, 20_000, 'the ready line')
  assert.equal(proc.exitCode, null, 'the daemon runs')
  reading(false)
  return {proc, port, lines, reading, exited}
}

/** `n` sessions, `parallel` at a time: connect, read the backend's greeting, close. */
async function sessions(port: number, n: number, parallel = 16): Promise<void> {
  let next = 0
  const one = async (): Promise<void> => {
    while (next < n) {
      next++
      const s = net.connect({port, host: '127.0.0.1'})
      s.on('error', () => undefined)
      await once(s, 'connect')
      assert.equal(await readLine(s), 'prod')
      s.destroy()
    }
  }
  await Promise.all(Array.from({length: parallel}, one))
}

/** Write system calls the daemon makes in 1.5 s without traffic: a retried log write shows here. */
async function idleWrites(pid: number): Promise<number> {
  const before = writeCalls(pid)
  await new Promise((r) => setTimeout(r, 1500))
  return writeCalls(pid) - before
}

function exitWithin(d: Unread, ms: number): Promise<number | null> {
  return Promise.race([d.exited, new Promise<never>((_r, reject) => setTimeout(() => reject(new Error(`the daemon did not exit within ${ms}ms of SIGTERM`)), ms).unref())])
}

describe('log output nobody reads', () => {
  const {dir, cleanup} = tempDir('divert-e2e-logs-')
  let backend: TestServer
  const daemons: ChildProcess[] = []

  before(async () => {
    backend = await startServer('prod')
  })

  after(async () => {
    for (const p of daemons) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL')
    await backend?.close()
    cleanup()
  })

  test('issue 11.3: a stdout pipe nobody reads: memory stays bounded, lines are dropped and counted, the proxy answers, SIGTERM exits', async () => {
    const d = await startUnread(dir, 'unread', backend)
    daemons.push(d.proc)
    const pid = d.proc.pid!
    const fdsIdle = openFds(pid)
    const rssBefore = rssKiB(pid)
    await sessions(d.port, FLOOD_SESSIONS)
    const rssAfter = rssKiB(pid)
    assert.ok(rssAfter - rssBefore < 64 * 1024, `RSS grew by ${rssAfter - rssBefore} KiB over ${FLOOD_SESSIONS} sessions with the log unread`)
    // The reader comes back: the output drains and one line says how many lines were lost.
    d.reading(true)
    // Normally 20–160 ms; once 10 s was not enough in CI beside the OpenVPN tests: a longer wait, and
    // what the reader had seen if it still fails.
    const readBefore = d.lines.length
    await until(() => d.lines.some((l) => l.msg?.includes('log lines dropped')), 20_000, 'a "log lines dropped" line')
      .catch((e: Error) => {
        throw new Error(`${e.message}; ${d.lines.length - readBefore} lines read since reading resumed, the last: ${JSON.stringify(d.lines.at(-1)?.msg)}; daemon running: ${d.proc.exitCode === null}`)
      })
    const drop = d.lines.find((l) => l.msg.includes('log lines dropped'))!
    assert.ok(drop.droppedLines > 0 && drop.droppedLines < FLOOD_SESSIONS, JSON.stringify(drop))
    const closedLines = d.lines.filter((l) => l.msg === 'session closed').length
    assert.ok(closedLines + drop.droppedLines <= FLOOD_SESSIONS, `${closedLines} written + ${drop.droppedLines} dropped`)
    assert.equal(await whoAnswers(d.port), 'prod')
    // Unread again until the pipe is full: waiting writes are retried now and then, not in a loop.
    d.reading(false)
    await sessions(d.port, 600)
    // The last sessions' ends (and their close writes) must be over before idle is measured.
    await until(() => openFds(pid) <= fdsIdle, 10_000, 'the daemon holding no session descriptors')
    // (Backing off from 100 ms to 1 s between attempts: at most 100+200+400+800 ms fit, plus a spare.)
    const blocked = await idleWrites(pid)
    assert.ok(blocked <= 6, `${blocked} write calls in 1.5 s idle with the pipe full`)
    // SIGTERM: the exit must not wait for a reader.
    d.proc.kill('SIGTERM')
    assert.equal(await exitWithin(d, 8000), 0)
  })

  test('issue 11.3: the log reader goes away: no retry loop (no CPU while idle), the proxy keeps answering', async () => {
    const d = await startUnread(dir, 'gone', backend)
    daemons.push(d.proc)
    // The reader stops reading (the pipe fills, writes wait), then closes its end for good.
    const pid = d.proc.pid!
    const fdsIdle = openFds(pid)
    await sessions(d.port, 600)
    d.proc.stdout!.destroy()
    await sessions(d.port, 200)
    // The last sessions' ends (and their close writes) must be over before idle is measured.
    await until(() => openFds(pid) <= fdsIdle, 10_000, 'the daemon holding no session descriptors')
    // Idle for 1.5 s: a destination retried every 100 ms (or in a loop) shows up as CPU time.
    const ticks = cpuTicks(pid)
    const gone = await idleWrites(pid)
    assert.ok(gone <= 2, `${gone} write calls in 1.5 s idle with the log reader gone`)
    assert.ok(cpuTicks(pid) - ticks <= 5, `${cpuTicks(pid) - ticks} clock ticks of CPU in 1.5 s idle with the log reader gone`)
    assert.equal(await whoAnswers(d.port), 'prod')
    assert.equal(d.proc.exitCode, null, 'still running')
    d.proc.kill('SIGTERM')
    assert.equal(await exitWithin(d, 8000), 0)
  })
})
