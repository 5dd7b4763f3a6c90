/**
 * Runtime control as a user drives it: `divert add/rm/list/explain/sessions/kill/status` spawned as
 * processes against a spawned daemon, with real loopback clients whose source address (127.0.0.N)
 * picks the rule. Each test uses its own sources so the tests do not see each other's rules.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import type net from 'node:net'
import {join} from 'node:path'
import {connect, readBytes, readLine, whoAnswers, closed, until} from '../helpers/servers.js'
import {BIN, type CliResult} from '../helpers/daemon.js'
import {startLab, expectCliError, cli, type Lab} from './harness.js'

const RULE_ID = /r[0-9a-f]{6}/

/** A connection from `source` that has read the backend's name. */
async function open(lab: Lab, source: string, port = lab.port): Promise<{socket: net.Socket; backend: string}> {
  const socket = await connect({port, localAddress: source})
  return {socket, backend: await readLine(socket)}
}

/** Sends `text` and expects it echoed: the session is alive and still on its backend. */
async function echoes(socket: net.Socket, text = 'still here'): Promise<void> {
  const back = readBytes(socket, text.length, 5000)
  socket.write(text)
  assert.equal((await back).toString(), text)
}

function idOf(stdout: string): string {
  const m = RULE_ID.exec(stdout)
  assert.ok(m, `no rule id in ${JSON.stringify(stdout)}`)
  return m[0]
}

let lab: Lab
/** Config rules: 127.0.0.9 → staging (never shadowed), 127.0.0.30 → staging (the shadowing test's). */
let configRule: string
let shadowedRule: string

before(async () => {
  lab = await startLab({rules: () => ['{ source: 127.0.0.9, to: staging }', '{ source: 127.0.0.30, to: staging }']})
  const rules = (await lab.cli('list', '--json')).json()
  configRule = rules.find((r: any) => r.source === '127.0.0.9').id
  shadowedRule = rules.find((r: any) => r.source === '127.0.0.30').id
})

after(async () => {
  await lab?.close()
})

