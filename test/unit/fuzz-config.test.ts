/**
 * Fuzzing the config loader (issue 7 §6): whatever text arrives, parseConfig returns a sound Config or
 * throws one DivertError, CONFIG_SYNTAX or CONFIG_INVALID, whose every line names the file and a
 * line:col — never another exception type, never slowly.
 *
 *   random text | YAML of fc.anything | mutated full.yaml ─▶ parseConfig ─▶ Config | DivertError
 */
import {describe, it, after} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'
import {performance} from 'node:perf_hooks'
import fc from 'fast-check'
import YAML from 'yaml'
import {parseConfig, type ConfigProblem} from '../../src/config/load.js'
import {formatPath} from '../../src/config/schema.js'
import type {Config} from '../../src/config/types.js'
import {DivertError} from '../../src/errors.js'
import {parseCidr} from '../../src/addr/cidr.js'

const FILE = 'fuzz/divert.yaml'
const FULL_TEXT = readFileSync(new URL('../../../test/fixtures/config/full.yaml', import.meta.url), 'utf8')
const FULL = YAML.parse(FULL_TEXT) as Record<string, unknown>
/**
 * One input slower than this is a hang in the making (regex backtracking, alias expansion); generous
 * because CI machines stall. The typical cost is checked separately, on the median.
 */
const SLOW_MS = 1000
const MEDIAN_MS = 5
/** DIVERT_FUZZ_SCALE=10 runs ten times as many cases (a deeper run before a release). */
const runs = (n: number): number => Math.max(1, Math.round(n * Number(process.env.DIVERT_FUZZ_SCALE ?? 1)))
// A failing property reports the assertion that failed, not only the counterexample.
fc.configureGlobal({includeErrorInReport: true})

type Outcome = {kind: 'ok'; config: Config} | {kind: 'syntax' | 'invalid'; error: DivertError}
const timings: number[] = []

function percentile(q: number): number {
  const sorted = [...timings].sort((a, b) => a - b)
  return sorted[Math.floor(q * (sorted.length - 1))] ?? 0
}

after(() => {
  const total = timings.reduce((x, y) => x + y, 0) / 1000
  const ms = (q: number): string => `${percentile(q).toFixed(2)}ms`
  // One summary line, so a slow-down shows up in the test log before it becomes a failure.
  console.log(`# parseConfig: ${timings.length} inputs in ${total.toFixed(1)}s, median ${ms(0.5)}, p99 ${ms(0.99)}, max ${ms(1)}`)
})

const LOCATION = new RegExp(`^${FILE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:(\\d+):(\\d+): `)

/** Parses and classifies; fails on anything that is not a Config or a well-formed config DivertError. */
function outcome(text: string): Outcome {
  const start = performance.now()
  let result: Outcome
  try {
    const config = parseConfig(text, FILE)
    checkConfig(config)
    result = {kind: 'ok', config}
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error
    assert.ok(error instanceof DivertError, `parseConfig threw ${(error as Error)?.constructor?.name}: ${String((error as Error)?.stack ?? error)}`)
    checkError(error, text)
    result = {kind: error.code === 'DIVERT_ERR_CONFIG_SYNTAX' ? 'syntax' : 'invalid', error}
  }
  const ms = performance.now() - start
  timings.push(ms)
  assert.ok(ms < SLOW_MS, `parseConfig took ${ms.toFixed(1)}ms on ${JSON.stringify(text.slice(0, 200))}`)
  return result
}

function checkError(e: DivertError, text: string): void {
  assert.ok(e.code === 'DIVERT_ERR_CONFIG_SYNTAX' || e.code === 'DIVERT_ERR_CONFIG_INVALID', `unexpected code ${e.code}: ${e.message}`)
  const lines = e.message.split('\n')
  const lastLine = text.split(/\r\n|\r|\n/).length + 1
  for (const [i, line] of lines.entries()) {
    if (i === lines.length - 1 && /^fuzz\/divert\.yaml: \d+ more problems? not shown/.test(line)) continue
    const m = LOCATION.exec(line)
    assert.ok(m, `message line ${i + 1} does not start with FILE:LINE:COL: ${JSON.stringify(line)} (whole message: ${JSON.stringify(e.message)})`)
    assert.ok(Number(m[1]) >= 1 && Number(m[1]) <= lastLine && Number(m[2]) >= 1, `location out of the text: ${line}`)
  }
  const problems = (e.details as {problems?: ConfigProblem[]} | undefined)?.problems
  assert.ok(Array.isArray(problems) && problems.length > 0, 'details.problems lists the problems')
}

