/**
 * Fuzzing the admin API (issue 7 §6) on a live in-process daemon: thousands of generated requests on
 * its unix socket, through node:http (methods, paths, query strings, headers, JSON of every shape,
 * invalid UTF-8, bodies over the limit) and as raw bytes (broken request lines, headers, chunking).
 * Every answer is 2xx, or 4xx with `{error, code, status}`; never 5xx. Meanwhile a TCP session opened
 * before the burst keeps echoing bytes intact, and at the end the rule table holds exactly what the
 * accepted POSTs and DELETEs made of it.
 *
 *   fast-check ─HTTP / raw bytes─▶ admin socket ─▶ AdminServer ─▶ routes ─▶ DaemonControl
 *   probe client ⇄ TcpProxy ⇄ echo backend   (must not notice)
 *
 * Left out of the generators on purpose: DELETE on /sessions (it would close the probe, correctly),
 * `existing: "kill"` (same), and `record` paths other than two files in the daemon's temp dir (a
 * valid POST creates the file). The bugs this file found are pinned as plain examples at the end.
 */
import {describe, it, before, after} from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import {randomBytes} from 'node:crypto'
import {setTimeout as delay} from 'node:timers/promises'
import fc from 'fast-check'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {startServer, connect, readBytes, readLine, type TestServer} from '../helpers/servers.js'
import {parseCidr} from '../../src/addr/cidr.js'
import {parseDuration} from '../../src/config/duration.js'
import type {RuleView} from '../../src/admin/protocol.js'

/** DIVERT_FUZZ_SCALE=10 runs ten times as many cases (a deeper run before a release). */
const runs = (n: number): number => Math.max(1, Math.round(n * Number(process.env.DIVERT_FUZZ_SCALE ?? 1)))
// A failing property reports the assertion that failed, not only the counterexample.
fc.configureGlobal({includeErrorInReport: true})
const BODY_LIMIT = 64 * 1024
/** An answer slower than this is a hung request: the daemon answers in milliseconds. */
const ANSWER_MS = 10_000
const BACKENDS = ['prod', 'staging']
const LISTENERS = ['main']
const RECORD_FILES = ['rec-a.pcap', 'rec-b.pcap']

let prod: TestServer
let staging: TestServer
let d: InProcess
let listenPort: number

// ─── the probe session ───────────────────────────────────────────────────────────────────────────

/** Echo round trips on one TCP session through divert, running for as long as the fuzzing does. */
class Probe {
  rounds = 0
  bytes = 0
  failure?: Error
  private stopped = false
  private done?: Promise<void>

  constructor(private readonly socket: net.Socket) {}

  start(): void {
    this.done = this.loop()
  }

  private async loop(): Promise<void> {
    // Bounded: a probe that outlives its test by this much is stopped anyway.
    for (let i = 0; i < 1_000_000 && !this.stopped; i++) {
      const chunk = randomBytes(1 + (i % 4096))
      this.socket.write(chunk)
      try {
        const back = await readBytes(this.socket, chunk.length)
        if (!back.equals(chunk)) throw new Error(`round ${this.rounds}: ${chunk.length} bytes came back altered`)
      } catch (error) {
        this.failure = error as Error
        return
      }
      this.rounds++
      this.bytes += chunk.length
      // Paced, so the probe checks the session throughout without starving the fuzzing of CPU.
      await delay(2)
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.done
  }
}

let probe: Probe
let probeSocket: net.Socket

// ─── talking to the admin socket ────────────────────────────────────────────────────────────────

interface Req {
  method: string
  path: string
  headers: Record<string, string>
  body?: Buffer
}

type Answer = {status: number; headers: http.IncomingHttpHeaders; body: Buffer} | {clientError: string}

/** One request on a fresh connection (agent: false), so one broken exchange cannot spill into the next. */
function request(r: Req, agent: http.Agent | false = false): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      req.destroy()
      reject(new Error(`no answer within ${ANSWER_MS}ms to ${r.method} ${r.path}`))
    }, ANSWER_MS)
    // node:http frames a GET/HEAD/DELETE/OPTIONS body only when told its length; without it the body
    // would reach the daemon as the start of a second, garbage request.
    const framing = r.body === undefined ? {} : {'content-length': String(r.body.length)}
    const req = http.request({socketPath: d.admin, method: r.method, path: r.path, headers: {...r.headers, ...framing}, agent}, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        clearTimeout(timer)
        resolve({status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks)})
      })
      res.on('error', (e) => {
        clearTimeout(timer)
        resolve({clientError: (e as NodeJS.ErrnoException).code ?? e.message})
      })
    })
    // What the daemon sent, for the report when the client cannot make sense of it.
    const seen: Buffer[] = []
    req.on('socket', (s) => s.on('data', (c: Buffer) => seen.push(c)))
    req.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      resolve({clientError: `${e.code ?? e.message} after receiving ${JSON.stringify(Buffer.concat(seen).toString('latin1').slice(0, 400))}`})
    })
    req.end(r.body)
  })
}