// Each of these owns its client sources (127.0.0.N) and cleans up its rules: they run at once.
describe('runtime control through the CLI, one source per test', {concurrency: true}, () => {
  test('add diverts new connections from 127.0.0.2 to staging while 127.0.0.3 stays on prod; adding again replaces', async () => {
    const added = await lab.cli('add', '127.0.0.2', '--to', 'staging')
    assert.equal(added.code, 0, added.stderr)
    assert.match(added.stdout, /^added rule r[0-9a-f]{6}: 127\.0\.0\.2 → to staging$/m)
    const id = idOf(added.stdout)
    assert.deepEqual(await Promise.all([whoAnswers(lab.port, '127.0.0.2'), whoAnswers(lab.port, '127.0.0.3')]), ['staging', 'prod'])
    const audit = await lab.audit('rule.add', id)
    assert.match(audit.by, /via unix socket$/)
    assert.equal(audit.rule.source, '127.0.0.2')

    const again = await lab.cli('add', '127.0.0.2/32', '--to', 'debug')
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, new RegExp(`^replaced rule ${id} \\(to staging\\) for 127\\.0\\.0\\.2: now to debug`, 'm'))
    assert.equal(await whoAnswers(lab.port, '127.0.0.2'), 'debug')
    const mine = (await lab.cli('list', '--json')).json().filter((r: any) => r.source === '127.0.0.2')
    assert.equal(mine.length, 1, 'one rule per source after a replace')
    assert.equal(mine[0].to, 'debug')
    const replace = await lab.audit('rule.replace', mine[0].id)
    assert.equal(replace.replaced.id, id)
    assert.equal((await lab.cli('rm', '127.0.0.2')).code, 0)
  })

  test('issue 11.14: replacing a rule keeps the expiry and note the new call does not set, and says what it kept', async () => {
    const first = await lab.cli('add', '127.0.0.40', '--to', 'staging', '--for', '2h', '--note', 'ticket')
    assert.equal(first.code, 0, first.stderr)
    const mine = async (): Promise<any> => (await lab.cli('list', '--json')).json().find((r: any) => r.source === '127.0.0.40')
    const old = await mine()
    const again = await lab.cli('add', '127.0.0.40', '--to', 'debug', '--existing', 'kill')
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, new RegExp(`^kept: expires ${old.expiresAt.replace(/[.]/g, '\\.')}, note "ticket" \\(from the replaced rule`, 'm'))
    const now = await mine()
    assert.deepEqual([now.to, now.expiresAt, now.note], ['debug', old.expiresAt, 'ticket'], 'actions are the new call\'s; expiry and note are kept')
    assert.equal(await whoAnswers(lab.port, '127.0.0.40'), 'debug')
    const json = (await lab.cli('add', '127.0.0.40', '--to', 'staging', '--note', 'other', '--json')).json()
    assert.deepEqual(json.kept, {expiresAt: old.expiresAt}, 'a note given is the new one; only the expiry is kept')
    assert.equal(json.rule.note, 'other')
    assert.equal((await lab.cli('rm', '127.0.0.40')).code, 0)
    const fresh = (await lab.cli('add', '127.0.0.40', '--to', 'staging', '--json')).json()
    assert.deepEqual([fresh.kept, fresh.rule.expiresAt, fresh.rule.note], [null, null, null], 'after rm nothing is kept')
    assert.equal((await lab.cli('rm', '127.0.0.40')).code, 0)
  })

  test('--existing keep (the default) leaves a live session on its backend and says how to move it', async () => {
    const live = await open(lab, '127.0.0.4')
    try {
      assert.equal(live.backend, 'prod')
      const added = await lab.cli('add', '127.0.0.4', '--to', 'staging')
      assert.equal(added.code, 0, added.stderr)
      assert.match(added.stdout, /1 live session from 127\.0\.0\.4 stays where it is; move it now with `divert kill --source 127\.0\.0\.4`/)
      await echoes(live.socket)
      const sessions = await lab.cli('sessions', '--source', '127.0.0.4', '--json')
      assert.deepEqual(sessions.json().map((s: any) => s.backend), ['prod'])
      assert.equal(await whoAnswers(lab.port, '127.0.0.4'), 'staging')
      const json = (await lab.cli('add', '127.0.0.4', '--to', 'staging', '--json')).json()
      assert.deepEqual(json.existing, {policy: 'keep', matched: 1, killed: 0})
      await echoes(live.socket)
    } finally {
      live.socket.destroy()
      await lab.cli('rm', '127.0.0.4')
    }
  })

  test('--existing kill closes the live session so the reconnect lands on staging', async () => {
    const live = await open(lab, '127.0.0.5')
    const other = await open(lab, '127.0.0.6')
    try {
      assert.equal(live.backend, 'prod')
      const ended = closed(live.socket)
      const added = await lab.cli('add', '127.0.0.5', '--to', 'staging', '--existing', 'kill')
      assert.equal(added.code, 0, added.stderr)
      assert.match(added.stdout, /closed 1 live session from 127\.0\.0\.5: they reconnect into the new route/)
      await ended
      assert.equal(await whoAnswers(lab.port, '127.0.0.5'), 'staging')
      await echoes(other.socket)
    } finally {
      live.socket.destroy()
      other.socket.destroy()
      await lab.cli('rm', '127.0.0.5')
    }
  })

  test('removing a runtime rule that shadowed a config rule restores the config rule, and says so', async () => {
    assert.equal(await whoAnswers(lab.port, '127.0.0.30'), 'staging')
    const added = await lab.cli('add', '127.0.0.30', '--to', 'debug')
    assert.equal(added.code, 0, added.stderr)
    const id = idOf(added.stdout)
    try {
      await shadowThenRestore(id)
    } finally {
      await lab.cli('rm', id)
    }
  })

  async function shadowThenRestore(id: string): Promise<void> {
    assert.equal(await whoAnswers(lab.port, '127.0.0.30'), 'debug')
    const shadowed = (await lab.cli('list', '--json')).json().find((r: any) => r.id === shadowedRule)
    assert.equal(shadowed.shadowedBy, id)

    const rm = await lab.cli('rm', '127.0.0.30')
    assert.equal(rm.code, 0, rm.stderr)
    assert.match(rm.stdout, new RegExp(`^removed rule ${id}: 127\\.0\\.0\\.30 \\(to debug\\)$`, 'm'))
    assert.match(rm.stdout, new RegExp(`^config rule ${shadowedRule} for 127\\.0\\.0\\.30 applies again \\(to staging\\)$`, 'm'))
    assert.equal(await whoAnswers(lab.port, '127.0.0.30'), 'staging')
    const audit = await lab.audit('rule.remove', id)
    assert.equal(audit.restored?.id, shadowedRule)
  }

  test('a rule added --for 2s expires by itself with an audit line, and new connections go back to prod', async () => {
    const added = await lab.cli('add', '127.0.0.13', '--to', 'staging', '--for', '2s')
    assert.equal(added.code, 0, added.stderr)
    // The time left is computed when the answer arrives; `list` shows it too (see the status and list test).
    assert.match(added.stdout, /^expires in (\d+ms|[12]s) \(\d{4}-\d\d-\d\dT[\d:.]+Z\)$/m)
    const id = idOf(added.stdout)
    const expiresAt = Date.parse(/\((\d{4}-[^)]+)\)/.exec(added.stdout)![1])
    const who = await whoAnswers(lab.port, '127.0.0.13')
    if (Date.now() < expiresAt - 100) assert.equal(who, 'staging')

    const expired = await lab.audit('rule.expired', id)
    assert.equal(expired.rule.source, '127.0.0.13')
    assert.ok(Date.parse(expired.time) >= expiresAt, 'expired no earlier than its expiresAt')
    const [after, back] = await Promise.all([lab.cli('list', '--json'), whoAnswers(lab.port, '127.0.0.13')])
    assert.equal(after.json().some((r: any) => r.id === id), false)
    assert.equal(back, 'prod')
  })

  test('sessions --json: every field, byte counts as sent and received, filters by source and backend; a table without --json', async () => {
    assert.equal((await lab.cli('add', '127.0.0.14', '--to', 'staging')).code, 0)
    const a = await open(lab, '127.0.0.14')
    const b = await open(lab, '127.0.0.15')
    try {
      const payloadA = Buffer.alloc(1000, 'a')
      const payloadB = Buffer.alloc(300, 'b')
      const gotA = readBytes(a.socket, payloadA.length)
      const gotB = readBytes(b.socket, payloadB.length)
      a.socket.write(payloadA)
      b.socket.write(payloadB)
      await Promise.all([gotA, gotB])
      const quiet = Date.now()

      const [bySource, byBackend, both, table] = await Promise.all([
        lab.cli('sessions', '--source', '127.0.0.14', '--json'),
        lab.cli('sessions', '--backend', 'prod', '--json'),
        lab.cli('sessions', '--source', '127.0.0.14/31', '--json'),
        lab.cli('sessions', '--source', '127.0.0.14/31'),
      ])
      const [sa] = bySource.json()
      assert.equal(bySource.json().length, 1)
      const rule = (await lab.cli('list', '--json')).json().find((r: any) => r.source === '127.0.0.14').id
      assert.deepEqual(
        {id: sa.id, protocol: sa.protocol, client: sa.client, listener: sa.listener, backend: sa.backend, server: sa.server, rule: sa.rule, bytesIn: sa.bytesIn, bytesOut: sa.bytesOut},
        {id: sa.id, protocol: 'tcp', client: `127.0.0.14:${a.socket.localPort}`, listener: 'main', backend: 'staging', server: lab.servers.staging.address, rule, bytesIn: 1000, bytesOut: 'staging\n'.length + 1000},
      )
      assert.match(sa.id, /^t\d+$/)
      assert.ok(sa.ageMs >= 0 && sa.idleMs >= 0 && sa.idleMs <= sa.ageMs, `ageMs ${sa.ageMs} idleMs ${sa.idleMs}`)
      const sb = byBackend.json().find((s: any) => s.client === `127.0.0.15:${b.socket.localPort}`)
      assert.ok(sb, 'the prod session is listed by --backend prod')
      assert.equal(byBackend.json().some((s: any) => s.backend !== 'prod'), false)
      assert.deepEqual([sb.rule, sb.bytesIn, sb.bytesOut], [null, 300, 'prod\n'.length + 300])
      assert.deepEqual(both.json().map((s: any) => s.client).sort(), [sa.client, sb.client].sort())
      assert.match(table.stdout, /│ id +│ proto │ client +│ listener │ backend │ server +│ rule +│ in +│ out +│ age +│ idle/)
      assert.ok(table.stdout.includes(sa.client) && table.stdout.includes(sb.client), table.stdout)
      assert.match(table.stdout, /1000 B/)

      // idleMs comes from a 1 s tick: after 2 s of silence it is at least 1 s, never more than the age.
      await new Promise((r) => setTimeout(r, 2000 - (Date.now() - quiet)))
      const asked = Date.now()
      const [later] = (await lab.cli('sessions', '--source', '127.0.0.14', '--json')).json()
      assert.ok(later.idleMs >= asked - quiet - 1000 - 500, `idleMs ${later.idleMs} after ${asked - quiet}ms of silence`)
      assert.ok(later.idleMs <= later.ageMs)
      assert.equal(later.bytesIn, 1000)
    } finally {
      a.socket.destroy()
      b.socket.destroy()
      await lab.cli('rm', '127.0.0.14')
    }
  })

  test('issue 11.29: sessions --watch into a pipe prints plain snapshots (no escape codes) until SIGINT, then exits 0 with nothing on stderr', async () => {
    const live = await open(lab, '127.0.0.16')
    const proc = spawn(process.execPath, [BIN, 'sessions', '--watch', '--source', '127.0.0.16', '--admin', lab.admin], {stdio: ['ignore', 'pipe', 'pipe']})
    try {
      let out = ''
      let err = ''
      proc.stdout.on('data', (c: Buffer) => (out += c))
      proc.stderr.on('data', (c: Buffer) => (err += c))
      const exit = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => proc.once('exit', (code, signal) => resolve([code, signal])))
      const client = `127.0.0.16:${live.socket.localPort}`
      // Twelve frames: past Node's 10-listener warning, which a SIGINT listener per frame would trip.
      await until(() => (out.match(/^--- .+ ---$/gm)?.length ?? 0) > 12 && out.includes(client), 30_000, `twelve frames showing ${client}: ${out.slice(-500)}`)
      proc.kill('SIGINT')
      const [code, signal] = await Promise.race([exit, new Promise<never>((_r, reject) => setTimeout(() => reject(new Error('watch did not exit within 5 s of SIGINT')), 5000))])
      assert.deepEqual([code, signal], [0, null], err)
      assert.equal(err, '')
      assert.ok(!out.includes('\u001b'), `escape codes into a pipe: ${JSON.stringify(out.slice(0, 200))}`)
    } finally {
      proc.kill('SIGKILL')
      live.socket.destroy()
    }
  })

  test('kill ID closes that session only; kill --source closes that source\'s sessions only', async () => {
    const a1 = await open(lab, '127.0.0.17')
    const a2 = await open(lab, '127.0.0.17')
    const b = await open(lab, '127.0.0.18')
    try {
      const list = (await lab.cli('sessions', '--source', '127.0.0.17', '--json')).json()
      const id = list.find((s: any) => s.client === `127.0.0.17:${a1.socket.localPort}`).id
      const a1Closed = closed(a1.socket)
      const one = await lab.cli('kill', id)
      assert.equal(one.code, 0, one.stderr)
      assert.equal(one.stdout.trim(), 'closed 1 session')
      await a1Closed
      await Promise.all([echoes(a2.socket), echoes(b.socket)])

      const a2Closed = closed(a2.socket)
      const bySource = await lab.cli('kill', '--source', '127.0.0.17/32')
      assert.equal(bySource.code, 0, bySource.stderr)
      assert.equal(bySource.stdout.trim(), 'closed 1 session')
      await a2Closed
      await echoes(b.socket)
      const [again, otherListener] = await Promise.all([
        lab.cli('kill', '--source', '127.0.0.17', '--json'),
        lab.cli('kill', '--source', '127.0.0.18', '--listener', 'alt', '--json'),
      ])
      assert.deepEqual(again.json(), {killed: 0})
      assert.deepEqual(otherListener.json(), {killed: 0}, '--listener narrows --source')
      assert.deepEqual((await lab.cli('sessions', '--source', '127.0.0.18', '--json')).json().length, 1)
      const audit = await lab.daemon.waitForLog((l) => l.action === 'sessions.kill' && l.session === id)
      assert.match(audit.by, /via unix socket/)
    } finally {
      for (const c of [a1, a2, b]) c.socket.destroy()
    }
  })

  test('explain answers the rule, backend, server and reasons; --json has a stable shape', async () => {
    const [text, json, none] = await Promise.all([
      lab.cli('explain', '127.0.0.9'),
      lab.cli('explain', '127.0.0.9', '--json'),
      lab.cli('explain', '127.0.0.19', '--listener', 'main', '--json'),
    ])
    assert.equal(text.code, 0, text.stderr)
    assert.match(text.stdout, new RegExp(`^127\\.0\\.0\\.9 on listener main: → backend staging, server ${lab.servers.staging.address.replace(/\./g, '\\.')}$`, 'm'))
    assert.match(text.stdout, new RegExp(`^  - rule ${configRule} \\(127\\.0\\.0\\.9\\) matches 127\\.0\\.0\\.9$`, 'm'))
    const results = json.json()
    assert.deepEqual(results.map((r: any) => r.listener), ['main', 'alt'])
    for (const r of results) {
      assert.deepEqual(Object.keys(r).sort(), ['backend', 'fallbackFrom', 'ip', 'limit', 'listener', 'mirror', 'reasons', 'record', 'refused', 'rule', 'server'])
      assert.deepEqual([r.ip, r.rule.id, r.rule.origin, r.backend, r.server, r.refused], ['127.0.0.9', configRule, 'config', 'staging', lab.servers.staging.address, null])
      assert.ok(r.reasons.length >= 2 && r.reasons.every((x: unknown) => typeof x === 'string'))
    }
    const [plain] = none.json()
    assert.equal(none.json().length, 1)
    assert.deepEqual([plain.rule, plain.backend, plain.server], [null, 'prod', lab.servers.prod.address])
    assert.match(plain.reasons[0], /no rule matches 127\.0\.0\.19 on listener main/)
  })

  test('status and list, as tables and as JSON', async () => {
    const added = await lab.cli('add', '127.0.0.20', '--to', 'staging', '--listener', 'alt', '--note', 'ticket 4711', '--for', '1h')
    assert.equal(added.code, 0, added.stderr)
    const id = idOf(added.stdout)
    try {
      assert.deepEqual(await Promise.all([whoAnswers(lab.altPort, '127.0.0.20'), whoAnswers(lab.altPort, '127.0.0.20'), whoAnswers(lab.port, '127.0.0.20')]), ['staging', 'staging', 'prod'])
      const [status, statusJson, list, listJson] = await Promise.all([lab.cli('status'), lab.cli('status', '--json'), lab.cli('list'), lab.cli('list', '--json')])

      const s = statusJson.json()
      assert.equal(s.pid, lab.daemon.proc.pid)
      assert.equal(s.configFile, lab.configFile)
      assert.ok(s.uptimeMs > 0 && Number.isFinite(Date.parse(s.startedAt)))
      assert.deepEqual(s.listeners.map((l: any) => [l.name, l.protocol, l.address, l.backend]), [
        ['main', 'tcp', `127.0.0.1:${lab.port}`, 'prod'], ['alt', 'tcp', `127.0.0.1:${lab.altPort}`, 'prod'],
      ])
      assert.deepEqual(s.backends.map((b: any) => [b.name, b.servers.map((x: any) => [x.address, x.up])]), [
        ['prod', [[lab.servers.prod.address, true]]], ['staging', [[lab.servers.staging.address, true]]], ['debug', [[lab.servers.debug.address, true]]],
      ])
      for (const b of s.backends) for (const x of b.servers) for (const k of ['weight', 'active', 'total']) assert.equal(typeof x[k], 'number')
      assert.deepEqual(Object.keys(s.totals).sort(), ['activeSessions', 'bytesIn', 'bytesOut', 'refused', 'rules', 'sessions'])
      assert.ok(s.totals.sessions >= 3 && s.totals.bytesOut > 0)
      assert.ok(s.totals.rules >= 3, 'two config rules and this test\'s')
      assert.match(status.stdout, /^divert \S+, pid \d+, up \S+, config /m)
      assert.match(status.stdout, new RegExp(`│ main +│ tcp +│ 127\\.0\\.0\\.1:${lab.port} +│ prod`))
      assert.match(status.stdout, new RegExp(`│ staging +│ roundrobin │ ${lab.servers.staging.address.replace(/\./g, '\\.')} +│ 1 +│ up `))

      const rule = listJson.json().find((r: any) => r.id === id)
      for (const k of ['id', 'source', 'to', 'mirror', 'record', 'listener', 'expiresAt', 'hits', 'origin']) assert.ok(k in rule, `rule field ${k}`)
      assert.deepEqual([rule.source, rule.to, rule.mirror, rule.record, rule.listener, rule.hits, rule.origin, rule.note], ['127.0.0.20', 'staging', null, null, 'alt', 2, 'runtime', 'ticket 4711'])
      assert.ok(Date.parse(rule.expiresAt) > Date.now() + 3_500_000)
      assert.match(list.stdout, /│ id +│ source +│ actions +│ listener │ expires +│ hits │ origin +│ note/)
      assert.match(list.stdout, new RegExp(`│ ${id} │ 127\\.0\\.0\\.20 │ to staging │ alt +│ in (59m\\d+s|1h) +│ 2 +│ runtime │ ticket 4711 │`))
    } finally {
      await lab.cli('rm', id)
    }
  })
})

