/**
 * Interceptor: the one owner of what gateway mode installs in the kernel — divert's nftables table
 * (intercept-plan.ts renders it) and the policy route that delivers marked packets locally
 * (`ip rule add fwmark M/M lookup T`, `ip route add local 0.0.0.0/0 dev lo table T`). It installs
 * them at start, replaces the table whenever the intercepted sources change, empties the sets when
 * the daemon starts to stop (new connections go straight to their servers while live ones drain) and
 * removes everything at the end. What a crashed divert left behind is removed at the next start: the
 * table is recognised by its name and comment, rules and routes by their protocol number (ip-rule(8)
 * `protocol`, ip-route(8) `proto`); nothing else is touched.
 *
 *   RuleService change ─▶ Daemon ─sync(plan)─▶ Interceptor ─▶ `nft -f -` / `ip rule|route` (argument arrays, no shell)
 */
import {execFile, execFileSync} from 'node:child_process'
import {readFileSync} from 'node:fs'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import {findCommand} from '../sys/which.js'
import {renderTable, TABLE_COMMENT, type KernelPlan} from './intercept-plan.js'
import {isAlive} from '../sys/pid.js'

/** ip-rule(8)/ip-route(8) protocol number that marks divert's policy rules and routes as its own. */
export const RTPROT_DIVERT = 247

/** CAP_NET_ADMIN (capability.h): nftables, policy routing and IP_TRANSPARENT need it. */
const CAP_NET_ADMIN = 12

export type CommandRunner = (file: string, args: string[], input?: string) => Promise<string>

export interface InterceptorOptions {
  logger: Logger
  run?: CommandRunner
}

export interface InterceptorView {
  installed: boolean
  /** The last failure to apply a change, until one succeeds. */
  error: string | null
}

export class Interceptor {
  private readonly run: CommandRunner
  private nft = ''
  private ip = ''
  private applied?: string
  private plan?: KernelPlan
  private queue: Promise<unknown> = Promise.resolve()
  private error: string | null = null

  constructor(private readonly o: InterceptorOptions) {
    this.run = o.run ?? runCommand
  }

  /** Fails with one line naming what is missing (the capability, nft, ip) and how to get it. */
  preflight(): void {
    const nft = findCommand('nft')
    const ip = findCommand('ip')
    const missing = [!nft && '`nft` (apt-get install nftables)', !ip && '`ip` (apt-get install iproute2)'].filter(Boolean)
    if (missing.length > 0) throw unavailable(`needs ${missing.join(' and ')}; or set transparent: { manage: false } and install the rules yourself (README "Gateway mode")`)
    if (!hasCapability(CAP_NET_ADMIN)) throw unavailable('needs root or CAP_NET_ADMIN to install its nftables table and policy route (run as root, or systemd AmbientCapabilities=CAP_NET_ADMIN); or set transparent: { manage: false } and install the rules yourself')
    this.nft = nft!
    this.ip = ip!
  }

  /** Removes what an earlier divert left (a crash), then installs the table and the policy route. */
  start(plan: KernelPlan): Promise<void> {
    return this.exclusive(async () => {
      if (!this.nft) this.preflight()
      await this.removeStale(plan)
      await this.applyTable(plan)
      for (const family of plan.families) await this.addRoute(plan, family)
      this.plan = plan
      for (const w of kernelWarnings(readSysctl)) this.o.logger.warn(w.fields, w.message)
      this.o.logger.info({table: `inet ${plan.table}`, mark: plan.mark, routeTable: plan.routeTable, listeners: plan.listeners.map((l) => ({name: l.name, ports: l.ports, sources: l.sources.length}))}, 'gateway mode: nftables table and policy route installed')
    })
  }

  /**
   * Puts the plan in force (a rule added, removed or expired; a reload). A failure is logged and
   * shown by `divert status`, never thrown: the rule change it follows is already made and saved.
   */
  sync(plan: KernelPlan): Promise<void> {
    return this.exclusive(async () => {
      if (!this.plan) return
      try {
        if (plan.families.join() !== this.plan.families.join() || plan.routeTable !== this.plan.routeTable || plan.mark !== this.plan.mark || plan.table !== this.plan.table) {
          await this.uninstall(this.plan)
          this.applied = undefined
          for (const family of plan.families) await this.addRoute(plan, family)
        }
        await this.applyTable(plan)
        this.plan = plan
        this.error = null
      } catch (error) {
        this.error = (error as Error).message
        this.o.logger.error({err: error}, `gateway mode: the intercepted sources could not be updated: ${this.error}`)
      }
    })
  }

