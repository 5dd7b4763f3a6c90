/**
 * How each test fills its metrics (catalog.ts names them): one sample = one fresh contender, one
 * measurement, its values. CPU figures are proxy CPU (utime + stime of its process tree) per unit of
 * work, which direct has none of; the TCP tests also give machine CPU per unit (every core, kernel
 * workers and softirqs included) for every contender, direct too: the proxy's cost is its excess
 * over direct, and work the kernel does outside the proxy's process (the fast path) is in it.
 *
 *   runSample(lab, test, contender, run) → start contender → workload(s) → values → stop
 */
import {existsSync, rmSync, statSync} from 'node:fs'
import {join} from 'node:path'
import type {Contender} from './catalog.js'
import {startContender, type Running} from './contenders.js'
import {proxySpec, type Lab} from './lab.js'
import type {Profile, TestId} from './options.js'
import {wrkErrorCount, wrkRate, type WrkResult} from './parse.js'
import {usage} from './procfs.js'
import type {Sample} from './report.js'
import {hold, iperf, settledUsage, udpFlows, udpRate, withCpu, wrk} from './workloads.js'
import {reloadUnderLoad} from './reload.js'
import {DivertError} from '../src/errors.js'

type Values = Record<string, number>
type Measure = (lab: Lab, c: Running, p: Profile, v: Values) => Promise<void>

const ms = (us: number): number => us / 1000
const perUnitUs = (cpuSec: number | undefined, units: number): number | undefined => (cpuSec === undefined || units <= 0 ? undefined : (cpuSec * 1e6) / units)

function put(v: Values, key: string, x: number | undefined): void {
  if (x !== undefined && Number.isFinite(x)) v[key] = x
}

/** A short unmeasured run first: JIT warm-up for divert, connection pools and caches for everyone. */
async function warm(lab: Lab, c: Running, p: Profile, close: boolean): Promise<void> {
  await wrk(lab, c.ports.http, {connections: p.wrkConnections, seconds: p.warmupSec, close})
}

async function measuredWrk(lab: Lab, c: Running, connections: number, seconds: number, close: boolean): Promise<{r: WrkResult; cpuUs?: number; machineUs?: number}> {
  const {result, cpuSec, machineSec} = await withCpu(c.pids, () => wrk(lab, c.ports.http, {connections, seconds, close}))
  return {r: result, cpuUs: perUnitUs(cpuSec, result.requests), machineUs: perUnitUs(machineSec, result.requests)}
}

const tcpBulk: Measure = async (lab, c, p, v) => {
  for (const streams of [1, 4]) {
    const {result, cpuSec, minorFaults, machineSec} = await withCpu(c.pids, () => iperf(lab, c.ports.bulk, streams, p.iperfSec))
    put(v, `bulk${streams}.gbps`, result.bitsPerSecond / 1e9)
    put(v, `bulk${streams}.cpuMsPerGB`, cpuSec === undefined ? undefined : (cpuSec * 1000) / (result.bytes / 1e9))
    put(v, `bulk${streams}.machineMsPerGB`, (machineSec * 1000) / (result.bytes / 1e9))
    // Pages handed back to the kernel and faulted in again (src/alloc.ts): ~2/MB when allocation is steady.
    put(v, `bulk${streams}.faultsPerMB`, minorFaults === undefined ? undefined : minorFaults / (result.bytes / 1e6))
  }
}

const tcpConnect: Measure = async (lab, c, p, v) => {
  await warm(lab, c, p, true)
  const {r, cpuUs, machineUs} = await measuredWrk(lab, c, p.wrkConnections, p.wrkSec, true)
  put(v, 'conn.rate', wrkRate(r))
  put(v, 'conn.p50', ms(r.latencyUs.p50))
  put(v, 'conn.p99', ms(r.latencyUs.p99))
  put(v, 'conn.cpuUs', cpuUs)
  put(v, 'conn.machineUs', machineUs)
  put(v, 'conn.errors', wrkErrorCount(r))
}

