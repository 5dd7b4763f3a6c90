/**
 * Starting one contender fresh for one measurement: direct (the backends themselves), HAProxy, nginx
 * (stream) or divert (plain, with the kernel fast path, 100,000 rules, with a mirror, with a recorder), each pinned to core 0,
 * listening on new ports, and stopped by pid afterwards.
 *
 *   startContender(lab, name) → Running {ports, pids(), stop()}
 */
import {existsSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'
import type {Contender} from './catalog.js'
import {divertConfig, haproxyConfig, nginxProxyConfig, type DivertVariant, type ProxyPorts} from './configs.js'
import {instanceDir, LOOPBACK, nginxArgs, proxySpec, type Lab} from './lab.js'
import {processTree} from './procfs.js'
import {waitForTcp, type Managed} from './process.js'
import {DivertError} from '../src/errors.js'

export interface Running {
  name: Contender
  ports: ProxyPorts
  /** The proxy's process tree now (empty for direct); its CPU, memory and fds are what is measured. */
  pids(): number[]
  stop(): Promise<void>
  /** Set when the process died before stop(): its status and last output (a crash mid-test). */
  died(): string | undefined
  /** Files this instance wrote that the bench may report on (the recorder's pcap). */
  recording?: string
  /** divert: from launch to its ready line, its config file and admin socket (the reload test). */
  divert?: {readyMs: number; configFile: string; admin: string}
}

const DIVERT_READY = /"msg":"divert ready"/

/** Waits for readiness; a process that never gets ready is stopped, not left behind. */
async function whenReady(m: Managed, ready: () => Promise<unknown>): Promise<void> {
  try {
    await ready()
  } catch (e) {
    await m.stop()
    throw e
  }
}

function running(name: Contender, ports: ProxyPorts, m: Managed, recording?: string): Running {
  let stopping = false
  return {
    name, ports, recording,
    pids: () => (m.running ? processTree(m.pid) : []),
    stop: () => { stopping = true; return m.stop() },
    died: () => (m.running || stopping ? undefined : `${name} exited during the measurement; its last output: ${m.tail(8) || '(none)'}`),
  }
}

async function freshPorts(lab: Lab): Promise<ProxyPorts> {
  return {http: await lab.ports.take(), bulk: await lab.ports.take(), udp: await lab.ports.take()}
}

async function startHaproxy(lab: Lab): Promise<Running> {
  const ports = await freshPorts(lab)
  const dir = instanceDir(lab, 'haproxy')
  const cfg = join(dir, 'haproxy.cfg')
  writeFileSync(cfg, haproxyConfig(ports, lab.backends, lab.limits))
  const m = lab.group.launch(proxySpec(lab, {name: 'haproxy', cmd: 'haproxy', args: ['-f', cfg, '-db']}))
  await whenReady(m, async () => {
    await waitForTcp(LOOPBACK, ports.http, 10_000, m)
    await waitForTcp(LOOPBACK, ports.bulk, 10_000, m)
  })
  return running('haproxy', ports, m)
}

async function startNginx(lab: Lab): Promise<Running> {
  const ports = await freshPorts(lab)
  const dir = instanceDir(lab, 'nginx')
  writeFileSync(join(dir, 'nginx.conf'), nginxProxyConfig(ports, lab.backends, dir, lab.limits, lab.streamModule))
  const m = lab.group.launch(proxySpec(lab, {name: 'nginx', cmd: 'nginx', args: nginxArgs(dir)}))
  // nginx binds every listener (UDP too) in the master before it accepts on any (nginx "listen").
  await whenReady(m, () => waitForTcp(LOOPBACK, ports.http, 10_000, m))
  return running('nginx', ports, m)
}

function divertVariant(name: Contender, dir: string): DivertVariant {
  if (name === 'divert-100k') return {rules: 100_000}
  if (name === 'divert-mirror') return {rules: 10, mirror: true}
  if (name === 'divert-record') return {rules: 10, record: join(dir, 'taps.pcap')}
  if (name === 'divert-fast') return {rules: 10, fastPath: true}
  return {rules: 10}
}

/** Why divert cannot run from this tree (its daemon is not built), or undefined when it can. */
export function divertMissing(repo: string): string | undefined {
  const need = ['bin/run.js', 'dist/commands/start.js']
  const absent = need.filter((f) => !existsSync(join(repo, f)))
  return absent.length ? `not available: ${absent.join(', ')} missing (build the daemon with npm run build)` : undefined
}

async function startDivert(lab: Lab, name: Contender): Promise<Running> {
  if (lab.divertMissing) throw new DivertError('LISTEN_FAILED', lab.divertMissing)
  const ports = await freshPorts(lab)
  const dir = instanceDir(lab, name)
  const variant = divertVariant(name, dir)
  const cfg = join(dir, 'divert.yaml')
  writeFileSync(cfg, divertConfig(ports, lab.backends, dir, lab.limits, variant))
  const admin = join(dir, 'admin.sock')
  const args = [join(lab.repo, 'bin/run.js'), 'start', '-c', cfg, '--log-format', 'json', '--log-level', lab.divertLogLevel ?? 'info', '--admin', admin]
  const launched = performance.now()
  const m = lab.group.launch(proxySpec(lab, {name, cmd: process.execPath, args, cwd: lab.repo}))
  await whenReady(m, () => m.waitFor(DIVERT_READY, variant.rules > 1000 ? 180_000 : 30_000))
  return {...running(name, ports, m, variant.record), divert: {readyMs: performance.now() - launched, configFile: cfg, admin}}
}

function direct(lab: Lab): Running {
  const b = lab.backends
  return {name: 'direct', ports: {http: b.origin, bulk: b.iperf, udp: b.echo}, pids: () => [], stop: async () => undefined, died: () => undefined}
}

export async function startContender(lab: Lab, name: Contender): Promise<Running> {
  if (name === 'direct') return direct(lab)
  if (name === 'haproxy') return startHaproxy(lab)
  if (name === 'nginx') return startNginx(lab)
  return startDivert(lab, name)
}
