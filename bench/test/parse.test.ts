import {test} from 'node:test'
import assert from 'node:assert/strict'
import {loadgenLine, loadgenLines, parseIperf, parseWrk, wrkErrorCount, wrkRate} from '../parse.js'

const WRK = `Running 3s test @ http://127.0.0.1:1/small.txt
  1 threads and 32 connections
Requests/sec:   5837.03
WRKJSON {"requests":17626,"durationUs":3019688,"bytes":8636740,"errors":{"connect":1,"read":2,"write":0,"status":0,"timeout":3},"latencyUs":{"p50":2554,"p90":14568,"p99":50603,"p999":83558,"max":88392,"mean":7119.05}}
`

test('wrk: the WRKJSON line gives exact counts, percentiles and a rate', () => {
  const r = parseWrk(WRK)
  assert.equal(r.requests, 17626)
  assert.equal(r.latencyUs.p99, 50603)
  assert.equal(Math.round(wrkRate(r)), 5837)
  assert.equal(wrkErrorCount(r), 6)
})

test('wrk without the reporter script is an error that quotes its output', () => {
  assert.throws(() => parseWrk('Requests/sec: 1\n'), /wrk: no WRKJSON line .*Requests\/sec: 1/)
})

test('iperf3: end.sum_received, and its own error field', () => {
  const doc = JSON.stringify({start: {}, intervals: [], end: {sum_received: {bits_per_second: 4.1e9, bytes: 1.5e9, seconds: 3}}})
  assert.deepEqual(parseIperf(doc), {bitsPerSecond: 4.1e9, bytes: 1.5e9, seconds: 3})
  assert.throws(() => parseIperf(JSON.stringify({error: 'the server is busy running a test'})), /iperf3 failed: the server is busy/)
  assert.throws(() => parseIperf('iperf3: error'), /not JSON/)
})

test('loadgen lines are picked by mode, in order', () => {
  const out = '{"mode":"udp-warm","answered":3}\n{"mode":"udp-rate","rate":1}\nnoise\n{"mode":"udp-rate","rate":2}\n'
  assert.deepEqual(loadgenLines(out, 'udp-rate').map((l: {mode: string; rate?: number}) => l.rate), [1, 2])
  assert.equal(loadgenLine<{mode: string; answered: number}>(out, 'udp-warm').answered, 3)
  assert.throws(() => loadgenLine(out, 'udp-flows'), /loadgen: no "udp-flows" result line/)
})
