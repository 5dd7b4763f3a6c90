/**
 * RuleTable: longest-prefix match, listener scope, runtime-over-config layers, expiry on a fake
 * clock, and 100,000 random rules checked against a brute-force reference. No sockets, no real time.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {RuleTable, hashWords, type Rule, type RuleOrigin} from '../../src/rules/table.js'
import {DivertError} from '../../src/errors.js'
import {FakeClock} from '../helpers/clock.js'
import {prng} from '../helpers/random.js'

const T0 = Date.UTC(2024, 0, 2, 3, 4, 5)

function fakeClock(start = T0): FakeClock {
  return new FakeClock(start)
}

function sequentialIds(): () => string {
  let n = 0
  return () => 'r' + (n++).toString(16).padStart(6, '0')
}

function newTable(clock = fakeClock()): RuleTable {
  return new RuleTable({clock, newId: sequentialIds(), configFile: '/etc/divert/divert.yaml'})
}

function to(table: RuleTable, address: string, listener = 'telnet'): string | undefined {
  return table.lookup(address, listener)?.to
}

function code(fn: () => unknown): string {
  try {
    fn()
  } catch (e) {
    assert.ok(e instanceof DivertError, `expected a DivertError, got ${String(e)}`)
    return e.code
  }
  assert.fail('expected an error')
}

test('longest prefix wins (IPv4)', () => {
  const t = newTable()
  t.add({source: '10.0.0.0/8', to: 'eight'}, 'runtime')
  t.add({source: '10.1.0.0/16', to: 'sixteen'}, 'runtime')
  t.add({source: '10.1.2.3', to: 'host'}, 'runtime')
  t.add({source: '10.1.2.0/24', to: 'twentyfour'}, 'runtime')
  assert.equal(to(t, '10.1.2.3'), 'host')
  assert.equal(to(t, '10.1.2.4'), 'twentyfour')
  assert.equal(to(t, '10.1.3.1'), 'sixteen')
  assert.equal(to(t, '10.200.0.1'), 'eight')
  assert.equal(to(t, '11.0.0.1'), undefined)
  assert.equal(to(t, '::a01:203'), undefined, 'IPv4-compatible IPv6 is not IPv4')
})

test('longest prefix wins (IPv6), whatever the spelling of rule and client', () => {
  const t = newTable()
  t.add({source: '2001:db8::/32', to: 'thirtytwo'}, 'runtime')
  t.add({source: '2001:DB8:0:1::/64', to: 'sixtyfour'}, 'runtime')
  t.add({source: '2001:db8:0:1::5', to: 'host'}, 'runtime')
  t.add({source: '2001:db8:0:1:8000::/65', to: 'sixtyfive'}, 'runtime')
  assert.equal(to(t, '2001:db8:0:1::5'), 'host')
  assert.equal(to(t, '2001:0DB8:0000:0001:0000:0000:0000:0005'), 'host')
  assert.equal(to(t, '2001:db8:0:1::6'), 'sixtyfour')
  assert.equal(to(t, '2001:db8:0:1:8000::1'), 'sixtyfive')
  assert.equal(to(t, '2001:db8:ffff::1'), 'thirtytwo')
  assert.equal(to(t, '2001:db9::1'), undefined)
  assert.equal(to(t, 'fe80::1%eth0'), undefined)
})

test('/0 is the default route of its family only', () => {
  const t = newTable()
  t.add({source: '0.0.0.0/0', to: 'v4-default'}, 'runtime')
  t.add({source: '::/0', to: 'v6-default'}, 'runtime')
  t.add({source: '192.168.0.0/16', to: 'lan'}, 'runtime')
  assert.equal(to(t, '8.8.8.8'), 'v4-default')
  assert.equal(to(t, '192.168.1.1'), 'lan')
  assert.equal(to(t, '2001:db8::1'), 'v6-default')
  assert.equal(to(t, '::ffff:8.8.8.8'), 'v4-default', 'mapped clients are IPv4 clients')
  assert.equal(to(t, '::'), 'v6-default')
})

test('listener scope: scoped beats unscoped on equal prefix; other listeners never match it', () => {
  const t = newTable()
  t.add({source: '10.0.0.0/8', to: 'all'}, 'runtime')
  t.add({source: '10.0.0.0/8', to: 'telnet-only', listener: 'telnet'}, 'runtime')
  t.add({source: '172.16.0.0/12', to: 'vpn-only', listener: 'vpn'}, 'runtime')
  t.add({source: '10.9.0.0/16', to: 'longer-unscoped'}, 'runtime')
  assert.equal(t.size, 4)
  assert.equal(to(t, '10.1.1.1', 'telnet'), 'telnet-only')
  assert.equal(to(t, '10.1.1.1', 'vpn'), 'all')
  assert.equal(to(t, '172.16.0.1', 'vpn'), 'vpn-only')
  assert.equal(to(t, '172.16.0.1', 'telnet'), undefined)
  assert.equal(to(t, '10.9.1.1', 'telnet'), 'longer-unscoped', 'prefix length comes before scope')
})

test('IPv4-mapped and zoned client addresses match like the plain address', () => {
  const t = newTable()
  t.add({source: '127.0.0.0/8', to: 'loop'}, 'runtime')
  t.add({source: '127.0.0.2', to: 'two'}, 'runtime')
  t.add({source: 'fe80::/10', to: 'link-local'}, 'runtime')
  assert.equal(to(t, '::ffff:127.0.0.2'), 'two')
  assert.equal(to(t, '::FFFF:7f00:3'), 'loop')
  assert.equal(to(t, 'fe80::1%eth0'), 'link-local')
})

test('lookup of something that is not an address matches nothing', () => {
  const t = newTable()
  t.add({source: '0.0.0.0/0', to: 'x'}, 'runtime')
  t.add({source: '::/0', to: 'y'}, 'runtime')
  for (const bad of ['', 'localhost', '1.2.3', '010.0.0.1', '1::2::3', '1.2.3.4%eth0']) assert.equal(t.lookup(bad, 'telnet'), undefined, bad)
})

test('add replaces the rule with the same source (any spelling) and scope', () => {
  const t = newTable()
  const first = t.add({source: '2001:db8::/32', to: 'a', note: 'first'}, 'runtime')
  assert.equal(first.replaced, undefined)
  assert.match(first.rule.id, /^r[0-9a-f]{6}$/)
  assert.equal(first.rule.source, '2001:db8::/32')
  first.rule.hits = 5
  const second = t.add({source: '2001:DB8:0::/32', to: 'b'}, 'runtime')
  assert.equal(second.replaced, first.rule)
  assert.notEqual(second.rule.id, first.rule.id)
  assert.equal(second.rule.hits, 0)
  assert.equal(t.size, 1)
  assert.equal(t.get(first.rule.id), undefined)
  assert.equal(to(t, '2001:db8::1'), 'b')
  const scoped = t.add({source: '2001:db8::/32', to: 'c', listener: 'telnet'}, 'runtime')
  assert.equal(scoped.replaced, undefined, 'another scope is another rule')
  assert.equal(t.size, 2)
})

test('add refuses bad input and leaves the table unchanged', () => {
  const t = newTable()
  t.add({source: '10.0.0.0/8', to: 'a'}, 'runtime')
  assert.equal(code(() => t.add({source: '10.0.0.1/8', to: 'b'}, 'runtime')), 'DIVERT_ERR_INVALID_ADDRESS')
  assert.equal(code(() => t.add({source: 'example.com', to: 'b'}, 'runtime')), 'DIVERT_ERR_INVALID_ADDRESS')
  // An empty listener, a NaN expiry or a malformed id are the rule schema's to refuse (rule-spec.test.ts).
  assert.equal(code(() => t.add({source: '11.0.0.0/8', id: 'r000000'}, 'runtime')), 'DIVERT_ERR_RULE_ID_TAKEN', 'id taken')
  assert.equal(t.size, 1)
  assert.equal(to(t, '10.1.1.1'), 'a')
  assert.equal(t.find('11.0.0.0/8'), undefined)
})

test('ids: given ids are kept, collisions are retried, a bad generator is an internal error', () => {
  let calls = 0
  const t = new RuleTable({clock: fakeClock(), newId: () => (calls++ < 3 ? 'r00000a' : 'r00000b')})
  assert.equal(t.add({source: '1.1.1.1', id: 'r00000a', createdAt: T0 - 5}, 'runtime').rule.id, 'r00000a')
  assert.equal(t.get('r00000a')?.createdAt, T0 - 5)
  assert.equal(t.add({source: '2.2.2.2'}, 'runtime').rule.id, 'r00000b')
  assert.equal(calls, 4)
  const broken = new RuleTable({newId: () => 'rule-1'})
  assert.equal(code(() => broken.add({source: '1.1.1.1'}, 'runtime')), 'DIVERT_ERR_INTERNAL')
  const real = new RuleTable()
  const ids = new Set(Array.from({length: 200}, (_, i) => real.add({source: `10.0.${i}.0/24`}, 'runtime').rule.id))
  assert.equal(ids.size, 200)
  for (const id of ids) assert.match(id, /^r[0-9a-f]{6}$/)
})

test('config rule ids derive from source and scope: the same on every start, distinct even when 24-bit hashes collide', () => {
  const build = (): RuleTable => {
    const t = new RuleTable({newId: sequentialIds()})
    for (let i = 0; i < 20_000; i++) t.add({source: `10.${i >> 8}.${i & 255}.0/24`, to: 'b'}, 'config')
    t.add({source: '10.0.0.0/24', to: 'b', listener: 'api'}, 'config')
    return t
  }
  const first = build().snapshot()
  const second = build().snapshot()
  assert.deepEqual(second.map((r) => r.id), first.map((r) => r.id), 'same config, same ids')
  assert.equal(new Set(first.map((r) => r.id)).size, first.length, 'no id used twice (about 12 first-choice collisions among 20,000)')
  for (const r of first) assert.match(r.id, /^r[0-9a-f]{6}$/)
  const scoped = first.find((r) => r.source === '10.0.0.0/24' && r.listener === 'api')
  const unscoped = first.find((r) => r.source === '10.0.0.0/24' && r.listener === undefined)
  assert.notEqual(scoped?.id, unscoped?.id, 'the listener scope is part of the id')
  const runtime = build().add({source: '192.0.2.1', to: 'b'}, 'runtime').rule
  assert.equal(runtime.id, 'r000000', 'runtime rules still take the generator\'s ids')
})

test('a runtime rule shadows the config rule with the same source and scope; removing it restores the config rule', () => {
  const t = newTable()
  t.replaceConfigRules([{source: '10.0.0.0/8', to: 'from-config'}])
  const configRule = t.find('10.0.0.0/8')!
  assert.equal(configRule.origin, 'config')
  const added = t.add({source: '10.0.0.0/8', to: 'from-cli'}, 'runtime')
  assert.equal(added.replaced, undefined, 'config is shadowed, not replaced')
  assert.equal(added.shadows, configRule)
  assert.equal(to(t, '10.1.1.1'), 'from-cli')
  assert.equal(t.find('10.0.0.0/8'), added.rule)
  assert.equal(t.size, 2)
  const snap = t.snapshot()
  assert.deepEqual(snap.map((r) => [r.origin, r.shadowedBy]), [['runtime', undefined], ['config', added.rule.id]])
  assert.equal(RuleTable.view(snap[1]).shadowedBy, added.rule.id)

  assert.equal(t.remove('10.0.0.0/8'), added.rule)
  assert.equal(to(t, '10.1.1.1'), 'from-config')
  assert.equal(t.snapshot()[0].shadowedBy, undefined)

  t.add({source: '10.0.0.0/8', to: 'again'}, 'runtime')
  t.removeAll('runtime')
  assert.equal(to(t, '10.1.1.1'), 'from-config', 'removeAll(runtime) restores too')
})

test('config rules cannot be removed at runtime unless allowed; the message names the file', () => {
  const t = newTable()
  t.replaceConfigRules([{source: '192.168.100.0/30', to: 'staging'}])
  const id = t.find('192.168.100.0/30')!.id
  for (const target of [id, '192.168.100.0/30']) {
    assert.throws(
      () => t.remove(target),
      (e: unknown) =>
        e instanceof DivertError &&
        e.code === 'DIVERT_ERR_RULE_FROM_CONFIG' &&
        e.message.includes('/etc/divert/divert.yaml') &&
        e.message.includes('divert reload'),
    )
  }
  assert.equal(t.size, 1)
  assert.equal(t.remove(id, {allowConfig: true}).id, id)
  assert.equal(t.size, 0)
})

test('remove by id, or by source in another spelling; not found says what and suggests divert list', () => {
  const t = newTable()
  const v6 = t.add({source: '2001:db8::/32', to: 'a'}, 'runtime').rule
  const v4 = t.add({source: '10.0.0.0/8', to: 'b'}, 'runtime').rule
  const scoped = t.add({source: '172.16.0.0/12', to: 'c', listener: 'vpn'}, 'runtime').rule
  assert.equal(t.remove('2001:DB8::/32'), v6)
  assert.equal(t.remove(v4.id), v4)
  assert.equal(code(() => t.remove('010.0.0.0/8')), 'DIVERT_ERR_INVALID_ADDRESS')
  assert.throws(
    () => t.remove('172.16.0.0/12'),
    (e: unknown) =>
      e instanceof DivertError &&
      e.code === 'DIVERT_ERR_RULE_NOT_FOUND' &&
      /172\.16\.0\.0\/12/.test(e.message) &&
      /--listener vpn/.test(e.message) &&
      /divert list/.test(e.message),
  )
  assert.throws(() => t.remove('r0000ff'), (e: unknown) => e instanceof DivertError && e.code === 'DIVERT_ERR_RULE_NOT_FOUND' && /r0000ff.*divert list/.test(e.message))
  assert.equal(t.remove('172.16.0.0/12', {listener: 'vpn'}), scoped)
  assert.equal(t.size, 0)
  assert.equal(to(t, '172.16.0.1', 'vpn'), undefined)
})

test('removing the longer prefix lets the shorter one match again', () => {
  const t = newTable()
  t.add({source: '10.0.0.0/8', to: 'eight'}, 'runtime')
  t.add({source: '10.1.0.0/16', to: 'sixteen'}, 'runtime')
  t.remove('10.1.0.0/16')
  assert.equal(to(t, '10.1.0.1'), 'eight')
  t.add({source: '10.1.0.0/16', to: 'back'}, 'runtime')
  assert.equal(to(t, '10.1.0.1'), 'back')
})

test('expiry: lookup ignores an expired rule before the sweep; expire() returns it; nextExpiry', async () => {
  const clock = fakeClock()
  const t = newTable(clock)
  t.add({source: '10.0.0.0/8', to: 'eight'}, 'runtime')
  const soon = t.add({source: '10.1.0.0/16', to: 'soon', expiresAt: T0 + 1000}, 'runtime').rule
  const later = t.add({source: '10.1.1.0/24', to: 'later', expiresAt: T0 + 5000, listener: 'telnet'}, 'runtime').rule
  assert.equal(t.nextExpiry(), T0 + 1000)
  assert.equal(to(t, '10.1.0.1'), 'soon')
  await clock.advance(999)
  assert.deepEqual(t.expire(), [])
  assert.equal(to(t, '10.1.0.1'), 'soon')
  await clock.advance(1)
  assert.equal(to(t, '10.1.0.1'), 'eight', 'expiresAt <= now never matches')
  assert.equal(to(t, '10.1.1.1'), 'later')
  assert.equal(t.size, 3, 'still there until the sweep')
  assert.deepEqual(t.expire(), [soon])
  assert.equal(t.size, 2)
  assert.equal(t.nextExpiry(), T0 + 5000)
  await clock.advance(10_000)
  assert.equal(to(t, '10.1.1.1'), 'eight')
  assert.deepEqual(t.expire(), [later])
  assert.equal(t.nextExpiry(), undefined)
  assert.deepEqual(t.expire(), [])
})

test('an expired runtime rule uncovers the config rule it shadowed, before and after the sweep', async () => {
  const clock = fakeClock()
  const t = newTable(clock)
  t.replaceConfigRules([{source: '10.0.0.0/8', to: 'config'}])
  t.add({source: '10.0.0.0/8', to: 'runtime', expiresAt: T0 + 10}, 'runtime')
  t.add({source: '10.0.0.0/8', to: 'scoped', expiresAt: T0 + 10, listener: 'telnet'}, 'runtime')
  assert.equal(to(t, '10.0.0.1'), 'scoped')
  await clock.advance(10)
  assert.equal(to(t, '10.0.0.1'), 'config')
  assert.equal(t.expire().length, 2)
  assert.equal(to(t, '10.0.0.1'), 'config')
  assert.equal(t.nextExpiry(), undefined)
})

test('replaceConfigRules swaps config rules in one step and keeps unchanged ones', () => {
  const t = newTable()
  t.replaceConfigRules([
    {source: '10.0.0.0/8', to: 'a'},
    {source: '172.16.0.0/12', to: 'b'},
    {source: '2001:db8::/32', to: 'c', listener: 'telnet'},
  ])
  const runtime = t.add({source: '192.168.0.0/16', to: 'r'}, 'runtime').rule
  const kept = t.find('10.0.0.0/8')!
  kept.hits = 7
  const changed = t.find('172.16.0.0/12')!
  t.replaceConfigRules([
    {source: '10.0.0.0/8', to: 'a'},
    {source: '172.16.0.0/12', to: 'b2'},
    {source: '198.51.100.0/24', to: 'd'},
  ])
  assert.equal(t.find('10.0.0.0/8'), kept)
  assert.equal(kept.hits, 7)
  const changedNow = t.find('172.16.0.0/12')!
  assert.notEqual(changedNow, changed, 'a changed rule is rebuilt')
  assert.equal(changedNow.to, 'b2')
  assert.equal(changedNow.id, changed.id, 'a config rule keeps its id while its source and scope stay')
  assert.equal(t.get(changed.id), changedNow)
  assert.equal(t.find('2001:db8::/32', 'telnet'), undefined)
  assert.equal(to(t, '2001:db8::1'), undefined)
  assert.equal(to(t, '198.51.100.7'), 'd')
  assert.equal(t.get(runtime.id), runtime, 'runtime rules untouched')
  assert.equal(t.size, 4)

  const before = t.snapshot()
  assert.equal(code(() => t.replaceConfigRules([{source: '9.0.0.0/8'}, {source: 'nope'}])), 'DIVERT_ERR_INVALID_ADDRESS')
  assert.throws(
    () => t.replaceConfigRules([{source: '9.0.0.0/8'}, {source: '9.0.0.0/8', to: 'x'}]),
    (e: unknown) => e instanceof DivertError && e.code === 'DIVERT_ERR_CONFIG_INVALID' && /rules\[0\] and rules\[1\]/.test(e.message),
  )
  assert.deepEqual(t.snapshot(), before, 'a failed reload changes nothing')
  t.replaceConfigRules([])
  assert.deepEqual(t.snapshot().map((r) => r.id), [runtime.id])
})

test('issue 11.4: replaceConfigRulesAsync builds in slices beside the live rules: lookups answer from the old ones until one swap; runtime rules changed meanwhile are carried over', async () => {
  const t = newTable()
  t.replaceConfigRules([{source: '10.0.0.0/8', to: 'old'}, {source: '172.16.0.0/12', to: 'kept'}])
  const kept = t.find('172.16.0.0/12')!
  const gone = t.add({source: '192.0.2.1', to: 'gone'}, 'runtime').rule
  const specs = [{source: '10.0.0.0/8', to: 'new'}, {source: '172.16.0.0/12', to: 'kept'}]
  for (let i = 0; i < 20_000; i++) specs.push({source: `100.${(i >> 8) & 255}.${i & 255}.0/24`, to: 'bulk'})
  let yields = 0
  const seen = new Set<string | undefined>()
  const probe = (): void => {
    yields++
    seen.add(to(t, '10.1.2.3'))
    if (yields === 1) {
      t.add({source: '198.51.100.1', to: 'added-meanwhile'}, 'runtime')
      t.remove(gone.id)
    }
    if (yields < 1000) setImmediate(probe)
  }
  setImmediate(probe)
  const build = t.buildConfigRules(specs)
  await build
  assert.ok(yields >= 2, `the build let the event loop run (${yields} turns)`)
  assert.deepEqual([...seen], ['old'], 'lookups saw only the old rules before the swap')
  t.swapConfigRules(await build)
  assert.equal(to(t, '10.1.2.3'), 'new')
  assert.equal(to(t, '100.0.7.9'), 'bulk')
  assert.equal(t.find('172.16.0.0/12'), kept, 'an unchanged rule is the same object')
  assert.equal(to(t, '198.51.100.1'), 'added-meanwhile', 'a runtime rule added during the build is kept')
  assert.equal(t.get(gone.id), undefined, 'a runtime rule removed during the build stays removed')
  assert.equal(t.size, specs.length + 1)
  await assert.rejects(t.replaceConfigRulesAsync([{source: '9.0.0.0/8'}, {source: 'nope'}]), (e: unknown) => e instanceof DivertError && e.code === 'DIVERT_ERR_INVALID_ADDRESS')
  assert.equal(to(t, '10.1.2.3'), 'new', 'a failed build changes nothing')
})

test('snapshot: sorted copies; lookup returns the live rule whose hits the router counts', () => {
  const t = newTable()
  for (const source of ['10.0.0.0/8', '9.0.0.0/8', '2001:db8::/32', '10.1.0.0/16', '0.0.0.0/0', '::1']) {
    t.add({source}, 'runtime')
  }
  t.add({source: '10.0.0.0/8', listener: 'telnet'}, 'runtime')
  const snap = t.snapshot()
  assert.deepEqual(
    snap.map((r) => `${r.source}${r.listener ? '@' + r.listener : ''}`),
    ['10.1.0.0/16', '10.0.0.0/8', '10.0.0.0/8@telnet', '9.0.0.0/8', '0.0.0.0/0', '::1', '2001:db8::/32'],
  )
  snap[0].hits = 99
  snap[0].prefix.bytes[0] = 1
  const live = t.lookup('10.1.2.3', 'vpn')!
  assert.equal(live.hits, 0, 'snapshot copies are detached')
  live.hits++
  assert.equal(t.get(live.id)!.hits, 1)
  assert.equal(to(t, '10.1.2.3'), undefined)
  assert.equal(t.lookup('10.1.2.3', 'vpn')?.source, '10.1.0.0/16')
})

test('view: the admin API shape, null for absent values and ISO dates', () => {
  const t = newTable()
  const full = t.add(
    {source: '2001:DB8::/32', to: 'staging', mirror: 'm', record: '/tmp/x.pcap', listener: 'vpn', expiresAt: T0 + 60_000, note: 'ticket 42'},
    'runtime',
  ).rule
  assert.deepEqual(RuleTable.view(full), {
    id: full.id,
    source: '2001:db8::/32',
    to: 'staging',
    mirror: 'm',
    record: '/tmp/x.pcap',
    recordMaxBytes: null,
    listener: 'vpn',
    expiresAt: '2024-01-02T03:05:05.000Z',
    hits: 0,
    origin: 'runtime',
    note: 'ticket 42',
    createdAt: '2024-01-02T03:04:05.000Z',
    shadowedBy: null,
  })
  const bare = RuleTable.view(t.add({source: '10.0.0.1'}, 'runtime').rule)
  assert.deepEqual([bare.to, bare.mirror, bare.record, bare.listener, bare.expiresAt, bare.note], [null, null, null, null, null, null])
  assert.equal(JSON.stringify(Object.keys(bare)), JSON.stringify(Object.keys(RuleTable.view(full))))
})

/** Two IPv6 host addresses in 2001:db8::/32 whose words hash alike (birthday search, deterministic). */
function collidingPair(): [string, string] {
  const seen = new Map<number, number[]>()
  const rand = prng(42)
  for (let i = 0; i < 2_000_000; i++) {
    const words = [0x20010db8, 0, Math.floor(rand() * 0x100000000) | 0, Math.floor(rand() * 0x100000000) | 0]
    const h = hashWords(words[0], words[1], words[2], words[3])
    const other = seen.get(h)
    if (other && other.some((w, k) => w !== words[k])) return [v6Text(other.map((w) => w >>> 0), false), v6Text(words.map((w) => w >>> 0), false)]
    seen.set(h, words)
  }
  throw new Error('no hash collision found; the search is too short')
}