// These read or change the whole rule table: one at a time, after the others.
describe('runtime control through the CLI, whole table', () => {
  // Their notes widen the note column of every `list` table: not beside the tests that match its exact width.
  test('issue 11.13: a note with ESC, CR, BEL and a C1 control is shown escaped by `divert list`, exact by `list --json`', async () => {
    const note = 'hi\u001b[2J\rgone\u0007 \u009b31m'
    const added = await lab.cli('add', '127.0.0.41', '--to', 'staging', '--note', note)
    assert.equal(added.code, 0, added.stderr)
    const id = idOf(added.stdout)
    try {
      const [list, json] = await Promise.all([lab.cli('list'), lab.cli('list', '--json')])
      assert.equal(list.code, 0, list.stderr)
      for (const raw of ['\u001b', '\r', '\u0007', '\u009b']) assert.ok(!list.stdout.includes(raw), `raw ${JSON.stringify(raw)} in ${JSON.stringify(list.stdout)}`)
      assert.ok(list.stdout.includes('hi\\x1b[2J\\rgone\\x07 \\x9b31m'), list.stdout)
      assert.equal(json.json().find((r: any) => r.id === id).note, note)
    } finally {
      await lab.cli('rm', id)
    }
  })

  test('issue 11.29: with COLUMNS=80 every line of `list`, `sessions` and `status` fits 80 columns', async () => {
    const long = 'ticket 4711: the field team asked for this device to reach staging until the firmware rollout is done'
    const added = await lab.cli('add', '127.0.0.42', '--to', 'staging', '--listener', 'alt', '--for', '1h', '--note', long)
    const live = await open(lab, '127.0.0.42', lab.altPort)
    try {
      const outs = await Promise.all([['list'], ['sessions'], ['status']].map((a) => cli([...a, '--admin', lab.admin], {env: {COLUMNS: '80'}})))
      for (const r of outs) {
        assert.equal(r.code, 0, r.stderr)
        const tableLines = r.stdout.split('\n').filter((l) => /^[┌│├└]/.test(l))
        assert.ok(tableLines.length > 0, r.stdout)
        assert.deepEqual(tableLines.filter((l) => [...l].length > 80), [], r.stdout)
      }
      assert.ok(outs[0].stdout.includes('firmware') && outs[0].stdout.includes(idOf(added.stdout)), outs[0].stdout)
      assert.ok(outs[1].stdout.includes(`127.0.0.42:${live.socket.localPort}`), outs[1].stdout)
    } finally {
      live.socket.destroy()
      await lab.cli('rm', idOf(added.stdout))
    }
  })

  test('rm by source and by rule id sends clients back to prod; rm --all removes only runtime rules', async () => {
    try {
      await addThenRemoveBySourceIdAndAll()
    } finally {
      await lab.cli('rm', '--all')
    }
  })

  async function addThenRemoveBySourceIdAndAll(): Promise<void> {
    const adds = await Promise.all([
      lab.cli('add', '127.0.0.10', '--to', 'staging'),
      lab.cli('add', '127.0.0.11', '--to', 'staging'),
      lab.cli('add', '127.0.0.12/32', '--to', 'debug', '--listener', 'alt'),
    ])
    for (const a of adds) assert.equal(a.code, 0, a.stderr)
    const [id10, id11, id12] = adds.map((a) => idOf(a.stdout))
    assert.deepEqual(await Promise.all([whoAnswers(lab.port, '127.0.0.10'), whoAnswers(lab.port, '127.0.0.11'), whoAnswers(lab.altPort, '127.0.0.12')]), ['staging', 'staging', 'debug'])

    const bySource = await lab.cli('rm', '127.0.0.10')
    assert.equal(bySource.code, 0, bySource.stderr)
    assert.match(bySource.stdout, new RegExp(`^removed rule ${id10}: 127\\.0\\.0\\.10 \\(to staging\\)$`, 'm'))
    assert.match(bySource.stdout, /^live sessions keep their backend; `divert kill --source 127\.0\.0\.10` moves them now$/m)
    const byId = await lab.cli('rm', id11)
    assert.equal(byId.code, 0, byId.stderr)
    assert.match(byId.stdout, new RegExp(`^removed rule ${id11}: 127\\.0\\.0\\.11 \\(to staging\\)$`, 'm'))
    assert.deepEqual(await Promise.all([whoAnswers(lab.port, '127.0.0.10'), whoAnswers(lab.port, '127.0.0.11')]), ['prod', 'prod'])
    await Promise.all([lab.audit('rule.remove', id10), lab.audit('rule.remove', id11)])

    const all = await lab.cli('rm', '--all')
    assert.equal(all.code, 0, all.stderr)
    assert.match(all.stdout, new RegExp(`^removed rule ${id12}: 127\\.0\\.0\\.12 on alt \\(to debug\\)$`, 'm'))
    const left = (await lab.cli('list', '--json')).json()
    assert.deepEqual(left.map((r: any) => [r.id, r.origin]).sort(), [[configRule, 'config'], [shadowedRule, 'config']].sort())
    assert.deepEqual(await Promise.all([whoAnswers(lab.altPort, '127.0.0.12'), whoAnswers(lab.port, '127.0.0.9')]), ['prod', 'staging'])
    await lab.audit('rule.remove', id12)
    const none = await lab.cli('rm', '--all')
    assert.equal(none.code, 0, none.stderr)
    assert.match(none.stdout, /no runtime rules to remove/)
  }

  test('errors: a specific one-line message on stderr, a non-zero exit, and the DIVERT_ERR_* code with --json', async () => {
    const cases = [
      {args: ['add', '127.0.0.300', '--to', 'staging'], code: 'DIVERT_ERR_INVALID_ADDRESS', exit: 2, message: /"127\.0\.0\.300" is not an IP address or CIDR/},
      {args: ['add', '10.0.0.0/33', '--to', 'staging'], code: 'DIVERT_ERR_INVALID_ADDRESS', exit: 2, message: /10\.0\.0\.0\/33/},
      {args: ['add', '127.0.0.21', '--to', 'nowhere'], code: 'DIVERT_ERR_BACKEND_UNKNOWN', exit: 2, message: /unknown backend "nowhere" \(known: prod, staging, debug\)/},
      {args: ['add', '127.0.0.21', '--to', 'staging', '--listener', 'nolistener'], code: 'DIVERT_ERR_LISTENER_UNKNOWN', exit: 2, message: /unknown listener "nolistener" \(known: main, alt\)/},
      {args: ['add', '127.0.0.21', '--to', 'staging', '--for', 'soon'], code: 'DIVERT_ERR_INVALID_DURATION', exit: 2, message: /--for: "soon" is not a duration/},
      {args: ['add', '127.0.0.21'], code: 'DIVERT_ERR_RULE_INVALID', exit: 2, message: /needs at least one action: --to BACKEND/},
      {args: ['rm', '127.0.0.22'], code: 'DIVERT_ERR_RULE_NOT_FOUND', exit: 3, message: /no rule for source 127\.0\.0\.22 .*divert list/},
      {args: ['rm', 'r000000'], code: 'DIVERT_ERR_RULE_NOT_FOUND', exit: 3, message: /no rule has id r000000/},
      {args: ['rm'], code: 'DIVERT_ERR_CLI_USAGE', exit: 2, message: /give either a SOURCE or RULE-ID, or --all/},
      {args: ['kill'], code: 'DIVERT_ERR_CLI_USAGE', exit: 2, message: /give either a SESSION-ID or --source CIDR/},
      {args: ['kill', 't999999'], code: 'DIVERT_ERR_SESSION_NOT_FOUND', exit: 3, message: /no live session "t999999"/},
      {args: ['explain', 'not-an-ip'], code: 'DIVERT_ERR_INVALID_ADDRESS', exit: 2, message: /"not-an-ip" is not an IP address/},
      {args: ['explain', '127.0.0.1', '--listener', 'nolistener'], code: 'DIVERT_ERR_LISTENER_UNKNOWN', exit: 2, message: /unknown listener "nolistener"/},
      {args: ['sessions', '--backend', 'nowhere'], code: 'DIVERT_ERR_BACKEND_UNKNOWN', exit: 2, message: /unknown backend "nowhere" \(known: prod, staging, debug\)/},
      {args: ['sessions', '--source', '1.2.3'], code: 'DIVERT_ERR_INVALID_ADDRESS', exit: 2, message: /"1\.2\.3" is not an IP address/},
      // Usage errors oclif finds before the daemon is asked: still one line, still {error, code, status}.
      {args: ['add'], code: 'DIVERT_ERR_CLI_USAGE', exit: 2, message: /Missing 1 required arg: source .*divert add --help/},
      {args: ['add', '127.0.0.21', '--existing', 'maybe'], code: 'DIVERT_ERR_CLI_USAGE', exit: 2, message: /Expected --existing=maybe to be one of: keep, kill/},
      {args: ['sessions', '--bogus'], code: 'DIVERT_ERR_CLI_USAGE', exit: 2, message: /Nonexistent flag: --bogus/},
    ]
    await Promise.all(cases.map((c) => expectCliError(lab.cli, c)))
    const rules = (await lab.cli('list', '--json')).json()
    assert.deepEqual(rules.map((r: any) => r.id).sort(), [configRule, shadowedRule].sort(), 'failed commands changed no rule')
  })

  test('removing a config rule is refused: it cannot be removed at runtime, edit FILE and reload', async () => {
    await expectCliError(lab.cli, {
      args: ['rm', '127.0.0.9'], code: 'DIVERT_ERR_RULE_FROM_CONFIG', exit: 3,
      message: new RegExp(`${configRule}.*cannot be removed at runtime.*${lab.configFile}.*divert reload`),
    })
    await expectCliError(lab.cli, {args: ['rm', configRule], code: 'DIVERT_ERR_RULE_FROM_CONFIG', exit: 3, message: /cannot be removed at runtime/})
    assert.equal(await whoAnswers(lab.port, '127.0.0.9'), 'staging')
  })

  test('every rule change so far wrote one audit line with action, by and rule', () => {
    const lines = lab.daemon.logs.filter((l) => l.audit === true && String(l.action).startsWith('rule.'))
    const actions = new Set(lines.map((l) => l.action))
    for (const a of ['rule.add', 'rule.replace', 'rule.remove', 'rule.expired']) assert.ok(actions.has(a), `an audit line for ${a}`)
    const incomplete = lines.filter((l) => typeof l.by !== 'string' || l.by === '' || typeof l.rule?.id !== 'string')
    assert.deepEqual(incomplete.map((l) => ({action: l.action, by: l.by, rule: l.rule?.id})), [], 'audit lines without by or rule')
  })

  test('no daemon at the socket: the error names the path and says how to start one', async () => {
    const missing = join(lab.dir, 'nobody-home.sock')
    const run = (...args: string[]): Promise<CliResult> => cli([...args, '--admin', missing])
    const message = new RegExp(`no divert daemon at ${missing.replace(/\./g, '\\.')} — start one with \`divert start -c FILE\``)
    await Promise.all([['status'], ['add', '127.0.0.23', '--to', 'staging']].map((args) =>
      expectCliError(run, {args, code: 'DIVERT_ERR_ADMIN_UNREACHABLE', exit: 5, message})))
  })
})

