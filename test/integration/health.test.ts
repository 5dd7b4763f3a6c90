import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {once} from 'node:events'
import net from 'node:net'
import {Backend} from '../../src/backends/backend.js'
import {HealthChecker, describeCheckError, tcpConnectCheck, type HealthChange} from '../../src/backends/health.js'
import type {BackendConfig} from '../../src/config/types.js'
import {parseEndpoint} from '../../src/net/endpoint.js'

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

  async listen(port = 0): Promise<number> {
    const server = net.createServer((socket) => {
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

function backendFor(port: number): Backend {
  const config: BackendConfig = {
    name: 'prod', balance: 'roundrobin', fallback: 'default', connectTimeoutMs: 1000, serverTimeoutMs: 0,
    servers: [{address: parseEndpoint(`127.0.0.1:${port}`), weight: 1}],
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
