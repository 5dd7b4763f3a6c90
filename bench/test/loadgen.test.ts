/**
 * bench/loadgen.c against loopback servers this test starts: the echo answers every client, the
 * wrong-client check catches a proxy that mixes clients up, and tcp-hold holds what it reports.
 */
import {test, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {createSocket, type RemoteInfo} from 'node:dgram'
import {createServer, type Socket} from 'node:net'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {once} from 'node:events'
import {fileURLToPath} from 'node:url'
import {ProcessGroup} from '../process.js'
import {loadgenLine, loadgenLines, type UdpStep} from '../parse.js'

const src = fileURLToPath(new URL('../../../bench/loadgen.c', import.meta.url))
const hasGcc = spawnSync('gcc', ['--version']).status === 0
const dir = mkdtempSync(join(tmpdir(), 'loadgen-test-'))
const bin = join(dir, 'loadgen')
const group = new ProcessGroup()
let echoPort = 0

before(async () => {
  if (!hasGcc) return
  const r = spawnSync('gcc', ['-O2', '-Wall', '-Werror', '-o', bin, src], {encoding: 'utf8'})
  assert.equal(r.status, 0, r.stderr)
  const echo = group.launch({name: 'echo', cmd: bin, args: ['udp-echo', '127.0.0.1', '0']})
  echoPort = JSON.parse(await echo.waitFor(/"ready"/, 5000)).port
})

after(async () => {
  await group.stopAll()
  rmSync(dir, {recursive: true, force: true})
})

test('udp-rate: every datagram offered to the echo comes back to its own client', {skip: !hasGcc && 'no gcc'}, async () => {
  const r = await group.run({name: 'udp-rate', cmd: bin, args: ['udp-rate', '127.0.0.1', String(echoPort), '16', '64', '300', '1000,2000', '-']}, 20_000)
  assert.equal(r.code, 0, r.tail)
  assert.equal(loadgenLine<{mode: string; answered: number}>(r.stdout, 'udp-warm').answered, 16)
  const steps = loadgenLines<UdpStep>(r.stdout, 'udp-rate')
  assert.deepEqual(steps.map((s) => s.rate), [1000, 2000])
  for (const s of steps) {
    assert.ok(s.sent >= s.rate * 0.3 * 0.9, `sent ${s.sent} at ${s.rate}/s for 300 ms`)
    assert.equal(s.received + s.late, s.sent)
    assert.equal(s.wrong, 0)
  }
})

/** A broken UDP "proxy" that sends each reply to whichever client spoke last (socat fork's failure). */
async function mixingProxy(): Promise<{port: number; close: () => void}> {
  const front = createSocket('udp4')
  const back = createSocket('udp4')
  let last: RemoteInfo | undefined
  front.on('message', (msg, rinfo) => { last = rinfo; back.send(msg, echoPort, '127.0.0.1') })
  back.on('message', (msg) => { if (last) front.send(msg, last.port, last.address) })
  front.bind(0, '127.0.0.1')
  back.bind(0, '127.0.0.1')
  await Promise.all([once(front, 'listening'), once(back, 'listening')])
  return {port: front.address().port, close: () => { front.close(); back.close() }}
}

test('udp-rate counts replies that reach the wrong client', {skip: !hasGcc && 'no gcc'}, async () => {
  const proxy = await mixingProxy()
  try {
    const r = await group.run({name: 'udp-rate', cmd: bin, args: ['udp-rate', '127.0.0.1', String(proxy.port), '32', '64', '300', '2000', '-']}, 20_000)
    const [step] = loadgenLines<UdpStep>(r.stdout, 'udp-rate')
    assert.ok(step.wrong > 0, JSON.stringify(step))
  } finally {
    proxy.close()
  }
})

test('udp-flows: each flow is a new client answered once', {skip: !hasGcc && 'no gcc'}, async () => {
  const r = await group.run({name: 'udp-flows', cmd: bin, args: ['udp-flows', '127.0.0.1', String(echoPort), '8', '2000', '200', '1000', String(process.pid)]}, 20_000)
  const res = loadgenLine<{mode: string; opened: number; completed: number; lost: number; wrong: number; proxyCpuSec: number}>(r.stdout, 'udp-flows')
  assert.deepEqual([res.opened, res.completed, res.lost, res.wrong], [200, 200, 0, 0])
  assert.ok(res.proxyCpuSec >= 0, 'reads the CPU of the pids it is given')
})

test('tcp-hold: holds the connections it reports until stdin closes, from 127.0.0.2 and up', {skip: !hasGcc && 'no gcc'}, async () => {
  const sockets = new Set<Socket>()
  const sources = new Set<string>()
  const srv = createServer((s) => { sockets.add(s); sources.add(s.remoteAddress ?? '') })
  srv.listen(0, '127.0.0.1')
  await once(srv, 'listening')
  const m = group.launch({name: 'tcp-hold', cmd: bin, args: ['tcp-hold', '127.0.0.1', String((srv.address() as {port: number}).port), '300', '10000'], stdin: 'pipe'})
  try {
    const first = JSON.parse(await m.waitFor(/"mode":"tcp-hold"/, 10_000))
    assert.deepEqual([first.connected, first.failed], [300, 0])
    assert.ok(sources.has('127.0.0.2') && sources.has('127.0.0.20') && !sources.has('127.0.0.1'))
    m.endInput()
    const end = JSON.parse(await m.waitFor(/"mode":"tcp-hold-end"/, 10_000))
    assert.equal(end.closedByPeer, 0)
  } finally {
    await m.stop()
    for (const s of sockets) s.destroy()
    srv.close()
  }
})

test('udp-echo ends on SIGTERM by itself (a blocking recvmmsg is interrupted, not restarted)', {skip: !hasGcc && 'no gcc'}, async () => {
  const m = group.launch({name: 'echo to stop', cmd: bin, args: ['udp-echo', '127.0.0.1', '0']})
  await m.waitFor(/"ready"/, 5000)
  m.child.kill('SIGTERM')
  assert.equal(await m.exited, 0, 'a SIGKILL would leave no exit status')
  assert.match(m.lines.join('\n'), /"echoed":0/)
})
