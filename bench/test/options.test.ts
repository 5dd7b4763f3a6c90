import {test} from 'node:test'
import assert from 'node:assert/strict'
import {parseOptions, profileFor, TEST_IDS} from '../options.js'
import {DivertError} from '../../src/errors.js'

const parse = (...argv: string[]) => parseOptions(argv, '/r/latest.json')

test('defaults: every test, 3 runs, no install, the default output path', () => {
  const o = parse()
  assert.deepEqual(o.only, [...TEST_IDS])
  assert.equal(o.runs, 3)
  assert.equal(o.install, false)
  assert.equal(o.out, '/r/latest.json')
  assert.equal(o.idleCount, 10_000)
})

test('--quick means one run and shorter durations unless --runs says otherwise', () => {
  assert.equal(parse('--quick').runs, 1)
  assert.equal(parse('--quick', '--runs', '2').runs, 2)
  const full = profileFor(parse())
  const quick = profileFor(parse('--quick'))
  assert.ok(quick.wrkSec < full.wrkSec && quick.udpRates.length < full.udpRates.length)
  assert.ok(Number.isInteger(full.wrkSec) && Number.isInteger(full.warmupSec), 'wrk takes whole seconds')
})

test('--only takes tests and groups, in catalogue order, and rejects unknown names', () => {
  assert.deepEqual(parse('--only', 'udp,tcp-bulk').only, ['tcp-bulk', 'udp-rate', 'udp-flows'])
  assert.deepEqual(parse('--only=memory').only, ['idle-tcp', 'idle-udp'])
  assert.throws(() => parse('--only', 'udp,nope'), (e: unknown) => e instanceof DivertError && /unknown test "nope"/.test(e.message))
})

test('issue 11.25: the cli test runs by default and alone with --only cli (no proxy test then)', () => {
  assert.equal(parse().cli, true)
  assert.deepEqual(parse('--only', 'cli'), {...parse(), only: [], cli: true, fleet: false, gateway: false})
  assert.deepEqual(parse('--only', 'udp-rate,cli').only, ['udp-rate'])
  assert.equal(parse('--only', 'udp-rate').cli, false)
})

test('issue 14: the fleet test runs by default and alone with --only fleet', () => {
  assert.equal(parse().fleet, true)
  assert.deepEqual(parse('--only', 'fleet'), {...parse(), only: [], cli: false, fleet: true, gateway: false})
  assert.equal(parse('--only', 'udp-rate').fleet, false)
  assert.equal(parse('--only', 'cli,fleet').cli, true)
})

test('bad values and unknown options are DivertErrors that say what is wrong', () => {
  assert.throws(() => parse('--runs', '0'), /--runs needs a positive whole number, got "0"/)
  assert.throws(() => parse('--runs'), /--runs needs a value/)
  assert.throws(() => parse('--fast'), /unknown option "--fast"/)
  assert.equal(parse('--out=/x.json', '--install', '--keep-temp', '--idle', '500').out, '/x.json')
})

test('--divert-log-level: info by default (divert as a user runs it); warn or error on request', () => {
  assert.equal(parse().divertLogLevel, 'info')
  assert.equal(parse('--divert-log-level', 'warn').divertLogLevel, 'warn')
  assert.equal(parse('--divert-log-level=error').divertLogLevel, 'error')
  assert.throws(() => parse('--divert-log-level', 'quiet'), /--divert-log-level needs one of debug, info, warn, error, got "quiet"/)
})

test('issue 13: the gateway-mode test runs by default and alone with --only gateway', () => {
  assert.equal(parse().gateway, true)
  assert.deepEqual(parse('--only', 'gateway'), {...parse(), only: [], cli: false, fleet: false, gateway: true})
  assert.equal(parse('--only', 'udp-rate').gateway, false)
})