/** What every accepted config must satisfy, whatever the input looked like. */
function checkConfig(c: Config): void {
  assert.ok(c.listeners.length > 0 && c.backends.size > 0)
  const finite = (n: number, what: string): void => assert.ok(Number.isSafeInteger(n) && n >= 0, `${what} is ${n}`)
  for (const l of c.listeners) {
    assert.ok(c.backends.has(l.backend), `listener ${l.name} names backend ${l.backend}`)
    finite(l.bind.port, 'bind port')
    assert.ok(l.bind.port <= 65535)
    finite(l.udp.idleTimeoutMs, 'udp.idle_timeout')
    finite(l.udp.maxFlows, 'udp.max_flows')
    finite(l.udp.recvBufferSize, 'udp.recv_buffer')
    finite(l.maxConnections, 'max_connections')
    finite(l.clientTimeoutMs, 'timeouts.client')
  }
  for (const b of c.backends.values()) {
    assert.ok(b.servers.length > 0)
    for (const s of b.servers) assert.ok(s.address.port <= 65535 && s.weight >= 1)
    finite(b.connectTimeoutMs, 'timeouts.connect')
    finite(b.serverTimeoutMs, 'timeouts.server')
    if (b.health) for (const k of ['intervalMs', 'timeoutMs', 'rise', 'fall'] as const) finite(b.health[k], `health.${k}`)
  }
  for (const r of c.rules) {
    parseCidr(r.source)
    for (const b of [r.to, r.mirror]) if (b !== undefined) assert.ok(c.backends.has(b), `rule names backend ${b}`)
    if (r.expiresAt !== undefined) assert.ok(Number.isFinite(r.expiresAt))
  }
  finite(c.captureMaxBytes, 'capture.max_size')
  finite(c.mirrorBufferBytes, 'capture.mirror_buffer')
}

// ─── generators ────────────────────────────────────────────────────────────────────────────────

/** Pieces of YAML syntax and of divert's vocabulary, so random text reaches past the tokenizer. */
const YAML_TOKENS = [
  '\n', '\n  ', '\n    ', '  ', '- ', ': ', ':', '{', '}', '[', ']', ', ', '&a ', '*a', '&b ', '*b', '*zz', '!!str ', '!!map ',
  '!!seq ', '!!int ', '!!binary ', '!!set ', '!!omap ', '!local ', '? ', '|', '|-', '>', '"', "'", '\\', '#', '---\n', '...\n',
  '%YAML 1.2\n', '%TAG ! tag:x,2000:\n', '<<: ', '\t', '\r', '\r\n', '\u00a0', '\ufeff', '\u2028', 'listeners', 'backends', 'rules',
  'admin', 'capture', 'state', 'name', 'bind', 'backend', 'servers', 'address', 'weight', 'health', 'udp', 'timeouts',
  'idle_timeout', 'max_size', 'source', 'to', 'mirror', 'record', 'expires', 'listener', 'proxy_protocol', 'prod',
  '127.0.0.1:1', '[::1]:2', '10.0.0.0/8', 'tcp', 'udp', 'v1', 'v2', 'null', '~', '0x1F', '0o17', '1e400', '-1', '.inf',
  '-.nan', 'true', 'NO', '300ms', '1m30s', '64KiB', '2026-12-01T00:00:00Z', '__proto__', 'constructor',
]

const yamlSoup = fc.array(fc.oneof(
  {weight: 4, arbitrary: fc.constantFrom(...YAML_TOKENS)},
  {weight: 1, arbitrary: fc.string({unit: 'binary', maxLength: 6})},
), {maxLength: 80}).map((parts) => parts.join(''))

/** "Billion laughs": each level aliases the previous one `width` times (YAML 1.2 §3.2.2.2 aliases). */
const aliasBomb = fc.tuple(fc.integer({min: 1, max: 12}), fc.integer({min: 2, max: 10})).map(([depth, width]) => {
  const lines = ['a0: &a0 [x]']
  for (let i = 1; i <= depth; i++) lines.push(`a${i}: &a${i} [${Array.from({length: width}, () => `*a${i - 1}`).join(', ')}]`)
  return `${lines.join('\n')}\nlisteners: *a${depth}\n`
})

