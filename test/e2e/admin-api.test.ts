/**
 * The admin API (docs/DESIGN.md §5) against a spawned daemon: /metrics after known traffic, a burst of
 * malformed requests straight at the unix socket while a stream runs through the proxy, the socket's
 * owner-only mode (and a non-owner refused), and the TCP admin listener's bearer token.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import {createHash, randomBytes} from 'node:crypto'
import {chmodSync, readdirSync, statSync} from 'node:fs'
import {spawnSync} from 'node:child_process'
import net from 'node:net'
import {once} from 'node:events'
import {connect, readBytes, readLine, closed, until, freePort, whoAnswers} from '../helpers/servers.js'
import {ADMIN_LIMITS} from '../../src/admin/server.js'
import {startLab, rawHttp, httpRequest, parseMetrics, expectCliError, cli, type Lab, type RawResponse} from './harness.js'

const TOKEN = 'e2e-token-' + randomBytes(16).toString('hex')
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** Streams random chunks through `socket` (an echo session) until `stop()`; resolves with both digests. */
function stream(socket: net.Socket, greeting: string): {stop: () => void; done: Promise<{sent: string; received: string; bytes: number}>} {
  let stopping = false
  const out = createHash('sha256')
  let bytes = 0
  const received: Buffer[] = []
  socket.on('data', (c: Buffer) => received.push(c))
  const ended = new Promise<void>((resolve, reject) => {
    socket.once('end', resolve)
    socket.once('error', reject)
  })
  const done = (async () => {
    // Bounded: at most 256 MiB whatever happens to the burst.
    while (!stopping && bytes < 256 * 1024 * 1024) {
      const chunk = randomBytes(16 * 1024)
      out.update(chunk)
      bytes += chunk.length
      if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r))
      await new Promise((r) => setImmediate(r))
    }
    socket.end()
    await ended
    const all = Buffer.concat(received)
    assert.equal(all.subarray(0, greeting.length).toString(), greeting)
    return {sent: out.digest('hex'), received: sha(all.subarray(greeting.length)), bytes}
  })()
  return {stop: () => (stopping = true), done}
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}

/** Runs `jobs` with at most `limit` in flight. */
async function pool<T>(jobs: Array<() => Promise<T>>, limit: number): Promise<T[]> {
  const results: T[] = new Array(jobs.length)
  let next = 0
  await Promise.all(Array.from({length: limit}, async () => {
    while (next < jobs.length) {
      const i = next++
      results[i] = await jobs[i]()
    }
  }))
  return results
}

function errorBody(r: RawResponse, what: string): {error: string; code: string; status: number} {
  assert.match(r.headers['content-type'] ?? '', /^application\/json/, `${what}: JSON error body (got ${JSON.stringify(r.raw.slice(0, 300))})`)
  const body = JSON.parse(r.body)
  assert.equal(typeof body.error, 'string', what)
  assert.ok(body.error.length > 0, what)
  assert.match(body.code, /^DIVERT_ERR_[A-Z_]+$/, what)
  assert.equal(body.status, r.status, `${what}: body status`)
  return body
}