async function json<T>(method: string, path: string, body?: unknown): Promise<{status: number; body: T}> {
  const a = await request({method, path, headers: {'content-type': 'application/json'}, body: body === undefined ? undefined : Buffer.from(JSON.stringify(body))})
  assert.ok('status' in a, `${method} ${path}: ${JSON.stringify(a)}`)
  return {status: a.status, body: JSON.parse(a.body.toString('utf8')) as T}
}

/** The contract for one answer: 2xx, or 4xx with `{error, code, status}` (no body for HEAD). */
function checkAnswer(r: Req, a: Answer): void {
  const what = `${r.method} ${r.path} (${r.body?.length ?? 0} body bytes)`
  if ('clientError' in a) {
    // The daemon may hang up on a client still uploading more than the limit (after its 413).
    if ((r.body?.length ?? 0) > BODY_LIMIT && /^(EPIPE|ECONNRESET) /.test(a.clientError)) return
    // A request line the daemon cannot parse gets a 400 with a JSON body, since it cannot know the
    // method was HEAD; node:http, expecting no body after a HEAD answer, reports the body as an error.
    if (r.method === 'HEAD' && a.clientError.startsWith('HPE_CLOSED_CONNECTION ')) return
    assert.fail(`${what}: ${a.clientError}`)
  }
  assert.ok((a.status >= 200 && a.status < 300) || (a.status >= 400 && a.status < 500), `${what}: status ${a.status} ${a.body.toString('utf8').slice(0, 300)}`)
  if (r.method === 'HEAD') return
  if (a.status >= 400) {
    const e = parseJson(a.body, what) as {error?: unknown; code?: unknown; status?: unknown}
    assert.equal(typeof e.error, 'string', `${what}: error message`)
    assert.match(String(e.code), /^DIVERT_ERR_[A-Z_]+$/, what)
    assert.equal(e.status, a.status, `${what}: status in the body`)
  } else if (!String(a.headers['content-type']).startsWith('text/plain')) {
    parseJson(a.body, what)
  }
}

function parseJson(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'))
  } catch {
    assert.fail(`${what}: body is not JSON: ${body.toString('utf8').slice(0, 200)}`)
  }
}

// ─── the rule model ─────────────────────────────────────────────────────────────────────────────

/** Runtime rules as the answers of accepted requests say they should be, by id. */
const model = new Map<string, RuleView>()
let accepted = 0

/** Applies what a 2xx answer to a rule-changing request reports. */
function track(r: Req, a: Answer): void {
  if (!('status' in a) || a.status >= 300) return
  const url = new URL(r.path, 'http://x')
  if (r.method === 'POST' && url.pathname === '/rules') {
    const out = JSON.parse(a.body.toString('utf8')) as {rule: RuleView; replaced: RuleView | null}
    if (out.replaced) model.delete(out.replaced.id)
    model.set(out.rule.id, out.rule)
    accepted++
  } else if (r.method === 'DELETE' && url.pathname.startsWith('/rules')) {
    const out = JSON.parse(a.body.toString('utf8')) as {removed: RuleView[]; restored: RuleView[]}
    for (const x of out.removed) model.delete(x.id)
  }
}