const keepalive: Measure = async (lab, c, p, v) => {
  await warm(lab, c, p, false)
  const one = await measuredWrk(lab, c, 1, p.wrkSec, false)
  put(v, 'ka1.p50', ms(one.r.latencyUs.p50))
  put(v, 'ka1.p99', ms(one.r.latencyUs.p99))
  put(v, 'ka1.cpuUs', one.cpuUs)
  put(v, 'ka1.machineUs', one.machineUs)
  const many = await measuredWrk(lab, c, p.wrkConnections, p.wrkSec, false)
  put(v, 'ka32.rps', wrkRate(many.r))
  put(v, 'ka32.p99', ms(many.r.latencyUs.p99))
  put(v, 'ka32.cpuUs', many.cpuUs)
  put(v, 'ka32.machineUs', many.machineUs)
}

const udpRateTest: Measure = async (lab, c, p, v) => {
  const {warm: w, steps} = await udpRate(lab, c.ports.udp, p.udpClients, p.udpStepMs, p.udpRates, c.pids())
  let wrong = w.wrong
  for (const s of steps) {
    wrong += s.wrong
    put(v, `udp.delivered@${s.rate}`, s.receivedPerSec)
    put(v, `udp.loss@${s.rate}`, s.sent > 0 ? (100 * (s.sent - s.received - s.late)) / s.sent : undefined)
    if (s.rate === p.udpCpuRate) {
      // Each round trip is two datagrams through the proxy: the request and the echo.
      put(v, 'udp.cpuUs', s.proxyCpuSec < 0 ? undefined : perUnitUs(s.proxyCpuSec, 2 * s.received))
      put(v, 'udp.rttP50', s.rttP50Us < 0 ? undefined : ms(s.rttP50Us))
    }
  }
  put(v, 'udp.max', Math.max(...steps.map((s) => s.receivedPerSec)))
  // No reply at all proves nothing about replies reaching the right client.
  if (steps.some((s) => s.received > 0)) put(v, 'udp.wrong', wrong)
}

const udpFlowsTest: Measure = async (lab, c, p, v) => {
  const r = await udpFlows(lab, c.ports.udp, p.flowsConcurrency, p.flowsMs, p.flowsMax, c.pids())
  put(v, 'flows.rate', r.flowsPerSec)
  put(v, 'flows.lost', r.lost)
  if (r.completed > 0) put(v, 'flows.wrong', r.wrong)
  put(v, 'flows.cpuUs', r.proxyCpuSec < 0 ? undefined : perUnitUs(r.proxyCpuSec, r.completed))
}

/** Idle TCP connections a proxy can hold: each takes two fds (client and upstream) of the hard limit. */
export function idleTcpCount(p: Profile, nofile: number): number {
  return Math.min(p.idleCount, Math.floor((nofile - 200) / 2))
}

export function idleUdpCount(p: Profile, nofile: number): number {
  return Math.min(p.idleCount, nofile - 1000)
}

async function idle(lab: Lab, c: Running, mode: 'tcp-hold' | 'udp-hold', count: number, prefix: string, v: Values): Promise<void> {
  const base = usage(c.pids())
  const held = await hold(lab, mode, mode === 'tcp-hold' ? c.ports.http : c.ports.udp, count)
  try {
    const n = mode === 'tcp-hold' ? held.result.connected : held.result.answered
    const perClientFds = mode === 'tcp-hold' ? 2 : 1
    const loaded = await settledUsage(c.pids, base.fds + perClientFds * n, 30_000)
    if (loaded.fds === 0) throw new DivertError('INTERNAL', `${c.name} has no process left to measure`)
    put(v, `${prefix}.rss`, loaded.rssKb / 1024)
    put(v, `${prefix}.base`, base.rssKb / 1024)
    put(v, `${prefix}.${mode === 'tcp-hold' ? 'perConn' : 'perFlow'}`, n > 0 ? (loaded.rssKb - base.rssKb) / n : undefined)
    put(v, `${prefix}.fds`, loaded.fds)
    put(v, `${prefix}.held`, n)
  } finally {
    const end = await held.release()
    if (end?.closedByPeer !== undefined) put(v, `${prefix}.dropped`, end.closedByPeer)
  }
}

const idleTcp: Measure = (lab, c, p, v) => idle(lab, c, 'tcp-hold', idleTcpCount(p, lab.limits.nofile), 'idleTcp', v)
const idleUdp: Measure = (lab, c, p, v) => idle(lab, c, 'udp-hold', idleUdpCount(p, lab.limits.nofile), 'idleUdp', v)

