/**
 * A network-namespace lab for e2e tests: namespaces, veth links, addresses and routes that exist only
 * inside namespaces the test made, processes run inside them, and a cleanup that removes all of it
 * even after a failure.
 *
 *   test → Lab → `ip netns add` / `ip -n NS link|addr|route` → `ip netns exec NS cmd` → LabProcess (log lines)
 *
 * The root namespace is never configured: veth pairs are created inside a lab namespace with their peer
 * placed directly in another (ip-link(8) `peer name … netns …`), so no interface appears outside.
 */
import {execFile, execFileSync, spawn, type ChildProcess} from 'node:child_process'
import {closeSync, existsSync, openSync} from 'node:fs'
import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {promisify} from 'node:util'

const execFileP = promisify(execFile)
const IP = whichCommand('ip') ?? 'ip'

/** Why namespace tests cannot run here (what is missing and how to get it), or undefined when they can. */
export function netnsUnavailableReason(): string | undefined {
  if (process.platform !== 'linux') return `needs Linux network namespaces (this is ${process.platform})`
  if (process.getuid?.() !== 0) return 'needs root to create network namespaces (run the e2e tests as root, e.g. in CI)'
  if (!whichCommand('ip')) return 'needs `ip` from iproute2 for network namespaces (apt-get install -y iproute2)'
  const probe = `dvtprobe${process.pid}`
  try {
    execFileSync(IP, ['netns', 'add', probe], {stdio: 'pipe'})
    execFileSync(IP, ['netns', 'del', probe], {stdio: 'pipe'})
  } catch (err) {
    const why = String((err as {stderr?: Buffer}).stderr ?? err).trim()
    return `root, but \`ip netns add\` fails (${why}): a container needs CAP_SYS_ADMIN and CAP_NET_ADMIN`
  }
  try {
    closeSync(openSync('/dev/net/tun', 'r+'))
  } catch (err) {
    return `needs /dev/net/tun for tun devices (${(err as Error).message}): modprobe tun; in a container add --device /dev/net/tun`
  }
  return undefined
}

/** The full path of an executable on PATH or in the sbin directories (src/sys/which.ts). */
export {findCommand as whichCommand} from '../../src/sys/which.js'
import {findCommand as whichCommand} from '../../src/sys/which.js'

/** One end of a veth link: the namespace it lives in, its name there, and its address in CIDR form. */
export interface LinkEnd {
  ns: string
  ifname: string
  cidr: string
}

export interface WaitOptions {
  timeoutMs: number
  /** Only lines from this index on count (see LabProcess.mark()). */
  fromLine?: number
  /** Processes whose exit during the wait fails it at once (e.g. the proxy the awaited line depends on). */
  watch?: LabProcess[]
}