  /** Stop intercepting new connections (shutdown): the sets empty, live intercepted sessions go on. */
  quiesce(): Promise<void> {
    const plan = this.plan
    if (!plan) return this.queue.then(() => undefined)
    return this.sync({...plan, listeners: plan.listeners.map((l) => ({...l, sources: []}))})
  }

  /** Removes the table and the policy route. */
  stop(): Promise<void> {
    return this.exclusive(async () => {
      const plan = this.plan
      this.plan = undefined
      if (!plan) return
      await this.uninstall(plan).catch((error) => this.o.logger.error({err: error}, 'gateway mode: could not remove everything it installed'))
      this.o.logger.info({table: `inet ${plan.table}`}, 'gateway mode: nftables table and policy route removed')
    })
  }

  /** The process exits now (a second SIGTERM): remove what is installed without waiting for the queue. */
  stopSync(): void {
    const plan = this.plan
    if (!plan) return
    this.plan = undefined
    const quiet = (file: string, args: string[]): void => {
      try {
        execFileSync(file, args, {stdio: 'ignore', timeout: 5000})
      } catch {
        // best effort: the next start removes what is left
      }
    }
    quiet(this.nft, ['delete', 'table', 'inet', plan.table])
    for (const family of plan.families) {
      quiet(this.ip, [`-${family}`, 'rule', 'del', ...ruleSpec(plan)])
      quiet(this.ip, [`-${family}`, 'route', 'del', ...routeSpec(plan, family)])
    }
  }

  view(): InterceptorView {
    return {installed: this.plan !== undefined, error: this.error}
  }

  private exclusive(job: () => Promise<void>): Promise<void> {
    const run = this.queue.then(job)
    this.queue = run.catch(() => undefined)
    return run
  }

  private async applyTable(plan: KernelPlan): Promise<void> {
    const script = renderTable(plan)
    if (script === this.applied) return
    await this.command(this.nft, ['-f', '-'], script)
    this.applied = script
  }

  private async addRoute(plan: KernelPlan, family: 4 | 6): Promise<void> {
    await this.command(this.ip, [`-${family}`, 'rule', 'add', ...ruleSpec(plan)])
    await this.command(this.ip, [`-${family}`, 'route', 'replace', ...routeSpec(plan, family)])
  }

  private async uninstall(plan: KernelPlan): Promise<void> {
    await this.command(this.nft, ['delete', 'table', 'inet', plan.table]).catch(() => undefined)
    this.applied = undefined
    await this.removeRoutes(plan)
  }

  /**
   * A table of this name is divert's only if it carries divert's comment; any other is refused, not
   * replaced, and so is one whose divert (the pid in the comment) still runs: two instances on one
   * host need their own table, mark and routing table. Rules and routes are divert's by their
   * protocol number, and this instance's by its routing table or mark.
   */
  private async removeStale(plan: KernelPlan): Promise<void> {
    const table = plan.table
    const listing = await this.command(this.nft, ['list', 'table', 'inet', table]).catch(() => undefined)
    if (listing !== undefined) {
      if (!listing.includes(TABLE_COMMENT)) throw unavailable(`nftables table inet ${table} exists and is not divert's (no "${TABLE_COMMENT}" comment): choose another name with transparent: { table: … }`)
      const owner = Number(/\(pid (\d+)\)/.exec(listing)?.[1])
      if (owner && owner !== process.pid && isAlive(owner)) throw unavailable(`nftables table inet ${table} belongs to divert pid ${owner}, which still runs: give this instance its own transparent: { table, mark, route_table }`)
      await this.command(this.nft, ['delete', 'table', 'inet', table])
      this.o.logger.warn({table: `inet ${table}`}, 'gateway mode: removed the nftables table a previous divert left (it did not stop cleanly)')
    }
    const removed = await this.removeRoutes(plan)
    if (removed > 0) this.o.logger.warn({removed}, 'gateway mode: removed policy rules and routes a previous divert left')
  }

