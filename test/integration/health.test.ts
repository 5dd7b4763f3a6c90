import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {once} from 'node:events'
import net from 'node:net'
import {spawn, spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {freePort, until} from '../helpers/servers.js'
import {Backend, type Server} from '../../src/backends/backend.js'
import {HealthChecker, describeCheckError, tcpConnectCheck, type HealthChange} from '../../src/backends/health.js'
import type {BackendConfig, ProxyProtocolVersion} from '../../src/config/types.js'
import {decodeProxyHeader, type ProxyHeader} from '../../src/backends/proxy-protocol.js'
import {parseAddress} from '../../src/addr/address.js'

/** A loopback TCP server that remembers its sockets and closes them with itself (idempotent). */
class LoopbackServer {
  readonly sockets = new Set<net.Socket>()
  closed = 0
  private server?: net.Server
  private waiters: Array<{n: number; resolve: () => void}> = []

  /** Resolves once `n` accepted sockets have closed in all. */
  closedCount(n: number): Promise<void> {
    return new Promise((resolve) => {
      this.waiters.push({n, resolve})
      this.wake()
    })
  }

  private wake(): void {
    this.waiters = this.waiters.filter((w) => (this.closed >= w.n ? void w.resolve() : true))
  }

  private readonly connectionHooks: Array<(socket: net.Socket) => void> = []

  /** Runs `hook` on every accepted socket from now on. */
  onConnection(hook: (socket: net.Socket) => void): void {
    this.connectionHooks.push(hook)
  }

  async listen(port = 0): Promise<number> {
    const server = net.createServer((socket) => {
      for (const hook of this.connectionHooks) hook(socket)
      this.sockets.add(socket)
      socket.on('error', () => undefined)
      socket.on('close', () => {
        this.sockets.delete(socket)
        this.closed++
        this.wake()
      })
      socket.resume()
    })
    this.server = server
    server.listen({host: '127.0.0.1', port})
    await once(server, 'listening')
    return (server.address() as net.AddressInfo).port
  }

  async close(): Promise<void> {
    const server = this.server
    this.server = undefined
    if (!server) return
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

function backendFor(port: number, proxyProtocol?: ProxyProtocolVersion): Backend {
  const config: BackendConfig = {
    name: 'prod', balance: 'roundrobin', fallback: 'default', connectTimeoutMs: 1000, serverTimeoutMs: 0, ...(proxyProtocol ? {proxyProtocol} : {}),
    servers: [{address: parseAddress(`127.0.0.1:${port}`), weight: 1}],
    health: {check: 'tcp', intervalMs: 25, timeoutMs: 500, rise: 2, fall: 2},
  }
  return new Backend(config)
}

function nextChange(checker: HealthChecker): Promise<HealthChange> {
  return once(checker, 'change').then(([change]) => change as HealthChange)
}

describe('tcpConnectCheck (loopback)', () => {
  it('resolves once connected and closes its socket', {timeout: 5000}, async () => {
    const srv = new LoopbackServer()
    try {
      const port = await srv.listen()
      const server = backendFor(port).servers[0]
      await tcpConnectCheck(server, 1000)
      await tcpConnectCheck(server, 1000)
      // Both probe connections reached the server and the prober closed them (no leak).
      await srv.closedCount(2)
      assert.equal(srv.sockets.size, 0)
    } finally {
      await srv.close()
    }
  })

  it('rejects with "connect ECONNREFUSED" when nothing listens', async () => {
    const srv = new LoopbackServer()
    const port = await srv.listen()
    await srv.close()
    const server = backendFor(port).servers[0]
    await assert.rejects(tcpConnectCheck(server, 1000), (e: unknown) => describeCheckError(e) === 'connect ECONNREFUSED')
  })
})

/**
 * A server that, like an HAProxy `accept-proxy` bind, requires a valid PROXY header at the start of
 * every connection: it decodes what each connection sent by the time it ends, and counts the rest.
 */
class ProxyRequiringServer extends LoopbackServer {
  readonly headers: ProxyHeader[] = []
  bad = 0

  override async listen(): Promise<number> {
    const port = await super.listen()
    this.onConnection((socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (c: Buffer) => chunks.push(c))
      socket.once('close', () => {
        try {
          const h = decodeProxyHeader(Buffer.concat(chunks))
          if (h) this.headers.push(h)
          else this.bad++
        } catch {
          this.bad++
        }
      })
    })
    return port
  }
}

describe('issue 11.22: health checks to a proxy_protocol backend', () => {
  for (const version of ['v2', 'v1'] as const) {
    it(`issue 11.22: every check to a ${version} backend starts with a PROXY header (${version === 'v2' ? 'LOCAL, no addresses' : 'PROXY UNKNOWN'}); none arrives without one`, {timeout: 10_000}, async () => {
      const srv = new ProxyRequiringServer()
      const backend = backendFor(await srv.listen(), version)
      const checker = new HealthChecker(backend, {check: tcpConnectCheck})
      try {
        checker.start()
        await srv.closedCount(4)
      } finally {
        checker.stop()
        await srv.close()
      }
      assert.equal(srv.bad, 0, 'checks without a valid PROXY header')
      assert.ok(srv.headers.length >= 4, `${srv.headers.length} headers`)
      const expected = version === 'v2' ? {version: 2, command: 'LOCAL', transport: 'unknown', length: 16} : {version: 1, command: 'PROXY', transport: 'unknown', length: 15}
      for (const h of srv.headers) assert.deepEqual(h, expected)
      assert.equal(backend.servers[0].up, true)
      assert.equal(backend.servers[0].lastCheck?.ok, true)
    })
  }

  it('issue 11.22: a real HAProxy accept-proxy bind logs no error for our checks (and does for a bare connect)', {timeout: 20_000, skip: hasHaproxy() ? false : 'haproxy is not installed'}, async (t) => {
    const hap = await startHaproxy(t)
    for (const version of ['v2', 'v1', 'v2', 'v1'] as const) await tcpConnectCheck(hap.server, 2000, {proxyProtocol: version})
    // A marker the log must show: one connect without a header, which HAProxy reports as an error.
    await tcpConnectCheck(hap.server, 2000)
    // HAProxy logs a connection when it ends, after our side is done: wait for the lines, then stop it.
    await until(() => hap.lines.some((l) => / fe\/\d+: /.test(l)) && hap.lines.filter((l) => / fe be\/s1 /.test(l)).length >= 5, 10_000, 'HAProxy to log the checks').catch(() => undefined)
    const log = await hap.stop()
    // tcplog: a session is "fe be/s1 …"; a connection that failed before one, "fe/1: <why>".
    const errors = log.filter((l) => / fe\/\d+: /.test(l))
    assert.equal(errors.length, 1, `HAProxy log:\n${log.join('\n')}`)
    assert.match(errors[0], /Connection closed while waiting for PROXY protocol header/)
    assert.ok(log.filter((l) => / fe be\/s1 /.test(l)).length >= 5, `the checks were sessions:\n${log.join('\n')}`)
  })
})

function hasHaproxy(): boolean {
  return spawnSync('sh', ['-c', 'command -v haproxy'], {stdio: 'ignore'}).status === 0
}

/**
 * HAProxy in the foreground with a TCP frontend `bind … accept-proxy` in front of a loopback server,
 * logging every connection (and every connection error) to stdout. Ready once a check goes through.
 */
async function startHaproxy(t: {after(fn: () => unknown): void}): Promise<{server: Server; lines: string[]; stop(): Promise<string[]>}> {
  const dir = mkdtempSync(join(tmpdir(), 'divert-haproxy-'))
  const behind = new LoopbackServer()
  const behindPort = await behind.listen()
  const port = await freePort()
  const cfg = join(dir, 'haproxy.cfg')
  writeFileSync(cfg, `global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  option tcplog
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:${port} accept-proxy
  default_backend be
backend be
  server s1 127.0.0.1:${behindPort}
`)
  const proc = spawn('haproxy', ['-db', '-f', cfg], {stdio: ['ignore', 'pipe', 'pipe']})
  const lines: string[] = []
  proc.stdout.setEncoding('utf8').on('data', (d: string) => lines.push(...d.split('\n').filter((l) => l !== '')))
  proc.stderr.setEncoding('utf8').on('data', (d: string) => lines.push(...d.split('\n').filter((l) => l !== '')))
  const exited = once(proc, 'exit')
  const stop = async (): Promise<string[]> => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGUSR1')
      await exited
    }
    await behind.close()
    rmSync(dir, {recursive: true, force: true})
    return lines
  }
  t.after(stop)
  const server = backendFor(port).servers[0]
  await until(() => tcpConnectCheck(server, 1000, {proxyProtocol: 'v2'}).then(() => true, () => false), 10_000, `haproxy to listen on ${port}: ${lines.join(' | ')}`)
  return {server, lines, stop}
}

describe('HealthChecker against a real server (loopback)', () => {
  it('sees the server go down when it closes and come back when it reopens', {timeout: 10_000}, async () => {
    const srv = new LoopbackServer()
    const port = await srv.listen()
    const backend = backendFor(port)
    const server = backend.servers[0]
    const checker = new HealthChecker(backend, {check: tcpConnectCheck})
    try {
      checker.start()
      assert.equal(server.up, true)

      const down = nextChange(checker)
      await srv.close()
      const d = await down
      assert.deepEqual([d.backend, d.server, d.up, d.reason], ['prod', server, false, 'connect ECONNREFUSED'])
      assert.equal(server.up, false)
      assert.equal(backend.pick('10.0.0.1'), undefined)
      assert.equal(server.lastCheck?.ok, false)

      const up = nextChange(checker)
      await srv.listen(port)
      const u = await up
      assert.deepEqual([u.server, u.up], [server, true])
      assert.equal(backend.pick('10.0.0.1'), server)
      assert.equal(server.lastCheck?.ok, true)
      assert.ok(typeof server.lastCheck?.latencyMs === 'number')
    } finally {
      checker.stop()
      await srv.close()
    }
  })
})
