/**
 * Child processes of the bench: each pinned to a core with `taskset -c N` and given the hard fd limit
 * as its soft limit with `prlimit` (both exec the command, so the pid is the program's own), tracked
 * in a ProcessGroup that stops them by pid — never by name — when the bench ends or is interrupted.
 *
 *   ProcessGroup.launch(spec) → Managed (pid, output lines, waitFor, stop)
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {createConnection} from 'node:net'
import {setTimeout as delay} from 'node:timers/promises'
import {DivertError} from '../src/errors.js'

export interface LaunchSpec {
  name: string
  cmd: string
  args: string[]
  /** Core to pin to with taskset; undefined: not pinned. */
  cpu?: number
  /** RLIMIT_NOFILE (soft and hard) to run with. */
  nofile?: number
  cwd?: string
  env?: NodeJS.ProcessEnv
  /** 'pipe' lets the bench end a hold-mode loadgen by closing its stdin. */
  stdin?: 'pipe' | 'ignore'
  /** Keep all of stdout (iperf3's JSON document), not only the last lines. */
  capture?: boolean
}

/** The argv that runs spec.cmd under prlimit and taskset. */
export function wrappedArgv(spec: LaunchSpec): string[] {
  const argv = [spec.cmd, ...spec.args]
  if (spec.cpu !== undefined) argv.unshift('taskset', '-c', String(spec.cpu))
  if (spec.nofile !== undefined) argv.unshift('prlimit', `--nofile=${spec.nofile}:${spec.nofile}`)
  return argv
}

const KEEP_LINES = 200

export class Managed {
  readonly pid: number
  readonly exited: Promise<number | null>
  readonly lines: string[] = []
  /** All of stdout, when launched with capture. */
  stdout = ''
  private waiters: Array<(line: string) => void> = []
  private exitCode: number | null | undefined

  constructor(readonly name: string, readonly child: ChildProcess, capture = false) {
    if (child.pid === undefined) throw new DivertError('INTERNAL', `${name}: could not be started (spawn gave no pid)`)
    this.pid = child.pid
    this.exited = new Promise((resolve) => child.once('close', (code, signal) => {
      this.exitCode = code ?? (signal ? null : 0)
      resolve(this.exitCode)
    }))
    child.once('error', () => undefined)
    for (const stream of [child.stdout, child.stderr]) stream?.setEncoding('utf8')
    if (capture) child.stdout?.on('data', (chunk: string) => { this.stdout += chunk })
    this.split(child.stdout)
    this.split(child.stderr)
  }

  get running(): boolean {
    return this.exitCode === undefined
  }

  private split(stream: NodeJS.ReadableStream | null): void {
    let buf = ''
    stream?.on('data', (chunk: string) => {
      buf += chunk
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        this.onLine(buf.slice(0, nl))
        buf = buf.slice(nl + 1)
      }
    })
  }

  private onLine(line: string): void {
    this.lines.push(line)
    if (this.lines.length > KEEP_LINES) this.lines.shift()
    for (const w of this.waiters) w(line)
  }

  /** The last lines of output, for error messages. */
  tail(n = 5): string {
    return this.lines.slice(-n).join(' | ').slice(0, 600)
  }

  /** Resolves with the first line (already seen or future) that matches; rejects on exit or timeout. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<string> {
    const seen = this.lines.find((l) => pattern.test(l))
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const done = (fn: () => void): void => {
        clearTimeout(timer)
        this.waiters = this.waiters.filter((w) => w !== onLine)
        fn()
      }
      const onLine = (line: string): void => { if (pattern.test(line)) done(() => resolve(line)) }
      const timer = setTimeout(() => done(() => reject(new DivertError('LISTEN_FAILED', `${this.name}: no line matching ${pattern} within ${timeoutMs} ms; last output: ${this.tail() || '(none)'}`))), timeoutMs)
      this.waiters.push(onLine)
      void this.exited.then((code) => done(() => reject(new DivertError('LISTEN_FAILED', `${this.name} exited (status ${code}) before printing ${pattern}; last output: ${this.tail() || '(none)'}`))))
    })
  }

  /** Closes stdin (the hold modes of loadgen end on EOF). */
  endInput(): void {
    this.child.stdin?.end()
  }

  /** SIGTERM, then SIGKILL after graceMs; idempotent. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs)
    await this.exited
    clearTimeout(timer)
  }
}

export class ProcessGroup {
  private readonly members = new Set<Managed>()

  launch(spec: LaunchSpec): Managed {
    const [cmd, ...args] = wrappedArgv(spec)
    const child = spawn(cmd, args, {cwd: spec.cwd, env: spec.env ?? process.env, stdio: [spec.stdin ?? 'ignore', 'pipe', 'pipe']})
    const m = new Managed(spec.name, child, spec.capture)
    this.members.add(m)
    void m.exited.then(() => this.members.delete(m))
    return m
  }

  /** Runs to completion; kills it (by pid) after timeoutMs. Resolves with all of its stdout. */
  async run(spec: LaunchSpec, timeoutMs: number): Promise<{code: number | null; stdout: string; tail: string}> {
    const m = this.launch({...spec, capture: true})
    const timer = setTimeout(() => void m.stop(1000), timeoutMs)
    const code = await m.exited
    clearTimeout(timer)
    return {code, stdout: m.stdout, tail: m.tail()}
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.members].map((m) => m.stop()))
  }
}

/** Resolves once something accepts TCP connections on host:port (a server with no ready line). */
export async function waitForTcp(host: string, port: number, timeoutMs: number, owner?: Managed): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (let wait = 5; Date.now() < deadline; wait = Math.min(wait * 2, 100)) {
    if (owner && !owner.running) throw new DivertError('LISTEN_FAILED', `${owner.name} exited before listening on ${host}:${port}; last output: ${owner.tail() || '(none)'}`)
    if (await canConnect(host, port)) return
    await delay(wait)
  }
  throw new DivertError('LISTEN_FAILED', `nothing accepted connections on ${host}:${port} within ${timeoutMs} ms${owner ? `; ${owner.name} said: ${owner.tail() || '(nothing)'}` : ''}`)
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({host, port})
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => { s.destroy(); resolve(false) })
  })
}