const ANY = {
  withBigInt: true, withBoxedValues: true, withDate: true, withMap: true, withSet: true, withNullPrototype: true,
  withObjectString: true, withSparseArray: true, withTypedArray: true, withUnicodeString: true, maxDepth: 4,
} as const

/** YAML.stringify of a value, in block or flow style; undefined when yaml cannot represent it. */
function yamlOf(value: unknown, flow: boolean): string | undefined {
  try {
    const text = YAML.stringify(value, {collectionStyle: flow ? 'flow' : 'block'})
    return typeof text === 'string' ? text : undefined
  } catch {
    return undefined
  }
}

/** Values of the wrong type, shape or range, and the edge cases of each scalar parser. */
const WRONG_VALUES: unknown[] = [
  null, 0, -1, 1.5, 2 ** 53, 1e308, -0, '', ' ', 'x', [], {}, [[]], [{}], true, false, `${'9'.repeat(400)}d`, `${'9'.repeat(30)}ms`,
  '1e400', '99999999999999999999MiB', '0.0000001KiB', '1.5', '::', '127.0.0.1:99999', '127.0.0.1:0', '[::1]:0', '[::1]',
  '1.2.3.4:5:6', 'localhost:80', 'udp', 'v3', '0.0.0.0/0', '::/0', '2001:db8::/129', '1.2.3.4/33', '1.2.3.4/-1', 'NaN',
  'Infinity', '__proto__', 'constructor', 'toString', 'hasOwnProperty', '2026-13-45T99:00:00Z', '2026-12-01T00:00:00',
  '\u0000', '\n', 'a\nb', 'prod', 'staging', 'vpn-prod', 'telnet', 'vpn', '10s', '0s', '0', 0.5, 'x'.repeat(5000),
]

const KEY_NAMES = [
  'listeners', 'backends', 'rules', 'admin', 'capture', 'state', 'name', 'protocol', 'bind', 'backend', 'servers', 'address',
  'weight', 'health', 'udp', 'timeouts', 'idle_timeout', 'key', 'max_flows', 'recv_buffer', 'max_connections', 'client', 'server',
  'connect', 'check', 'interval', 'timeout', 'rise', 'fall', 'balance', 'proxy_protocol', 'fallback', 'source', 'to', 'mirror',
  'record', 'listener', 'expires', 'note', 'socket', 'listen', 'token_file', 'max_size', 'mirror_buffer',
  'Listeners', 'bakend', 'adress', 'servers ', ' name', '__proto__', 'constructor', 'prototype', '', '0', 'a\nb',
]

const someValue = fc.oneof(
  {weight: 3, arbitrary: fc.constantFrom(...WRONG_VALUES)},
  {weight: 1, arbitrary: fc.anything({maxDepth: 2})},
  {weight: 1, arbitrary: fc.string({unit: 'binary', maxLength: 20})},
  {weight: 1, arbitrary: fc.oneof(fc.integer(), fc.double())},
)
const someKey = fc.oneof(fc.constantFrom(...KEY_NAMES), fc.string({unit: 'binary', maxLength: 12}))

type Path = (string | number)[]

/** Every path to a value inside a plain JSON-like document (the root excluded). */
function pathsOf(value: unknown, prefix: Path = []): Path[] {
  if (value === null || typeof value !== 'object') return []
  const entries: [string | number, unknown][] = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value)
  return entries.flatMap(([k, v]) => [[...prefix, k], ...pathsOf(v, [...prefix, k])])
}

function parentOf(doc: unknown, path: Path): any {
  return path.slice(0, -1).reduce((node: any, seg) => node[seg], doc)
}

interface Mutation {
  kind: 'drop' | 'rename' | 'replace' | 'duplicate' | 'wrap'
  at: number
  key: string
  value: unknown
}

const mutation = fc.record({
  kind: fc.constantFrom('drop', 'rename', 'replace', 'duplicate', 'wrap') as fc.Arbitrary<Mutation['kind']>,
  at: fc.nat(),
  key: someKey,
  value: someValue,
})

/** Applies the mutation to a path chosen by `at`, in place. Renaming keeps the key's position. */
function mutate(doc: Record<string, unknown>, m: Mutation): void {
  const paths = pathsOf(doc)
  const path = paths[m.at % paths.length]
  const parent = parentOf(doc, path)
  const last = path[path.length - 1]
  switch (m.kind) {
    case 'drop':
      if (Array.isArray(parent)) parent.splice(last as number, 1)
      else delete parent[last]
      return
    case 'replace':
      parent[last] = m.value
      return
    case 'duplicate':
      if (Array.isArray(parent)) parent.push(structuredClone(parent[last as number]))
      else parent[m.key] = structuredClone(parent[last])
      return
    case 'wrap':
      parent[last] = [parent[last]]
      return
    case 'rename':
      if (Array.isArray(parent)) return void (parent[last as number] = {[m.key]: parent[last as number]})
      renameKey(parent, String(last), m.key)
  }
}