/** A process the lab started inside a namespace; keeps every output line for waits and assertions. */
export class LabProcess {
  readonly lines: string[] = []
  readonly exited: Promise<number | null>
  private partial = {stdout: '', stderr: ''}
  private waiters = new Set<() => void>()
  private exitCode: number | null | undefined

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => this.take('stdout', chunk))
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => this.take('stderr', chunk))
    this.exited = new Promise((resolve) => {
      child.once('close', (code) => {
        this.flush()
        this.exitCode = code
        this.notify()
        resolve(this.exitCode)
      })
      child.once('error', (err) => {
        this.lines.push(`[lab] ${name} could not start: ${err.message}`)
        this.exitCode = null
        this.notify()
        resolve(null)
      })
    })
  }

  get running(): boolean {
    return this.exitCode === undefined
  }

  /** The index the next line will get: pass it as `fromLine` to wait only for what happens after now. */
  mark(): number {
    return this.lines.length
  }

  text(fromLine = 0): string {
    return this.lines.slice(fromLine).join('\n')
  }

  /** Resolves with the first line (from `fromLine`) that matches; rejects with the log tail on timeout or exit. */
  waitFor(pattern: RegExp, {timeoutMs, fromLine = 0, watch = []}: WaitOptions): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      let done = false
      const check = (): boolean => {
        for (let i = fromLine; i < this.lines.length; i++) {
          const m = pattern.exec(this.lines[i])
          if (m) return finish(() => resolve(m))
        }
        if (!this.running) return finish(() => reject(this.failure(`exited (code ${this.exitCode}) before printing ${pattern}`)))
        const gone = watch.find((p) => !p.running)
        if (gone) return finish(() => reject(gone.failure(`exited while ${this.name} waited for ${pattern}`)))
        return false
      }
      const timer = setTimeout(() => finish(() => reject(this.failure(`printed no line matching ${pattern} within ${timeoutMs} ms`))), timeoutMs)
      const finish = (settle: () => void): true => {
        if (done) return true
        done = true
        clearTimeout(timer)
        this.waiters.delete(check)
        settle()
        return true
      }
      this.waiters.add(check)
      for (const p of watch) void p.exited.then(check)
      check()
    })
  }

  /** Throws with the log tail unless the process is still running. */
  assertRunning(): void {
    if (!this.running) throw this.failure(`exited (code ${this.exitCode}) but should still run`)
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. Idempotent. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs)
    await this.exited
    clearTimeout(timer)
  }

  private take(stream: 'stdout' | 'stderr', chunk: string): void {
    const parts = (this.partial[stream] + chunk).split('\n')
    this.partial[stream] = parts.pop() ?? ''
    this.lines.push(...parts)
    this.notify()
  }

  private flush(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      if (this.partial[stream]) this.lines.push(this.partial[stream])
      this.partial[stream] = ''
    }
  }

  private notify(): void {
    for (const check of [...this.waiters]) check()
  }

  failure(what: string): Error {
    const tail = this.lines.slice(-25).map((l) => `  | ${l}`).join('\n')
    return new Error(`${this.name} ${what}; last output:\n${tail}`)
  }
}

/**
 * Owns the namespaces and processes of one test run. Names are `${prefix}-${short}`, so a test using its
 * PID as prefix cannot collide with another run. `close()` is idempotent and never throws.
 */
export class Lab {
  private readonly namespaces: string[] = []
  private readonly processes: LabProcess[] = []

  /** Last resort when the process exits without `close()` (an uncaught error, a runner timeout). */
  private readonly onExit = (): void => {
    for (const p of this.processes) if (p.running) p.child.kill('SIGKILL')
    for (const name of this.namespaces) {
      try {
        execFileSync(IP, ['netns', 'del', name], {stdio: 'ignore'})
      } catch {
        // already gone
      }
    }
  }

  constructor(readonly prefix: string) {}

  /** Creates a namespace with loopback up and returns its full name. */
  async namespace(short: string): Promise<string> {
    const name = `${this.prefix}-${short}`
    await ip(['netns', 'add', name])
    if (this.namespaces.push(name) === 1) process.once('exit', this.onExit)
    await ip(['-n', name, 'link', 'set', 'dev', 'lo', 'up'])
    return name
  }

  /** A veth pair from `a.ns` to `b.ns`, addressed and up on both ends. */
  async link(a: LinkEnd, b: LinkEnd): Promise<void> {
    await ip(['-n', a.ns, 'link', 'add', 'name', a.ifname, 'type', 'veth', 'peer', 'name', b.ifname, 'netns', b.ns])
    for (const end of [a, b]) {
      await ip(['-n', end.ns, 'addr', 'add', end.cidr, 'dev', end.ifname])
      await ip(['-n', end.ns, 'link', 'set', 'dev', end.ifname, 'up'])
    }
  }

  async address(ns: string, dev: string, cidr: string): Promise<void> {
    await ip(['-n', ns, 'addr', 'add', cidr, 'dev', dev])
  }

  async route(ns: string, destination: string, via: string): Promise<void> {
    await ip(['-n', ns, 'route', 'add', destination, 'via', via])
  }

  /** Runs a short command inside `ns` and returns its stdout; throws with its stderr when it fails. */
  async run(ns: string, cmd: string, args: string[], timeoutMs = 20_000): Promise<string> {
    try {
      const {stdout} = await execFileP(IP, ['netns', 'exec', ns, cmd, ...args], {timeout: timeoutMs, maxBuffer: 8 << 20})
      return stdout
    } catch (err) {
      const e = err as {stderr?: string; stdout?: string; message: string}
      throw new Error(`\`${cmd} ${args.join(' ')}\` in ${ns} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`, {cause: err})
    }
  }