/**
 * Whether POST /rules must accept this body: a JSON object of known fields whose values are
 * strings (or null: absent), a source that parses, at least one action, backends and listeners that
 * exist, a duration above 0 and `existing: keep`. Empty to/mirror/record count as absent.
 */
function isValidAdd(body: unknown): boolean {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return false
  const b = body as Record<string, unknown>
  const fields = ['source', 'to', 'mirror', 'record', 'listener', 'for', 'note', 'existing']
  if (!Object.keys(b).every((k) => fields.includes(k))) return false
  if (!Object.values(b).every((v) => v === null || v === undefined || typeof v === 'string')) return false
  const s = (k: string): string | undefined => (typeof b[k] === 'string' ? (b[k] as string) : undefined)
  if (!s('source') || !parses(() => parseCidr(s('source')!))) return false
  if (!s('to') && !s('mirror') && !s('record')) return false
  for (const k of ['to', 'mirror']) if (s(k) && !BACKENDS.includes(s(k)!)) return false
  if (s('record') && !RECORD_FILES.includes(s('record')!)) return false
  if (s('listener') !== undefined && !LISTENERS.includes(s('listener')!)) return false
  if (s('for') !== undefined && !(parses(() => parseDuration(s('for')!)) && parseDuration(s('for')!) > 0)) return false
  return b.existing === undefined || b.existing === 'keep'
}

function parses(f: () => unknown): boolean {
  try {
    f()
    return true
  } catch {
    return false
  }
}

// ─── generators ─────────────────────────────────────────────────────────────────────────────────

const printable = fc.string({unit: fc.integer({min: 0x21, max: 0x7e}).map((c) => String.fromCharCode(c)), maxLength: 24})
/** What node:http lets through in a path: any latin1 character above space (the parser may still refuse it). */
const latin1 = fc.string({unit: fc.integer({min: 0x21, max: 0xff}).map((c) => String.fromCharCode(c)), maxLength: 16})
const percentGarbage = fc.oneof(
  fc.constantFrom('%', '%%', '%zz', '%E0%A4%A', '%C0%AF', '%FF%FE', '%00', '%2F', '%2e%2e', '%25', '%u0041', '%0D%0A'),
  fc.tuple(fc.string({unit: fc.constantFrom(...'0123456789abcdefABCDEF'), maxLength: 2}), printable).map(([h, s]) => `%${h}${s}`),
)

const sourceText = fc.oneof(
  fc.constantFrom('10.1.2.3', '10.0.0.0/8', '192.0.2.0/24', '2001:db8::/64', '::1', '0.0.0.0/0', '::/0', '127.0.0.2', '::ffff:10.9.9.9', ' 10.4.4.4 ', '10.0.0.9/8', '1.2.3.4/33', 'fe80::1%eth0', '', 'localhost', '300.1.1.1'),
  fc.ipV4(), fc.ipV6(), fc.tuple(fc.ipV4(), fc.integer({min: 0, max: 40})).map(([a, n]) => `${a}/${n}`), printable,
)

const segment = fc.oneof(
  sourceText.map((s) => encodeURIComponent(s)),
  fc.constantFrom('r000000', 'r123abc', 't1', 't999', 'u1', '..', '.', '__proto__', 'constructor', 'toString'),
  percentGarbage, latin1,
)

const queryValue = fc.oneof(fc.constantFrom('true', 'false', 'main', 'nope', 'prod', 'staging', 'tcp', 'udp', 'TCP', '', '127.0.0.1', '10.0.0.0/8', '::1'), sourceText.map(encodeURIComponent), percentGarbage, latin1)
const query = fc.array(fc.tuple(fc.constantFrom('ip', 'listener', 'source', 'backend', 'protocol', 'all', 'x', '', 'ip[]', '__proto__'), queryValue), {maxLength: 4})
  .map((pairs) => (pairs.length === 0 ? '' : `?${pairs.map(([k, v]) => `${k}=${v}`).join('&')}`))

