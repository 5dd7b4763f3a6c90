/**
 * A fleet (issue 14): two daemons share their runtime rules through a real redis-server and answer
 * one `--fleet` command together. Instance B reaches Redis through a relay the test can cut, so one
 * instance can be cut off while the other goes on; Redis itself is stopped and started by pid.
 *
 *   CLI ─▶ edge-a ──────────────▶ redis-server ◀───────────── Relay ◀─ edge-b ◀─ CLI
 *          edge-a ◀─TCP admin + token─▶ edge-b      (sessions|status|kill --fleet)
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import type net from 'node:net'
import {Redis} from 'ioredis'
import {connect, readLine, until, whoAnswers} from '../helpers/servers.js'
import {RedisServer, Relay} from '../helpers/redis.js'
import {startLab, expectCliError, type Lab} from './harness.js'

const TOKEN = 'fleet-test-token-0123456789abcdef'

describe('issue 14: a fleet shares runtime rules through Redis', () => {
  let redis: RedisServer
  let relay: Relay
  let a: Lab
  let b: Lab

  function fleetLab(name: string, url: () => string): Promise<Lab> {
    return startLab({
      files: {token: TOKEN},
      top: () => `state: ${url()}\nfleet: { name: ${name} }\nadmin: { listen: "127.0.0.1:0", token_file: ./token }\n`,
    })
  }

  async function json<T = any>(lab: Lab, ...args: string[]): Promise<T> {
    const r = await lab.cli(...args, '--json')
    assert.equal(r.code, 0, `divert ${args.join(' ')} on ${lab.dir}: ${r.stderr}${r.stdout}`)
    return r.json<T>()
  }

  const routes = (lab: Lab, source: string): Promise<string> => whoAnswers(lab.port, source)
  const ruleIds = async (lab: Lab): Promise<string[]> => (await json<Array<{id: string; origin: string}>>(lab, 'list')).filter((r) => r.origin === 'runtime').map((r) => r.id).sort()
  const connected = async (lab: Lab): Promise<boolean> => (await json(lab, 'status')).store.connected as boolean

  before(async () => {
    redis = await RedisServer.start()
    relay = await Relay.start(redis.port)
    a = await fleetLab('edge-a', () => redis.url)
    b = await fleetLab('edge-b', () => relay.url)
  })

  after(async () => {
    await a?.close()
    await b?.close()
    await relay?.close()
    await redis?.stop()
  })

  test('issue 14: add on one instance routes on the other within 2 s, with the same id; rm likewise', async () => {
    const added = await json(a, 'add', '127.0.0.21', '--to', 'staging', '--note', 'ticket 14')
    const id = added.rule.id as string
    const t0 = Date.now()
    await until(async () => (await routes(b, '127.0.0.21')) === 'staging', 2000, 'edge-b routes the new rule')
    const reached = Date.now() - t0
    assert.ok((await json<Array<{id: string; note?: string}>>(b, 'list')).some((r) => r.id === id && r.note === 'ticket 14'), 'same id and note on edge-b')
    const audit = await a.audit('rule.add', id)
    assert.equal(audit.instance, 'edge-a', 'the audit line names the instance that took the change')
    assert.match(audit.by, /unix socket/, 'and who asked')
    await b.daemon.waitForLog((l) => l.fleet === true && l.from === 'edge-a' && l.put?.includes(id))

    await json(b, 'rm', id)
    await until(async () => (await routes(a, '127.0.0.21')) === 'prod', 2000, 'edge-a drops the removed rule')
    assert.deepEqual(await ruleIds(a), await ruleIds(b))
    assert.ok(reached < 2000, `reached the other instance in ${reached} ms`)
  })

  test('issue 14: a rule expires on every instance at its expiresAt', async () => {
    const added = await json(b, 'add', '127.0.0.22', '--to', 'staging', '--for', '2s')
    const expiresAt = Date.parse(added.rule.expiresAt)
    await until(async () => (await routes(a, '127.0.0.22')) === 'staging', 2000, 'edge-a routes the rule')
    await until(async () => (await routes(a, '127.0.0.22')) === 'prod' && (await routes(b, '127.0.0.22')) === 'prod', 4000, 'both drop it')
    assert.ok(Date.now() < expiresAt + 1500, 'gone on both within 1.5 s of its expiry')
    await until(async () => !(await ruleIds(a)).includes(added.rule.id) && !(await ruleIds(b)).includes(added.rule.id), 3000, 'both tables without it')
    const check = new Redis(redis.url)
    try {
      assert.deepEqual(await check.hkeys('divert:rules'), [], 'and Redis without it (removed once, idempotently)')
    } finally {
      check.disconnect()
    }
  })

  test('issue 14: Redis stopped — traffic keeps its rules, add fails clearly on both; Redis back — both converge', async () => {
    const kept = (await json(a, 'add', '127.0.0.23', '--to', 'staging')).rule.id as string
    await until(async () => (await routes(b, '127.0.0.23')) === 'staging', 2000, 'edge-b has the rule')
    await redis.stop()
    await until(async () => !(await connected(a)) && !(await connected(b)), 5000, 'both say disconnected')
    for (const lab of [a, b]) {
      assert.equal(await routes(lab, '127.0.0.23'), 'staging', 'traffic keeps the last rules')
      await expectCliError(lab.cli, {args: ['add', '127.0.0.31', '--to', 'debug'], code: 'DIVERT_ERR_STATE_UNAVAILABLE', exit: 4, message: /shared rule store redis:\/\/127\.0\.0\.1:\d+\/0 is unreachable.*nothing was changed/})
      await lab.daemon.waitForLog((l) => /disconnected/.test(String(l.msg)))
      assert.equal((await json(lab, 'status')).store.kind, 'redis')
    }
    assert.deepEqual(await ruleIds(a), [kept])
    assert.deepEqual(await ruleIds(b), [kept], 'no divergence: the failed adds were applied nowhere')

    await redis.start()
    await until(async () => (await connected(a)) && (await connected(b)), 8000, 'both reconnect')
    await until(async () => (await ruleIds(a)).join() === kept && (await ruleIds(b)).join() === kept, 5000, 'both keep the rule set (Redis re-seeded)')
    const fresh = (await json(b, 'add', '127.0.0.32', '--to', 'debug')).rule.id as string
    await until(async () => (await routes(a, '127.0.0.32')) === 'debug', 2000, 'changes flow again')
    assert.deepEqual(await ruleIds(a), [kept, fresh].sort())
  })

  test('issue 14: an instance cut off from Redis converges when it is back, with the changes made meanwhile', async () => {
    relay.cut()
    await until(async () => !(await connected(b)), 5000, 'edge-b says disconnected')
    assert.equal(await connected(a), true, 'edge-a still connected')
    const meanwhile = (await json(a, 'add', '127.0.0.24', '--to', 'staging')).rule.id as string
    await json(a, 'rm', '127.0.0.23')
    assert.equal(await routes(b, '127.0.0.24'), 'prod', 'the cut-off instance keeps its last rules')
    assert.equal(await routes(b, '127.0.0.23'), 'staging')
    await expectCliError(b.cli, {args: ['rm', '127.0.0.32'], code: 'DIVERT_ERR_STATE_UNAVAILABLE', exit: 4, message: /unreachable/})

    relay.mend()
    await until(async () => (await routes(b, '127.0.0.24')) === 'staging' && (await routes(b, '127.0.0.23')) === 'prod', 8000, 'edge-b catches up')
    assert.deepEqual(await ruleIds(b), await ruleIds(a))
    assert.ok((await ruleIds(b)).includes(meanwhile))
    await b.daemon.waitForLog((l) => /^resynced/.test(String(l.msg)))
  })

  test('issue 14: a restarted instance loads the fleet\'s rules', async () => {
    const before = await ruleIds(a)
    assert.ok(before.length > 0)
    await b.restart()
    assert.deepEqual(await ruleIds(b), before)
    assert.equal(await routes(b, '127.0.0.24'), 'staging')
  })

  test('issue 14: sessions/status/kill --fleet ask every live instance; an unreachable one is listed', async () => {
    await until(async () => (await json(a, 'status', '--fleet')).instances.length === 2, 8000, 'both instances registered')
    const open: net.Socket[] = []
    for (const lab of [a, b]) {
      const s = await connect({port: lab.port, localAddress: '127.0.0.25'})
      await readLine(s)
      open.push(s)
    }
    try {
      const ghost = new Redis(redis.url)
      await ghost.set('divert:instance:ghost', JSON.stringify({name: 'ghost', adminUrl: 'http://127.0.0.1:9', pid: 1, version: 'x', startedAt: '', nonce: 'n', heartbeatAt: ''}), 'PX', 30_000)
      ghost.disconnect()

      const all = await json(b, 'sessions', '--fleet', '--source', '127.0.0.25')
      assert.deepEqual(all.sessions.map((s: any) => s.instance).sort(), ['edge-a', 'edge-b'])
      assert.ok(all.sessions.every((s: any) => s.client.startsWith('127.0.0.25:')))
      const ghostView = all.instances.find((i: any) => i.instance === 'ghost')
      assert.equal(ghostView.reachable, false, 'an unreachable instance is listed as such')
      assert.equal(ghostView.adminUrl, 'http://127.0.0.1:9')
      assert.match(ghostView.error, /no answer \(ECONNREFUSED\): the instance is down/)
      const text = await b.cli('sessions', '--fleet', '--source', '127.0.0.25')
      assert.match(text.stdout, /instance/)
      assert.match(text.stdout, /edge-a/)
      assert.match(text.stdout, /edge-b/)
      assert.match(text.stdout, /instance ghost UNREACHABLE/)

      const status = await json(a, 'status', '--fleet')
      assert.deepEqual(status.instances.filter((i: any) => i.reachable).map((i: any) => i.instance), ['edge-a', 'edge-b'])
      assert.equal(status.instances.find((i: any) => i.instance === 'edge-b').status.store.connected, true)

      const killed = await json(a, 'kill', '--fleet', '--source', '127.0.0.25')
      assert.equal(killed.killed, 2)
      await until(() => open.every((s) => s.destroyed || s.readableEnded), 5000, 'both sessions closed')
      const remote = await b.daemon.waitForLog((l) => l.audit === true && l.action === 'sessions.kill')
      assert.match(remote.by, /divert fleet edge-a for .* via tcp/, 'the other instance\'s audit line says who asked, through which instance')
    } finally {
      for (const s of open) s.destroy()
    }
  })
})

describe('issue 14: the state-file default needs no Redis', () => {
  let lab: Lab

  before(async () => {
    lab = await startLab({top: () => 'state: ./state.json'})
  })

  after(async () => {
    await lab?.close()
  })

  test('issue 14: with state: FILE, rules persist as before, status names the file, --fleet says it needs a shared store', async () => {
    const added = await lab.cli('add', '127.0.0.50', '--to', 'staging', '--json')
    assert.equal(added.code, 0, added.stderr)
    assert.equal(await whoAnswers(lab.port, '127.0.0.50'), 'staging')
    const status = (await lab.cli('status', '--json')).json()
    assert.deepEqual(status.store, {kind: 'file', path: `${lab.dir}/state.json`})
    assert.doesNotMatch((await lab.cli('status')).stdout, /rule store/, 'the status text reads as before')
    assert.ok(!lab.daemon.logs.some((l) => /redis/i.test(JSON.stringify(l))), 'no word of Redis in the log')
    await expectCliError(lab.cli, {args: ['sessions', '--fleet'], code: 'DIVERT_ERR_CLI_USAGE', exit: 2, message: /--fleet needs a shared rule store: this instance keeps its rules in .*state\.json/})
    await lab.restart()
    assert.equal(await whoAnswers(lab.port, '127.0.0.50'), 'staging', 'restored from the file')
  })
})