test('IPv6 rules whose keys collide in the hash map stay apart, and removal unlinks the right one', () => {
  const [a, b] = collidingPair()
  const t = newTable()
  const ra = t.add({source: a, to: 'a'}, 'runtime').rule
  const rb = t.add({source: b, to: 'b'}, 'runtime').rule
  t.add({source: '2001:db8::/32', to: 'net'}, 'runtime')
  assert.equal(to(t, a), 'a')
  assert.equal(to(t, b), 'b')
  t.remove(ra.id)
  assert.equal(to(t, a), 'net')
  assert.equal(to(t, b), 'b', 'removing the second of the chain keeps the first')
  t.add({source: a, to: 'a2'}, 'runtime')
  t.remove(rb.id)
  assert.equal(to(t, b), 'net')
  assert.equal(to(t, a), 'a2', 'removing the head keeps the rest of the chain')
  t.remove(a)
  assert.equal(to(t, a), 'net')
  assert.equal(t.size, 1)
})

// ---- 100,000 random rules against a brute-force reference ----

interface RefRule {
  family: 4 | 6
  /** Network words, unsigned. v4 uses words[0]. */
  words: number[]
  /** wordMask(length, i) for each word, precomputed to keep the brute force quick. */
  masks: number[]
  length: number
  listener?: string
  origin: RuleOrigin
  expiresAt?: number
}