const ROUTES = ['/status', '/rules', '/explain', '/sessions', '/backends', '/metrics', '/reload']
const path = fc.oneof(
  {weight: 6, arbitrary: fc.tuple(fc.constantFrom(...ROUTES), query).map(([p, q]) => p + q)},
  {weight: 3, arbitrary: fc.tuple(fc.constantFrom('/rules/', '/sessions/'), segment, query).map(([p, s, q]) => p + s + q)},
  {weight: 2, arbitrary: fc.constantFrom('/', '//rules', '/rules/', '/rules//x', '/RULES', '/status/', '/rules/../status', '/./status', 'http://divert/status', 'http://a:99999/x', '//[', 'http://[', '*', '/status#frag', '/status?', '/\u00ff', '/%')},
  {weight: 2, arbitrary: fc.tuple(latin1, query).map(([s, q]) => `/${s}${q}`)},
)

const method = fc.oneof(
  {weight: 4, arbitrary: fc.constant('GET')},
  {weight: 4, arbitrary: fc.constant('POST')},
  {weight: 3, arbitrary: fc.constant('DELETE')},
  {weight: 2, arbitrary: fc.constantFrom('PUT', 'PATCH', 'OPTIONS', 'HEAD', 'TRACE', 'PROPFIND', 'QUERY', 'get', 'Post')},
  {weight: 1, arbitrary: fc.stringMatching(/^[A-Z]{1,8}$/).filter((m) => m !== 'CONNECT')},
)

const headerValue = fc.oneof(fc.constantFrom('application/json', 'text/plain', 'application/json; charset=latin1', 'multipart/form-data; boundary=x', '', 'Bearer x', 'close', 'keep-alive', 'gzip', '100-continue', 'chunked', 'websocket'), printable)
const headers = fc.dictionary(
  fc.constantFrom('content-type', 'x-divert-client', 'accept', 'authorization', 'connection', 'expect', 'content-encoding', 'x-forwarded-for', 'host', 'te', 'upgrade', 'x-anything'),
  headerValue, {maxKeys: 4},
)

const forText = fc.oneof(
  fc.constantFrom('30m', '10s', '1h', '1d', '0s', '0', '', 'x', '1e3s', '-1s', '0.5ms', '2147483648ms', '3000d', '1m30s'),
  // Up to 10^12 days: past the last JavaScript date (8.64e15 ms) and past a safe integer of milliseconds.
  fc.tuple(fc.oneof(fc.nat({max: 99_999}), fc.nat({max: 10 ** 12})), fc.constantFrom('ms', 's', 'm', 'h', 'd')).map(([n, u]) => `${n}${u}`),
)
const wrongType = fc.oneof(fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.string(), {maxLength: 2}), fc.object({maxDepth: 1}))

/** POST /rules bodies: mostly near-valid objects, one field at a time going wrong. */
const addBody = fc.record({
  source: fc.oneof({weight: 5, arbitrary: sourceText}, {weight: 1, arbitrary: wrongType}),
  to: fc.oneof({weight: 4, arbitrary: fc.constantFrom(...BACKENDS)}, {weight: 1, arbitrary: fc.constantFrom('nope', '', 'constructor', '__proto__', 'PROD')}, {weight: 1, arbitrary: wrongType}),
  mirror: fc.oneof({weight: 3, arbitrary: fc.constantFrom(...BACKENDS)}, {weight: 1, arbitrary: fc.constantFrom('nope', 'toString')}, {weight: 1, arbitrary: wrongType}),
  record: fc.oneof({weight: 3, arbitrary: fc.constantFrom(...RECORD_FILES)}, {weight: 1, arbitrary: wrongType.filter((v) => typeof v !== 'string')}),
  listener: fc.oneof({weight: 3, arbitrary: fc.constantFrom(...LISTENERS)}, {weight: 1, arbitrary: fc.constantFrom('', 'nope', 'hasOwnProperty')}, {weight: 1, arbitrary: wrongType}),
  for: fc.oneof({weight: 4, arbitrary: forText}, {weight: 1, arbitrary: wrongType}),
  note: fc.oneof(fc.string({unit: 'grapheme', maxLength: 40}), fc.string({unit: 'binary', maxLength: 20}), wrongType),
  existing: fc.oneof({weight: 3, arbitrary: fc.constant('keep')}, {weight: 1, arbitrary: fc.constantFrom('KEEP', '', 'both')}, {weight: 1, arbitrary: wrongType}),
  extra: fc.anything({maxDepth: 1}),
}, {requiredKeys: []})

