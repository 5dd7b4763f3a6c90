/**
 * Results: samples (one per test × contender × run) → per-metric medians, spreads, same-run ratios
 * and goal verdicts → console tables (cli-table3) and the JSON document.
 *
 *   samples ─ aggregate → TestReport[] ─┬─ renderTable → console
 *                                       └─ JSON.stringify → bench/results/latest.json
 */
import Table from 'cli-table3'
import type {Contender, Goal, MetricDef, TestDef} from './catalog.js'
import type {TestId} from './options.js'
import {formatNumber, median, pairedRatios, summarize, type Summary} from './stats.js'

export interface Sample {
  test: TestId
  contender: Contender
  run: number
  values: Record<string, number>
  /** Why this sample is missing some or all values (a contender that could not start, a tool error). */
  error?: string
}

export type Verdict = 'pass' | 'miss' | 'n/a'

export interface GoalResult {
  goal: Goal
  verdict: Verdict
  /** The median ratio (goals with a peer) or the worst single-run value (goals without). */
  observed?: number
}

export interface RatioReport {
  subject: Contender
  peer: Contender
  summary?: Summary
}

export interface MetricReport {
  metric: MetricDef
  byContender: Partial<Record<Contender, Summary>>
  ratios: RatioReport[]
  goals: GoalResult[]
}

export interface TestReport {
  id: TestId
  title: string
  how: string
  contenders: Contender[]
  metrics: MetricReport[]
  errors: Array<{contender: Contender; runs: number[]; error: string}>
}

type SeriesOf = (contender: Contender, metric: string) => Array<number | undefined>

function compare(x: number, op: Goal['op'], value: number): boolean {
  if (op === '>=') return x >= value
  if (op === '<=') return x <= value
  return x === value
}

export function judge(goal: Goal, series: SeriesOf): GoalResult {
  const subject = series(goal.subject, goal.metric)
  if (goal.peer) {
    const r = pairedRatios(subject, series(goal.peer, goal.metric))
    if (r.length === 0) return {goal, verdict: 'n/a'}
    const observed = median(r)
    return {goal, verdict: compare(observed, goal.op, goal.value) ? 'pass' : 'miss', observed}
  }
  const values = subject.filter((v): v is number => typeof v === 'number')
  if (values.length === 0) return {goal, verdict: 'n/a'}
  const observed = values.reduce((w, v) => (Math.abs(v - goal.value) > Math.abs(w - goal.value) ? v : w), values[0])
  return {goal, verdict: values.every((v) => compare(v, goal.op, goal.value)) ? 'pass' : 'miss', observed}
}

function seriesFor(samples: Sample[], runs: number): SeriesOf {
  return (contender, metric) => {
    const out: Array<number | undefined> = new Array(runs).fill(undefined)
    for (const s of samples) if (s.contender === contender && s.run < runs) out[s.run] = s.values[metric]
    return out
  }
}

function collectErrors(samples: Sample[]): TestReport['errors'] {
  const byKey = new Map<string, {contender: Contender; runs: number[]; error: string}>()
  for (const s of samples) {
    if (!s.error) continue
    const key = `${s.contender}\u0000${s.error}`
    const e = byKey.get(key) ?? {contender: s.contender, runs: [], error: s.error}
    e.runs.push(s.run)
    byKey.set(key, e)
  }
  return [...byKey.values()]
}

function metricReport(def: TestDef, metric: MetricDef, series: SeriesOf): MetricReport {
  const byContender: Partial<Record<Contender, Summary>> = {}
  for (const c of def.contenders) {
    const s = summarize(series(c, metric.id))
    if (s) byContender[c] = s
  }
  const ratios = def.comparisons.map(([subject, peer]) => ({subject, peer, summary: summarize(pairedRatios(series(subject, metric.id), series(peer, metric.id)))}))
  const goals = def.goals.filter((g) => g.metric === metric.id).map((g) => judge(g, series))
  return {metric, byContender, ratios, goals}
}

/** Adds each derived metric (MetricDef.overDirect) to the samples of one test: value less direct's in the same run. */
export function withDerived(def: TestDef, samples: Sample[]): Sample[] {
  const derived = def.metrics.filter((m) => m.overDirect !== undefined)
  if (derived.length === 0) return samples
  const direct = new Map(samples.filter((s) => s.contender === 'direct').map((s) => [s.run, s.values]))
  return samples.map((s) => {
    const base = direct.get(s.run)
    if (s.contender === 'direct' || !base) return s
    const values = {...s.values}
    for (const m of derived) {
      const of = m.overDirect as string
      if (values[of] !== undefined && base[of] !== undefined) values[m.id] = values[of] - base[of]
    }
    return {...s, values}
  })
}

export function aggregate(defs: TestDef[], samples: Sample[], runs: number): TestReport[] {
  return defs.map((def) => {
    const mine = withDerived(def, samples.filter((s) => s.test === def.id))
    const series = seriesFor(mine, runs)
    return {
      id: def.id, title: def.title, how: def.how, contenders: def.contenders,
      metrics: def.metrics.map((metric) => metricReport(def, metric, series)),
      errors: collectErrors(mine),
    }
  })
}

function valueCell(s: Summary | undefined): string {
  if (!s) return '–'
  if (s.n === 1) return formatNumber(s.median)
  return `${formatNumber(s.median)}\n${formatNumber(s.min)}–${formatNumber(s.max)}`
}

function ratioCell(r: RatioReport): string {
  return r.summary ? `${formatNumber(r.summary.median)}×` : '–'
}

function goalCells(goals: GoalResult[]): [string, string] {
  if (goals.length === 0) return ['', '']
  return [goals.map((g) => `${g.goal.peer ? '' : `${g.goal.subject} `}${g.goal.text}`).join('\n'), goals.map((g) => g.verdict.toUpperCase()).join('\n')]
}

/** One table per test: median (and min–max over runs below it), same-run ratios, target, verdict. */
export function renderTable(report: TestReport): string {
  const ratioHeads = report.metrics[0]?.ratios.map((r) => `${r.subject}/\n${r.peer}`) ?? []
  const table = new Table({head: ['metric', ...report.contenders, ...ratioHeads, 'target', 'result'], style: {head: [], border: []}})
  for (const mr of report.metrics) {
    const present = report.contenders.some((c) => mr.byContender[c])
    if (!present && mr.goals.length === 0) continue
    table.push([`${mr.metric.label}\n(${mr.metric.unit})`, ...report.contenders.map((c) => valueCell(mr.byContender[c])), ...mr.ratios.map(ratioCell), ...goalCells(mr.goals)])
  }
  const errors = report.errors.map((e) => `  ${e.contender} (run ${e.runs.map((r) => r + 1).join(', ')}): ${e.error}`)
  return [`${report.title} — ${report.how}`, table.toString(), ...errors].join('\n')
}

/** One line per goal across all tests, for the end of the console output. */
export function renderVerdicts(reports: TestReport[]): string {
  const lines: string[] = []
  for (const r of reports) {
    for (const mr of r.metrics) {
      for (const g of mr.goals) {
        const who = g.goal.peer ? `${g.goal.subject}/${g.goal.peer}` : g.goal.subject
        lines.push(`  ${g.verdict.toUpperCase().padEnd(4)} ${r.id} ${mr.metric.label}: ${who} ${formatNumber(g.observed)} (target ${g.goal.text})`)
      }
    }
  }
  return lines.length ? ['Targets:', ...lines].join('\n') : ''
}
