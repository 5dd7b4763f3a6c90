/**
 * `divert reload` and SIGHUP against a spawned daemon: the config file is edited and re-read while a
 * TCP stream (checked by SHA-256 both ways) and a UDP flow run through it. New listeners appear,
 * removed ones stop accepting, a changed backend serves new sessions only, config rules are replaced
 * and runtime rules stay; a bad file is refused with the error `divert start` gives for it, and the
 * running config goes on serving.
 *
 *   test ─ edit divert.yaml ─ divert reload | kill -HUP ─▶ daemon ─▶ prod-a → prod-b, staging, debug
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {once} from 'node:events'
import {createHash, randomBytes} from 'node:crypto'
import {readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {spawnDaemon, tempDir, type Spawned} from '../helpers/daemon.js'
import {startServer, connect, readBytes, readLine, whoAnswers, freePort, freeUdpPort, type TestServer} from '../helpers/servers.js'
import {startUdpEcho, UdpClient, type UdpEcho} from '../helpers/udp.js'
import {cli, expectCliError, rawHttp, httpRequest, startLab} from './harness.js'

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/**
 * One echo session whose every byte is checked: `exchange(n)` sends n random bytes and waits for the
 * same n back, and the running digests of what went out and what came back must match at the end.
 */
class CheckedStream {
  private readonly sent = createHash('sha256')
  private readonly got = createHash('sha256')
  bytes = 0

  constructor(readonly socket: net.Socket) {}

  async exchange(n: number, chunk = 64 * 1024): Promise<void> {
    for (let done = 0; done < n; done += chunk) {
      const payload = randomBytes(Math.min(chunk, n - done))
      const back = readBytes(this.socket, payload.length, 10_000)
      this.sent.update(payload)
      this.socket.write(payload)
      const echoed = await back
      assert.equal(echoed.length, payload.length, 'the echo returned exactly what was sent')
      this.got.update(echoed)
      this.bytes += payload.length
    }
  }

  digests(): {sent: string; received: string} {
    return {sent: this.sent.digest('hex'), received: this.got.digest('hex')}
  }
}

/** Resolves with the error code of a connection attempt to a port nobody should serve any more. */
function connectError(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = net.connect({port, host: '127.0.0.1'})
    s.once('connect', () => {
      s.destroy()
      resolve(undefined)
    })
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code))
  })
}