describe('admin API', () => {
  let lab: Lab
  let adminPort: number
  let deadPort: number

  before(async () => {
    adminPort = await freePort()
    deadPort = await freePort()
    lab = await startLab({
      files: {token: `${TOKEN}\n`},
      top: () => `admin: { listen: "127.0.0.1:${adminPort}", token_file: ./token }`,
      backends: () => `  dead: { servers: [ { address: "127.0.0.1:${deadPort}" } ], health: { interval: 100ms, timeout: 100ms, rise: 1, fall: 1 } }`,
      rules: () => ['{ source: 127.0.0.2, to: staging }'],
    })
  })

  after(async () => {
    await lab?.close()
  })

  test('/metrics is Prometheus text that reflects the traffic made', async () => {
    const live = await connect({port: lab.port, localAddress: '127.0.0.2'})
    const gone = await connect({port: lab.port, localAddress: '127.0.0.3'})
    try {
      assert.equal(await readLine(live), 'staging')
      assert.equal(await readLine(gone), 'prod')
      const a = readBytes(live, 100)
      const b = readBytes(gone, 50)
      live.write(Buffer.alloc(100, 1))
      gone.write(Buffer.alloc(50, 2))
      await Promise.all([a, b])
      const goneClosed = closed(gone)
      gone.end()
      await goneClosed

      const metrics = async (): Promise<{res: RawResponse; m: Map<string, number>}> => {
        const res = await rawHttp({path: lab.admin}, httpRequest('GET', '/metrics'))
        return {res, m: parseMetrics(res.body)}
      }
      const staging = 'listener="main",backend="staging"'
      const prod = 'listener="main",backend="prod"'
      const dead = `divert_server_up{backend="dead",server="127.0.0.1:${deadPort}"}`
      // The prod session's close and the dead server's health are asynchronous: wait for both.
      await until(async () => {
        const {m} = await metrics()
        return m.get(`divert_sessions_active{${prod}}`) === 0 && m.get(dead) === 0
      }, 10_000, 'prod session closed and the dead server down in /metrics')
      const {res, m} = await metrics()
      assert.equal(res.status, 200)
      assert.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
      for (const family of ['divert_sessions_active', 'divert_sessions_total', 'divert_bytes_in_total', 'divert_bytes_out_total', 'divert_rule_hits_total', 'divert_server_up']) {
        assert.match(res.body, new RegExp(`^# HELP ${family} .+\\n# TYPE ${family} (counter|gauge)$`, 'm'))
      }
      const rule = (await lab.cli('list', '--json')).json().find((r: any) => r.source === '127.0.0.2').id
      assert.deepEqual({
        activeStaging: m.get(`divert_sessions_active{${staging}}`), activeProd: m.get(`divert_sessions_active{${prod}}`),
        totalStaging: m.get(`divert_sessions_total{${staging}}`), totalProd: m.get(`divert_sessions_total{${prod}}`),
        inStaging: m.get(`divert_bytes_in_total{${staging}}`), inProd: m.get(`divert_bytes_in_total{${prod}}`),
        outStaging: m.get(`divert_bytes_out_total{${staging}}`), outProd: m.get(`divert_bytes_out_total{${prod}}`),
        hits: m.get(`divert_rule_hits_total{rule="${rule}",source="127.0.0.2"}`),
        upProd: m.get(`divert_server_up{backend="prod",server="${lab.servers.prod.address}"}`),
        upDead: m.get(dead),
      }, {
        activeStaging: 1, activeProd: 0, totalStaging: 1, totalProd: 1, inStaging: 100, inProd: 50,
        outStaging: 'staging\n'.length + 100, outProd: 'prod\n'.length + 50, hits: 1, upProd: 1, upDead: 0,
      })
    } finally {
      live.destroy()
      gone.destroy()
    }
  })

  test('hundreds of malformed requests at the unix socket: right status and error body each, no byte of a live stream lost', async () => {
    const big = 'x'.repeat(70 * 1024)
    const chunked = `POST /rules HTTP/1.1\r\nHost: d\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` +
      `${(40 * 1024).toString(16)}\r\n${'y'.repeat(40 * 1024)}\r\n`.repeat(2) + '0\r\n\r\n'
    const kinds: Array<{name: string; req: string | Buffer; status: number; code?: string; allow?: string}> = [
      {name: 'binary garbage', req: Buffer.concat([Buffer.from([0, 1, 2, 0xff]), randomBytes(64), Buffer.from('\r\n\r\n')]), status: 400},
      {name: 'unknown method token', req: 'FROB /status HTTP/1.1\r\nHost: d\r\n\r\n', status: 400},
      {name: 'header without colon', req: 'GET /status HTTP/1.1\r\nthis is not a header\r\n\r\n', status: 400},
      {name: 'invalid URL', req: 'GET http://[/status HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n', status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'invalid JSON', req: httpRequest('POST', '/rules', {body: '{"source": '}), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'JSON array', req: httpRequest('POST', '/rules', {body: '[]'}), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'wrong field type', req: httpRequest('POST', '/rules', {body: '{"source": 5, "to": "staging"}'}), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'unknown field', req: httpRequest('POST', '/rules', {body: '{"source": "127.0.0.50", "to": "staging", "sudo": "yes"}'}), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'huge body, declared', req: httpRequest('POST', '/rules', {body: `{"source": "127.0.0.51", "to": "staging", "note": "${big}"}`}), status: 413, code: 'DIVERT_ERR_ADMIN_BODY_TOO_LARGE'},
      {name: 'huge body, chunked', req: chunked, status: 413, code: 'DIVERT_ERR_ADMIN_BODY_TOO_LARGE'},
      {name: 'PUT /rules', req: httpRequest('PUT', '/rules', {body: '{}'}), status: 405, code: 'DIVERT_ERR_ADMIN_METHOD', allow: 'GET, POST, DELETE'},
      {name: 'POST /status', req: httpRequest('POST', '/status'), status: 405, code: 'DIVERT_ERR_ADMIN_METHOD', allow: 'GET'},
      {name: 'PATCH /sessions', req: httpRequest('PATCH', '/sessions'), status: 405, code: 'DIVERT_ERR_ADMIN_METHOD', allow: 'GET, DELETE'},
      {name: 'unknown route', req: httpRequest('GET', '/admin/shutdown'), status: 404, code: 'DIVERT_ERR_ADMIN_NOT_FOUND'},
      {name: 'root', req: httpRequest('GET', '/'), status: 404, code: 'DIVERT_ERR_ADMIN_NOT_FOUND'},
      {name: 'bad source filter', req: httpRequest('GET', '/sessions?source=300.1.1.1'), status: 400, code: 'DIVERT_ERR_INVALID_ADDRESS'},
      {name: 'bad protocol filter', req: httpRequest('GET', '/sessions?protocol=sctp'), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'explain without ip', req: httpRequest('GET', '/explain'), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'explain bad ip', req: httpRequest('GET', '/explain?ip=%00banana'), status: 400, code: 'DIVERT_ERR_INVALID_ADDRESS'},
      {name: 'kill without filter', req: httpRequest('DELETE', '/sessions'), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'rm without all', req: httpRequest('DELETE', '/rules?all=yes'), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'bad percent-encoding', req: httpRequest('DELETE', '/rules/%zz'), status: 400, code: 'DIVERT_ERR_ADMIN_BAD_REQUEST'},
      {name: 'unknown backend filter', req: httpRequest('GET', '/sessions?backend=nowhere'), status: 404, code: 'DIVERT_ERR_BACKEND_UNKNOWN'},
    ]
    const jobs = Array.from({length: 15}, () => kinds).flat().map((k) => async () => ({k, r: await rawHttp({path: lab.admin}, k.req)}))

    const client = await connect({port: lab.port, localAddress: '127.0.0.4'})
    const flow = stream(client, 'prod\n')
    let results
    try {
      results = await pool(jobs, 32)
    } finally {
      flow.stop()
    }
    const {sent, received, bytes} = await flow.done
    assert.ok(bytes > 0)
    assert.equal(received, sent, `the ${bytes} streamed bytes came back intact`)

    assert.equal(results.length, kinds.length * 15)
    for (const {k, r} of results) {
      assert.equal(r.status, k.status, `${k.name}: status (${JSON.stringify(r.raw.slice(0, 200))})`)
      const body = errorBody(r, k.name)
      if (k.code) assert.equal(body.code, k.code, `${k.name}: code`)
      if (k.allow) assert.equal(r.headers.allow, k.allow, `${k.name}: Allow`)
    }
    const [status, rules] = await Promise.all([lab.cli('status', '--json'), lab.cli('list', '--json')])
    assert.equal(status.code, 0, status.stderr)
    assert.deepEqual(rules.json().map((r: any) => r.source), ['127.0.0.2'], 'no malformed request added a rule')
    assert.deepEqual(lab.daemon.logs.filter((l) => l.level >= 50), [], 'no error logged: nothing reached the internal-error path')
    assert.equal(lab.daemon.proc.exitCode, null)
  })

  test('the admin socket is owner-only (0600); another user gets "permission denied" naming the socket', async (t) => {
    assert.equal(statSync(lab.admin).mode & 0o777, 0o600)
    const runAs = ['setpriv', 'runuser'].find((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0)
    if (process.getuid?.() !== 0 || !runAs) return t.skip('needs root and setpriv or runuser to run the CLI as nobody')
    // The directory must let nobody reach the socket, so that the socket's own mode is what refuses.
    chmodSync(lab.dir, 0o711)
    const prefix = runAs === 'setpriv' ? ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'] : ['runuser', '-u', 'nobody', '--']
    const asNobody = async (...args: string[]): Promise<Awaited<ReturnType<typeof cli>>> => {
      // oclif reads its data dir under HOME; nobody cannot read root's.
      const r = spawnSync(prefix[0], [...prefix.slice(1), process.execPath, new URL('../../../bin/run.js', import.meta.url).pathname, ...args, '--admin', lab.admin], {
        encoding: 'utf8', env: {...process.env, HOME: '/nonexistent'}, timeout: 30_000,
      })
      return {code: r.status, stdout: r.stdout, stderr: r.stderr, json: () => JSON.parse(r.stdout)}
    }
    await expectCliError(asNobody, {
      args: ['status'], code: 'DIVERT_ERR_ADMIN_PERMISSION', exit: 5,
      message: new RegExp(`permission denied on ${lab.admin.replace(/\./g, '\\.')}`),
    })
  })

  test('the TCP admin listener answers only with the right bearer token', async () => {
    const at = {host: '127.0.0.1', port: adminPort}
    const [none, wrong, basic, right] = await Promise.all([
      rawHttp(at, httpRequest('GET', '/status')),
      rawHttp(at, httpRequest('GET', '/status', {headers: {Authorization: 'Bearer not-the-token'}})),
      rawHttp(at, httpRequest('GET', '/status', {headers: {Authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}`}})),
      rawHttp(at, httpRequest('GET', '/status', {headers: {Authorization: `Bearer ${TOKEN}`}})),
    ])
    for (const [what, r] of [['no token', none], ['wrong token', wrong], ['basic auth', basic]] as const) {
      assert.equal(r.status, 401, what)
      assert.equal(r.headers['www-authenticate'], 'Bearer', what)
      assert.equal(errorBody(r, what).code, 'DIVERT_ERR_ADMIN_UNAUTHORIZED')
    }
    assert.equal(right.status, 200)
    assert.equal(JSON.parse(right.body).pid, lab.daemon.proc.pid)
    // Over TCP too, an oversized body gets its 413 (not a reset that loses the answer).
    const auth = {Authorization: `Bearer ${TOKEN}`}
    const huge = await Promise.all(Array.from({length: 20}, () => rawHttp(at, httpRequest('POST', '/rules', {headers: auth, body: `{"note": "${'z'.repeat(200 * 1024)}"}`}))))
    for (const r of huge) assert.equal(errorBody(r, 'oversized body over TCP').code, 'DIVERT_ERR_ADMIN_BODY_TOO_LARGE')

    const url = `http://127.0.0.1:${adminPort}`
    const ok = await cli(['status', '--json', '--admin', url], {env: {DIVERT_ADMIN_TOKEN: TOKEN}})
    assert.equal(ok.code, 0, ok.stderr)
    assert.equal(ok.json().pid, lab.daemon.proc.pid)
    await expectCliError((...args) => cli([...args, '--admin', url], {env: {DIVERT_ADMIN_TOKEN: 'wrong-token-wrong-token'}}), {
      args: ['list'], code: 'DIVERT_ERR_ADMIN_UNAUTHORIZED', exit: 5, message: /Authorization: Bearer <token>.*admin\.token_file/,
    })
  })

  test('issue 11.8: admin connections that send nothing or dribble a request are closed within seconds, at most 64 stay open, proxying goes on', async () => {
    const {headersTimeoutMs, checkIntervalMs, maxConnections} = ADMIN_LIMITS
    // Header deadline, Node's check interval, the 1 s for a client that ignores our FIN, and slack for a busy machine.
    const bound = headersTimeoutMs + checkIntervalMs + 1000 + 2500
    const pid = lab.daemon.proc.pid!
    const fdsBefore = openFds(pid)
    const start = Date.now()
    const endedAfter: number[] = []
    const open = async (): Promise<net.Socket> => {
      // allowHalfOpen: these clients never close their side, whatever the daemon does.
      const s = net.connect({host: '127.0.0.1', port: adminPort, allowHalfOpen: true})
      s.on('error', () => undefined)
      // 'end' (the daemon's FIN), or 'close' when a write after it met a reset first.
      let seen = false
      const ended = (): void => {
        if (!seen) endedAfter.push(Date.now() - start)
        seen = true
      }
      s.once('end', ended).once('close', ended)
      s.resume()
      await once(s, 'connect')
      return s
    }
    const idle = await Promise.all(Array.from({length: 200}, open))
    // Slowloris: a request line and one header byte every 300 ms, never the blank line.
    const slow = await open()
    slow.write('GET /status HTTP/1.1\r\nHost: divert\r\n')
    const drip = setInterval(() => slow.writable && slow.write('X'), 300)
    try {
      assert.equal(await whoAnswers(lab.port), 'prod', 'the proxy answers while the admin connections wait')
      const list = await lab.cli('list', '--json')
      assert.equal(list.code, 0, list.stderr)
      await until(() => endedAfter.length === idle.length + 1, bound, `the daemon ending all ${idle.length + 1} idle admin connections`).catch((error: Error) => {
        throw new Error(`${error.message}; ${endedAfter.length} ended, the last after ${Math.max(0, ...endedAfter)} ms`)
      })
      const early = endedAfter.filter((ms) => ms < headersTimeoutMs).length
      assert.ok(early >= idle.length + 1 - maxConnections, `${early} connections ended before the header deadline: those over ${maxConnections} are refused at once`)
      // Ended is not enough: the daemon must have let go of the descriptors too.
      await until(() => openFds(pid) <= fdsBefore + 2, bound, `the daemon's descriptors back to ${fdsBefore} (now ${openFds(pid)})`)
      assert.ok(Date.now() - start <= bound + 500, `all closed ${Date.now() - start} ms after they opened`)
      assert.equal(await whoAnswers(lab.port), 'prod')
    } finally {
      clearInterval(drip)
      for (const s of [...idle, slow]) s.destroy()
    }
  })
})
