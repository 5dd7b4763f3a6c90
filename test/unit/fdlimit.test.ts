import {test} from 'node:test'
import assert from 'node:assert/strict'
import {capacity, raiseFdLimit, readFdLimits, FD_RESERVE} from '../../src/fdlimit.js'

const limits = (soft: string, hard: string): string => `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft.padEnd(21)}${hard.padEnd(21)}files\n`

test('reads the open-files line of /proc/self/limits', () => {
  assert.deepEqual(readFdLimits(limits('1024', '524288')), {soft: 1024, hard: 524288})
  assert.deepEqual(readFdLimits(limits('unlimited', 'unlimited')), {soft: Infinity, hard: Infinity})
  assert.equal(readFdLimits('nothing here'), undefined)
})

test('raises the soft limit to the hard limit and reports where it came from', () => {
  let current = limits('1024', '65536')
  const r = raiseFdLimit((soft) => (current = limits(String(soft), '65536')), () => current)
  assert.deepEqual(r, {soft: 65536, hard: 65536, raisedFrom: 1024})
})

test('a failed raise is reported, not thrown', () => {
  const r = raiseFdLimit(() => {
    throw new Error('prlimit: not found')
  }, () => limits('1024', '4096'))
  assert.equal(r.soft, 1024)
  assert.match(r.problem!, /prlimit failed/)
})

test('nothing to do when soft already equals hard', () => {
  let called = false
  const r = raiseFdLimit(() => (called = true), () => limits('4096', '4096'))
  assert.equal(called, false)
  assert.deepEqual(r, {soft: 4096, hard: 4096})
})

test('capacity: two descriptors per TCP session, one per UDP flow, after the reserve', () => {
  assert.deepEqual(capacity({soft: 20_000}), {tcp: Math.floor((20_000 - FD_RESERVE) / 2), udp: 20_000 - FD_RESERVE})
  assert.deepEqual(capacity({soft: 10}), {tcp: 0, udp: 0})
})

test('the real process: raising works or says why', () => {
  const r = raiseFdLimit()
  assert.ok(r.soft > 0)
  assert.ok(r.problem === undefined || typeof r.problem === 'string')
})
