/** ConnectDeadlines (one timer per connect-timeout value) and BatchedDestination (batched log writes), on a fake clock. */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {ConnectDeadlines} from '../../src/net/connector.js'
import {BatchedDestination} from '../../src/log.js'
import {FakeClock} from '../helpers/clock.js'

/** A FakeClock at 1000 ms. */
function fakeTimers(): FakeClock {
  return new FakeClock(1000)
}
const waiter = (log: string[], name: string): any => ({name, deadlineAt: 0, onConnectDeadline: (ms: number) => log.push(`${name}@${ms}`)})

test('expires in deadline order, per timeout value, with one timer per list', async () => {
  const t = fakeTimers(); const d = new ConnectDeadlines(t); const log: string[] = []
  const a = waiter(log, 'a'), b = waiter(log, 'b'), c = waiter(log, 'c')
  d.start(a, 300); await t.advance(100); d.start(b, 300); d.start(c, 50)
  assert.equal(t.size, 2)
  await t.advance(50); assert.deepEqual(log, ['c@50'])
  await t.advance(149); assert.deepEqual(log, ['c@50'])
  await t.advance(1); assert.deepEqual(log, ['c@50', 'a@300'])
  await t.advance(100); assert.deepEqual(log, ['c@50', 'a@300', 'b@300'])
  assert.equal(d.size, 0); assert.equal(t.size, 0)
})

test('connectDone unlinks from anywhere in the list; nothing fires for it', async () => {
  const t = fakeTimers(); const d = new ConnectDeadlines(t); const log: string[] = []
  const ws = ['a', 'b', 'c', 'd'].map((n) => waiter(log, n))
  for (const w of ws) d.start(w, 100)
  d.connectDone(ws[0]); d.connectDone(ws[2]); d.connectDone(ws[2])
  assert.equal(d.size, 2)
  await t.advance(100); assert.deepEqual(log, ['b@100', 'd@100'])
  d.connectDone(ws[1]) // already expired: a no-op
  assert.equal(d.size, 0)
})

test('an emptied list disarms when its timer fires; a later start re-arms', async () => {
  const t = fakeTimers(); const d = new ConnectDeadlines(t); const log: string[] = []
  const a = waiter(log, 'a'); d.start(a, 100); d.connectDone(a)
  await t.advance(100); assert.equal(t.size, 0); assert.deepEqual(log, [])
  const b = waiter(log, 'b'); d.start(b, 100); await t.advance(100); assert.deepEqual(log, ['b@100'])
})

test('BatchedDestination: one sink write per batch, on timer or size; flushSync drains', async () => {
  const t = fakeTimers(); const out: string[] = []; let synced = 0
  const dest = new BatchedDestination({write: (s: string) => out.push(s), flushSync: () => synced++}, 100, 20, t)
  dest.write('{"a":1}\n'); dest.write('{"b":2}\n')
  assert.deepEqual(out, []); assert.equal(t.size, 1)
  await t.advance(100); assert.deepEqual(out, ['{"a":1}\n{"b":2}\n']); assert.equal(t.size, 0)
  dest.write('0123456789'); dest.write('0123456789'); assert.equal(out.length, 2); assert.equal(t.size, 0)
  dest.write('x\n'); dest.flushSync(); assert.deepEqual(out.at(-1), 'x\n'); assert.equal(synced, 1); assert.equal(t.size, 0)
  let called = false; dest.flush(() => { called = true }); assert.ok(called)
})
