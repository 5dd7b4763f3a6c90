/**
 * The README's quickstart, as a new user runs it: `npm start` (examples/quickstart/run.mjs) and the
 * example client standing in for devices on 127.0.0.2 / 127.0.0.3. It uses the quickstart's fixed
 * loopback ports (7000, 7101, 7102, 7201), and skips with a reason when one is taken.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {spawn, type ChildProcess} from 'node:child_process'
import {existsSync, rmSync} from 'node:fs'
import net from 'node:net'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {runCli, tempDir} from '../helpers/daemon.js'

const quickstart = fileURLToPath(new URL('../../../examples/quickstart/', import.meta.url))

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

function run(args: string[]): Promise<{code: number | null; out: string}> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, args, {stdio: ['ignore', 'pipe', 'pipe']})
    let out = ''
    p.stdout.on('data', (c: Buffer) => (out += c))
    p.stderr.on('data', (c: Buffer) => (out += c))
    p.on('close', (code) => resolve({code, out}))
  })
}

test('quickstart: one device goes to staging, the others stay on prod', async (t) => {
  for (const port of [7000, 7101, 7102, 7201]) {
    if (!(await portFree(port))) return t.skip(`port ${port} on 127.0.0.1 is taken; the quickstart uses fixed ports`)
  }
  const state = join(quickstart, 'divert-state.json')
  const hadState = existsSync(state)
  const {dir, cleanup} = tempDir()
  const admin = join(dir, 'admin.sock')
  const daemon: ChildProcess = spawn(process.execPath, [join(quickstart, 'run.mjs'), '--admin', admin, '--log-format', 'json'], {stdio: ['ignore', 'pipe', 'pipe']})
  let logs = ''
  daemon.stdout!.on('data', (c: Buffer) => (logs += c))
  daemon.stderr!.on('data', (c: Buffer) => (logs += c))
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ready line: ${logs}`)), 15_000)
      const check = (): void => {
        if (logs.includes('"msg":"divert ready"')) {
          clearTimeout(timer)
          resolve()
        }
      }
      daemon.stdout!.on('data', check)
      daemon.once('exit', () => reject(new Error(`quickstart exited: ${logs}`)))
    })
    const client = join(quickstart, 'client.mjs')
    const before = await run([client, '--from', '127.0.0.2'])
    assert.equal(before.code, 0, before.out)
    assert.match(before.out, /^\[prod-[12]\] hello/)

    const add = await runCli(['add', '127.0.0.2', '--to', 'staging', '--admin', admin])
    assert.equal(add.code, 0, add.stderr)
    assert.match(add.stdout, /added rule r[0-9a-f]{6}: 127\.0\.0\.2 → to staging/)

    const diverted = await run([client, '--from', '127.0.0.2'])
    assert.match(diverted.out, /^\[staging\] hello 127\.0\.0\.2:\d+ \(from the PROXY v2 header\)/)
    const other = await run([client, '--from', '127.0.0.3'])
    assert.match(other.out, /^\[prod-[12]\] hello/)

    const rm = await runCli(['rm', '127.0.0.2', '--admin', admin])
    assert.equal(rm.code, 0, rm.stderr)
    const after = await run([client, '--from', '127.0.0.2'])
    assert.match(after.out, /^\[prod-[12]\] hello/)
    const udp = await run([client, '--from', '127.0.0.2', '--udp', 'ping'])
    assert.match(udp.out, /^\[prod-1\] ping/)
  } finally {
    daemon.kill('SIGTERM')
    await new Promise((r) => (daemon.exitCode === null ? daemon.once('exit', r) : r(null)))
    if (!hadState) rmSync(state, {force: true})
    cleanup()
  }
})
