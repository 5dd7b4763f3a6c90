/**
 * `npm run bench`: checks the tools, builds loadgen, starts the shared backends, runs every selected
 * test for every contender and run (contender order rotated per run), then prints the tables and
 * writes the JSON results.
 *
 *   options → tools → lab (backends) → samples → aggregate → tables + bench/results/latest.json
 */
import {chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {availableParallelism, tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {spawnSync} from 'node:child_process'
import {catalog, type TestDef} from './catalog.js'
import {benchCli, renderCli, type CliResults} from './cli.js'
import {benchFleet, renderFleet, type FleetResults} from './fleet.js'
import {benchGateway, renderGateway, type GatewayResults} from './gateway.js'
import {divertMissing} from './contenders.js'
import {LOAD_CPU, startBackends, type Lab} from './lab.js'
import {finishMachineInfo, machineInfo, type MachineInfo} from './machine.js'
import {parseOptions, profileFor, USAGE, type BenchOptions, type Profile} from './options.js'
import {ProcessGroup} from './process.js'
import {PortPool} from './ports.js'
import {nofileHardLimit} from './procfs.js'
import {aggregate, renderTable, renderVerdicts, type Sample} from './report.js'
import {formatNumber} from './stats.js'
import {idleTcpCount, idleUdpCount, runSample} from './suites.js'
import {checkTools, installPackages, missingMessage, missingPackages, systemProbe, type ToolReport} from './tools.js'
import {DivertError, isDivertError} from '../src/errors.js'

const log = (line: string): void => void process.stderr.write(`${line}\n`)

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

/** Tools present, installing them first with --install; undefined (and a message) when some are missing. */
function ensureTools(o: BenchOptions): ToolReport | undefined {
  let report = checkTools(systemProbe)
  const missing = missingPackages(report)
  if (missing.length > 0 && o.install) {
    log(`installing with apt-get: ${missing.join(' ')}`)
    if (!installPackages(missing, isRoot())) log('apt-get failed: see its output above')
    report = checkTools(systemProbe)
  }
  if (missingPackages(report).length === 0) return report
  log(missingMessage(report, isRoot()))
  return undefined
}

/** Compiles bench/loadgen.c into dist/bench/loadgen when the binary is missing or older. */
function buildLoadgen(repo: string): string {
  const src = join(repo, 'bench/loadgen.c')
  const bin = join(repo, 'dist/bench/loadgen')
  if (existsSync(bin) && statSync(bin).mtimeMs >= statSync(src).mtimeMs) return bin
  mkdirSync(dirname(bin), {recursive: true})
  const r = spawnSync('gcc', ['-O2', '-Wall', '-o', bin, src], {encoding: 'utf8'})
  if (r.status !== 0) throw new DivertError('INTERNAL', `gcc could not build bench/loadgen.c: ${(r.stderr || r.stdout).trim().slice(0, 800)}`)
  return bin
}

/** Moves the bench itself (all its threads) to the load core, off the proxies' core. */
function pinSelf(notes: string[]): void {
  const r = spawnSync('taskset', ['-a', '-p', '-c', String(LOAD_CPU), String(process.pid)], {encoding: 'utf8'})
  if (r.status !== 0) notes.push(`could not pin the bench process to core ${LOAD_CPU}: ${r.stderr.trim()}`)
}

function rotate<T>(xs: T[], by: number): T[] {
  const k = by % xs.length
  return [...xs.slice(k), ...xs.slice(0, k)]
}

function sampleLine(s: Sample, seconds: number): string {
  const vals = Object.entries(s.values).slice(0, 4).map(([k, x]) => `${k}=${formatNumber(x)}`).join(' ')
  return `  ${s.contender.padEnd(13)} ${vals}${s.error ? `  [${s.error.slice(0, 160)}]` : ''} (${seconds.toFixed(1)} s)`
}

async function runTests(lab: Lab, defs: TestDef[], p: Profile): Promise<Sample[]> {
  const samples: Sample[] = []
  for (const def of defs) {
    for (let run = 0; run < p.runs; run++) {
      log(`${def.id}, run ${run + 1}/${p.runs}`)
      for (const contender of rotate(def.contenders, run)) {
        const t0 = Date.now()
        const s = await runSample(lab, def.id, contender, run, p)
        samples.push(s)
        log(sampleLine(s, (Date.now() - t0) / 1000))
      }
    }
  }
  return samples
}

function limitNotes(p: Profile, nofile: number, defs: TestDef[]): string[] {
  const notes: string[] = []
  const tcp = idleTcpCount(p, nofile)
  if (defs.some((d) => d.id === 'idle-tcp') && tcp < p.idleCount) {
    notes.push(`idle TCP connections capped at ${tcp} (asked ${p.idleCount}): the hard fd limit is ${nofile} and a proxy needs two fds per connection; raising a hard limit needs CAP_SYS_RESOURCE (e.g. root: ulimit -Hn 65536 before npm run bench)`)
  }
  const udp = idleUdpCount(p, nofile)
  if (defs.some((d) => d.id === 'idle-udp') && udp < p.idleCount) notes.push(`idle UDP flows capped at ${udp} by the hard fd limit ${nofile}`)
  return notes
}

interface Results {
  generatedAt: string
  machine: MachineInfo
  options: BenchOptions
  profile: Profile
  notes: string[]
  divert: {available: boolean; reason?: string}
  tests: ReturnType<typeof aggregate>
  samples: Sample[]
  cli?: CliResults
  fleet?: FleetResults
  gateway?: GatewayResults
}

function writeResults(path: string, results: Results): void {
  mkdirSync(dirname(path), {recursive: true})
  writeFileSync(path, `${JSON.stringify(results, null, 2)}\n`)
}

/** The CLI start-up test (bench/cli.ts): 10 calls of each kind per run, in a temp dir of its own. */
async function cliBench(o: BenchOptions, repo: string): Promise<CliResults> {
  const dir = mkdtempSync(join(tmpdir(), 'divert-bench-cli-'))
  try {
    log(`cli: ${o.runs * 10} rounds`)
    const r = await benchCli(repo, dir, o.runs * 10)
    console.log(`${renderCli(r)}\n`)
    return r
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
}

/**
 * The fleet test (bench/fleet.ts): 1,000 rule changes (100 with --quick), then 5 s (2 s) of traffic
 * quiet and under 100 changes/s. Skipped, with a line saying so, when redis-server is missing.
 */
async function fleetBench(o: BenchOptions, repo: string): Promise<FleetResults | undefined> {
  if (spawnSync('redis-server', ['--version']).status !== 0) {
    log('fleet: skipped — redis-server is not installed (Debian: apt-get install redis-server)')
    return undefined
  }
  const opts = {changes: o.quick ? 100 : 1000, seconds: o.quick ? 2 : 5, rate: 100}
  const dir = mkdtempSync(join(tmpdir(), 'divert-bench-fleet-'))
  try {
    log(`fleet: ${opts.changes} rule changes, then ${opts.seconds}s of traffic quiet and under ${opts.rate} changes/s`)
    const r = await benchFleet(repo, dir, opts)
    console.log(`${renderFleet(r, opts)}\n`)
    return r
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
}

/** The gateway-mode test (bench/gateway.ts), in namespaces of its own. */
async function gatewayBench(o: BenchOptions, repo: string): Promise<GatewayResults> {
  const r = await benchGateway(repo, o.runs, profileFor(o).iperfSec, log)
  console.log(`${renderGateway(r)}\n`)
  return r
}

async function bench(o: BenchOptions, repo: string, tools: ToolReport, cli?: CliResults, fleet?: FleetResults, gateway?: GatewayResults): Promise<void> {
  const notes: string[] = []
  pinSelf(notes)
  const p = profileFor(o)
  const defs = catalog(p).filter((d) => o.only.includes(d.id))
  const nofile = nofileHardLimit()
  const machine = machineInfo(tools, nofile)
  if (machine.loadavgStart[0] > 0.5) notes.push(`the machine was busy before the bench (load average ${machine.loadavgStart[0].toFixed(2)}): figures are noisier`)
  notes.push(...limitNotes(p, nofile, defs))
  if (o.divertLogLevel !== 'info') notes.push(`divert ran with --log-level ${o.divertLogLevel} (no per-session log line), not its default info`)
  const dir = mkdtempSync(join(tmpdir(), 'divert-bench-'))
  chmodSync(dir, 0o755)
  const group = new ProcessGroup()
  const stop = (): void => void group.stopAll().finally(() => { if (!o.keepTemp) rmSync(dir, {recursive: true, force: true}); process.exit(130) })
  process.once('SIGINT', stop).once('SIGTERM', stop)
  try {
    const base = {dir, repo, group, ports: new PortPool(), limits: {nofile}, loadgen: buildLoadgen(repo), wrkScript: join(repo, 'bench/wrk-report.lua'), streamModule: tools.streamModule,
      divertMissing: divertMissing(repo), divertLogLevel: o.divertLogLevel, rulesBenchMissing: existsSync(join(repo, 'dist/bench/rules.js')) ? undefined : 'not available: dist/bench/rules.js missing (bench/rules.ts not built)'}
    if (base.divertMissing) notes.push(`divert ${base.divertMissing}`)
    const lab: Lab = {...base, backends: await startBackends(base)}
    const samples = await runTests(lab, defs, p)
    const tests = aggregate(defs, samples, p.runs)
    console.log(tests.map(renderTable).join('\n\n'))
    console.log(`\n${renderVerdicts(tests)}`)
    if (notes.length) console.log(`\nNotes:\n${notes.map((n) => `  - ${n}`).join('\n')}`)
    const out = resolve(o.out)
    writeResults(out, {generatedAt: new Date().toISOString(), machine: finishMachineInfo(machine), options: o, profile: p, notes,
      divert: {available: !base.divertMissing, reason: base.divertMissing}, tests, samples, ...(cli ? {cli} : {}), ...(fleet ? {fleet} : {}), ...(gateway ? {gateway} : {})})
    console.log(`\nJSON results: ${out}`)
  } finally {
    process.removeListener('SIGINT', stop).removeListener('SIGTERM', stop)
    await group.stopAll()
    if (o.keepTemp) log(`temp dir kept: ${dir}`)
    else rmSync(dir, {recursive: true, force: true})
  }
}

/** Exit status: 0 when the bench ran (whatever the verdicts), 1 when tools are missing, 2 on bad options. */
export async function main(argv: string[], repo: string): Promise<number> {
  try {
    const o = parseOptions(argv, join(repo, 'bench/results/latest.json'))
    if (o.help) {
      console.log(USAGE)
      return 0
    }
    if (availableParallelism() < 2) {
      log('bench: needs at least 2 cores (each proxy on core 0, load and backends on core 1); this machine has 1')
      return 1
    }
    const cli = o.cli ? await cliBench(o, repo) : undefined
    const fleet = o.fleet ? await fleetBench(o, repo) : undefined
    const gateway = o.gateway ? await gatewayBench(o, repo) : undefined
    if (o.only.length === 0) {
      writeResults(resolve(o.out), {generatedAt: new Date().toISOString(), cli, fleet, gateway} as Results)
      return 0
    }
    const tools = ensureTools(o)
    if (!tools) return 1
    await bench(o, repo, tools, cli, fleet, gateway)
    return 0
  } catch (e) {
    log(`bench: ${e instanceof Error ? e.message : String(e)}`)
    return isDivertError(e) ? e.exitCode : 1
  }
}
