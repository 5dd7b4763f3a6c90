/** FdWriter on a real pipe (a FIFO opened non-blocking at both ends, as libuv opens stdout's pipe). */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import {closeSync, constants, openSync, readSync} from 'node:fs'
import {join} from 'node:path'
import {setImmediate as tick} from 'node:timers/promises'
import {FdWriter} from '../../src/log-writer.js'
import {tempDir} from '../helpers/daemon.js'

function pipe(t: {after: (fn: () => void) => void}): {r: number; w: number} {
  const {dir, cleanup} = tempDir('divert-log-writer-')
  const fifo = join(dir, 'log.fifo')
  execFileSync('mkfifo', ['-m', '600', fifo])
  const r = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
  const w = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)
  t.after(() => {
    for (const fd of [r, w]) {
      try {
        closeSync(fd)
      } catch {
        // closed by the test
      }
    }
    cleanup()
  })
  return {r, w}
}

function readAll(fd: number): string {
  const buf = Buffer.alloc(1 << 20)
  let out = ''
  for (;;) {
    try {
      const n = readSync(fd, buf)
      if (n === 0) return out
      out += buf.toString('utf8', 0, n)
    } catch {
      return out // EAGAIN: the pipe is empty
    }
  }
}

test('issue 11.3: FdWriter keeps at most `limit` bytes waiting, drops whole batches beyond, and reports the count once drained', async (t) => {
  const {r, w} = pipe(t)
  const reports: number[] = []
  const writer = new FdWriter(w, 8192, (n) => reports.push(n))
  const batch = `${'x'.repeat(99)}\n`.repeat(10) // 10 lines, 1000 bytes
  for (let i = 0; i < 200; i++) writer.write(batch)
  while (reports.length === 0) await tick()
  const written = readAll(r).split('\n').filter(Boolean).length
  assert.equal(written, 80, 'the 8 batches that fit in 8192 bytes')
  assert.deepEqual(reports, [2000 - 80])
})

test('issue 11.3: FdWriter treats EPIPE as a destination gone for good: later lines are discarded, flushSync does not throw', async (t) => {
  const {r, w} = pipe(t)
  const writer = new FdWriter(w)
  closeSync(r)
  writer.write('one\n')
  while (writer.gone === undefined) await tick()
  assert.equal(writer.gone, 'EPIPE')
  writer.write('two\n')
  writer.flushSync()
  assert.equal(writer.gone, 'EPIPE')
})