/** POST /rules bodies that must be accepted (and a DELETE for the same sources), so the model has rules to track. */
const validSource = fc.oneof(
  fc.constantFrom('10.1.2.3', '10.0.0.0/8', '192.0.2.0/24', '2001:db8::/64', '::1', '127.0.0.2', '::ffff:10.9.9.9', ' 10.4.4.4 '),
  fc.ipV4(), fc.ipV6(),
)
const validAdd = fc.record({
  source: validSource,
  to: fc.constantFrom(...BACKENDS),
  mirror: fc.constantFrom(...BACKENDS),
  record: fc.constantFrom(...RECORD_FILES),
  listener: fc.constantFrom(...LISTENERS),
  for: fc.constantFrom('1h', '30m', '10s', '1d', '250ms', '2147483648ms', '3000d'),
  note: fc.string({unit: 'grapheme', maxLength: 30}),
  existing: fc.constant('keep'),
}, {requiredKeys: ['source', 'to']})
const ruleTraffic: fc.Arbitrary<Req> = fc.oneof(
  {weight: 3, arbitrary: validAdd.map((b) => ({method: 'POST', path: '/rules', headers: {'content-type': 'application/json'}, body: Buffer.from(JSON.stringify(b))}))},
  {weight: 1, arbitrary: fc.tuple(validSource, fc.constantFrom('', '?listener=main', '?listener=nope')).map(([src, q]) => ({method: 'DELETE', path: `/rules/${encodeURIComponent(src.trim())}${q}`, headers: {}}))},
  {weight: 1, arbitrary: fc.constant({method: 'GET', path: '/rules', headers: {}})},
)

/** `record` only ever names a file in the daemon's temp dir: a valid POST creates it. */
function safeRecord(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value
  if (Array.isArray(value)) return value.map(safeRecord)
  const o = {...(value as Record<string, unknown>)}
  if (typeof o.record === 'string' && !RECORD_FILES.includes(o.record)) o.record = RECORD_FILES[0]
  return o
}

const body: fc.Arbitrary<Buffer | undefined> = fc.oneof(
  {weight: 4, arbitrary: fc.constant(undefined)},
  {weight: 6, arbitrary: addBody.map((b) => Buffer.from(JSON.stringify(b)))},
  {weight: 2, arbitrary: fc.jsonValue({maxDepth: 3}).map((v) => Buffer.from(JSON.stringify(safeRecord(v)) ?? 'null'))},
  {weight: 1, arbitrary: fc.string({unit: 'binary', maxLength: 200}).map((s) => Buffer.from(s))},
  {weight: 1, arbitrary: fc.uint8Array({maxLength: 200}).map((b) => Buffer.from(b))},
  {weight: 1, arbitrary: fc.constantFrom('{', '}', '[', '{"source":', 'null', '""', '0', 'true', '\ufeff{}', '{"__proto__":{"to":"prod"},"source":"10.3.3.3"}', '['.repeat(60_000), '{"a":'.repeat(10_000)).map((s) => Buffer.from(s))},
  {weight: 1, arbitrary: fc.integer({min: BODY_LIMIT - 2, max: BODY_LIMIT + 40_000}).map((n) => Buffer.alloc(n, 0x20))},
)

