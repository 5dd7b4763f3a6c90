import {test} from 'node:test'
import assert from 'node:assert/strict'
import type {Goal, TestDef} from '../catalog.js'
import {aggregate, judge, renderTable, renderVerdicts, type Sample} from '../report.js'

const def: TestDef = {
  id: 'tcp-connect', title: 'New TCP connections', how: 'wrk', contenders: ['haproxy', 'divert'],
  comparisons: [['divert', 'haproxy']],
  metrics: [{id: 'conn.rate', label: 'new connections', unit: 'conn/s', better: 'higher'}, {id: 'conn.errors', label: 'errors', unit: 'count', better: 'lower'}],
  goals: [{metric: 'conn.rate', subject: 'divert', peer: 'haproxy', op: '>=', value: 0.8, text: '≥ 0.8× haproxy'},
    {metric: 'conn.errors', subject: 'divert', op: '==', value: 0, text: '= 0 every run'}],
}

const sample = (contender: Sample['contender'], run: number, values: Record<string, number>, error?: string): Sample =>
  ({test: 'tcp-connect', contender, run, values, ...(error ? {error} : {})})

test('a ratio goal is judged on the median of same-run ratios', () => {
  const series = (c: string): number[] => (c === 'divert' ? [70, 90, 85] : [100, 100, 100])
  const goal = def.goals[0]
  assert.deepEqual(judge(goal, series), {goal, verdict: 'pass', observed: 0.85})
  assert.equal(judge({...goal, value: 0.9}, series).verdict, 'miss')
})

test('an absolute goal must hold in every run and reports the worst value', () => {
  const goal: Goal = def.goals[1]
  assert.deepEqual(judge(goal, () => [0, 3, 0]), {goal, verdict: 'miss', observed: 3})
  assert.equal(judge(goal, () => [0, 0]).verdict, 'pass')
  assert.equal(judge(goal, () => [undefined]).verdict, 'n/a')
})

test('aggregate summarises per contender, pairs ratios by run, and groups errors', () => {
  const samples = [
    sample('haproxy', 0, {'conn.rate': 100, 'conn.errors': 0}), sample('divert', 0, {'conn.rate': 50, 'conn.errors': 0}),
    sample('haproxy', 1, {'conn.rate': 200, 'conn.errors': 0}), sample('divert', 1, {}, 'divert: not available'),
    sample('haproxy', 2, {'conn.rate': 100}), sample('divert', 2, {'conn.rate': 90}),
  ]
  const [r] = aggregate([def], samples, 3)
  const rate = r.metrics[0]
  assert.deepEqual(rate.byContender.haproxy?.values, [100, 200, 100])
  assert.equal(rate.byContender.divert?.median, 70)
  assert.deepEqual(rate.ratios[0].summary?.values, [0.5, 0.9])
  assert.equal(rate.goals[0].verdict, 'miss', 'median of 0.5 and 0.9 is 0.7 < 0.8')
  assert.deepEqual(r.errors, [{contender: 'divert', runs: [1], error: 'divert: not available'}])
})

test('the table shows medians, spreads, ratios, targets, verdicts and errors', () => {
  const samples = [sample('haproxy', 0, {'conn.rate': 1000}), sample('divert', 0, {'conn.rate': 500}),
    sample('haproxy', 1, {'conn.rate': 1200}), sample('divert', 1, {'conn.rate': 600}, 'slow start')]
  const [r] = aggregate([def], samples, 2)
  const text = renderTable(r)
  assert.match(text, /1,100/)
  assert.match(text, /1,000–1,200/)
  assert.match(text, /0\.500×/)
  assert.match(text, /≥ 0\.8× haproxy/)
  assert.match(text, /MISS/)
  assert.match(text, /divert \(run 2\): slow start/)
  assert.match(renderVerdicts([r]), /MISS tcp-connect new connections: divert\/haproxy 0\.500/)
})

test('a metric over direct is the contender’s value less direct’s in the same run; direct and unpaired runs have none', () => {
  const d: TestDef = {...def, contenders: ['direct', 'haproxy', 'divert'], goals: [],
    metrics: [{id: 'm.us', label: 'machine CPU', unit: 'µs', better: 'lower'}, {id: 'm.us.overDirect', label: 'above direct', unit: 'µs', better: 'lower', overDirect: 'm.us'}]}
  const samples = [
    sample('direct', 0, {'m.us': 30}), sample('haproxy', 0, {'m.us': 62}), sample('divert', 0, {'m.us': 50}),
    sample('haproxy', 1, {'m.us': 70}), sample('divert', 1, {'m.us': 55}),
  ]
  const [r] = aggregate([d], samples, 2)
  const over = r.metrics[1]
  assert.equal(over.byContender.direct, undefined)
  assert.deepEqual(over.byContender.haproxy?.values, [32], 'run 1 has no direct to subtract')
  assert.deepEqual(over.byContender.divert?.values, [20])
  assert.deepEqual(over.ratios[0].summary?.values, [20 / 32])
})
