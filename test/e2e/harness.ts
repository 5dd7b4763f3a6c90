/**
 * What the runtime-control e2e tests share: named loopback echo backends, a config written into a
 * fresh temp dir, the daemon spawned as a user would (`divert start`), the CLI pointed at its admin
 * socket, raw HTTP to that socket, and assertions on the CLI's error contract (docs/DESIGN.md §3).
 *
 *   test ─ cli(args) ─spawn bin/run.js … --admin SOCK─▶ daemon ─▶ echo backends (prod, staging, debug)
 */
import assert from 'node:assert/strict'
import net from 'node:net'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {spawnDaemon, runCli, tempDir, type CliResult, type Spawned} from '../helpers/daemon.js'
import {startServer, freePort, type TestServer} from '../helpers/servers.js'

export const BACKENDS = ['prod', 'staging', 'debug'] as const
export type BackendName = (typeof BACKENDS)[number]

export interface LabOptions {
  /** Extra YAML list items under `rules:` (flow style, one per entry). */
  rules?: (lab: LabInfo) => string[]
  /** Extra top-level YAML (admin:, state:, …). */
  top?: (lab: LabInfo) => string
  /** Extra YAML under `backends:` (two-space indented entries). */
  backends?: (lab: LabInfo) => string
  /** Extra flow-mapping fields for listener `main`, e.g. `per_source: { max_connections: 1 }`. */
  mainListener?: string
  /** Extra YAML list items under `listeners:` (flow style, one per entry), after `main` and `alt`. */
  listeners?: (lab: LabInfo) => string[]
  /** Files written into the lab dir before the daemon starts (name → content). */
  files?: Record<string, string>
}

export interface LabInfo {
  dir: string
  port: number
  altPort: number
  servers: Record<BackendName, TestServer>
}

export interface Lab extends LabInfo {
  admin: string
  configFile: string
  daemon: Spawned
  /** `divert ARGS --admin SOCK`. */
  cli(...args: string[]): Promise<CliResult>
  /** Audit log line for `action` whose rule has id `id` (waits for it). */
  audit(action: string, id: string): Promise<Record<string, any>>
  /** SIGTERM the daemon, run `between` (e.g. to damage the state file), start it again on the same config and socket. */
  restart(between?: () => void): Promise<number | null>
  close(): Promise<void>
}

/** Starts three echo backends and a daemon with listeners `main` and `alt` (both default to prod). */
export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const {dir, cleanup} = tempDir('divert-e2e-')
  const servers = {} as Record<BackendName, TestServer>
  for (const name of BACKENDS) servers[name] = await startServer(name)
  const info: LabInfo = {dir, port: await freePort(), altPort: await freePort(), servers}
  const configFile = join(dir, 'divert.yaml')
  writeFileSync(configFile, labYaml(info, opts))
  for (const [name, content] of Object.entries(opts.files ?? {})) writeFileSync(join(dir, name), content, {mode: 0o600})
  const admin = join(dir, 'admin.sock')
  let daemon: Spawned
  try {
    daemon = await spawnDaemon(configFile, {admin, dir})
  } catch (error) {
    await Promise.all(Object.values(servers).map((s) => s.close()))
    cleanup()
    throw error
  }
  const lab: Lab = {
    ...info, admin, configFile, daemon,
    cli: (...args) => cli([...args, '--admin', admin]),
    audit: (action, id) => lab.daemon.waitForLog((l) => l.audit === true && l.action === action && l.rule?.id === id, 20_000),
    restart: async (between) => {
      const code = await lab.daemon.stop()
      between?.()
      lab.daemon = await spawnDaemon(configFile, {admin, dir})
      return code
    },
    close: async () => {
      await lab.daemon.stop()
      await Promise.all(Object.values(servers).map((s) => s.close()))
      cleanup()
    },
  }
  return lab
}

function labYaml(lab: LabInfo, opts: LabOptions): string {
  const backends = BACKENDS.map((b) => `  ${b}: { servers: [ { address: "${lab.servers[b].address}" } ] }`).join('\n')
  const rules = (opts.rules?.(lab) ?? []).map((r) => `  - ${r}`).join('\n')
  return `${opts.top?.(lab) ?? ''}
listeners:
  - { name: main, bind: "127.0.0.1:${lab.port}", backend: prod${opts.mainListener ? `, ${opts.mainListener}` : ''} }
  - { name: alt, bind: "127.0.0.1:${lab.altPort}", backend: prod }
${(opts.listeners?.(lab) ?? []).map((l) => `  - ${l}\n`).join('')}backends:
${backends}
${opts.backends?.(lab) ?? ''}
rules:${rules ? `\n${rules}` : ' []'}
`
}