  /** Deletes this instance's policy rules and routes (divert's protocol number; its routing table or mark), in both families. */
  private async removeRoutes(plan: KernelPlan): Promise<number> {
    const mine = (x: Record<string, string | number>): boolean => String(x.protocol) === String(RTPROT_DIVERT) && (String(x.table) === String(plan.routeTable) || Number(x.fwmark) === plan.mark)
    let n = 0
    for (const family of ['-4', '-6']) {
      // A host without IPv6 fails the -6 listing: nothing of divert's can be there.
      const rules = JSON.parse((await this.command(this.ip, ['-j', family, 'rule', 'show']).catch(() => '')) || '[]') as Array<Record<string, string | number>>
      for (const r of rules.filter(mine)) {
        await this.command(this.ip, [family, 'rule', 'del', 'priority', String(r.priority), 'fwmark', `${r.fwmark}/${r.fwmask ?? '0xffffffff'}`, 'lookup', String(r.table), 'protocol', String(RTPROT_DIVERT)])
        n++
      }
      const routes = JSON.parse((await this.command(this.ip, ['-j', family, 'route', 'show', 'table', 'all', 'proto', String(RTPROT_DIVERT)]).catch(() => '')) || '[]') as Array<Record<string, string>>
      for (const r of routes.filter((x) => String(x.table) === String(plan.routeTable))) {
        await this.command(this.ip, [family, 'route', 'del', r.type ?? 'unicast', r.dst === 'default' ? (family === '-4' ? '0.0.0.0/0' : '::/0') : r.dst, 'dev', r.dev, 'table', String(r.table), 'proto', String(RTPROT_DIVERT)])
        n++
      }
    }
    return n
  }

  private async command(file: string, args: string[], input?: string): Promise<string> {
    try {
      return await this.run(file, args, input)
    } catch (error) {
      throw unavailable(`\`${file.split('/').pop()} ${args.join(' ')}\` failed: ${firstLine((error as {stderr?: string}).stderr || (error as Error).message)}`, error)
    }
  }
}

function ruleSpec(plan: KernelPlan): string[] {
  const mark = `0x${plan.mark.toString(16)}`
  return ['fwmark', `${mark}/${mark}`, 'lookup', String(plan.routeTable), 'protocol', String(RTPROT_DIVERT)]
}

function routeSpec(plan: KernelPlan, family: 4 | 6): string[] {
  return ['local', family === 4 ? '0.0.0.0/0' : '::/0', 'dev', 'lo', 'table', String(plan.routeTable), 'proto', String(RTPROT_DIVERT)]
}

function unavailable(message: string, cause?: unknown): DivertError {
  return new DivertError('TRANSPARENT_UNAVAILABLE', `transparent mode: ${message}`, {cause})
}

function firstLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).find((l) => l !== '') ?? text
}

/** execFile with an argument array (no shell) and the script on stdin; rejects with stderr. */
const runCommand: CommandRunner = (file, args, input) => new Promise((resolve, reject) => {
  const child = execFile(file, args, {timeout: 10_000, maxBuffer: 64 << 20}, (error, stdout, stderr) => {
    if (error) reject(Object.assign(error, {stderr}))
    else resolve(stdout)
  })
  // A command that exits before reading its stdin (a failed `nft list`) makes the write fail with
  // EPIPE: that is the command's failure, reported by its exit status, never the daemon's crash.
  child.stdin?.on('error', () => undefined)
  child.stdin?.end(input ?? '')
})

/**
 * Host settings that break gateway mode without an error of their own, each measured: with
 * br_netfilter's bridge-nf-call-iptables on, packets of devices behind a Linux bridge pass the IP
 * hooks at the bridge, TPROXY's socket assignment is lost and intercepted connections hang; without
 * ip_forward, the devices that are not intercepted are not routed at all.
 */
export function kernelWarnings(read: (path: string) => string | undefined): Array<{fields: Record<string, unknown>; message: string}> {
  const out: Array<{fields: Record<string, unknown>; message: string}> = []
  if (read('/proc/sys/net/bridge/bridge-nf-call-iptables') === '1') {
    out.push({fields: {sysctl: 'net.bridge.bridge-nf-call-iptables'}, message: 'gateway mode: net.bridge.bridge-nf-call-iptables is 1: devices behind a Linux bridge on this host will hang instead of being intercepted (TPROXY loses its socket in br_netfilter); set it to 0 (sysctl -w net.bridge.bridge-nf-call-iptables=0)'})
  }
  if (read('/proc/sys/net/ipv4/ip_forward') === '0') {
    out.push({fields: {sysctl: 'net.ipv4.ip_forward'}, message: 'gateway mode: net.ipv4.ip_forward is 0: this host does not route, so devices that are not intercepted reach nothing through it (sysctl -w net.ipv4.ip_forward=1)'})
  }
  return out
}

function readSysctl(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}


/** Whether this process holds capability `bit` in its effective set (proc(5), /proc/self/status CapEff). */
export function hasCapability(bit: number): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))
    return m !== null && (BigInt(`0x${m[1]}`) & (1n << BigInt(bit))) !== 0n
  } catch {
    return process.getuid?.() === 0
  }
}