/** 10.0.0.0 … as /32 sources: config rules no test client matches (clients are 127.0.0.N). */
function manyRules(n: number): string[] {
  return Array.from({length: n}, (_, i) => `{ source: 10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}, to: staging, listener: alt }`)
}

describe('issue 11: limits in explain, and list with many rules', () => {
  const RULES = 20_000
  let big: Lab
  before(async () => {
    big = await startLab({mainListener: 'per_source: { max_connections: 1 }', rules: () => manyRules(RULES)})
  })
  after(async () => {
    await big?.close()
  })

  test('issue 11.15: explain says a per_source.max_connections limit refuses a second session from 127.0.0.2, not from 127.0.0.3', async () => {
    const live = await open(big, '127.0.0.2')
    try {
      assert.equal(live.backend, 'prod')
      const [text, json, other] = await Promise.all([
        big.cli('explain', '127.0.0.2', '--listener', 'main'),
        big.cli('explain', '127.0.0.2', '--listener', 'main', '--json'),
        big.cli('explain', '127.0.0.3', '--listener', 'main', '--json'),
      ])
      assert.equal(text.code, 0, text.stderr)
      assert.match(text.stdout, /^127\.0\.0\.2 on listener main: refused: per_source\.max_connections \(1\) reached for 127\.0\.0\.2 \(1 live\)$/m)
      const [r] = json.json()
      assert.deepEqual([r.refused, r.limit, r.backend], [r.limit, 'per_source.max_connections (1) reached for 127.0.0.2 (1 live)', null])
      const [o] = other.json()
      assert.deepEqual([o.refused, o.limit, o.backend], [null, null, 'prod'])
      // What explain said is what the proxy does.
      const second = await connect({port: big.port, localAddress: '127.0.0.2'})
      const got = await Promise.race([closed(second).then(() => 'closed'), readLine(second, 2000).then((l) => `answered ${l}`, () => 'closed')])
      second.destroy()
      assert.equal(got, 'closed', 'the second connection from 127.0.0.2 is refused')
      assert.equal(await whoAnswers(big.port, '127.0.0.3'), 'prod')
    } finally {
      live.socket.destroy()
    }
  })

  test(`issue 11.23: list --json with ${RULES.toLocaleString('en-US')} rules prints every rule within seconds; the table is capped and says so`, async () => {
    const started = Date.now()
    const json = await big.cli('list', '--json')
    const elapsed = Date.now() - started
    assert.equal(json.code, 0, json.stderr)
    const rules = json.json()
    assert.equal(rules.length, RULES)
    assert.equal(new Set(rules.map((r: any) => r.source)).size, RULES)
    assert.ok(elapsed < 15_000, `divert list --json took ${elapsed} ms for ${RULES} rules`)
    const text = await big.cli('list')
    assert.equal(text.code, 0, text.stderr)
    assert.match(text.stdout, new RegExp(`^1000 of ${RULES} rules shown; ${RULES - 1000} more not shown — \`divert list --json\` prints every rule$`, 'm'))
  })
})