/** Requests that would close the probe session are turned into harmless ones (see the header). */
function protect(r: Req): Req {
  const pathname = r.path.split('?')[0]
  if (r.method === 'DELETE' && /^\/+sessions/i.test(pathname)) return {...r, method: 'GET'}
  if (!r.body) return r
  const text = r.body.toString('utf8')
  if (!/kill/i.test(text)) return r
  return {...r, body: Buffer.from(text.replace(/kill/gi, 'keep'))}
}

// node:http upper-cases the method itself; doing it here keeps the model's view of each request true.
const req: fc.Arbitrary<Req> = fc.record({method: method.map((m) => m.toUpperCase()), path, headers, body})
  .map((r) => protect(r.body === undefined ? {method: r.method, path: r.path, headers: r.headers} : r))

// ─── raw bytes ──────────────────────────────────────────────────────────────────────────────────

const CRLF = '\r\n'
const rawLine = fc.oneof(
  fc.tuple(fc.constantFrom('host', 'Host', 'content-length', 'transfer-encoding', 'connection', 'expect', 'x', ''), fc.oneof(headerValue, fc.constantFrom('-1', '99999999999999999999', '0x10', '5, 5', 'chunked, identity', ' chunked'))).map(([k, v]) => `${k}: ${v}`),
  fc.constantFrom(' folded', '\tfolded', 'no-colon', ':', 'bad header: x\r', 'Content-Length: 1\nContent-Length: 2'),
  latin1,
)
const rawRequest = fc.record({
  method: fc.oneof(fc.constantFrom('GET', 'POST', 'PUT', 'FOO', 'get', 'G ET', '', 'GET\u0000', 'PRI'), latin1),
  target: fc.oneof(path, latin1, fc.constantFrom('', ' ', '/status /x', '/\r', '*')),
  version: fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1x', 'HTTP/9.9', 'http/1.1', ''),
  host: fc.boolean(),
  lines: fc.array(rawLine, {maxLength: 5}),
  body: fc.oneof(fc.constant(''), fc.string({unit: 'binary-ascii', maxLength: 80}), fc.constantFrom('5\r\nhello\r\n0\r\n\r\n', 'zz\r\n', 'ffffffffffffffff\r\n', '0\r\n\r\n', '{"source":"10.2.2.2"}')),
  lineEnd: fc.constantFrom(CRLF, CRLF, CRLF, '\n', '\r'),
}).map((r) => `${r.method} ${r.target} ${r.version}${r.lineEnd}${r.host ? `Host: divert${r.lineEnd}` : ''}${r.lines.map((l) => l + r.lineEnd).join('')}${r.lineEnd}${r.body}`)

const raw = fc.oneof(
  {weight: 1, arbitrary: fc.uint8Array({maxLength: 300}).map((b) => Buffer.from(b))},
  {weight: 4, arbitrary: fc.array(rawRequest, {minLength: 1, maxLength: 3}).map((rs) => Buffer.from(rs.join(''), 'latin1'))},
)

/** Writes the bytes, half-closes, and collects whatever comes back until the daemon closes. */
function exchange(bytes: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(d.admin)
    const chunks: Buffer[] = []
    const timer = setTimeout(() => {
      s.destroy()
      reject(new Error(`the daemon kept a connection open ${ANSWER_MS}ms after the client's EOF; sent ${JSON.stringify(bytes.toString('latin1').slice(0, 300))}`))
    }, ANSWER_MS)
    s.on('data', (c: Buffer) => chunks.push(c))
    s.on('error', () => undefined)
    s.on('close', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks).toString('latin1'))
    })
    s.end(bytes)
  })
}

