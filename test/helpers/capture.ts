/**
 * Capture tools in tests: whether tcpdump and tshark are installed, tcpdump on loopback stopped only
 * once every packet is on disk, tshark's reading of a file (its stderr, fields, a TCP stream's bytes
 * per direction), and divert's own reader over a file (flows as replay sees them).
 *
 *   traffic ─▶ tcpdump -U -w FILE (prints each packet) ─▶ marker printed ─▶ SIGINT ─▶ FILE
 *   FILE ─▶ tshark -r … / readCapture → Reassembler ─▶ assertions
 */
import {execFile, spawn, spawnSync, type ChildProcess} from 'node:child_process'
import dgram from 'node:dgram'
import {once} from 'node:events'
import {readCapture, type Capture} from '../../src/capture/pcap-reader.js'
import {Reassembler, type Flow} from '../../src/capture/reassembly.js'

/** Whether `name` is on PATH (tests skip with a reason when a tool is missing). */
export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], {stdio: 'ignore'}).status === 0
}

// ─── tcpdump ──────────────────────────────────────────────────────────────────────────────────

export type Tcpdump = ChildProcess & {name: string; file: string; lines: string[]; stderr_: string}

/**
 * Starts `tcpdump -U --immediate-mode -l --print -w FILE ARGS`: -U writes each packet as it comes and
 * --print echoes it, so a printed packet is on disk. Resolves at its "listening on" line (its ready line).
 */
export async function startTcpdump(name: string, file: string, args: string[]): Promise<Tcpdump> {
  const child = spawn('tcpdump', ['-U', '--immediate-mode', '-l', '--print', '-n', '-w', file, ...args], {stdio: ['ignore', 'pipe', 'pipe']}) as Tcpdump
  Object.assign(child, {name, file, lines: [], stderr_: ''})
  child.stdout!.setEncoding('utf8').on('data', (d: string) => child.lines.push(...d.split('\n')))
  await new Promise<void>((resolve, reject) => {
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      child.stderr_ += d
      if (child.stderr_.includes('listening on')) resolve()
    })
    child.on('exit', (code) => reject(new Error(`tcpdump exited (${code}) before it was ready: ${child.stderr_.trim()}`)))
    child.on('error', reject)
  })
  return child
}

/** Resolves true once tcpdump has printed (and so, with -U, written) a line matching `re`; false after `ms`. */
export function printed(child: Tcpdump, re: RegExp, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (seen: boolean): void => {
      clearTimeout(timer)
      child.stdout!.off('data', check)
      resolve(seen)
    }
    const check = (): void => {
      if (child.lines.some((l) => re.test(l))) done(true)
    }
    const timer = setTimeout(() => done(false), ms)
    child.stdout!.on('data', check)
    check()
  })
}

/** SIGINT (tcpdump flushes and prints its counters), then how many packets the kernel dropped. */
export async function stopTcpdump(child: Tcpdump): Promise<number> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = once(child, 'exit')
    child.kill('SIGINT')
    await exited
  }
  return Number(/(\d+) packets? dropped by kernel/.exec(child.stderr_)?.[1] ?? 0)
}

/**
 * Sends one UDP datagram `end-of-test` from `from` to 127.0.0.1:port. Captured after the traffic under
 * test, it marks the point where every earlier packet is on disk: wait for it with `printed`.
 */
export async function sendMarker(port: number, from = '127.0.0.2'): Promise<void> {
  const marker = dgram.createSocket('udp4')
  marker.on('error', () => undefined)
  marker.bind(0, from)
  await once(marker, 'listening')
  await new Promise<void>((resolve) => marker.send('end-of-test', port, '127.0.0.1', () => resolve()))
  await new Promise<void>((resolve) => marker.close(() => resolve()))
}

/** What tcpdump prints for the marker sent from `from` (its source address, then ` > 127.0.0.1.`). */
export function markerLine(from = '127.0.0.2'): RegExp {
  return new RegExp(`${from.replaceAll('.', '\\.')}\\.\\d+ > 127\\.0\\.0\\.1\\.`)
}

// ─── tshark ───────────────────────────────────────────────────────────────────────────────────

/** Validate IPv4, TCP and UDP checksums (Wireshark leaves them unchecked by default). */
export const TSHARK_CHECKS = ['-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE']

export interface ToolResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Wireshark's notice when run as root (CI containers): about the environment, not the file read. */
const ROOT_NOTICE = /^Running as user "root" and group "root"\. This could be dangerous\.\n/m

/** Runs tshark to completion; never rejects for a non-zero exit (the caller asserts on it). */
export function tshark(args: string[]): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile('tshark', args, {maxBuffer: 256 * 1024 * 1024, timeout: 60_000}, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : null) : 0
      if (error && code === null) return reject(error)
      resolve({code, stdout, stderr: stderr.replace(ROOT_NOTICE, '')})
    })
  })
}

/** `-T fields` rows for the packets that match `filter`. */
export async function tsharkFields(file: string, filter: string, fields: string[]): Promise<string[][]> {
  const r = await tshark(['-r', file, '-Y', filter, '-T', 'fields', ...fields.flatMap((f) => ['-e', f])])
  if (r.code !== 0) throw new Error(`tshark -Y ${filter} failed (${r.code}): ${r.stderr}`)
  return r.stdout.split('\n').filter((l) => l !== '').map((l) => l.split('\t'))
}

/**
 * The bytes of TCP stream `n` as `tshark -z follow,tcp,raw,N` prints them: hex lines flush left for
 * the side that opened the connection (node 0), indented by a tab for the other (docs/FIELD-NOTES.md "Captures").
 */
export async function followTcpRaw(file: string, n: number): Promise<{client: Buffer; server: Buffer; stderr: string}> {
  const r = await tshark(['-r', file, '-q', '-z', `follow,tcp,raw,${n}`])
  if (r.code !== 0) throw new Error(`tshark follow,tcp,raw,${n} failed (${r.code}): ${r.stderr}`)
  const body = r.stdout.split('\n').filter((l) => /^\t?[0-9a-f]+$/.test(l))
  const side = (tab: boolean): Buffer => Buffer.from(body.filter((l) => l.startsWith('\t') === tab).map((l) => l.trim()).join(''), 'hex')
  return {client: side(false), server: side(true), stderr: r.stderr}
}

// ─── divert's own reader ──────────────────────────────────────────────────────────────────────

/** Reads a capture as `divert replay` does: every record, then the flows; rejects on a corrupt file and, stricter than replay, on a cut last record. */
export async function flowsOf(file: string): Promise<{capture: Capture; flows: Flow[]}> {
  const reassembler = new Reassembler()
  const capture = await readCapture(file, {onPacket: (p) => reassembler.push(p)})
  if (capture.truncated) throw new Error(capture.truncated.warning)
  return {capture, flows: reassembler.finish()}
}

/** The concatenated bytes one side of a flow sent. */
export function sideBytes(flow: Flow, side: 'client' | 'server'): Buffer {
  return Buffer.concat((side === 'client' ? flow.clientChunks : flow.serverChunks).map((c) => c.data))
}
