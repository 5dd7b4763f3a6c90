/**
 * The CLI start-up test (`npm run bench -- --only cli`): what one `divert` call costs next to a bare
 * `node -e ''` started the same way in the same run. The goal is ≤ 2× for every call,
 * `divert list` against a running daemon included. Needs no proxy tools: it starts its own daemon.
 *
 *   rounds × (node -e '' | divert --version | --help | check | list → daemon | list → no daemon)
 *     → median wall time of each → ÷ the bare node median
 */
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {ProcessGroup} from './process.js'
import {median} from './stats.js'
import {DivertError} from '../src/errors.js'

export interface CliCall {
  id: string
  label: string
  args: string[]
}

export interface CliFigure {
  id: string
  label: string
  medianMs: number
  minMs: number
  maxMs: number
  /** median ÷ the bare node median; the goal is ≤ GOAL. */
  ratio: number
}

export interface CliResults {
  rounds: number
  goal: number
  figures: CliFigure[]
}

export const GOAL = 2

/** The calls, by what they exercise: oclif alone, help rendering, the config loader, undici to a daemon, an error. */
export function cliCalls(bin: string, admin: string, noAdmin: string, config: string): CliCall[] {
  return [
    {id: 'node', label: "node -e ''", args: ['-e', '']},
    {id: 'version', label: 'divert --version', args: [bin, '--version']},
    {id: 'help', label: 'divert --help', args: [bin, '--help']},
    {id: 'check', label: 'divert check -c FILE', args: [bin, 'check', '-c', config]},
    {id: 'list', label: 'divert list --json (daemon)', args: [bin, 'list', '--json', '--admin', admin]},
    {id: 'listNoDaemon', label: 'divert list (no daemon)', args: [bin, 'list', '--admin', noAdmin]},
  ]
}

const CONFIG = `listeners:
  - { name: main, protocol: tcp, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "127.0.0.1:9" } ], health: { check: none } }
rules:
  - { source: 127.0.0.9, to: prod }
`

/** Wall time of one call to completion, in ms; a call that fails (other than list's expected exit 5) is an error. */
async function timeCall(group: ProcessGroup, call: CliCall): Promise<number> {
  const t0 = process.hrtime.bigint()
  const r = await group.run({name: call.label, cmd: process.execPath, args: call.args}, 60_000)
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  if (r.code !== 0 && !(call.id === 'listNoDaemon' && r.code === 5)) throw new DivertError('INTERNAL', `${call.label} exited with status ${r.code}: ${r.tail}`)
  return ms
}

/** `rounds` rounds, each running every call once in a rotated order, so no call always follows another. */
export async function benchCli(repo: string, dir: string, rounds: number): Promise<CliResults> {
  const bin = join(repo, 'bin/run.js')
  const config = join(dir, 'cli-bench.yaml')
  writeFileSync(config, CONFIG)
  const admin = join(dir, 'cli-bench-admin.sock')
  const group = new ProcessGroup()
  try {
    const daemon = group.launch({name: 'divert (cli bench)', cmd: process.execPath, args: [bin, 'start', '-c', config, '--log-format', 'json', '--admin', admin]})
    await daemon.waitFor(/"msg":"divert ready"/, 30_000)
    const calls = cliCalls(bin, admin, join(dir, 'no-daemon.sock'), config)
    const times = new Map(calls.map((c) => [c.id, [] as number[]]))
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < calls.length; i++) {
        const call = calls[(i + round) % calls.length]
        times.get(call.id)!.push(await timeCall(group, call))
      }
    }
    const node = median(times.get('node')!)
    return {rounds, goal: GOAL, figures: calls.map((c) => figure(c, times.get(c.id)!, node))}
  } finally {
    await group.stopAll()
  }
}

function figure(c: CliCall, ms: number[], node: number): CliFigure {
  const m = median(ms)
  return {id: c.id, label: c.label, medianMs: m, minMs: Math.min(...ms), maxMs: Math.max(...ms), ratio: m / node}
}

export function renderCli(r: CliResults): string {
  const rows = r.figures.map((f) => {
    const verdict = f.id === 'node' ? '' : f.ratio <= r.goal ? `✓ ≤ ${r.goal}×` : `✗ > ${r.goal}×`
    return `  ${f.label.padEnd(30)} ${f.medianMs.toFixed(0).padStart(6)} ms  (${f.minMs.toFixed(0)}–${f.maxMs.toFixed(0)})  ${f.ratio.toFixed(2).padStart(5)}×  ${verdict}`
  })
  return [`CLI start-up: median wall time of ${r.rounds} calls each, ÷ a bare node start in the same run`, ...rows].join('\n')
}