/** benchRuleLookup from dist/bench/rules.js (bench/rules.ts), in its own process pinned to the proxy core. */
async function ruleLookup(lab: Lab, rules: number, v: Values): Promise<void> {
  if (lab.rulesBenchMissing) throw new DivertError('INTERNAL', lab.rulesBenchMissing)
  const code = `const m = await import(${JSON.stringify(join(lab.repo, 'dist/bench/rules.js'))}); console.log(JSON.stringify(await m.benchRuleLookup(${rules})))`
  const r = await lab.group.run(proxySpec(lab, {name: 'rule lookup bench', cmd: process.execPath, args: ['--input-type=module', '-e', code]}), 120_000)
  const line = r.stdout.trim().split('\n').pop() ?? ''
  if (r.code !== 0 || !line.startsWith('{')) throw new DivertError('INTERNAL', `bench/rules.ts benchRuleLookup(${rules}) failed (status ${r.code}): ${r.tail}`)
  put(v, 'rules.lookupNs', (JSON.parse(line) as {nsPerLookup: number}).nsPerLookup)
}

const rulesConn: Measure = async (lab, c, p, v) => {
  await warm(lab, c, p, true)
  const {r, cpuUs} = await measuredWrk(lab, c, p.wrkConnections, p.wrkSec, true)
  put(v, 'rules.connRate', wrkRate(r))
  put(v, 'rules.cpuUs', cpuUs)
}

const taps: Measure = async (lab, c, p, v) => {
  await warm(lab, c, p, false)
  const {r, cpuUs} = await measuredWrk(lab, c, p.wrkConnections, p.wrkSec, false)
  put(v, 'taps.rps', wrkRate(r))
  put(v, 'taps.p99', ms(r.latencyUs.p99))
  put(v, 'taps.cpuUs', cpuUs)
}

/** Start time and RSS with 100,000 rules, then the worst keep-alive round trip while they are all reloaded. */
const reload: Measure = async (_lab, c, _p, v) => {
  if (!c.divert) throw new DivertError('INTERNAL', `${c.name} is not divert: the reload test needs its config file and admin socket`)
  put(v, 'reload.startMs', c.divert.readyMs)
  put(v, 'reload.rssStart', usage(c.pids()).rssKb / 1024)
  const r = await reloadUnderLoad(c.ports.http, c.divert.configFile, c.divert.admin)
  put(v, 'reload.worstRtt', r.worstRttMs)
  put(v, 'reload.ms', r.reloadMs)
  put(v, 'reload.requests', r.requests)
  put(v, 'reload.rssAfter', usage(c.pids()).rssKb / 1024)
}

const MEASURES: Record<TestId, Measure> = {
  'tcp-bulk': tcpBulk, 'tcp-connect': tcpConnect, keepalive, 'udp-rate': udpRateTest, 'udp-flows': udpFlowsTest,
  'idle-tcp': idleTcp, 'idle-udp': idleUdp, rules: rulesConn, taps, reload,
}

/** Work that needs no running contender, done before it starts (so it is reported even when divert is missing). */
async function before(lab: Lab, test: TestId, contender: Contender, v: Values): Promise<void> {
  if (test === 'rules') await ruleLookup(lab, contender === 'divert-100k' ? 100_000 : 10, v)
}

function dropRecording(c: Running, v: Values): void {
  if (!c.recording || !existsSync(c.recording)) return
  put(v, 'taps.pcapMB', statSync(c.recording).size / 1e6)
  rmSync(c.recording, {force: true})
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}

async function measureOn(lab: Lab, c: Running, test: TestId, p: Profile, values: Values, errors: string[]): Promise<void> {
  try {
    await MEASURES[test](lab, c, p, values)
  } catch (e) {
    errors.push(message(e))
  }
  const died = c.died()
  if (died) errors.push(died)
  await c.stop()
  dropRecording(c, values)
}

export async function runSample(lab: Lab, test: TestId, contender: Contender, run: number, p: Profile): Promise<Sample> {
  const values: Values = {}
  const errors: string[] = []
  await before(lab, test, contender, values).catch((e) => errors.push(message(e)))
  try {
    await measureOn(lab, await startContender(lab, contender), test, p, values, errors)
  } catch (e) {
    errors.push(message(e))
  }
  return {test, contender, run, values, ...(errors.length ? {error: errors.join('; ')} : {})}
}