/** At most this many CLI processes at once: a burst of spawns on a busy 2-core box would time out. */
const CLI_SLOTS = 4
let running = 0
const waiting: Array<() => void> = []

/** `runCli`, queued so a test may start many independent calls with Promise.all. */
export async function cli(args: string[], opts: Parameters<typeof runCli>[1] = {}): Promise<CliResult> {
  if (running >= CLI_SLOTS) await new Promise<void>((resolve) => waiting.push(resolve))
  running++
  try {
    return await runCli(args, {timeoutMs: 30_000, ...opts})
  } finally {
    running--
    waiting.shift()?.()
  }
}

export interface ErrorCase {
  args: string[]
  code: string
  exit: number
  message: RegExp
}

/**
 * The CLI's error contract: a non-zero exit with one line on stderr that matches, and with --json the
 * same failure as `{error, code, status}` on stdout.
 */
export async function expectCliError(run: (...args: string[]) => Promise<CliResult>, c: ErrorCase): Promise<void> {
  const [text, json] = await Promise.all([run(...c.args), run(...c.args, '--json')])
  const what = `divert ${c.args.join(' ')}`
  assert.equal(text.code, c.exit, `${what}: exit code (stderr: ${text.stderr})`)
  const lines = text.stderr.split('\n').filter((l) => l.trim() !== '')
  assert.equal(lines.length, 1, `${what}: one line on stderr, got ${JSON.stringify(text.stderr)}`)
  assert.match(lines[0], c.message, `${what}: stderr`)
  assert.equal(text.stdout, '', `${what}: nothing on stdout`)
  assert.equal(json.code, c.exit, `${what} --json: exit code`)
  const body = json.json()
  assert.equal(body.code, c.code, `${what} --json: code`)
  assert.match(body.error, c.message, `${what} --json: error`)
  assert.equal(typeof body.status, 'number')
}

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: string
  /** The bytes as received, for errors. */
  raw: string
}

/**
 * Sends `request` as-is (bytes the test wrote by hand) on a fresh connection and reads the answer
 * until the server closes. Write errors are ignored: a server may answer and close before reading
 * an oversized body.
 */
export function rawHttp(to: {path: string} | {host: string; port: number}, request: string | Buffer, timeoutMs = 10_000): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const s = net.connect(to as net.NetConnectOpts)
    const chunks: Buffer[] = []
    const timer = setTimeout(() => {
      s.destroy()
      reject(new Error(`no complete answer within ${timeoutMs}ms to ${String(request).slice(0, 80)}`))
    }, timeoutMs)
    s.on('error', () => undefined)
    s.on('data', (c: Buffer) => chunks.push(c))
    s.once('connect', () => s.write(request))
    s.once('close', () => {
      clearTimeout(timer)
      const raw = Buffer.concat(chunks).toString('utf8')
      try {
        resolve(parseResponse(raw))
      } catch (error) {
        reject(error)
      }
    })
  })
}

function parseResponse(raw: string): RawResponse {
  const end = raw.indexOf('\r\n\r\n')
  if (end < 0) throw new Error(`not an HTTP response: ${JSON.stringify(raw.slice(0, 200))}`)
  const [statusLine, ...lines] = raw.slice(0, end).split('\r\n')
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(statusLine)
  if (!m) throw new Error(`bad status line ${JSON.stringify(statusLine)}`)
  const headers: Record<string, string> = {}
  for (const l of lines) {
    const i = l.indexOf(':')
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
  }
  return {status: Number(m[1]), headers, body: raw.slice(end + 4), raw}
}

/** A request with `Connection: close`, so the server ends the connection after answering. */
export function httpRequest(method: string, path: string, opts: {body?: string; headers?: Record<string, string>} = {}): string {
  const headers = {Host: 'divert', Connection: 'close', ...opts.headers}
  if (opts.body !== undefined) headers['Content-Length' as keyof typeof headers] = String(Buffer.byteLength(opts.body))
  const head = Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')
  return `${method} ${path} HTTP/1.1\r\n${head}\r\n\r\n${opts.body ?? ''}`
}

export {parseMetrics} from '../helpers/metrics.js'