function wordMask(length: number, w: number): number {
  const b = Math.max(0, Math.min(32, length - w * 32))
  return b === 0 ? 0 : b === 32 ? 0xffffffff : (0xffffffff << (32 - b)) >>> 0
}

function maskAll(family: 4 | 6, words: number[], length: number): number[] {
  return words.slice(0, family === 4 ? 1 : 4).map((x, i) => (x & wordMask(length, i)) >>> 0)
}

function v4Text(w: number): string {
  return [w >>> 24, (w >>> 16) & 255, (w >>> 8) & 255, w & 255].join('.')
}

/** Uncompressed, sometimes upper-case: deliberately not the canonical form the table prints. */
function v6Text(words: number[], upper: boolean): string {
  const groups = words.flatMap((w) => [(w >>> 16).toString(16), (w & 0xffff).toString(16)]).join(':')
  return upper ? groups.toUpperCase() : groups
}

function refContains(r: RefRule, family: 4 | 6, words: number[]): boolean {
  if (r.family !== family) return false
  const n = family === 4 ? 1 : 4
  for (let i = 0; i < n; i++) if (((words[i] & r.masks[i]) >>> 0) !== r.words[i]) return false
  return true
}

function rank(r: RefRule): number {
  return r.length * 4 + (r.listener ? 2 : 0) + (r.origin === 'runtime' ? 1 : 0)
}