function renameKey(obj: Record<string, unknown>, from: string, to: string): void {
  const entries = Object.entries(obj).map(([k, v]): [string, unknown] => [k === from ? to : k, v])
  for (const k of Object.keys(obj)) delete obj[k]
  for (const [k, v] of entries) obj[k] = v
}

const serialise = fc.constantFrom('block', 'flow', 'json')
function textOf(doc: unknown, style: string): string | undefined {
  return style === 'json' ? JSON.stringify(doc, null, 2) : yamlOf(doc, style === 'flow')
}

/** Line-level edits of the fixture's text: what a hurried hand-edit does to a YAML file. */
interface TextEdit {
  kind: 'delete' | 'insert' | 'dup-line' | 'indent' | 'dedent' | 'swap'
  at: number
  other: number
  len: number
  insert: string
}

const textEdit: fc.Arbitrary<TextEdit> = fc.record({
  kind: fc.constantFrom('delete', 'insert', 'dup-line', 'indent', 'dedent', 'swap'),
  at: fc.nat(),
  other: fc.nat(),
  len: fc.integer({min: 1, max: 40}),
  insert: fc.oneof(fc.constantFrom(...YAML_TOKENS), fc.string({unit: 'binary', maxLength: 8})),
})

function editText(text: string, e: TextEdit): string {
  const lines = text.split('\n')
  const i = e.at % lines.length
  const j = e.other % lines.length
  switch (e.kind) {
    case 'delete': {
      const at = e.at % text.length
      return text.slice(0, at) + text.slice(at + e.len)
    }
    case 'insert': {
      const at = e.at % (text.length + 1)
      return text.slice(0, at) + e.insert + text.slice(at)
    }
    case 'dup-line':
      lines.splice(i, 0, lines[i])
      break
    case 'indent':
      lines[i] = `  ${lines[i]}`
      break
    case 'dedent':
      lines[i] = lines[i].replace(/^ {1,2}/, '')
      break
    case 'swap':
      ;[lines[i], lines[j]] = [lines[j], lines[i]]
      break
  }
  return lines.join('\n')
}

// ─── properties ────────────────────────────────────────────────────────────────────────────────

/** Every key whose value is a duration, at its place in the fixture (or in the blocks it may hold). */
const DURATION_PATHS: Path[] = [
  ['listeners', 0, 'timeouts', 'client'], ['listeners', 1, 'udp', 'idle_timeout'], ['backends', 'prod', 'health', 'interval'],
  ['backends', 'prod', 'health', 'timeout'], ['backends', 'prod', 'timeouts', 'connect'], ['backends', 'prod', 'timeouts', 'server'],
]

const durationText = fc.oneof(
  fc.tuple(fc.oneof(fc.nat(), fc.bigInt({min: 0n, max: 10n ** 40n}).map(String), fc.double({min: 0, max: 1e6, noNaN: true}).map(String)),
    fc.constantFrom('ms', 's', 'm', 'h', 'd', '', 'w', 'S')).map(([n, u]) => `${n}${u}`),
  fc.array(fc.tuple(fc.nat({max: 99_999}), fc.constantFrom('ms', 's', 'm', 'h', 'd')), {minLength: 1, maxLength: 4})
    .map((parts) => parts.map(([n, u]) => `${n}${u}`).join('')),
)
const durationValue = fc.oneof(durationText, fc.double(), fc.integer(), fc.constantFrom(...WRONG_VALUES))

