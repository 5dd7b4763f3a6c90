/**
 * A real `redis-server` for the fleet tests (issue 14): started on a free loopback port with no
 * persistence (`--save '' --appendonly no`), ready when it logs "Ready to accept connections",
 * stopped by its pid; start() again brings it back on the same port, empty. A Relay sits between one
 * daemon and Redis so a test can cut that one instance off (a split network) while the others stay.
 *
 *   daemon A ───────────────▶ redis-server (127.0.0.1:PORT)
 *   daemon B ─▶ Relay (cut/mend) ─┘
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {once} from 'node:events'
import net from 'node:net'
import {freePort} from './servers.js'

export class RedisServer {
  private proc?: ChildProcess

  private constructor(readonly port: number) {}

  static async start(): Promise<RedisServer> {
    const r = new RedisServer(await freePort())
    await r.start()
    return r
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`
  }

  get pid(): number | undefined {
    return this.proc?.pid
  }

  /** Starts (again) on the same port; resolves at the ready line. */
  async start(): Promise<void> {
    const proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'notice'], {stdio: ['ignore', 'pipe', 'pipe']})
    this.proc = proc
    let out = ''
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server not ready within 10s: ${out}`)), 10_000)
      proc.stdout!.on('data', (c: Buffer) => {
        out += c.toString('utf8')
        if (out.includes('Ready to accept connections')) {
          clearTimeout(timer)
          resolve()
        }
      })
      proc.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`redis-server exited (${code}) before it was ready: ${out}`))
      })
    })
  }

  /** SIGTERM by pid, then SIGKILL if it lingers; resolves once it is gone. */
  async stop(): Promise<void> {
    const proc = this.proc
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = once(proc, 'exit')
    proc.kill('SIGTERM')
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  }
}

/** A TCP relay to Redis that the test can cut (every connection reset, new ones refused) and mend. */
export class Relay {
  private readonly sockets = new Set<net.Socket>()
  private cutOff = false

  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(target: number): Promise<Relay> {
    const server = net.createServer()
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const relay = new Relay(server, (server.address() as net.AddressInfo).port)
    server.on('connection', (client: net.Socket) => relay.accept(client, target))
    return relay
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`
  }

  cut(): void {
    this.cutOff = true
    for (const s of this.sockets) s.resetAndDestroy()
  }

  mend(): void {
    this.cutOff = false
  }

  close(): Promise<void> {
    this.cut()
    return new Promise((resolve) => this.server.close(() => resolve()))
  }

  private accept(client: net.Socket, target: number): void {
    if (this.cutOff) return void client.resetAndDestroy()
    const upstream = net.connect(target, '127.0.0.1')
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      this.sockets.add(a)
      a.on('error', () => b.destroy())
      a.on('close', () => {
        this.sockets.delete(a)
        b.destroy()
      })
      a.pipe(b)
    }
  }
}
