/**
 * The lab: the temp dir, process group, ports and limits every test shares, and the backends that
 * all contenders front — started once, pinned to the load core (1).
 *
 *   origin nginx (HTTP, 256-byte file) · iperf3 -s · loadgen udp-echo · loadgen tcp-sink (mirror)
 */
import {mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {nginxOriginConfig, type BackendPorts, type Limits} from './configs.js'
import {PortPool} from './ports.js'
import {waitForTcp, type LaunchSpec, type ProcessGroup} from './process.js'

export const LOOPBACK = '127.0.0.1'
export const PROXY_CPU = 0
export const LOAD_CPU = 1
export const SMALL_FILE = 'small.txt'

export interface Lab {
  /** Temp dir (mode 0755: nginx workers run as nobody and read the origin's file from it). */
  dir: string
  /** Repository root (bin/run.js, dist/). */
  repo: string
  loadgen: string
  wrkScript: string
  group: ProcessGroup
  ports: PortPool
  limits: Limits
  backends: BackendPorts
  streamModule?: string
  /** Why divert cannot run (daemon not built), or undefined when it can. */
  divertMissing?: string
  /** divert's --log-level (bench --divert-log-level; default info). */
  divertLogLevel?: string
  /** Why the rule-table micro-benchmark cannot run, or undefined when it can. */
  rulesBenchMissing?: string
}

let counter = 0
/** A fresh subdirectory of the lab dir for one process's config, pid and logs. */
export function instanceDir(lab: Pick<Lab, 'dir'>, name: string): string {
  const d = join(lab.dir, `${name}-${++counter}`)
  mkdirSync(d, {recursive: true, mode: 0o755})
  return d
}

export function nginxArgs(dir: string): string[] {
  // -p/-e keep nginx's prefix and startup error log in our dir, not /var/log/nginx (nginx -h).
  return ['-p', `${dir}/`, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;']
}

function pinned(lab: Pick<Lab, 'limits'>, spec: Omit<LaunchSpec, 'cpu' | 'nofile'>, cpu: number): LaunchSpec {
  return {...spec, cpu, nofile: lab.limits.nofile}
}

export function loadSpec(lab: Pick<Lab, 'limits'>, spec: Omit<LaunchSpec, 'cpu' | 'nofile'>): LaunchSpec {
  return pinned(lab, spec, LOAD_CPU)
}

export function proxySpec(lab: Pick<Lab, 'limits'>, spec: Omit<LaunchSpec, 'cpu' | 'nofile'>): LaunchSpec {
  return pinned(lab, spec, PROXY_CPU)
}

type LabBase = Omit<Lab, 'backends'>

async function startOrigin(lab: LabBase, port: number): Promise<void> {
  const dir = instanceDir(lab, 'origin')
  const www = join(dir, 'www')
  mkdirSync(www, {mode: 0o755})
  writeFileSync(join(www, SMALL_FILE), 'divert bench origin. '.repeat(13).slice(0, 255) + '\n', {mode: 0o644})
  writeFileSync(join(dir, 'nginx.conf'), nginxOriginConfig(port, dir, www, lab.limits))
  const m = lab.group.launch(loadSpec(lab, {name: 'origin nginx', cmd: 'nginx', args: nginxArgs(dir)}))
  await waitForTcp(LOOPBACK, port, 10_000, m)
}

async function startLoadgenServer(lab: LabBase, mode: 'udp-echo' | 'tcp-sink', port: number): Promise<void> {
  const m = lab.group.launch(loadSpec(lab, {name: `loadgen ${mode}`, cmd: lab.loadgen, args: [mode, LOOPBACK, String(port)]}))
  await m.waitFor(/"ready":true/, 10_000)
}

async function startIperfServer(lab: LabBase, port: number): Promise<void> {
  const m = lab.group.launch(loadSpec(lab, {name: 'iperf3 server', cmd: 'iperf3', args: ['-s', '--forceflush', '-B', LOOPBACK, '-p', String(port)]}))
  await m.waitFor(/Server listening/, 10_000)
}

export async function startBackends(lab: LabBase): Promise<BackendPorts> {
  const b: BackendPorts = {origin: await lab.ports.take(), iperf: await lab.ports.take(), echo: await lab.ports.take(), sink: await lab.ports.take()}
  await Promise.all([startOrigin(lab, b.origin), startIperfServer(lab, b.iperf), startLoadgenServer(lab, 'udp-echo', b.echo), startLoadgenServer(lab, 'tcp-sink', b.sink)])
  return b
}
