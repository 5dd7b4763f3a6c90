import {test} from 'node:test'
import assert from 'node:assert/strict'
import {parseNofileHard, parseRssKb, parseStat, processTree, usage} from '../procfs.js'

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