/** Every response in the answer: status 2xx or 4xx; a 4xx with a Content-Length carries the JSON error. */
function checkRaw(answer: string, sent: Buffer): void {
  const what = JSON.stringify(sent.toString('latin1').slice(0, 300))
  const heads = [...answer.matchAll(/HTTP\/1\.[01] (\d{3})[^\r\n]*\r\n((?:[^\r\n]+\r\n)*)\r\n/g)]
  for (const m of heads) {
    const status = Number(m[1])
    assert.ok((status >= 200 && status < 300) || (status >= 400 && status < 500), `status ${status} for ${what}: ${answer.slice(0, 300)}`)
    if (status < 400) continue
    const length = /^content-length: *(\d+)\r$/im.exec(m[2])
    assert.ok(length, `a ${status} without a JSON body for ${what}: ${answer.slice(0, 300)}`)
    const start = (m.index ?? 0) + m[0].length
    const e = JSON.parse(Buffer.from(answer.slice(start, start + Number(length[1])), 'latin1').toString('utf8')) as {error: unknown; code: unknown; status: unknown}
    assert.equal(typeof e.error, 'string')
    assert.match(String(e.code), /^DIVERT_ERR_/)
    assert.equal(e.status, status)
  }
}

// ─── properties ─────────────────────────────────────────────────────────────────────────────────

