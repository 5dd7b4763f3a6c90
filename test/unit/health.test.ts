import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {Writable} from 'node:stream'
import pino from 'pino'
import {Backend, type Server} from '../../src/backends/backend.js'
import {CheckTimeoutError, HealthChecker, describeCheckError, type HealthChange, type Timers} from '../../src/backends/health.js'
import type {BackendConfig, HealthConfig} from '../../src/config/types.js'
import {parseAddress} from '../../src/addr/address.js'

/** Timers driven by hand: `advance(ms)` runs what falls due, in order, moving the clock with it. */
class FakeClock implements Timers {
  now = 0
  private seq = 0
  private readonly pending = new Map<number, {at: number; fn: () => void}>()

  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = ++this.seq
    this.pending.set(id, {at: this.now + ms, fn})
    return id
  }

  clearTimeout = (handle: unknown): void => {
    this.pending.delete(handle as number)
  }

  get size(): number {
    return this.pending.size
  }

  async advance(ms: number): Promise<void> {
    const end = this.now + ms
    for (;;) {
      await flush()
      const due = [...this.pending].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0]
      if (!due) break
      this.pending.delete(due[0])
      this.now = due[1].at
      due[1].fn()
    }
    this.now = end
    await flush()
  }
}

/** Lets settled check promises run their callbacks (no timing involved). */
const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

const refused = (): Error => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), {code: 'ECONNREFUSED', syscall: 'connect'})

/** A check whose answer per server the test sets: 'ok', 'fail' or 'hang'. */
class FakeCheck {
  readonly mode = new Map<string, 'ok' | 'fail' | 'hang'>()
  readonly calls: Array<{server: string; timeoutMs: number; at: number}> = []
  readonly hung: Array<{resolve: () => void; reject: (e: Error) => void}> = []

  constructor(private readonly clock: FakeClock) {}

  check = (server: Server, timeoutMs: number): Promise<void> => {
    this.calls.push({server: server.key, timeoutMs, at: this.clock.now})
    const mode = this.mode.get(server.key) ?? 'ok'
    if (mode === 'ok') return Promise.resolve()
    if (mode === 'fail') return Promise.reject(refused())
    return new Promise((resolve, reject) => this.hung.push({resolve, reject}))
  }

  count(key: string): number {
    return this.calls.filter((c) => c.server === key).length
  }
}

const HEALTH: HealthConfig = {check: 'tcp', intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3}

/** `null`: no health config at all. */
function backend(health: HealthConfig | null, n = 2): Backend {
  const config: BackendConfig = {
    name: 'prod', balance: 'roundrobin', fallback: 'default', connectTimeoutMs: 1000, serverTimeoutMs: 0, health: health ?? undefined,
    servers: Array.from({length: n}, (_, i) => ({address: parseAddress(`127.0.0.${i + 1}:23`), weight: 1})),
  }
  return new Backend(config)
}

function logCapture(): {logger: pino.Logger; lines: Array<Record<string, unknown>>} {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb() }})
  return {logger: pino({level: 'info'}, stream), lines}
}

function setup(health: HealthConfig | null = HEALTH, n = 2) {
  const clock = new FakeClock()
  const fake = new FakeCheck(clock)
  const b = backend(health, n)
  const {logger, lines} = logCapture()
  const checker = new HealthChecker(b, {check: fake.check, timers: clock, now: () => clock.now, logger})
  const changes: HealthChange[] = []
  checker.on('change', (c) => changes.push(c))
  return {clock, fake, b, checker, changes, lines, s0: b.servers[0], s1: b.servers[1]}
}

