/**
 * `divert start` as a user runs it: a bad config or a taken port stops it with a reason that points
 * at the problem, and SIGTERM drains and exits 0 with a "divert stopped" line.
 */
import {test, describe, after} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {once} from 'node:events'
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, writeFileSync} from 'node:fs'
import {open, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {spawnDaemon, tempDir} from '../helpers/daemon.js'
import {startServer, connect, readLine, closed, freePort, until, whoAnswers, type TestServer} from '../helpers/servers.js'
import {cli} from './harness.js'
import {catches} from '../helpers/proc.js'

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

  /** A config `name` with listener main on a free port in front of a fresh echo backend "prod". */
  async function prodConfig(name: string): Promise<{port: number; file: string}> {
    const prod = await startServer('prod')
    servers.push(prod)
    const port = await freePort()
    return {port, file: config(name, `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${prod.address}" } ] }\n`)}
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
    const {port, file} = await prodConfig('ok.yaml')
    const daemon = await spawnDaemon(file, {admin, dir, args: ['--drain', '300ms']})
    try {
      const {file: other} = await prodConfig('other.yaml')
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

  test('issue 11.11: SIGHUP from the first moments of start-up on is held, the daemon gets ready and keeps running', async () => {
    const {port, file} = await prodConfig('early-hup.yaml')
    // A bare Node start, measured now: on a busy machine everything is slower, the deadline too.
    const bare = Math.max(...[1, 2, 3].map(() => {
      const t = Date.now()
      spawnSync(process.execPath, ['-e', ''])
      return Date.now() - t
    }))
    const deadline = Math.max(400, 3 * bare)
    const spawnedAt = Date.now()
    const daemon = await spawnDaemon(file, {admin: join(dir, 'early-hup.sock'), dir, waitReady: false})
    try {
      const pid = daemon.proc.pid!
      // The first SIGHUP goes as soon as the process catches it, or at 3 bare Node starts (at least
      // 400 ms) at the latest: loading oclif and the daemon takes ~0.6 s more than a bare start (1.5 s
      // on a busy machine), so a handler installed only then is too late. Then one every 50 ms until
      // the ready line.
      await until(() => catches(pid, 'SIGHUP') || Date.now() - spawnedAt >= deadline, 10_000, `a SIGHUP handler or ${deadline} ms`)
      let sent = 0
      const hup = (): void => {
        if (daemon.proc.exitCode === null && daemon.proc.signalCode === null && daemon.proc.kill('SIGHUP')) sent++
      }
      hup()
      const more = setInterval(hup, 50)
      try {
        await daemon.waitForLog((l) => l.msg === 'divert ready')
      } finally {
        clearInterval(more)
      }
      assert.ok(sent >= 1, 'at least one SIGHUP before ready')
      await daemon.waitForLog((l) => l.action === 'config.reload' && l.by === 'SIGHUP')
      assert.equal(daemon.proc.exitCode, null, 'still running')
      assert.equal(await whoAnswers(port), 'prod')
      assert.equal(await daemon.stop('SIGTERM'), 0)
    } finally {
      await daemon.stop('SIGKILL')
    }
  })

  test('issue 11.11: a second SIGTERM exits at once and removes the admin socket this daemon bound', async () => {
    const {port, file} = await prodConfig('twice.yaml')
    const sock = join(dir, 'twice.sock')
    const daemon = await spawnDaemon(file, {admin: sock, dir, args: ['--drain', '60s']})
    try {
      const live = await connect({port})
      assert.equal(await readLine(live), 'prod')
      assert.ok(existsSync(sock))
      daemon.proc.kill('SIGTERM')
      // The live session holds the drain open: the second signal must not wait for it.
      await daemon.waitForLog((l) => l.msg === 'draining live sessions')
      daemon.proc.kill('SIGTERM')
      assert.equal(await daemon.stop(), 1)
      assert.equal(existsSync(sock), false, 'the admin socket file is removed')
      live.destroy()
    } finally {
      await daemon.stop('SIGKILL')
    }
  })
})
