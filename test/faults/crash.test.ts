/**
 * The daemon killed -9 while rules are being written, then started again: every rule whose `add`
 * returned success is back, the state file is valid JSON, nothing was moved aside as corrupt, no temp
 * file is left, and the stale admin socket the dead daemon left is replaced. Also what `divert start`
 * says about an admin path that is not a socket and a bearer token that is too short.
 *
 *   N admin clients + `divert add` loops ─▶ daemon ─save─▶ state.json      kill -9 ─▶ restart ─▶ compare
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import {existsSync, lstatSync, readFileSync, readdirSync, unlinkSync, writeFileSync} from 'node:fs'
import {spawnSync} from 'node:child_process'
import {join} from 'node:path'
import {spawnDaemon, runCli, tempDir, type Spawned} from '../helpers/daemon.js'
import {startServer, freePort, whoAnswers, type TestServer} from '../helpers/servers.js'
import {AdminClient} from '../../src/admin/client.js'

const WORKERS = 6
const CLI_LOOPS = 2
/** Kill once this many adds have succeeded (bounded: the loops stop at the kill anyway). */
const KILL_AFTER = 80

describe('kill -9 while rules are written, then restart', () => {
  const {dir, cleanup} = tempDir('divert-faults-crash-')
  const configFile = join(dir, 'divert.yaml')
  const admin = join(dir, 'admin.sock')
  const state = join(dir, 'state.json')
  let prod: TestServer, staging: TestServer
  let port: number
  let daemon: Spawned

  before(async () => {
    ;[prod, staging] = await Promise.all([startServer('prod'), startServer('staging')])
    port = await freePort()
    writeFileSync(configFile, `state: ./state.json
listeners: [ { name: main, bind: "127.0.0.1:${port}", backend: prod } ]
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
`)
    daemon = await spawnDaemon(configFile, {admin, dir})
  })

  after(async () => {
    await daemon?.stop()
    await Promise.all([prod, staging].map((s) => s?.close()))
    cleanup()
  })

  test('every add that returned success survives; the file is whole; the stale socket is replaced', {timeout: 60_000}, async (t) => {
    const succeeded = new Map<string, string>()
    let next = 0
    let killed = false
    const source = (): string => {
      const n = next++
      return `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`
    }
    const kill = (): void => {
      if (killed || succeeded.size < KILL_AFTER) return
      killed = true
      daemon.proc.kill('SIGKILL')
    }
    const apiLoop = async (): Promise<void> => {
      const client = new AdminClient(admin)
      try {
        while (!killed && next < 100_000) {
          const src = source()
          const r = await client.addRule({source: src, to: 'staging', note: 'crash test'}).catch(() => undefined)
          if (!r) return
          succeeded.set(r.rule.id, src)
          kill()
        }
      } finally {
        await client.close().catch(() => undefined)
      }
    }
    const cliLoop = async (): Promise<void> => {
      while (!killed && next < 100_000) {
        const src = source()
        const r = await runCli(['add', src, '--to', 'staging', '--admin', admin, '--json'])
        if (r.code !== 0) return
        succeeded.set(r.json().rule.id, src)
        kill()
      }
    }
    await Promise.all([...Array.from({length: WORKERS}, apiLoop), ...Array.from({length: CLI_LOOPS}, cliLoop)])
    assert.ok(killed, `the daemon was killed after ${KILL_AFTER} successful adds`)
    t.diagnostic(`${succeeded.size} adds acknowledged, ${next} attempted before the kill`)
    const exit = await daemon.stop()
    assert.equal(exit, null, 'it died by the signal')
    assert.equal(daemon.proc.signalCode, 'SIGKILL')
    assert.ok(lstatSync(admin).isSocket(), 'the dead daemon left its socket file behind')

    const onDisk = JSON.parse(readFileSync(state, 'utf8')) as {version: number; rules: Array<{id: string; source: string}>}
    assert.equal(onDisk.version, 1)
    const saved = new Map(onDisk.rules.map((r) => [r.id, r.source]))
    for (const [id, src] of succeeded) assert.equal(saved.get(id), src, `rule ${id} (${src}) was acknowledged, so it is on disk`)

    // What a kill between open and rename leaves: a temp file of a dead process (removed at start),
    // next to one of a live process (this test runner's pid: never touched).
    const dead = spawnSync(process.execPath, ['-e', '0']).pid
    const deadTemp = join(dir, `.state.json.tmp-${dead}`)
    const liveTemp = join(dir, `.state.json.tmp-${process.pid}`)
    writeFileSync(deadTemp, '{"version": 1, "rules": [{"id": "r0000')
    writeFileSync(liveTemp, 'another process is writing this')
    daemon = await spawnDaemon(configFile, {admin, dir})
    assert.equal(existsSync(deadTemp), false, 'the dead writer\'s temp file is removed')
    assert.equal(readFileSync(liveTemp, 'utf8'), 'another process is writing this', 'a live writer\'s temp file is left alone')
    unlinkSync(liveTemp)
    const restored = await daemon.waitForLog((l) => l.msg === 'runtime rules restored')
    assert.equal(restored.rules, saved.size)
    const client = new AdminClient(admin)
    try {
      const rules = new Map((await client.rules()).map((r) => [r.id, r.source]))
      for (const [id, src] of succeeded) assert.equal(rules.get(id), src, `rule ${id} is in force after the restart`)
    } finally {
      await client.close()
    }
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp') || f.includes('corrupt')), [], 'no temp file left, nothing moved aside')
    assert.ok(!daemon.logs.some((l) => l.level >= 50), 'no error logged at restart')
    assert.equal(await whoAnswers(port, '127.0.0.2'), 'prod', 'traffic flows after the restart')
  })

  test('an admin path that is a regular file: start refuses and says so, and leaves the file alone', async () => {
    const file = join(dir, 'not-a-socket')
    writeFileSync(file, 'precious')
    const cfg = join(dir, 'other.yaml')
    writeFileSync(cfg, `listeners: [ { name: main, bind: "127.0.0.1:${await freePort()}", backend: prod } ]\nbackends: { prod: { servers: [ { address: "${prod.address}" } ] } }\n`)
    const r = await runCli(['start', '-c', cfg, '--admin', file])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, new RegExp(`${file.replace(/[.]/g, '\\.')} exists and is not a socket: give the admin socket another path`))
    assert.equal(readFileSync(file, 'utf8'), 'precious')
  })

  test('a second divert start on the live admin socket is refused, and the first daemon stays reachable there', async () => {
    const cfg = join(dir, 'second.yaml')
    writeFileSync(cfg, `listeners: [ { name: main, bind: "127.0.0.1:${await freePort()}", backend: prod } ]\nbackends: { prod: { servers: [ { address: "${prod.address}" } ] } }\n`)
    const r = await runCli(['start', '-c', cfg, '--admin', admin])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /another divert daemon is already listening on /)
    const status = await runCli(['status', '--json', '--admin', admin])
    assert.equal(status.code, 0, `the first daemon still answers: ${status.stderr}`)
    assert.equal(status.json().pid, daemon.proc.pid)
  })

  test('a bearer token shorter than 16 characters: start refuses and says how to make a good one', async () => {
    const token = join(dir, 'short-token')
    writeFileSync(token, 'tooshort\n', {mode: 0o600})
    const cfg = join(dir, 'token.yaml')
    writeFileSync(cfg, `admin: { listen: "127.0.0.1:${await freePort()}", token_file: ${token} }
listeners: [ { name: main, bind: "127.0.0.1:${await freePort()}", backend: prod } ]
backends: { prod: { servers: [ { address: "${prod.address}" } ] } }
`)
    const sock = join(dir, 'token.sock')
    const r = await runCli(['start', '-c', cfg, '--admin', sock])
    assert.equal(r.code, 2, r.stderr)
    assert.match(r.stderr, /admin\.token_file .*short-token holds a token shorter than 16 characters: use a long random one \(e\.g\. openssl rand -hex 32\)/)
    assert.equal(existsSync(sock), false, 'no admin socket was left behind')
  })
})