describe('HealthChecker', () => {
  it('checks every server at once on start, then every interval after each check', async () => {
    const {clock, fake, checker, s0, s1} = setup()
    checker.start()
    assert.deepEqual(fake.calls.map((c) => [c.server, c.timeoutMs, c.at]), [[s0.key, 1000, 0], [s1.key, 1000, 0]])
    await clock.advance(1999)
    assert.equal(fake.calls.length, 2)
    await clock.advance(1)
    assert.equal(fake.calls.length, 4)
    await clock.advance(6000)
    assert.equal(fake.count(s0.key), 5)
    checker.start() // already running: no second schedule
    await clock.advance(2000)
    assert.equal(fake.count(s0.key), 6)
    checker.stop()
  })

  it('takes a server down after `fall` consecutive failures, with the reason, a warn line and an event', async () => {
    const {clock, fake, checker, changes, lines, b, s0, s1} = setup()
    checker.start()
    await clock.advance(0)
    fake.mode.set(s0.key, 'fail')
    await clock.advance(2000) // failure 1
    await clock.advance(2000) // failure 2
    assert.equal(s0.up, true, 'still up after fall-1 failures')
    assert.equal(changes.length, 0)
    await clock.advance(2000) // failure 3 = fall
    assert.equal(s0.up, false)
    assert.equal(s1.up, true)
    assert.deepEqual(changes.map((c) => [c.backend, c.server, c.up, c.reason]), [['prod', s0, false, 'connect ECONNREFUSED']])
    assert.equal(s0.lastChange, 6000)
    assert.deepEqual(s0.lastCheck, {ok: false, at: 6000, error: 'connect ECONNREFUSED'})
    const warn = lines.filter((l) => l.level === 40)
    assert.equal(warn.length, 1)
    assert.deepEqual([warn[0].msg, warn[0].backend, warn[0].server, warn[0].reason], ['server down', 'prod', '127.0.0.1:23', 'connect ECONNREFUSED'])
    for (let i = 0; i < 10; i++) assert.equal(b.pick(`10.0.0.${i}`), s1, 'the backend stops picking the down server')
    checker.stop()
  })

  it('brings it back after `rise` consecutive successes, with an info line', async () => {
    const {clock, fake, checker, changes, lines, s0} = setup()
    fake.mode.set(s0.key, 'fail')
    checker.start()
    await clock.advance(4000)
    assert.equal(s0.up, false)
    fake.mode.set(s0.key, 'ok')
    await clock.advance(2000)
    assert.equal(s0.up, false, 'one success is not enough with rise 2')
    await clock.advance(2000)
    assert.equal(s0.up, true)
    assert.deepEqual(changes.map((c) => c.up), [false, true])
    assert.match(changes[1].reason, /2 consecutive checks passed/)
    assert.deepEqual(s0.lastCheck, {ok: true, at: 8000, latencyMs: 0})
    const info = lines.filter((l) => l.level === 30)
    assert.deepEqual(info.map((l) => [l.msg, l.server, l.backend]), [['server up', '127.0.0.1:23', 'prod']])
    checker.stop()
  })

  it('a success between failures resets the count (a flapping server is not taken down)', async () => {
    const {clock, fake, checker, changes, s0} = setup()
    checker.start()
    for (let round = 0; round < 5; round++) {
      fake.mode.set(s0.key, 'fail')
      await clock.advance(2000)
      await clock.advance(2000)
      fake.mode.set(s0.key, 'ok')
      await clock.advance(2000)
    }
    assert.equal(s0.up, true)
    assert.equal(changes.length, 0)
    checker.stop()
  })

  it('counts a check that outlives its timeout as a failure and ignores its late answer', async () => {
    const {clock, fake, checker, changes, s0} = setup({...HEALTH, fall: 1})
    fake.mode.set(s0.key, 'hang')
    checker.start()
    await clock.advance(999)
    assert.equal(s0.up, true)
    await clock.advance(1)
    assert.equal(s0.up, false)
    assert.equal(changes[0].reason, 'timeout after 1000ms')
    assert.deepEqual(s0.lastCheck, {ok: false, at: 1000, error: 'timeout after 1000ms'})
    fake.hung[0].resolve() // the late answer must not count as a success
    await clock.advance(0)
    assert.deepEqual(s0.lastCheck, {ok: false, at: 1000, error: 'timeout after 1000ms'})
    await clock.advance(2000)
    assert.equal(fake.count(s0.key), 2, 'the next check still comes, interval after the timeout')
    checker.stop()
  })

  it('a check that throws synchronously is a failure, not a crash', async () => {
    const clock = new FakeClock()
    const b = backend({...HEALTH, fall: 1}, 1)
    const checker = new HealthChecker(b, {check: () => { throw new Error('boom') }, timers: clock, now: () => clock.now})
    checker.start()
    await clock.advance(0)
    assert.equal(b.servers[0].up, false)
    assert.equal(b.servers[0].lastCheck?.error, 'boom')
    checker.stop()
  })

  it('stop() is idempotent, clears every timer and drops results of checks in flight', async () => {
    const {clock, fake, checker, changes, s0, s1} = setup({...HEALTH, fall: 1})
    fake.mode.set(s0.key, 'hang')
    checker.start()
    await clock.advance(0)
    assert.equal(clock.size, 2, 'a guard for the hung check, the next check of the other')
    checker.stop()
    checker.stop()
    assert.equal(clock.size, 0)
    fake.hung[0].reject(refused())
    await clock.advance(10_000)
    assert.equal(s0.lastCheck, undefined)
    assert.equal(s0.up, true)
    assert.equal(changes.length, 0)
    assert.equal(fake.calls.length, 2)
    assert.equal(s1.lastCheck?.ok, true)
  })

  it('can start again after stop', async () => {
    const {clock, fake, checker} = setup()
    checker.start()
    checker.stop()
    checker.start()
    assert.equal(fake.calls.length, 4)
    await clock.advance(2000)
    assert.equal(fake.calls.length, 6)
    checker.stop()
  })

  for (const [name, health] of [['no health config', null], ["check: 'none'", {...HEALTH, check: 'none' as const}]] as const) {
    it(`${name}: never checks, servers stay up`, async () => {
      const {clock, fake, checker, b} = setup(health)
      assert.equal(checker.enabled, false)
      checker.start()
      await clock.advance(60_000)
      assert.equal(fake.calls.length, 0)
      assert.equal(clock.size, 0)
      assert.ok(b.servers.every((s) => s.up))
      checker.stop()
    })
  }
})

describe('describeCheckError', () => {
  it('names the syscall and code of a socket error, else the message', () => {
    assert.equal(describeCheckError(refused()), 'connect ECONNREFUSED')
    assert.equal(describeCheckError(new CheckTimeoutError(250)), 'timeout after 250ms')
    assert.equal(describeCheckError(new Error('nope')), 'nope')
    assert.equal(describeCheckError({code: 'EHOSTUNREACH'}), 'EHOSTUNREACH')
    assert.equal(describeCheckError('odd'), 'odd')
  })
})
