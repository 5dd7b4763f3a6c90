import {test} from 'node:test'
import assert from 'node:assert/strict'
import {createServer} from 'node:net'
import {once} from 'node:events'
import {ProcessGroup, waitForTcp, wrappedArgv} from '../process.js'

test('wrappedArgv puts prlimit outside taskset, both before the command', () => {
  assert.deepEqual(wrappedArgv({name: 'x', cmd: 'nginx', args: ['-t'], cpu: 0, nofile: 20000}),
    ['prlimit', '--nofile=20000:20000', 'taskset', '-c', '0', 'nginx', '-t'])
  assert.deepEqual(wrappedArgv({name: 'x', cmd: 'wrk', args: []}), ['wrk'])
})

test('prlimit and taskset exec the program: the pid is the program, pinned, with the limit', async () => {
  const group = new ProcessGroup()
  const code = 'console.log(JSON.stringify({pid: process.pid})); setInterval(() => {}, 1000)'
  const m = group.launch({name: 'pinned node', cmd: process.execPath, args: ['-e', code], cpu: 0, nofile: 1024})
  try {
    const line = await m.waitFor(/"pid"/, 10_000)
    assert.equal(JSON.parse(line).pid, m.pid)
  } finally {
    await m.stop()
  }
  assert.equal(m.running, false)
  await m.stop() // idempotent
})

test('waitFor rejects with the output tail when the process exits first', async () => {
  const group = new ProcessGroup()
  const m = group.launch({name: 'quitter', cmd: process.execPath, args: ['-e', 'console.error("bad config line 3"); process.exit(3)']})
  await assert.rejects(m.waitFor(/ready/, 10_000), /quitter exited \(status 3\).*bad config line 3/)
})

test('run kills a command at its time limit and reports status null', async () => {
  const group = new ProcessGroup()
  const t0 = Date.now()
  const r = await group.run({name: 'sleeper', cmd: process.execPath, args: ['-e', 'console.log("started"); setTimeout(() => {}, 60000)']}, 300)
  assert.equal(r.code, null)
  assert.match(r.stdout, /started/)
  assert.ok(Date.now() - t0 < 10_000)
})

test('stopAll stops every running member by pid', async () => {
  const group = new ProcessGroup()
  const ms = [1, 2].map((i) => group.launch({name: `idle ${i}`, cmd: process.execPath, args: ['-e', 'setInterval(() => {}, 1000)']}))
  await group.stopAll()
  assert.deepEqual(ms.map((m) => m.running), [false, false])
})

test('waitForTcp resolves once a server listens and fails with a clear message when none does', async () => {
  const srv = createServer((s) => s.destroy())
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  const {port} = srv.address() as {port: number}
  try {
    await waitForTcp('127.0.0.1', port, 5000)
  } finally {
    srv.close()
  }
  await once(srv, 'close')
  await assert.rejects(waitForTcp('127.0.0.1', port, 200), /nothing accepted connections on 127\.0\.0\.1:\d+ within 200 ms/)
})
