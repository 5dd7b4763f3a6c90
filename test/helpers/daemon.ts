/**
 * Running divert in tests: in process (Daemon.start with a silent or capturing logger) for the
 * proxy-path integration tests, or as a user would — `bin/run.js start` as a child process, waiting
 * for its "divert ready" log line — plus `runCli` for the other commands.
 */
import {spawn, type ChildProcess} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import pino from 'pino'
import {Writable} from 'node:stream'
import {Daemon, type DaemonOptions} from '../../src/daemon.js'

export const BIN = fileURLToPath(new URL('../../../bin/run.js', import.meta.url))

export function tempDir(prefix = 'divert-test-'): {dir: string; cleanup: () => void} {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return {dir, cleanup: () => rmSync(dir, {recursive: true, force: true})}
}

/** Log lines captured from an in-process daemon, as parsed objects. */
export class LogCapture {
  readonly lines: Array<Record<string, any>> = []
  readonly stream = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) this.lines.push(JSON.parse(l))
      cb()
    },
  })

  find(msg: string | RegExp): Array<Record<string, any>> {
    return this.lines.filter((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(String(l.msg))))
  }
}

export interface InProcess {
  daemon: Daemon
  logs: LogCapture
  admin: string
  dir: string
  stop(drainMs?: number): Promise<void>
}

/**
 * Starts a Daemon in this process from a YAML text; the admin socket lives in a fresh temp dir.
 * `opts.clock` (a FakeClock from ./clock.ts) runs the daemon's expiry, idle tick (every `opts.tickMs`,
 * default 1000), connect deadlines and health checks on time the test advances.
 */
export async function startInProcess(yaml: string, opts: Partial<DaemonOptions> = {}): Promise<InProcess> {
  const {dir, cleanup} = tempDir()
  const file = join(dir, 'divert.yaml')
  writeFileSync(file, yaml)
  const logs = new LogCapture()
  const logger = pino({level: 'debug'}, logs.stream)
  const admin = join(dir, 'admin.sock')
  const daemon = await Daemon.start({configFile: file, admin, logger, ...opts})
  let stopped: Promise<void> | undefined
  return {
    daemon, logs, admin, dir,
    stop: (drainMs = 0) => (stopped ??= daemon.stop(drainMs).finally(cleanup)),
  }
}

export interface Spawned {
  proc: ChildProcess
  admin: string
  dir: string
  configFile: string
  /** Every JSON log line so far. */
  logs: Array<Record<string, any>>
  stderr: string[]
  waitForLog(match: (l: Record<string, any>) => boolean, timeoutMs?: number): Promise<Record<string, any>>
  /** SIGTERM, then the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

/**
 * `bin/run.js start -c FILE --log-format json --admin SOCK` as a child; resolves at its ready line,
 * or at once with `waitReady: false` (the caller waits with waitForLog).
 */
export async function spawnDaemon(configFile: string, opts: {admin: string; dir: string; args?: string[]; env?: NodeJS.ProcessEnv; waitReady?: boolean; wrapper?: string[]}): Promise<Spawned> {
  // `wrapper`: a command that execs the rest (e.g. `prlimit --nofile=256:256`).
  const [command, ...pre] = [...(opts.wrapper ?? []), process.execPath]
  const proc = spawn(command, [...pre, BIN, 'start', '-c', configFile, '--log-format', 'json', '--admin', opts.admin, ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...opts.env},
  })
  const logs: Array<Record<string, any>> = []
  const stderr: string[] = []
  const waiters = new Set<() => void>()
  let buf = ''
  proc.stdout!.on('data', (c: Buffer) => {
    buf += c.toString('utf8')
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      try {
        logs.push(JSON.parse(line))
      } catch {
        logs.push({msg: line, unparsed: true})
      }
      for (const w of waiters) w()
    }
  })
  proc.stderr!.on('data', (c: Buffer) => {
    stderr.push(c.toString('utf8'))
    for (const w of waiters) w()
  })
  let exited: Promise<number | null> | undefined
  const exitPromise = new Promise<number | null>((resolve) => proc.once('exit', (code) => {
    for (const w of waiters) w()
    resolve(code)
  }))
  const waitForLog = (match: (l: Record<string, any>) => boolean, timeoutMs = 15_000): Promise<Record<string, any>> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = logs.find(match)
        if (hit) {
          cleanup()
          resolve(hit)
        } else if (proc.exitCode !== null || proc.signalCode !== null) {
          cleanup()
          reject(new Error(`daemon exited (${proc.exitCode ?? proc.signalCode}) before the expected log line; stderr: ${stderr.join('')}`))
        }
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`no matching log line within ${timeoutMs}ms; stderr: ${stderr.join('')}; logs: ${JSON.stringify(logs.slice(-5))}`))
      }, timeoutMs)
      const cleanup = (): void => {
        clearTimeout(timer)
        waiters.delete(check)
      }
      waiters.add(check)
      check()
    })
  const spawned: Spawned = {
    proc, admin: opts.admin, dir: opts.dir, configFile, logs, stderr, waitForLog,
    stop: (signal = 'SIGTERM') => (exited ??= (proc.exitCode === null && proc.signalCode === null ? (proc.kill(signal), exitPromise) : exitPromise)),
  }
  if (opts.waitReady === false) return spawned
  try {
    await waitForLog((l) => l.msg === 'divert ready')
  } catch (error) {
    proc.kill('SIGKILL')
    throw error
  }
  return spawned
}

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
  json<T = any>(): T
}

/** Runs `bin/run.js ARGS` to completion. */
export function runCli(args: string[], opts: {env?: NodeJS.ProcessEnv; timeoutMs?: number} = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    // A COLUMNS the test runner inherited would narrow every table the tests match: only a test sets it.
    const {COLUMNS: _columns, ...inherited} = process.env
    const proc = spawn(process.execPath, [BIN, ...args], {stdio: ['ignore', 'pipe', 'pipe'], env: {...inherited, ...opts.env}})
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (c: Buffer) => (stdout += c))
    proc.stderr.on('data', (c: Buffer) => (stderr += c))
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      reject(new Error(`divert ${args.join(' ')} did not finish within ${opts.timeoutMs ?? 20_000}ms`))
    }, opts.timeoutMs ?? 20_000)
    proc.once('close', (code) => {
      clearTimeout(timer)
      resolve({code, stdout, stderr, json: () => JSON.parse(stdout)})
    })
  })
}
