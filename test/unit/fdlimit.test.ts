import {test} from 'node:test'
import assert from 'node:assert/strict'
import {capacity, openFilesLimit, openFds, readFdLimits, FD_RESERVE} from '../../src/fdlimit.js'

const limits = (soft: string, hard: string): string => `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft.padEnd(21)}${hard.padEnd(21)}files\n`

test('reads the open-files line of /proc/self/limits', () => {
  assert.deepEqual(readFdLimits(limits('1024', '524288')), {soft: 1024, hard: 524288})
  assert.deepEqual(readFdLimits(limits('unlimited', 'unlimited')), {soft: Infinity, hard: Infinity})
  assert.equal(readFdLimits('nothing here'), undefined)
})

test('a soft limit below the hard one, or no /proc, is reported, not thrown', () => {
  assert.match(openFilesLimit(() => limits('1024', '4096')).problem!, /below the hard limit \(4096\)/)
  assert.deepEqual(openFilesLimit(() => limits('4096', '4096')), {soft: 4096, hard: 4096})
  assert.match(openFilesLimit(() => '').problem!, /cannot read/)
})

test('capacity: two descriptors per TCP session, one per UDP flow, after the reserve and what is open', () => {
  assert.deepEqual(capacity({soft: 20_000}), {tcp: Math.floor((20_000 - FD_RESERVE) / 2), udp: 20_000 - FD_RESERVE, fds: 20_000 - FD_RESERVE})
  assert.deepEqual(capacity({soft: 256}, 30), {tcp: 81, udp: 162, fds: 162})
  assert.deepEqual(capacity({soft: 10}), {tcp: 0, udp: 0, fds: 0})
})

test('the real process: Node has raised the soft limit to the hard one', () => {
  const r = openFilesLimit()
  assert.ok(r.soft > 0)
  assert.equal(r.problem, undefined)
  assert.ok(openFds() >= 3)
})