  /**
   * Starts a long-running process inside `ns`. `ip netns exec` execs the command in place (ip-netns(8)),
   * so the handle's PID is the command itself and stopping the handle stops it.
   */
  spawn(ns: string, name: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): LabProcess {
    const child = spawn(IP, ['netns', 'exec', ns, cmd, ...args], {stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env})
    const proc = new LabProcess(name, child)
    this.processes.push(proc)
    return proc
  }

  /**
   * Stops every process (by handle), then deletes every namespace, in reverse order of creation. With
   * `logDir`, each process's output is kept there as `<name>.log` for a post-mortem.
   */
  async close(logDir?: string): Promise<void> {
    const procs = this.processes.splice(0)
    await Promise.all(procs.map((p) => p.stop()))
    if (logDir) await Promise.all(procs.map((p, i) => writeFile(join(logDir, `${i}-${p.name}.log`), p.text() + '\n').catch(() => undefined)))
    for (const name of this.namespaces.splice(0).reverse()) {
      await ip(['netns', 'del', name]).catch(() => undefined)
    }
    process.removeListener('exit', this.onExit)
  }
}

async function ip(args: string[]): Promise<void> {
  try {
    await execFileP(IP, args, {timeout: 10_000})
  } catch (err) {
    const e = err as {stderr?: string; message: string}
    throw new Error(`\`ip ${args.join(' ')}\` failed: ${(e.stderr ?? e.message).trim()}`, {cause: err})
  }
}

/** Addresses of the gateway topology: the device LAN on a bridge, the server LAN on a veth pair. */
export interface GatewayNet {
  gwLan: string
  dev1: string
  dev2: string
  gwSrv: string
  /** The server namespace's addresses on its LAN; the first is its primary one. */
  servers: string[]
}

/**
 * Two devices on a bridge of the gateway (as on a home or lab router), the gateway forwarding to a
 * server LAN: dev1, dev2 ─ lan (bridge) ─ gw ─ srv. Default routes go through the gateway both ways.
 * br_netfilter (when loaded) hands bridged packets to the IP hooks at the bridge, where TPROXY's
 * socket assignment is lost (README "Gateway mode", limits): the gateway turns that off, per namespace.
 */
export async function gatewayTopology(lab: Lab, net: GatewayNet): Promise<{dev1: string; dev2: string; gw: string; srv: string}> {
  const ns = {dev1: await lab.namespace('dev1'), dev2: await lab.namespace('dev2'), gw: await lab.namespace('gw'), srv: await lab.namespace('srv')}
  const ipIn = (where: string, ...args: string[]): Promise<string> => lab.run(where, 'ip', args)
  await ipIn(ns.gw, 'link', 'add', 'lan', 'type', 'bridge')
  await ipIn(ns.gw, 'addr', 'add', `${net.gwLan}/24`, 'dev', 'lan')
  await ipIn(ns.gw, 'link', 'set', 'lan', 'up')
  for (const [dev, addr] of [['dev1', net.dev1], ['dev2', net.dev2]] as const) {
    await ipIn(ns[dev], 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `p-${dev}`, 'netns', ns.gw)
    await ipIn(ns.gw, 'link', 'set', `p-${dev}`, 'master', 'lan', 'up')
    await ipIn(ns[dev], 'addr', 'add', `${addr}/24`, 'dev', 'eth0')
    await ipIn(ns[dev], 'link', 'set', 'eth0', 'up')
    await ipIn(ns[dev], 'route', 'add', 'default', 'via', net.gwLan)
  }
  const [primary, ...more] = net.servers
  await lab.link({ns: ns.gw, ifname: 'srv', cidr: `${net.gwSrv}/24`}, {ns: ns.srv, ifname: 'eth0', cidr: `${primary}/24`})
  for (const a of more) await lab.address(ns.srv, 'eth0', `${a}/24`)
  await ipIn(ns.srv, 'route', 'add', 'default', 'via', net.gwSrv)
  await lab.run(ns.gw, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'])
  if (existsSync('/proc/sys/net/bridge/bridge-nf-call-iptables')) await lab.run(ns.gw, 'sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=0'])
  return ns
}
