/**
 * What the fault tests share: a control session that must come through every fault untouched, the
 * user's view of the daemon (/metrics, /sessions through the admin API, "session closed" log lines),
 * and a tiny tmpfs that can be filled up or remounted read-only (root only; otherwise a skip reason).
 *
 *   control client (127.0.0.200) ─▶ daemon listener ctl ─▶ calm echo      (must never notice)
 *   fault clients ─▶ daemon listeners ─▶ dying / refusing / silent / slow servers, full disks
 */
import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import type net from 'node:net'
import {AdminClient} from '../../src/admin/client.js'
import type {SessionView} from '../../src/admin/protocol.js'
import type {InProcess} from '../helpers/daemon.js'
import {parseMetrics} from '../helpers/metrics.js'
import {connect, readBytes, readLine, until} from '../helpers/servers.js'

export const CONTROL_SOURCE = '127.0.0.200'

/** An echo session through the daemon whose every byte is compared, and whose session id must not change. */
export class ControlSession {
  bytes = 0

  private constructor(readonly socket: net.Socket, readonly id: string, private readonly d: InProcess) {}

  /** Opens it from 127.0.0.200 to `port` (a listener whose backend is an echo server that greets `greeting`). */
  static async open(d: InProcess, port: number, greeting = 'calm'): Promise<ControlSession> {
    const socket = await connect({port, localAddress: CONTROL_SOURCE})
    assert.equal(await readLine(socket), greeting)
    const client = `${CONTROL_SOURCE}:${socket.localPort}`
    await until(() => d.daemon.registry.snapshot().some((s) => s.client === client), 5000, 'control session registered')
    const id = d.daemon.registry.snapshot().find((s) => s.client === client)!.id
    const c = new ControlSession(socket, id, d)
    await c.exchange(64 * 1024)
    return c
  }

  /** Sends n random bytes and expects exactly them back, promptly. */
  async exchange(n: number, timeoutMs = 5000): Promise<void> {
    const payload = randomBytes(n)
    const back = readBytes(this.socket, n, timeoutMs)
    this.socket.write(payload)
    assert.ok((await back).equals(payload), 'the control session echoed its bytes unchanged')
    this.bytes += n
  }

  /** Still the same live session, still echoing, its byte count in step with what was sent. */
  async assertUntouched(): Promise<void> {
    await this.exchange(128 * 1024)
    const s = this.d.daemon.registry.get(this.id)
    assert.ok(s && !s.closed, `control session ${this.id} is still live`)
    await until(() => s.transport.bytesIn() === this.bytes, 5000, 'control session byte count')
    assert.equal(this.d.daemon.registry.view(s).bytesIn, this.bytes)
  }

  close(): void {
    this.socket.destroy()
  }
}

/** The admin API of an in-process daemon, as the CLI sees it. */
export function adminOf(d: InProcess): AdminClient {
  return new AdminClient(d.admin)
}

/** /metrics as `name{labels}` → value. */
export async function metrics(d: InProcess): Promise<Map<string, number>> {
  const client = adminOf(d)
  try {
    return parseMetrics(await client.metrics())
  } finally {
    await client.close()
  }
}

/** One sample of /metrics, 0 when absent: `metric(m, 'divert_sessions_closed_total', {listener: 'l', backend: 'b', cause: 'x'})`. */
export function metric(m: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const keys = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  let sum = 0
  for (const [key, value] of m) {
    if (key !== name && !key.startsWith(`${name}{`)) continue
    if (keys.every((k) => key.includes(k))) sum += value
  }
  return sum
}

export async function sessions(d: InProcess): Promise<SessionView[]> {
  const client = adminOf(d)
  try {
    return await client.sessions()
  } finally {
    await client.close()
  }
}

/** Waits for the "session closed" line of the session from `client` (address:port) and returns it. */
export async function closedLine(d: InProcess, client: string, timeoutMs = 5000): Promise<Record<string, any>> {
  const find = (): Record<string, any> | undefined => d.logs.find('session closed').find((l) => l.client === client)
  await until(() => find() !== undefined, timeoutMs, `"session closed" for ${client}`)
  return find()!
}

/**
 * A tmpfs of `size` bytes mounted on a fresh directory: a disk that fills up, or turns read-only,
 * for real (root bypasses directory modes, not a read-only mount).
 */
export class Tmpfs {
  private mounted = true

  private constructor(readonly dir: string) {}

  /** The mounted tmpfs, or why it cannot be had here (the test then skips with that reason). */
  static mount(size: number): Tmpfs | string {
    if (process.getuid?.() !== 0) return 'needs root to mount a tmpfs'
    const dir = mkdtempSync(join(tmpdir(), 'divert-tmpfs-'))
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'divert-fault', dir], {stdio: 'pipe'})
    } catch (error) {
      rmSync(dir, {recursive: true, force: true})
      return `cannot mount a tmpfs: ${String((error as {stderr?: Buffer}).stderr ?? (error as Error).message).trim()}`
    }
    return new Tmpfs(dir)
  }

  readOnly(ro: boolean): void {
    execFileSync('mount', ['-o', `remount,${ro ? 'ro' : 'rw'}`, this.dir], {stdio: 'pipe'})
  }

  /** Writes a filler file until the filesystem says ENOSPC. */
  fill(): void {
    try {
      writeFileSync(join(this.dir, 'filler'), Buffer.alloc(64 * 1024 * 1024))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error
      return
    }
    throw new Error(`${this.dir} took 64 MiB without filling up`)
  }

  unfill(): void {
    rmSync(join(this.dir, 'filler'), {force: true})
  }

  /** Idempotent; a lazy unmount if a descriptor is still open in it. */
  unmount(): void {
    if (!this.mounted) return
    this.mounted = false
    try {
      execFileSync('umount', [this.dir], {stdio: 'pipe'})
    } catch {
      execFileSync('umount', ['-l', this.dir], {stdio: 'pipe'})
    }
    rmSync(this.dir, {recursive: true, force: true})
  }
}