describe('divert reload and SIGHUP', () => {
  const {dir, cleanup} = tempDir('divert-e2e-reload-')
  const configFile = join(dir, 'divert.yaml')
  const admin = join(dir, 'admin.sock')
  let prodA: TestServer, prodB: TestServer, staging: TestServer, debug: TestServer
  let udpA: UdpEcho, udpB: UdpEcho
  const port = {main: 0, gone: 0, fresh: 0, hup: 0, extra: 0, udp: 0}
  let daemon: Spawned
  let live: CheckedStream
  let flow: UdpClient
  let runtimeRule: string
  const run = (...args: string[]): ReturnType<typeof cli> => cli([...args, '--admin', admin])

  interface Shape {
    listeners: string[]
    prod: TestServer
    rules: string[]
    backends?: string
  }

  /** The config file: the chosen listeners, prod's server, the config rules, optionally extra backends. */
  function write(s: Shape): void {
    const listeners: Record<string, string> = {
      main: `{ name: main, bind: "127.0.0.1:${port.main}", backend: prod }`,
      gone: `{ name: gone, bind: "127.0.0.1:${port.gone}", backend: prod }`,
      fresh: `{ name: fresh, bind: "127.0.0.1:${port.fresh}", backend: prod }`,
      hup: `{ name: hup, bind: "127.0.0.1:${port.hup}", backend: prod }`,
      extra: `{ name: extra, bind: "127.0.0.1:${port.extra}", backend: prod }`,
      vpn: `{ name: vpn, protocol: udp, bind: "127.0.0.1:${port.udp}", backend: uprod, udp: { idle_timeout: 300s } }`,
    }
    writeFileSync(configFile, `state: ./state.json
listeners:
${s.listeners.map((l) => `  - ${listeners[l]}`).join('\n')}
backends:
  prod: { servers: [ { address: "${s.prod.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
${s.backends ?? `  debug: { servers: [ { address: "${debug.address}" } ] }`}
  uprod: { servers: [ { address: "${udpA.address}" } ] }
  uother: { servers: [ { address: "${udpB.address}" } ] }
rules:
${s.rules.map((r) => `  - ${r}`).join('\n')}
`)
  }

  const V2: () => Shape = () => ({listeners: ['main', 'fresh', 'vpn'], prod: prodB, rules: ['{ source: 127.0.0.7, to: staging }']})

  /** What clients get now: the answer on main from .3 (default), .5 and .7 (config rules), .6 (runtime rule). */
  async function routes(): Promise<string[]> {
    return Promise.all(['127.0.0.3', '127.0.0.5', '127.0.0.7', '127.0.0.6'].map((src) => whoAnswers(port.main, src)))
  }

  async function listenerNames(): Promise<string[]> {
    const r = await run('status', '--json')
    assert.equal(r.code, 0, r.stderr)
    return r.json().listeners.map((l: {name: string}) => l.name).sort()
  }

  before(async () => {
    ;[prodA, prodB, staging, debug] = await Promise.all(['prod-a', 'prod-b', 'staging', 'debug'].map((n) => startServer(n)))
    ;[udpA, udpB] = await Promise.all([startUdpEcho('udp-a'), startUdpEcho('udp-b')])
    for (const k of ['main', 'gone', 'fresh', 'hup', 'extra'] as const) port[k] = await freePort()
    port.udp = await freeUdpPort()
    write({listeners: ['main', 'gone', 'vpn'], prod: prodA, rules: ['{ source: 127.0.0.5, to: staging }']})
    daemon = await spawnDaemon(configFile, {admin, dir})
  })

  after(async () => {
    live?.socket.destroy()
    await flow?.close()
    await daemon?.stop()
    await Promise.all([prodA, prodB, staging, debug, udpA, udpB].map((s) => s?.close()))
    cleanup()
  })

  test('before: main and gone serve prod-a, 127.0.0.5 goes to staging by a config rule; a live stream and a UDP flow run', async () => {
    const added = await run('add', '127.0.0.6', '--to', 'debug', '--note', 'runtime, must survive reloads')
    assert.equal(added.code, 0, added.stderr)
    runtimeRule = /r[0-9a-f]{6}/.exec(added.stdout)![0]
    assert.deepEqual(await routes(), ['prod-a', 'staging', 'prod-a', 'debug'])
    assert.equal(await whoAnswers(port.gone), 'prod-a')

    const socket = await connect({port: port.main, localAddress: '127.0.0.3'})
    assert.equal(await readLine(socket), 'prod-a')
    live = new CheckedStream(socket)
    await live.exchange(1024 * 1024)

    flow = await UdpClient.open({local: '127.0.0.3'})
    assert.equal((await flow.request('one', port.udp)).payload.toString(), 'udp-a:one')
  })

  test('divert reload: fresh appears, gone stops accepting, prod moves to prod-b for new sessions only, rules replaced, runtime rule kept', async () => {
    const before = (await run('sessions', '--json')).json()
    write(V2())
    // Bytes keep moving on the live session while the reload runs.
    const [reload] = await Promise.all([run('reload'), live.exchange(4 * 1024 * 1024)])
    assert.equal(reload.code, 0, reload.stderr)
    assert.match(reload.stdout, new RegExp(`^reloaded ${esc(configFile)}$`, 'm'))
    assert.match(reload.stdout, /^listeners: added fresh; removed gone$/m)
    assert.match(reload.stdout, /^backends: changed prod$/m)

    assert.equal(await connectError(port.gone), 'ECONNREFUSED', 'the removed listener no longer accepts')
    assert.equal(await whoAnswers(port.fresh), 'prod-b', 'the new listener serves')
    assert.deepEqual(await routes(), ['prod-b', 'prod-b', 'staging', 'debug'], 'new sessions: prod-b; .5 rule gone, .7 rule new, runtime .6 kept')

    await live.exchange(4 * 1024 * 1024)
    const after = (await run('sessions', '--json')).json()
    const mine = (list: Array<Record<string, any>>): Record<string, any> | undefined => list.find((s) => s.protocol === 'tcp' && s.client === `127.0.0.3:${live.socket.localPort}`)
    assert.equal(mine(after)?.id, mine(before)?.id, 'the live TCP session is the same session')
    assert.equal(mine(after)?.server, prodA.address, 'and still on the old server')
    assert.equal((await flow.request('two', port.udp)).payload.toString(), 'udp-a:two', 'the UDP flow goes on')
    const udpBefore = before.find((s: any) => s.protocol === 'udp')
    assert.equal(after.find((s: any) => s.protocol === 'udp')?.id, udpBefore?.id, 'as the same flow')

    const rules = (await run('list', '--json')).json()
    assert.deepEqual(rules.map((r: any) => [r.source, r.origin]), [['127.0.0.6', 'runtime'], ['127.0.0.7', 'config']])
    assert.equal(rules[0].id, runtimeRule)
    const audit = await daemon.waitForLog((l) => l.audit === true && l.action === 'config.reload')
    assert.match(audit.by, /unix socket/)
  })

  test('an invalid config is refused with the same error divert start gives; the running config keeps serving', async () => {
    const cases = [
      {what: 'YAML syntax error', text: `listeners:\n  - { name: main, bind: "127.0.0.1:${port.main}", backend: prod\nbackends: {}\n`, code: 'DIVERT_ERR_CONFIG_SYNTAX', at: /:\d+:\d+: /},
      {what: 'unknown backend', text: `listeners:\n  - { name: main, bind: "127.0.0.1:${port.main}", backend: nosuch }\nbackends:\n  prod: { servers: [ { address: "${prodB.address}" } ] }\n`, code: 'DIVERT_ERR_CONFIG_INVALID', at: /:2:\d+: listeners\[0\]\.backend: /},
    ]
    for (const c of cases) {
      writeFileSync(configFile, c.text)
      const other = join(dir, 'start-check.sock')
      const atStart = await cli(['start', '-c', configFile, '--admin', other])
      assert.equal(atStart.code, 2, `${c.what}: divert start refuses it (${atStart.stderr})`)
      const startLine = atStart.stderr.trim()
      assert.match(startLine, new RegExp(`^divert: ${esc(configFile)}${c.at.source}`), `${c.what}: file:line:col at start`)
      // The same text: on stderr after "divert: ", in the --json body as the error itself.
      const message = new RegExp(`^(divert: )?${esc(startLine.replace(/^divert: /, ''))}$`)
      await expectCliError(run, {args: ['reload'], code: c.code, exit: 2, message})
    }
    assert.deepEqual(await listenerNames(), ['fresh', 'main', 'vpn'])
    assert.deepEqual(await routes(), ['prod-b', 'prod-b', 'staging', 'debug'])
    await live.exchange(256 * 1024)
    write(V2())
  })

  test('SIGHUP: a bad file is logged with its file:line:col and changes nothing; a good one is applied', async () => {
    writeFileSync(configFile, `listeners:\n  - { name: main, bind: "127.0.0.1:${port.main}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${prodB.address}" } ], colour: blue }\n`)
    const mark = daemon.logs.length
    daemon.proc.kill('SIGHUP')
    const failed = await daemon.waitForLog((l) => daemon.logs.indexOf(l) >= mark && /reload failed/.test(String(l.msg)))
    assert.equal(failed.level, 50)
    assert.match(String(failed.msg), new RegExp(`${esc(configFile)}:4:\\d+: backends\\.prod\\.colour: `))
    assert.match(String(failed.msg), /the running config stays/)
    assert.equal(failed.err?.code, 'DIVERT_ERR_CONFIG_INVALID')
    assert.deepEqual(await listenerNames(), ['fresh', 'main', 'vpn'])

    // A SIGHUP and four admin reloads at the same moment take turns: the first adds hup, the others find it bound.
    write({...V2(), listeners: ['main', 'fresh', 'hup', 'vpn']})
    const next = daemon.logs.length
    daemon.proc.kill('SIGHUP')
    const viaApi = await Promise.all([1, 2, 3, 4].map(() => rawHttp({path: admin}, httpRequest('POST', '/reload'))))
    assert.deepEqual(viaApi.map((r) => r.status), [200, 200, 200, 200], viaApi.map((r) => r.body).join('\n'))
    await daemon.waitForLog((l) => daemon.logs.indexOf(l) >= next && l.action === 'config.reload' && l.by === 'SIGHUP')
    // JSON log lines are batched (up to 100 ms): a reload's 200 can reach the test before its audit line.
    const reloads = (): Array<Record<string, any>> => daemon.logs.slice(next).filter((l) => l.action === 'config.reload')
    await daemon.waitForLog(() => reloads().length >= 5).catch(() => undefined)
    const all = reloads()
    assert.equal(all.length, 5, 'all five reloads were applied')
    assert.deepEqual(all.flatMap((l) => l.listeners.added), ['hup'], 'hup was added once, by whichever came first')
    assert.deepEqual(daemon.logs.slice(next).filter((l) => l.level >= 50), [], 'none failed')
    assert.equal(await whoAnswers(port.hup), 'prod-b')
    assert.deepEqual(await routes(), ['prod-b', 'prod-b', 'staging', 'debug'])
  })

  test('a reload that drops a backend a runtime rule uses is refused, naming the rule; after divert rm it goes through', async () => {
    write({...V2(), listeners: ['main', 'fresh', 'hup', 'vpn'], backends: ''})
    await expectCliError(run, {
      args: ['reload'], code: 'DIVERT_ERR_CONFIG_INVALID', exit: 2,
      message: new RegExp(`backend "debug" is gone but runtime rule ${runtimeRule} \\(127\\.0\\.0\\.6\\) uses it: remove the rule first \\(divert rm ${runtimeRule}\\)`),
    })
    assert.equal(await whoAnswers(port.main, '127.0.0.6'), 'debug', 'the rule and its backend still work')
    assert.equal((await run('rm', runtimeRule)).code, 0)
    const ok = await run('reload')
    assert.equal(ok.code, 0, ok.stderr)
    assert.match(ok.stdout, /^backends: removed debug$/m)
    assert.equal(await whoAnswers(port.main, '127.0.0.6'), 'prod-b')
  })

  test('a reload that fails late (a record rule whose directory is missing) binds nothing and changes nothing', async () => {
    write({...V2(), listeners: ['main', 'fresh', 'hup', 'extra', 'vpn'], backends: '', rules: ['{ source: 127.0.0.8, to: staging, record: ./no-such-dir/x.pcap }']})
    const r = await run('reload')
    assert.notEqual(r.code, 0, 'refused')
    assert.match(r.stderr, /no-such-dir/)
    assert.equal(await connectError(port.extra), 'ECONNREFUSED', 'the listener of the refused config was not left bound')
    assert.deepEqual(await listenerNames(), ['fresh', 'hup', 'main', 'vpn'])
    assert.deepEqual(await routes(), ['prod-b', 'prod-b', 'staging', 'prod-b'], 'the old config rules are still in force')
    assert.equal(await whoAnswers(port.main, '127.0.0.8'), 'prod-b')
  })

  test('a listener renamed on the same port is refused with a reason, not a bare "address in use"', async () => {
    write({...V2(), listeners: ['fresh', 'hup', 'vpn'], backends: '', rules: [`{ source: 127.0.0.7, to: staging }`]})
    const renamed = readFileSync(configFile, 'utf8').replace('listeners:\n', `listeners:\n  - { name: main2, bind: "127.0.0.1:${port.main}", backend: prod }\n`)
    writeFileSync(configFile, renamed)
    await expectCliError(run, {
      args: ['reload'], code: 'DIVERT_ERR_CONFIG_INVALID', exit: 2,
      message: new RegExp(`listener main2 \\(127\\.0\\.0\\.1:${port.main}\\) needs the address listener main holds .*reload in two steps \\(first without main\\)`),
    })
    assert.deepEqual(await listenerNames(), ['fresh', 'hup', 'main', 'vpn'])
  })

  test('the live session never dropped: every byte came back, in order, on the original server', async () => {
    await live.exchange(1024 * 1024)
    const {sent, received} = live.digests()
    assert.equal(received, sent)
    assert.ok(live.bytes >= 10 * 1024 * 1024)
    const client = `127.0.0.3:${live.socket.localPort}`
    live.socket.end()
    await once(live.socket, 'close')
    const closedLine = await daemon.waitForLog((l) => l.msg === 'session closed' && l.protocol === 'tcp' && l.client === client)
    assert.equal(closedLine.server, prodA.address)
    assert.equal(closedLine.cause, 'client-closed')
    assert.equal(closedLine.bytesIn, live.bytes)
    assert.deepEqual(daemon.logs.filter((l) => l.level >= 50 && !/reload failed/.test(String(l.msg))), [], 'no other error logged')
  })
})