/** Brute force: every rule, keep the best by (length, scoped, runtime). */
function refLookup(rules: RefRule[], family: 4 | 6, words: number[], listener: string, now: number): RefRule | undefined {
  let best: RefRule | undefined
  for (const r of rules) {
    if (r.listener !== undefined && r.listener !== listener) continue
    if (r.expiresAt !== undefined && r.expiresAt <= now) continue
    if (!refContains(r, family, words)) continue
    if (!best || rank(r) > rank(best)) best = r
  }
  return best
}

function describeRule(r: {family: 4 | 6; words: number[]; length: number; listener?: string; origin: RuleOrigin} | undefined): string {
  return r ? `${r.family}|${r.words.join(',')}|${r.length}|${r.listener ?? ''}|${r.origin}` : 'none'
}

function fromRule(rule: Rule | undefined): string {
  if (!rule) return 'none'
  const b = rule.prefix.bytes
  const words: number[] = []
  for (let i = 0; i < b.length; i += 4) words.push(((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0)
  return describeRule({family: rule.prefix.family, words, length: rule.prefix.length, listener: rule.listener, origin: rule.origin})
}

function randomRule(rand: () => number, now: number): RefRule {
  const word = (): number => Math.floor(rand() * 0x100000000) >>> 0
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]
  const family: 4 | 6 = rand() < 0.5 ? 4 : 6
  let words: number[]
  let length: number
  if (family === 4) {
    // Crowd a few /8s so prefixes nest deeply; spread the lengths over the whole range.
    words = [rand() < 0.7 ? ((pick([10, 172, 192]) << 24) | (word() & (rand() < 0.5 ? 0xffff : 0xffffff))) >>> 0 : word()]
    length = rand() < 0.3 ? pick([8, 16, 24, 32]) : Math.floor(rand() * 33)
  } else {
    words = [rand() < 0.7 ? pick([0x20010db8, 0xfe800000]) : word(), rand() < 0.5 ? word() & 0xff : word(), word(), word()]
    length = rand() < 0.3 ? pick([32, 48, 64, 128]) : Math.floor(rand() * 129)
  }
  const listener = pick([undefined, undefined, undefined, 'a', 'b'])
  const origin: RuleOrigin = rand() < 0.7 ? 'runtime' : 'config'
  const expiresAt = rand() < 0.1 ? now - 1000 + Math.floor(rand() * 2000) : undefined
  const masks = [0, 1, 2, 3].map((i) => wordMask(length, i))
  return {family, words: maskAll(family, words, length), masks, length, listener, origin, expiresAt}
}

function sourceText(r: RefRule, rand: () => number): string {
  const addr = r.family === 4 ? v4Text(r.words[0]) : v6Text(r.words, rand() < 0.5)
  return `${addr}/${r.length}`
}

/** Lookup addresses: half inside a random rule's network (random host bits), half anywhere. */
function randomClient(rand: () => number, rules: RefRule[]): {family: 4 | 6; words: number[]; text: string} {
  const word = (): number => Math.floor(rand() * 0x100000000) >>> 0
  const base = rand() < 0.5 ? rules[Math.floor(rand() * rules.length)] : randomRule(rand, 0)
  const family = base.family
  const words = base.words.slice(0, family === 4 ? 1 : 4).map((w, i) => ((w & wordMask(base.length, i)) | (word() & ~wordMask(base.length, i))) >>> 0)
  if (family === 6) return {family, words, text: v6Text(words, false)}
  const v4 = v4Text(words[0])
  return {family, words, text: rand() < 0.2 ? `::ffff:${v4}` : v4}
}

test('100,000 random rules agree with a brute-force reference on random lookups', () => {
  const seed = Number(process.env.RULES_SEED ?? Date.now() % 1_000_000)
  const rand = prng(seed)
  const clock = fakeClock()
  const now = clock.now()
  const table = newTable(clock)
  const byKey = new Map<string, RefRule>()
  const config: RefRule[] = []
  for (let i = 0; i < 100_000; i++) {
    const r = randomRule(rand, now)
    const key = describeRule(r)
    const source = sourceText(r, rand)
    if (r.origin === 'config') config.push(r)
    else table.add({source, listener: r.listener, expiresAt: r.expiresAt}, 'runtime')
    byKey.set(key, r)
  }
  const configByKey = new Map(config.map((r) => [describeRule(r), r]))
  table.replaceConfigRules([...configByKey.values()].map((r) => ({source: sourceText(r, rand), listener: r.listener, expiresAt: r.expiresAt})))
  let rules = [...byKey.values()]
  assert.equal(table.size, rules.length, `seed ${seed}`)

  const check = (rounds: number): number => {
    const byFamily = {4: rules.filter((r) => r.family === 4), 6: rules.filter((r) => r.family === 6)}
    let matched = 0
    for (let i = 0; i < rounds; i++) {
      const client = randomClient(rand, rules)
      const listener = rand() < 0.5 ? 'a' : 'b'
      const want = describeRule(refLookup(byFamily[client.family], client.family, client.words, listener, now))
      const got = fromRule(table.lookup(client.text, listener))
      assert.equal(got, want, `seed ${seed}: lookup(${client.text}, ${listener})`)
      if (want !== 'none') matched++
    }
    return matched
  }
  const matched = check(1_500)
  assert.ok(matched > 750, `most lookups should hit a rule (hit ${matched}); seed ${seed}`)

  // Remove a third (by id), sweep the expired, and check again: pruning must keep the index right.
  const snapshot = table.snapshot()
  for (let i = 0; i < snapshot.length; i++) if (rand() < 0.33) table.remove(snapshot[i].id, {allowConfig: true})
  table.expire()
  const left = new Set(table.snapshot().map((r) => fromRule(r)))
  rules = rules.filter((r) => left.has(describeRule(r)))
  assert.equal(rules.length, table.size, `seed ${seed}`)
  assert.ok(rules.every((r) => r.expiresAt === undefined || r.expiresAt > now))
  check(600)
})
