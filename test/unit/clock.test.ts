/**
 * The one clock (src/clock.ts) and its fake (test/helpers/clock.ts): timers fire in due order, also
 * those set or refreshed by callbacks; delays are clamped as Node clamps them; sleep() stops early on
 * abort; and the RuleService's expiry timer, on the rule table's clock, agrees with `expiresAt`
 * even past the longest delay a timer can wait.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {MAX_DELAY_MS, realClock, sleep, timerDelay} from '../../src/clock.js'
import {RuleService} from '../../src/rules/service.js'
import {RuleTable} from '../../src/rules/table.js'
import {RecordingSet} from '../../src/capture/recorder.js'
import {silentLogger} from '../../src/log.js'
import type {Config} from '../../src/config/types.js'
import type {Backend} from '../../src/backends/backend.js'
import {FakeClock, FAKE_EPOCH} from '../helpers/clock.js'

test('issue 12.4: FakeClock fires due timers in order (ties: first set first), with now() at each due time, including timers their callbacks set', async () => {
  const clock = new FakeClock()
  const fired: Array<[string, number]> = []
  const at = (name: string) => () => fired.push([name, clock.now() - FAKE_EPOCH])
  clock.setTimeout(at('b'), 200)
  clock.setTimeout(() => {
    at('a')()
    clock.setTimeout(at('a+50'), 50)
  }, 100)
  clock.setTimeout(at('b2'), 200)
  const gone = clock.setTimeout(at('cleared'), 150)
  clock.clearTimeout(gone)
  await clock.advance(199)
  assert.deepEqual(fired, [['a', 100], ['a+50', 150]])
  assert.equal(clock.now() - FAKE_EPOCH, 199)
  await clock.advance(1)
  assert.deepEqual(fired.slice(2), [['b', 200], ['b2', 200]])
  assert.equal(clock.size, 0)
})

test('issue 12.4: FakeClock intervals repeat until cleared; refresh() restarts a timer from now, also after it fired', async () => {
  const clock = new FakeClock(0)
  const ticks: number[] = []
  const interval = clock.setInterval(() => ticks.push(clock.now()), 100)
  let fired = 0
  const once = clock.setTimeout(() => fired++, 100)
  await clock.advance(50)
  once.refresh()
  await clock.advance(99)
  assert.equal(fired, 0, 'refreshed at 50: due at 150')
  await clock.advance(1)
  assert.equal(fired, 1)
  once.refresh()
  await clock.advance(100)
  assert.equal(fired, 2, 'a fired timer runs again after refresh()')
  clock.clearTimeout(interval)
  await clock.advance(1000)
  assert.deepEqual(ticks, [100, 200])
})

test('issue 12.4: delays are clamped as Node clamps them (below 1 ms: 1 ms; past 2^31-1 ms: the ceiling, not 1 ms)', () => {
  assert.deepEqual([0, -5, Number.NaN, 0.5, 2.5, 1000].map(timerDelay), [1, 1, 1, 1, 2.5, 1000])
  assert.equal(timerDelay(30 * 86_400_000), MAX_DELAY_MS)
  assert.equal(realClock.now, Date.now, 'the real clock reads Date.now, with no wrapper')
})

test('issue 12.4: sleep() resolves after its delay on the clock, or at once when aborted, never rejecting', async () => {
  const clock = new FakeClock(0)
  let done = false
  const slept = sleep(clock, 300).then(() => (done = true))
  await clock.advance(299)
  assert.equal(done, false)
  await clock.advance(1)
  await slept
  const abort = new AbortController()
  const cut = sleep(clock, 1000, abort.signal)
  abort.abort()
  await cut
  assert.equal(clock.size, 0, 'the aborted sleep cleared its timer')
})

test('issue 12.4: a rule expiring past the longest timer delay (30 days) expires exactly at expiresAt: the timer wakes early and re-arms', async () => {
  const clock = new FakeClock()
  const table = new RuleTable({clock})
  const service = new RuleService({
    table, recordings: new RecordingSet(), logger: silentLogger(), clock,
    config: () => ({file: '/etc/divert/divert.yaml', listeners: [], backends: new Map([['staging', {}]]), captureMaxBytes: 1e6}) as unknown as Config, backends: () => new Map([['staging', {} as Backend]]),
  })
  const lifetime = 30 * 86_400_000
  const {rule} = await service.add({source: '10.9.0.1', to: 'staging', expiresAt: clock.now() + lifetime, note: 'a month'})
  assert.equal(rule.expiresAt, FAKE_EPOCH + lifetime)
  await clock.advance(MAX_DELAY_MS)
  await service.exclusive(async () => undefined)
  assert.equal(table.size, 1, 'woken at the ceiling: nothing expired yet')
  await clock.advance(lifetime - MAX_DELAY_MS - 1)
  await service.exclusive(async () => undefined)
  assert.equal(table.size, 1, '1 ms before expiresAt')
  await clock.advance(1)
  await service.exclusive(async () => undefined)
  assert.equal(table.size, 0, 'at expiresAt')
  service.stop()
})