describe('parseConfig fuzzing (fast-check)', () => {
  it('the unmutated fixture parses the same in block, flow and JSON form (the oracle itself can pass)', () => {
    const reference = parseConfig(FULL_TEXT, FILE)
    for (const style of ['block', 'flow', 'json']) {
      const c = parseConfig(textOf(FULL, style)!, FILE)
      assert.deepEqual(c, reference, style)
      checkConfig(c)
    }
  })

  it('arbitrary text: a Config or a located CONFIG_SYNTAX / CONFIG_INVALID, never another throw', () => {
    const text = fc.oneof(
      fc.string({unit: 'binary', maxLength: 300}),
      fc.string({unit: 'grapheme', maxLength: 100}),
      yamlSoup,
      aliasBomb,
    )
    fc.assert(fc.property(text, (t) => void outcome(t)), {numRuns: runs(2000)})
  })

  it('regression examples: alias bombs, BOMs, control characters, collection keys, huge numbers', () => {
    const valid = 'listeners:\n- name: a\n  bind: 127.0.0.1:1\n  backend: b\nbackends: {b: {servers: [{address: 127.0.0.1:2}]}}\n'
    const cases = [
      '\ufefflisteners: []',
      'a: &a [*a]',
      '&a [*a, *a]',
      'listeners: *nope',
      '\u0000',
      '%YAML 1.2\n---\n',
      `${valid}capture: {max_size: 99999999999999999999999999}`,
      // Found by the properties below: a key holding a newline split one problem over two message lines.
      `${valid}"a\\nb": 1\n`,
      `? ${valid}`,
      '? {"": 0, "\\0": "\\0"}\n: []\n',
    ]
    for (const t of cases) assert.notEqual(outcome(t).kind, 'ok', t)
    // Found by the duration property: lengths past a safe integer, or past what a Node timer runs.
    const interval = (t: string): string => valid.replace('127.0.0.1:2}]', `127.0.0.1:2}], health: {interval: ${t}}`)
    for (const t of ['30d', '99999999999d', `${'9'.repeat(400)}d`, '2147483648ms']) {
      assert.match(invalid(outcome(interval(t))).message, /backends\.b\.health\.interval: .*(too long|longer than)/, t)
    }
    assert.equal(outcome(interval('2147483647ms')).kind, 'ok')
  })

  it('large hostile documents are rejected in well under a second, not in quadratic time', () => {
    // Regression: each alias, duplicate key and unknown key used to cost a walk of the whole document:
    // 10,000 aliases (40 KB) took 18 s to reject, 5,000 duplicate keys 5 s, 20,000 unknown keys 15 s.
    const n = 8000
    const docs = {
      aliases: `a: &a [x]\nb: [${Array.from({length: n}, () => '*a').join(', ')}]\n`,
      'duplicate keys': Array.from({length: n}, () => 'a: 1').join('\n'),
      // yaml's own duplicate-key check is quadratic in a mapping's size, so fewer keys here.
      'unknown keys': Array.from({length: n / 4}, (_, i) => `k${i}: 1`).join('\n'),
      'nested bomb': Array.from({length: 60}, (_, i) => (i === 0 ? 'a0: &a0 [x]' : `a${i}: &a${i} [${Array(40).fill(`*a${i - 1}`).join(', ')}]`)).join('\n'),
    }
    for (const [what, text] of Object.entries(docs)) {
      const start = performance.now()
      assert.notEqual(outcome(text).kind, 'ok')
      const ms = performance.now() - start
      assert.ok(ms < 2000, `${what}: ${text.length} bytes took ${ms.toFixed(0)}ms`)
    }
  })

  it('YAML of arbitrary values (fc.anything), at the top level and under each section', () => {
    const section = fc.constantFrom('listeners', 'backends', 'rules', 'admin', 'capture', 'state')
    const doc = fc.oneof(
      fc.anything(ANY),
      fc.dictionary(section, fc.anything(ANY), {maxKeys: 6}),
      fc.tuple(section, fc.anything(ANY)).map(([k, v]) => ({...structuredClone(FULL), [k]: v})),
    )
    fc.assert(fc.property(doc, fc.boolean(), (value, flow) => {
      const text = yamlOf(value, flow)
      fc.pre(text !== undefined)
      outcome(text)
    }), {numRuns: runs(1000)})
  })

  it('one to four mutations of the full example (drop, rename, retype, duplicate, wrap) in block, flow or JSON', () => {
    fc.assert(fc.property(fc.array(mutation, {minLength: 1, maxLength: 4}), serialise, (ms, style) => {
      const doc = structuredClone(FULL)
      for (const m of ms) mutate(doc, m)
      const text = textOf(doc, style)
      fc.pre(text !== undefined)
      outcome(text)
    }), {numRuns: runs(1000)})
  })

  it('hand-edit mistakes in the fixture text (delete, insert, duplicate, re-indent, swap lines)', () => {
    fc.assert(fc.property(fc.array(textEdit, {minLength: 1, maxLength: 3}), (edits) => {
      outcome(edits.reduce((t, e) => editText(t, e), FULL_TEXT))
    }), {numRuns: runs(800)})
  })

  it('any value at any duration key: accepted only as whole milliseconds a Node timer can run', () => {
    // Regression: "99999999999d" and "9…9d" (400 digits) were accepted as 8.6e18 ms and Infinity, and
    // `health: {interval: 30d}` as a timer delay Node replaces by 1 ms (a busy loop of health checks).
    fc.assert(fc.property(fc.constantFrom(...DURATION_PATHS), durationValue, (path, value) => {
      const doc = structuredClone(FULL)
      const parent = path.slice(0, -1).reduce((node: any, seg) => (node[seg] ??= {}), doc)
      parent[path[path.length - 1]] = value
      const o = outcome(textOf(doc, 'block')!)
      if (o.kind !== 'ok') return
      const c = o.config
      const ms = [
        c.listeners[0].clientTimeoutMs, c.listeners[1].udp.idleTimeoutMs, c.backends.get('prod')!.health!.intervalMs,
        c.backends.get('prod')!.health!.timeoutMs, c.backends.get('prod')!.connectTimeoutMs, c.backends.get('prod')!.serverTimeoutMs,
      ]
      for (const v of ms) assert.ok(Number.isSafeInteger(v) && v >= 0 && v <= 2 ** 31 - 1, `${JSON.stringify(value)} at ${formatPath(path)} became ${v}`)
    }), {numRuns: runs(600)})
  })

  it('an unknown key anywhere is CONFIG_INVALID at that key\'s own line and column', () => {
    // Every mapping is strict except `backends`, whose keys are names (renaming one is not "unknown").
    const keyPaths = pathsOf(FULL).filter((p) => typeof p[p.length - 1] === 'string' && !(p.length === 2 && p[0] === 'backends'))
    const newKey = fc.stringMatching(/^[a-z][a-z0-9_]{0,10}$/).map((k) => `zz_${k}`)
    fc.assert(fc.property(fc.constantFrom(...keyPaths), newKey, fc.constantFrom('block', 'json'), (path, key, style) => {
      const doc = structuredClone(FULL)
      renameKey(parentOf(doc, path), String(path[path.length - 1]), key)
      const text = textOf(doc, style)!
      const e = invalid(outcome(text))
      const where = formatPath([...path.slice(0, -1), key])
      const p = problemsOf(e).find((x) => x.path === where)
      assert.ok(p, `no problem at ${where}: ${e.message}`)
      assert.match(p.message, new RegExp(`unknown key "${key}"`))
      const line = text.split('\n')[p.line - 1] ?? ''
      assert.match(line.slice(p.column - 1), new RegExp(`^"?${key}"?:`), `${where} placed at ${p.line}:${p.column}: ${JSON.stringify(line)}`)
    }), {numRuns: runs(200)})
  })

  it('dropping a required key is CONFIG_INVALID naming that path as missing', () => {
    const required = pathsOf(FULL).filter((p) => {
      const f = formatPath(p.map((s) => (typeof s === 'number' ? 0 : s)))
      return /^(listeners|backends)$|^listeners\[0\]\.(name|bind|backend)$|^backends\.[a-z-]+\.servers$|^backends\.[a-z-]+\.servers\[0\]\.address$|^rules\[0\]\.source$/.test(f)
    })
    assert.ok(required.length >= 10)
    fc.assert(fc.property(fc.constantFrom(...required), serialise, (path, style) => {
      const doc = structuredClone(FULL)
      delete parentOf(doc, path)[path[path.length - 1]]
      const e = invalid(outcome(textOf(doc, style)!))
      const p = problemsOf(e).find((x) => x.path === formatPath(path))
      assert.ok(p, `no problem at ${formatPath(path)}: ${e.message}`)
      assert.match(p.message, /is missing; expected/)
    }), {numRuns: runs(100)})
  })

  it(`the median input parses in under ${MEDIAN_MS} ms`, () => {
    assert.ok(timings.length > 1000, 'runs after the properties above')
    assert.ok(percentile(0.5) < MEDIAN_MS, `median ${percentile(0.5).toFixed(2)}ms`)
  })
})

function invalid(o: Outcome): DivertError {
  assert.equal(o.kind, 'invalid', o.kind === 'ok' ? 'accepted' : o.error.message)
  return (o as {error: DivertError}).error
}

function problemsOf(e: DivertError): ConfigProblem[] {
  return (e.details as {problems: ConfigProblem[]}).problems
}
