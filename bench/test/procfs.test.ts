import {test} from 'node:test'
import assert from 'node:assert/strict'
import {machineBusySec, parseMachineBusy, parseNofileHard, parseRssKb, parseStat, processTree, usage} from '../procfs.js'

test('parseStat finds ppid and utime+stime after a comm holding spaces and parentheses', () => {
  const line = '4242 (nginx: worker (x) ) S 4241 4241 4241 0 -1 4194624 100 0 0 0 250 75 0 0 20 0 1 0 500 1000 200'
  assert.deepEqual(parseStat(line), {pid: 4242, ppid: 4241, ticks: 325, minorFaults: 100})
})

test('parseRssKb reads VmRSS; a kernel thread without one is 0', () => {
  assert.equal(parseRssKb('Name:\tnginx\nVmRSS:\t   15360 kB\nThreads:\t1\n'), 15360)
  assert.equal(parseRssKb('Name:\tkthreadd\n'), 0)
})

test('parseNofileHard reads the hard column of Max open files', () => {
  assert.equal(parseNofileHard('Limit Soft Limit Hard Limit Units\nMax open files            1024                 20000                files\n'), 20000)
  assert.equal(parseNofileHard('Max open files            unlimited            unlimited            files\n'), 1_048_576)
  assert.throws(() => parseNofileHard('nothing'), RangeError)
})

test('this process: its tree contains itself, and it has CPU time, memory and fds', () => {
  assert.equal(processTree(process.pid)[0], process.pid)
  const u = usage([process.pid])
  assert.ok(u.cpuSec > 0 && u.rssKb > 1000 && u.fds >= 3, JSON.stringify(u))
})

test('parseMachineBusy adds user, nice, system, irq, softirq and steal of the aggregate line; idle and iowait are not busy', () => {
  const stat = 'cpu  100 5 50 9000 70 3 12 2 0 0\ncpu0 50 2 25 4500 35 1 6 1 0 0\nintr 1 2 3\n'
  assert.equal(parseMachineBusy(stat), 100 + 5 + 50 + 3 + 12 + 2)
  assert.throws(() => parseMachineBusy('intr 1 2 3\n'), RangeError)
})

test('the machine has been busy since boot, and the figure only grows', () => {
  const a = machineBusySec()
  for (let i = 0; i < 1e6; i++) Math.sqrt(i)
  assert.ok(a > 0 && machineBusySec() >= a)
})