describe('admin API fuzzing (fast-check, live daemon)', () => {
  let rawSent = 0
  let httpSent = 0
  let rulesBefore: RuleView[] = []

  before(async () => {
    prod = await startServer('prod')
    staging = await startServer('staging')
    d = await startInProcess(`
state: ./state.json
listeners:
  - { name: main, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
`)
    listenPort = d.daemon.proxies.get('main')!.address()!.port
    probeSocket = await connect({port: listenPort})
    assert.equal(await readLine(probeSocket), 'prod')
    probe = new Probe(probeSocket)
    probe.start()
  })

  after(async () => {
    await probe?.stop()
    probeSocket?.destroy()
    await d?.stop()
    await Promise.all([prod?.close(), staging?.close()])
  })

  it('raw bytes on the admin socket: every answer is 2xx or 4xx with a JSON error, and the connection ends', async () => {
    rulesBefore = (await json<RuleView[]>('GET', '/rules')).body
    await fc.assert(fc.asyncProperty(raw, async (sent) => {
      checkRaw(await exchange(sent), sent)
      rawSent++
    }), {numRuns: runs(600)})
    assert.deepEqual((await json<RuleView[]>('GET', '/rules')).body, rulesBefore, 'raw bytes changed no rule')
    for (const r of rulesBefore) model.set(r.id, r)
  })

  it('generated HTTP requests, several at a time: 2xx or 4xx with {error, code, status}, never 5xx', async () => {
    const mixed = fc.oneof({weight: 3, arbitrary: req}, {weight: 1, arbitrary: ruleTraffic})
    await fc.assert(fc.asyncProperty(fc.array(mixed, {minLength: 1, maxLength: 8}), async (batch) => {
      const answers = await Promise.all(batch.map((r) => request(r)))
      batch.forEach((r, i) => {
        checkAnswer(r, answers[i])
        track(r, answers[i])
        const a = answers[i]
        if (r.method === 'POST' && r.path === '/rules' && 'status' in a) {
          // Not every rejected body is invalid (a batch may race), but an accepted one must be valid.
          const parsed = parses(() => JSON.parse(r.body?.toString('utf8') ?? ''))
          if (a.status < 300) assert.ok(parsed && isValidAdd(JSON.parse(r.body!.toString('utf8'))), `accepted an invalid rule: ${r.body?.toString('utf8').slice(0, 300)}`)
          else if (parsed && isValidAdd(JSON.parse(r.body!.toString('utf8')))) assert.fail(`rejected a valid rule (${a.status}): ${r.body?.toString('utf8').slice(0, 300)} → ${a.body.toString('utf8').slice(0, 300)}`)
        }
      })
      httpSent += batch.length
    }), {numRuns: runs(400)})
  })

  it('afterwards: the daemon answers, the probe session flowed intact throughout, and the rules are exactly the accepted ones', async () => {
    assert.ok(rawSent >= runs(600) && httpSent >= runs(400), `sent ${rawSent} raw and ${httpSent} HTTP requests`)
    assert.ok(accepted >= runs(50), `only ${accepted} rules were accepted: the model was barely exercised`)
    assert.equal((await json('GET', '/status')).status, 200)
    await probe.stop()
    assert.equal(probe.failure, undefined, `probe session broke after ${probe.rounds} round trips: ${probe.failure?.message}`)
    assert.ok(probe.rounds > 10, `only ${probe.rounds} probe round trips during the fuzzing`)
    // One more round trip after the burst, and a fresh session still gets through.
    const last = randomBytes(10_000)
    probeSocket.write(last)
    assert.ok((await readBytes(probeSocket, last.length)).equals(last))
    const fresh = await connect({port: listenPort})
    try {
      assert.match(await readLine(fresh), /^(prod|staging)$/)
    } finally {
      fresh.destroy()
    }
    const rules = (await json<RuleView[]>('GET', '/rules')).body
    const key = (r: RuleView): string => JSON.stringify([r.id, r.source, r.to, r.mirror, r.listener, r.origin])
    // A rule whose `for` ran out during the run is gone from the table but still in the model.
    const live = [...model.values()].filter((r) => r.expiresAt === null || Date.parse(r.expiresAt) > Date.now())
    const expiredSince = [...model.values()].filter((r) => !live.includes(r)).map(key)
    assert.deepEqual(rules.map(key).filter((k) => !expiredSince.includes(k)).sort(), live.map(key).sort())
    console.log(`# admin fuzz: ${httpSent} HTTP requests (${accepted} rules accepted), ${rawSent} raw exchanges; probe ${probe.rounds} round trips, ${probe.bytes} bytes`)
  })

  // ─── regression examples: what the properties above found ───────────────────────────────────────

  it('POST /rules with a `for` past the end of JavaScript dates is a 400, and GET /rules keeps working', async () => {
    // Was: 500 "Invalid time value" from RuleTable.view, after the rule was added, and every GET /rules failed.
    const a = await json<{code: string}>('POST', '/rules', {source: '10.77.0.1', to: 'staging', for: '100000000d'})
    const list = await request({method: 'GET', path: '/rules', headers: {}})
    if ('status' in a && a.status < 300) await request({method: 'DELETE', path: '/rules/10.77.0.1', headers: {}})
    assert.equal(a.status, 400, JSON.stringify(a.body))
    assert.ok('status' in list && list.status === 200, 'GET /rules still answers')
  })

  it('an HTTP/1.1 request without Host gets an answer with the JSON error body', async () => {
    // Was: Node's own bodiless 400 (requireHostHeader), before any divert code ran.
    const answer = await exchange(Buffer.from('GET /status HTTP/1.1\r\n\r\n'))
    assert.match(answer, /^HTTP\/1\.1 (200|400)/)
    if (answer.startsWith('HTTP/1.1 400')) assert.match(answer, /"code":"DIVERT_ERR_/)
  })

  it('an Expect header other than 100-continue gets a JSON answer', async () => {
    // Was: Node's own bodiless 417 (no 'checkExpectation' listener).
    const a = await request({method: 'GET', path: '/status', headers: {expect: 'x'}})
    assert.ok('status' in a)
    if (a.status >= 400) checkAnswer({method: 'GET', path: '/status', headers: {}}, {...a, status: a.status})
    assert.match(a.body.toString('utf8'), /"code":"DIVERT_ERR_|"version"/)
  })

  it('after a 413, a keep-alive client can send its next request', async () => {
    // Was: the socket destroyed without `Connection: close`, so the client reused it and got EPIPE.
    const agent = new http.Agent({keepAlive: true, maxSockets: 1})
    try {
      const big = await request({method: 'POST', path: '/rules', headers: {'content-type': 'application/json'}, body: Buffer.alloc(BODY_LIMIT + 10, 0x20)}, agent)
      assert.ok(!('status' in big) || big.status === 413)
      const next = await request({method: 'GET', path: '/status', headers: {}}, agent)
      assert.ok('status' in next && next.status === 200, JSON.stringify(next))
    } finally {
      agent.destroy()
    }
  })
})