describe('issue 11.16: a kept listener whose options changed', () => {
  test('issue 11.16: divert reload --json lists a listener whose limits and backend changed under changed, and the new options are in force', async () => {
    const lab = await startLab()
    const held: net.Socket[] = []
    try {
      const text = readFileSync(lab.configFile, 'utf8')
      const alt = `{ name: alt, bind: "127.0.0.1:${lab.altPort}", backend: prod }`
      assert.ok(text.includes(alt))
      writeFileSync(lab.configFile, text.replace(alt, `{ name: alt, bind: "127.0.0.1:${lab.altPort}", backend: staging, max_connections: 1 }`))
      const r = await lab.cli('reload', '--json')
      assert.equal(r.code, 0, r.stderr)
      assert.deepEqual(r.json().listeners, {added: [], removed: [], changed: ['alt']})
      const text2 = await lab.cli('reload')
      assert.match(text2.stdout, /^listeners: unchanged$/m, 'a second reload of the same file changes nothing')
      const first = await connect({port: lab.altPort})
      held.push(first)
      assert.equal(await readLine(first), 'staging', 'the new backend serves new sessions')
      const second = await connect({port: lab.altPort})
      held.push(second)
      await assert.rejects(readLine(second, 5000), /closed before a full line/, 'max_connections 1: the second session is refused')
      assert.equal(await whoAnswers(lab.port), 'prod', 'the unchanged listener is as it was')
    } finally {
      for (const s of held) s.destroy()
      await lab.close()
    }
  })
})
