/**
 * The README's quickstart, as a new user runs it: `npm start` (examples/quickstart/run.mjs) and the
 * example client standing in for devices on 127.0.0.2 / 127.0.0.3. It runs the quickstart's own
 * divert.yaml with only its ports changed (to free ones; the echo backends follow the config), so
 * it never depends on 7000/7101/7102/7201 being free. Also: a taken port, and Ctrl-C.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {spawn, type ChildProcess} from 'node:child_process'
import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import net from 'node:net'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {runCli, tempDir} from '../helpers/daemon.js'

const quickstart = fileURLToPath(new URL('../../../examples/quickstart/', import.meta.url))
const QUICKSTART_PORTS = [7000, 7101, 7102, 7201] as const

/** A port the kernel just gave out on 127.0.0.1 and that is free again (TCP; UDP on the same number is checked by the quickstart itself). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject).listen(0, '127.0.0.1', () => {
      const {port} = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })
}

/** The quickstart's divert.yaml in `dir` with its four ports replaced (same order as QUICKSTART_PORTS). */
function quickstartConfig(dir: string, ports: number[]): string {
  let text = readFileSync(join(quickstart, 'divert.yaml'), 'utf8')
  QUICKSTART_PORTS.forEach((p, i) => (text = text.replaceAll(`:${p}`, `:${ports[i]}`)))
  const file = join(dir, 'divert.yaml')
  writeFileSync(file, text)
  return file
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

interface Quickstart {
  proc: ChildProcess
  out: () => string
  /** stderr alone. */
  err: () => string
  exit: Promise<[number | null, NodeJS.Signals | null]>
  ready: () => Promise<void>
}

/** run.mjs in its own process group, as a shell runs a foreground job: a signal to -pid reaches the group. */
function startQuickstart(args: string[]): Quickstart {
  const proc = spawn(process.execPath, [join(quickstart, 'run.mjs'), ...args, '--log-format', 'json'], {stdio: ['ignore', 'pipe', 'pipe'], detached: true})
  let out = ''
  let err = ''
  proc.stdout!.on('data', (c: Buffer) => (out += c))
  proc.stderr!.on('data', (c: Buffer) => {
    out += c
    err += c
  })
  const exit = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => proc.once('exit', (code, signal) => resolve([code, signal])))
  const ready = (): Promise<void> => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line: ${out}`)), 15_000)
    const check = (): void => {
      if (!out.includes('"msg":"divert ready"')) return
      clearTimeout(timer)
      resolve()
    }
    proc.stdout!.on('data', check)
    void exit.then(() => reject(new Error(`quickstart exited: ${out}`)))
    check()
  })
  return {proc, out: () => out, err: () => err, exit, ready}
}

function killGroup(q: Quickstart): void {
  try {
    process.kill(-q.proc.pid!, 'SIGKILL')
  } catch {
    // already gone
  }
}

test('quickstart: one device goes to staging, the others stay on prod', async (t) => {
  const {dir, cleanup} = tempDir()
  t.after(cleanup)
  const ports = await Promise.all(QUICKSTART_PORTS.map(() => freePort()))
  const config = quickstartConfig(dir, ports)
  const admin = join(dir, 'admin.sock')
  const q = startQuickstart(['-c', config, '--admin', admin])
  t.after(() => killGroup(q))
  await q.ready()
  const client = join(quickstart, 'client.mjs')
  const port = ['--port', String(ports[0])]
  const before = await run([client, '--from', '127.0.0.2', ...port])
  assert.equal(before.code, 0, before.out)
  assert.match(before.out, /^\[prod-[12]\] hello/)

  const add = await runCli(['add', '127.0.0.2', '--to', 'staging', '--admin', admin])
  assert.equal(add.code, 0, add.stderr)
  assert.match(add.stdout, /added rule r[0-9a-f]{6}: 127\.0\.0\.2 → to staging/)

  const diverted = await run([client, '--from', '127.0.0.2', ...port])
  assert.match(diverted.out, /^\[staging\] hello 127\.0\.0\.2:\d+ \(from the PROXY v2 header\)/)
  const other = await run([client, '--from', '127.0.0.3', ...port])
  assert.match(other.out, /^\[prod-[12]\] hello/)

  const rm = await runCli(['rm', '127.0.0.2', '--admin', admin])
  assert.equal(rm.code, 0, rm.stderr)
  const after = await run([client, '--from', '127.0.0.2', ...port])
  assert.match(after.out, /^\[prod-[12]\] hello/)
  const udp = await run([client, '--from', '127.0.0.2', '--udp', 'ping', ...port])
  assert.match(udp.out, /^\[prod-1\] ping/)
  q.proc.kill('SIGTERM')
  assert.deepEqual(await q.exit, [0, null], q.out())
})

test('issue 11.28: a taken port stops the quickstart with one line that names it and says how to change it, no stack', async (t) => {
  const {dir, cleanup} = tempDir()
  t.after(cleanup)
  // Another program holds first staging's port, then divert's listener port.
  const holder = net.createServer()
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve))
  t.after(() => holder.close())
  const held = (holder.address() as net.AddressInfo).port
  const free = await Promise.all([0, 1, 2].map(() => freePort()))
  for (const [which, ports, expected] of [
    ['staging', [free[0], free[1], free[2], held], new RegExp(`^quickstart: TCP port ${held} on 127\\.0\\.0\\.1 \\(echo backend staging\\) is taken by another program; free it, or change that server's port in ${dir}/divert\\.yaml`)],
    ['listener', [held, free[0], free[1], free[2]], new RegExp(`^quickstart: TCP port ${held} on 127\\.0\\.0\\.1 \\(divert listener echo\\) is taken by another program; free it, or change listeners\\[\\]\\.bind of echo`)],
  ] as const) {
    const config = quickstartConfig(dir, [...ports])
    const q = startQuickstart(['-c', config, '--admin', join(dir, 'admin.sock')])
    t.after(() => killGroup(q))
    const [code] = await q.exit
    assert.equal(code, 1, `${which}: ${q.out()}`)
    const lines = q.err().trim().split('\n')
    assert.equal(lines.length, 1, `${which}: one line on stderr, no stack: ${q.out()}`)
    assert.match(lines[0], expected)
  }
})

test('issue 11.28: Ctrl-C (SIGINT to the process group) drains the daemon once, removes its admin socket, and exits 0', async (t) => {
  const {dir, cleanup} = tempDir()
  t.after(cleanup)
  const config = quickstartConfig(dir, await Promise.all(QUICKSTART_PORTS.map(() => freePort())))
  const admin = join(dir, 'admin.sock')
  const q = startQuickstart(['-c', config, '--admin', admin, '--drain', '5s'])
  t.after(() => killGroup(q))
  await q.ready()
  assert.ok(existsSync(admin))
  const daemonPid = (JSON.parse(q.out().split('\n').find((l) => l.includes('"msg":"divert ready"'))!) as {pid: number}).pid
  process.kill(-q.proc.pid!, 'SIGINT')
  assert.deepEqual(await q.exit, [0, null], q.out())
  const logs = q.out().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as {msg: string})
  assert.equal(logs.filter((l) => l.msg.startsWith('stopping')).length, 1, q.out())
  assert.equal(logs.filter((l) => l.msg.startsWith('second signal')).length, 0, q.out())
  assert.equal(existsSync(admin), false, 'the admin socket is removed')
  assert.throws(() => process.kill(daemonPid, 0), {code: 'ESRCH'}, 'the daemon has exited')
})
