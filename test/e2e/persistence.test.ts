/**
 * Runtime rules on disk (`state: FILE`): every change rewrites the file atomically and owner-only,
 * rules come back after a restart with their ids, and a corrupt file is moved aside, never dropped.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import {lstatSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {whoAnswers} from '../helpers/servers.js'
import {startLab, rawHttp, httpRequest, type Lab} from './harness.js'

const RULE_ID = /r[0-9a-f]{6}/

describe('runtime rules persist in the state file', () => {
  let lab: Lab
  let state: string

  /** The state file as it is now: parsed, owner-only, and no temp file left next to it. */
  function stateNow(): {version: number; rules: Array<Record<string, any>>} {
    assert.equal(statSync(state).mode & 0o777, 0o600, 'state file mode')
    const leftovers = readdirSync(lab.dir).filter((f) => f.includes('.tmp'))
    assert.deepEqual(leftovers, [], 'no temp file left after a save')
    return JSON.parse(readFileSync(state, 'utf8'))
  }

  async function ok(...args: string[]): Promise<string> {
    const r = await lab.cli(...args)
    assert.equal(r.code, 0, `divert ${args.join(' ')}: ${r.stderr}`)
    return r.stdout
  }

  before(async () => {
    lab = await startLab({top: () => 'state: ./state.json', rules: () => ['{ source: 127.0.0.9, to: staging }']})
    state = join(lab.dir, 'state.json')
  })

  after(async () => {
    await lab?.close()
  })

  test('every change rewrites the file: valid JSON, mode 0600, runtime rules only', async () => {
    const a = RULE_ID.exec(await ok('add', '127.0.0.2', '--to', 'staging', '--listener', 'alt', '--note', 'ticket 7'))![0]
    assert.deepEqual(stateNow().rules.map((r) => [r.id, r.source, r.to, r.listener, r.note]), [[a, '127.0.0.2', 'staging', 'alt', 'ticket 7']])
    const b = RULE_ID.exec(await ok('add', '127.0.0.3/32', '--to', 'debug', '--for', '1h'))![0]
    const withB = stateNow()
    assert.equal(withB.version, 1)
    assert.deepEqual(withB.rules.map((r) => r.id).sort(), [a, b].sort())
    assert.ok(withB.rules.find((r) => r.id === b)!.expiresAt > Date.now() + 3_500_000)
    const a2 = RULE_ID.exec(/\[(r[0-9a-f]{6})\]/.exec(await ok('add', '127.0.0.2', '--to', 'debug', '--listener', 'alt', '--note', 'ticket 7'))![1])![0]
    assert.deepEqual(stateNow().rules.find((r) => r.source === '127.0.0.2')?.to, 'debug')
    const c = RULE_ID.exec(await ok('add', '127.0.0.4', '--mirror', 'debug'))![0]
    assert.ok(stateNow().rules.some((r) => r.id === c))
    await ok('rm', c)
    const final = stateNow()
    assert.deepEqual(final.rules.map((r) => r.id).sort(), [a2, b].sort())
    assert.equal(final.rules.some((r) => r.source === '127.0.0.9'), false, 'config rules are not in the state file')
  })

  test('concurrent changes never leave a torn file: a reader always sees valid JSON', async () => {
    let reads = 0
    let reading = true
    const reader = (async () => {
      while (reading) {
        JSON.parse(readFileSync(state, 'utf8'))
        reads++
        await new Promise((r) => setImmediate(r))
      }
    })()
    const sources = Array.from({length: 30}, (_, i) => `127.0.1.${i + 1}`)
    try {
      const added = await Promise.all(sources.map((source) => rawHttp({path: lab.admin}, httpRequest('POST', '/rules', {body: JSON.stringify({source, to: 'staging'})}))))
      assert.deepEqual(added.map((r) => r.status), sources.map(() => 200))
      assert.deepEqual(stateNow().rules.filter((r) => r.source.startsWith('127.0.1.')).length, 30, 'every concurrent add was saved')
      const removed = await Promise.all(sources.map((s) => rawHttp({path: lab.admin}, httpRequest('DELETE', `/rules/${s}`))))
      assert.deepEqual(removed.map((r) => r.status), sources.map(() => 200))
    } finally {
      reading = false
      await reader
    }
    assert.ok(reads > 0)
    assert.equal(stateNow().rules.filter((r) => r.source.startsWith('127.0.1.')).length, 0)
  })

  test('after a restart, runtime rules are back with the same ids and origin runtime; config rules have origin config', async () => {
    const before = (await lab.cli('list', '--json')).json()
    assert.equal(await lab.restart(), 0)
    const after = (await lab.cli('list', '--json')).json()
    const key = (r: any): unknown[] => [r.id, r.source, r.to, r.mirror, r.listener, r.expiresAt, r.note, r.origin]
    const runtime = (rules: any[]): unknown[] => rules.filter((r) => r.origin === 'runtime').map(key)
    assert.deepEqual(runtime(after), runtime(before))
    assert.deepEqual(after.map((r: any) => [r.source, r.origin]), [['127.0.0.2', 'runtime'], ['127.0.0.3', 'runtime'], ['127.0.0.9', 'config']])
    assert.deepEqual(await Promise.all([whoAnswers(lab.altPort, '127.0.0.2'), whoAnswers(lab.port, '127.0.0.3'), whoAnswers(lab.port, '127.0.0.9')]), ['debug', 'debug', 'staging'])
    const restored = await lab.daemon.waitForLog((l) => l.msg === 'runtime rules restored')
    assert.equal(restored.rules, 2)
  })

  test('a corrupt state file is moved aside: the daemon starts, logs an error naming the file, and the bytes are kept', async () => {
    const garbage = '{"version": 1, "rules": [ {"id": "r123456", "sou'
    assert.equal(await lab.restart(() => writeFileSync(state, garbage, {mode: 0o600})), 0)
    const aside = readdirSync(lab.dir).filter((f) => f.startsWith('state.json.corrupt-'))
    assert.equal(aside.length, 1, `one moved-aside file in ${readdirSync(lab.dir).join(', ')}`)
    assert.equal(readFileSync(join(lab.dir, aside[0]), 'utf8'), garbage)
    const logged = lab.daemon.logs.find((l) => l.level === 50 && String(l.msg).includes(state))
    assert.ok(logged, `an error log line naming ${state}: ${JSON.stringify(lab.daemon.logs.filter((l) => l.level >= 40))}`)
    assert.ok(String(logged.msg).includes(aside[0]), 'and where the file went')

    const rules = (await lab.cli('list', '--json')).json()
    assert.deepEqual(rules.map((r: any) => r.origin), ['config'])
    const id = RULE_ID.exec(await ok('add', '127.0.0.5', '--to', 'staging'))![0]
    assert.deepEqual(stateNow().rules.map((r) => r.id), [id], 'a fresh state file is written')
  })

  test('issue 11.7: symlinks planted at the temp names (old-style .STATE.tmp-PID and others) are never followed: their target is unchanged', async () => {
    const victim = join(lab.dir, 'victim.txt')
    writeFileSync(victim, 'precious', {mode: 0o600})
    const pid = lab.daemon.proc.pid!
    const planted = [`.state.json.tmp-${pid}`, `.state.json.tmp-${pid}-0`, '.state.json.tmp-1', `.state.json.tmp-${pid + 1}`].map((n) => join(lab.dir, n))
    for (const p of planted) symlinkSync(victim, p)
    try {
      const id = RULE_ID.exec(await ok('add', '127.0.0.21', '--to', 'staging'))![0]
      await ok('rm', '127.0.0.21')
      await ok('add', '127.0.0.22', '--to', 'debug')
      assert.equal(readFileSync(victim, 'utf8'), 'precious', 'the symlinks\' target is untouched')
      assert.ok(lstatSync(state).isFile() && !lstatSync(state).isSymbolicLink(), 'the state file is a regular file, not a planted link')
      for (const p of planted) assert.ok(lstatSync(p).isSymbolicLink(), `${p} is left as it was`)
      const saved = JSON.parse(readFileSync(state, 'utf8')).rules.map((r: any) => r.source)
      assert.ok(saved.includes('127.0.0.22') && !saved.includes('127.0.0.21'), `saved: ${saved.join(', ')} (${id} removed)`)
    } finally {
      for (const p of [...planted, victim]) rmSync(p, {force: true})
    }
  })

  test('issue 11.12: a state file that is valid JSON but holds an invalid rule is moved aside; the error names the file, the rule and the problem; the daemon starts', async () => {
    const bad = {version: 1, rules: [
      {id: 'r00aa01', source: '127.0.0.30', to: 'staging', createdAt: Date.now()},
      {id: 'r00aa02', source: '10.0.0.1/8', to: 'staging', createdAt: Date.now()},
    ]}
    const text = JSON.stringify(bad)
    assert.equal(await lab.restart(() => writeFileSync(state, text, {mode: 0o600})), 0)
    const aside = readdirSync(lab.dir).filter((f) => f.startsWith('state.json.corrupt-'))
    const mine = aside.find((f) => readFileSync(join(lab.dir, f), 'utf8') === text)
    assert.ok(mine, `the file is moved aside with its bytes (${aside.join(', ')})`)
    const logged = lab.daemon.logs.find((l) => l.level === 50 && String(l.msg).includes(state))
    assert.ok(logged, `an error line naming ${state}: ${JSON.stringify(lab.daemon.logs.filter((l) => l.level >= 40))}`)
    assert.match(String(logged.msg), /rules\[1\] \(10\.0\.0\.1\/8\): "10\.0\.0\.1\/8" has host bits set below \/8: did you mean 10\.0\.0\.0\/8\?/)
    assert.ok(String(logged.msg).includes(mine), 'and where the file went')
    const rules = (await lab.cli('list', '--json')).json()
    assert.deepEqual(rules.map((r: any) => r.origin), ['config'], 'no rule of the bad file is in force')
    assert.equal(await whoAnswers(lab.port, '127.0.0.30'), 'prod')
  })
})
