/**
 * The shared rule store's ordering and recovery (issue 14), with two in-process daemons and a real
 * redis-server: concurrent changes for one source converge on one rule, a change whose message was
 * lost still reaches every instance, a version gap resyncs at once, and a rule id held by another
 * rule in Redis is refused (ids are fleet-wide).
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import pino from 'pino'
import {Redis} from 'ioredis'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {startServer, until, type TestServer} from '../helpers/servers.js'
import {RedisServer} from '../helpers/redis.js'
import {KEYS, RedisRuleStore} from '../../src/fleet/redis-store.js'
import {RuleIdTaken, type StoredRule} from '../../src/rules/state.js'

describe('issue 14: the shared rule store keeps every instance on one rule set', () => {
  let redis: RedisServer
  let backend: TestServer
  let a: InProcess
  let b: InProcess
  let raw: Redis

  const yaml = (name: string): string => `state: ${redis.url}
fleet: { name: ${name} }
listeners:
  - { name: main, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "${backend.address}" } ] }
  staging: { servers: [ { address: "${backend.address}" } ] }
  debug: { servers: [ { address: "${backend.address}" } ] }
`
  const runtime = (d: InProcess): string[] => d.daemon.rules.snapshot().filter((r) => r.origin === 'runtime').map((r) => `${r.id} ${r.source} ${r.to}`).sort()
  const same = (): boolean => runtime(a).join() === runtime(b).join()

  /** Writes a rule into Redis as another instance would, but publishes nothing (a lost message). */
  async function writeQuietly(rule: StoredRule): Promise<number> {
    await raw.hset(KEYS.rules, `${rule.source} *`, JSON.stringify(rule))
    await raw.hset(KEYS.ids, rule.id, `${rule.source} *`)
    return raw.incr(KEYS.version)
  }

  before(async () => {
    redis = await RedisServer.start()
    backend = await startServer('backend')
    raw = new Redis(redis.url)
    a = await startInProcess(yaml('edge-a'))
    b = await startInProcess(yaml('edge-b'))
  })

  after(async () => {
    await a?.stop()
    await b?.stop()
    raw?.disconnect()
    await backend?.close()
    await redis?.stop()
  })

  test('issue 14: concurrent adds for one source on two instances leave one rule, the same on both', async () => {
    await Promise.all([
      a.daemon.ruleService.add({source: '127.0.0.40', to: 'staging'}, 'test'),
      b.daemon.ruleService.add({source: '127.0.0.40', to: 'debug'}, 'test'),
    ])
    await until(() => same() && runtime(a).length === 1, 2000, 'both instances on one rule')
    const stored = await raw.hgetall(KEYS.rules)
    assert.deepEqual(Object.keys(stored), ['127.0.0.40 *'])
    assert.equal(runtime(a)[0].split(' ')[0], JSON.parse(stored['127.0.0.40 *']).id, 'the rule Redis holds, by id')
    assert.equal(await raw.hlen(KEYS.ids), 1)
  })

  test('issue 14: a change whose message was lost reaches every instance (version check)', async () => {
    await writeQuietly({id: 'r0a0b01', source: '127.0.0.41', to: 'staging', createdAt: Date.now()})
    await until(() => runtime(a).some((r) => r.startsWith('r0a0b01 ')) && runtime(b).some((r) => r.startsWith('r0a0b01 ')), 10_000, 'both pick up the unannounced change')
    assert.ok(a.logs.find(/^resynced/).some((l) => /ahead/.test(l.why)))
  })

  test('issue 14: a version gap resyncs at once', async () => {
    await writeQuietly({id: 'r0a0b02', source: '127.0.0.42', to: 'debug', createdAt: Date.now()})
    const rule = {id: 'r0a0b03', source: '127.0.0.43', to: 'debug', createdAt: Date.now()}
    const v = await writeQuietly(rule)
    await raw.publish(KEYS.channel, JSON.stringify({v, put: [JSON.stringify(rule)], remove: [], by: 'test', instance: 'test', nonce: 'x'}))
    await until(() => same() && runtime(a).some((r) => r.startsWith('r0a0b02 ')) && runtime(a).some((r) => r.startsWith('r0a0b03 ')), 1500, 'both resync within 1.5 s')
    assert.ok(b.logs.find(/^resynced/).some((l) => /version gap/.test(l.why)))
  })

  test('issue 14: the store refuses a rule id that another rule holds', async () => {
    const store = new RedisRuleStore({url: redis.url, instance: 'probe', logger: pino({level: 'silent'})})
    try {
      await store.load()
      const taken = {id: 'r0a0b01', source: '127.0.0.44', to: 'staging', createdAt: Date.now()}
      await assert.rejects(store.save([], {put: [taken], remove: [], by: 'test'}), RuleIdTaken)
      assert.equal(await raw.hexists(KEYS.rules, '127.0.0.44 *'), 0, 'nothing written')
    } finally {
      await store.close()
    }
  })
})
