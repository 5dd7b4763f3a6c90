/**
 * `divert start` as a user runs it: a bad config or a taken port stops it with a reason that points
 * at the problem, and SIGTERM drains and exits 0 with a "divert stopped" line.
 */
import {test, describe, after} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {once} from 'node:events'
import {execFileSync} from 'node:child_process'
import {writeFileSync} from 'node:fs'
import {open, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {spawnDaemon, tempDir} from '../helpers/daemon.js'
import {startServer, connect, readLine, closed, freePort, type TestServer} from '../helpers/servers.js'
import {cli} from './harness.js'

describe('divert start', () => {
  const {dir, cleanup} = tempDir('divert-e2e-start-')
  const admin = join(dir, 'admin.sock')
  const servers: TestServer[] = []

  after(async () => {
    await Promise.all(servers.map((s) => s.close()))
    cleanup()
  })

  function config(name: string, text: string): string {
    const file = join(dir, name)
    writeFileSync(file, text)
    return file
  }

  test('a bad config: non-zero exit, and stderr names file:line:col and the path in the document', async () => {
    const bad = config('bad.yaml', 'listeners:\n  - { name: main, bind: "127.0.0.1:notaport", backend: prod }\nbackends:\n  prod: { servers: [ { address: "127.0.0.1:1" } ] }\n')
    const unknownKey = config('unknown.yaml', 'listeners:\n  - { name: main, bind: "127.0.0.1:1", backend: prod }\nbackends:\n  prod:\n    servers: [ { address: "127.0.0.1:1" } ]\n    colour: blue\n')
    const [r1, r2, r3] = await Promise.all([
      cli(['start', '-c', bad, '--admin', admin]),
      cli(['start', '-c', unknownKey, '--admin', admin]),
      cli(['start', '-c', join(dir, 'missing.yaml'), '--admin', admin]),
    ])
    assert.equal(r1.code, 2, r1.stderr)
    assert.match(r1.stderr, new RegExp(`^divert: ${bad.replace(/\./g, '\\.')}:2:\\d+: listeners\\[0\\]\\.bind: .*"127\\.0\\.0\\.1:notaport"`, 'm'))
    assert.equal(r2.code, 2, r2.stderr)
    assert.match(r2.stderr, new RegExp(`${unknownKey.replace(/\./g, '\\.')}:6:5: backends\\.prod\\.colour: `))
    assert.equal(r3.code, 2, r3.stderr)
    assert.match(r3.stderr, /cannot read config file .*missing\.yaml/)
  })

  test('a port already in use: non-zero exit, and the error names the address', async () => {
    const squatter = net.createServer()
    squatter.listen(0, '127.0.0.1')
    await once(squatter, 'listening')
    const port = (squatter.address() as net.AddressInfo).port
    try {
      const file = config('taken.yaml', `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "127.0.0.1:1" } ] }\n`)
      const r = await cli(['start', '-c', file, '--admin', admin])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, new RegExp(`listener main cannot bind 127\\.0\\.0\\.1:${port}: the address is already in use`))
    } finally {
      squatter.close()
    }
  })

  test('SIGHUP while the daemon is still starting is held and applied once it is ready, not fatal', async () => {
    // The config is a FIFO: opening it for writing completes only once the daemon is inside its
    // config read, i.e. past signal set-up and before it is ready. Each read of the FIFO (start-up,
    // then the reload) waits for the test to write the text.
    const prod = await startServer('prod')
    servers.push(prod)
    const port = await freePort()
    const text = `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${prod.address}" } ] }\n`
    const fifo = join(dir, 'boot.fifo')
    execFileSync('mkfifo', ['-m', '600', fifo])
    const daemon = await spawnDaemon(fifo, {admin: join(dir, 'boot.sock'), dir, waitReady: false})
    try {
      const writer = await open(fifo, 'w')
      assert.ok(daemon.proc.kill('SIGHUP'))
      await daemon.waitForLog((l) => /SIGHUP during start-up/.test(String(l.msg)))
      await writer.writeFile(text)
      await writer.close()
      await daemon.waitForLog((l) => l.msg === 'divert ready')
      await writeFile(fifo, text)
      const reloaded = await daemon.waitForLog((l) => l.action === 'config.reload')
      assert.equal(reloaded.by, 'SIGHUP')
      assert.equal(daemon.proc.exitCode, null, 'still running')
      const live = await connect({port})
      assert.equal(await readLine(live), 'prod')
      live.destroy()
      assert.equal(await daemon.stop('SIGTERM'), 0)
    } finally {
      await daemon.stop('SIGKILL')
    }
  })

  test('SIGTERM: live sessions are drained, the daemon logs "divert stopped" and exits 0', async () => {
    const prod = await startServer('prod')
    servers.push(prod)
    const port = await freePort()
    const file = config('ok.yaml', `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${prod.address}" } ] }\n`)
    const daemon = await spawnDaemon(file, {admin, dir, args: ['--drain', '300ms']})
    try {
      const other = config('other.yaml', `listeners:\n  - { name: main, bind: "127.0.0.1:${await freePort()}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${prod.address}" } ] }\n`)
      const second = await cli(['start', '-c', other, '--admin', admin])
      assert.notEqual(second.code, 0, 'a second daemon on the same admin socket is refused')
      assert.match(second.stderr, new RegExp(`another divert daemon is already listening on ${admin.replace(/\./g, '\\.')}`))

      const live = await connect({port})
      assert.equal(await readLine(live), 'prod')
      const ended = closed(live)
      assert.equal(await daemon.stop('SIGTERM'), 0)
      await ended
      const stopped = daemon.logs.find((l) => l.msg === 'divert stopped')
      assert.ok(stopped, 'a "divert stopped" log line')
      assert.ok(daemon.logs.some((l) => l.msg === 'drain period over: closing the remaining sessions'))
      assert.equal(daemon.stderr.join(''), '')
    } finally {
      await daemon.stop('SIGKILL')
    }
  })
})
