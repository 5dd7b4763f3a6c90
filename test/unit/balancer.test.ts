import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {createBalancer, fnv1a, murmur3Block, type Balancer} from '../../src/backends/balancer.js'
import {Backend, Server} from '../../src/backends/backend.js'
import type {BackendConfig, BalanceMethod} from '../../src/config/types.js'
import {parseAddress} from '../../src/addr/address.js'

const METHODS: BalanceMethod[] = ['roundrobin', 'leastconn', 'source', 'random']

/** mulberry32: a tiny seeded PRNG so distributions are reproducible. */
function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function servers(...weights: number[]): Server[] {
  return weights.map((weight, i) => new Server({address: parseAddress(`127.0.0.${i + 1}:8000`), weight}))
}

function backendConfig(balance: BalanceMethod, weights: number[]): BackendConfig {
  return {
    name: 'b', balance, fallback: 'default', connectTimeoutMs: 1000, serverTimeoutMs: 0,
    servers: weights.map((weight, i) => ({address: parseAddress(`127.0.0.${i + 1}:9000`), weight})),
  }
}

/** 10,000 distinct client addresses across a few /16s. */
const CLIENTS = Array.from({length: 10_000}, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`)

function countPicks(pick: () => Server | undefined, n: number, all: Server[]): number[] {
  const counts = all.map(() => 0)
  for (let i = 0; i < n; i++) {
    const s = pick()
    assert.ok(s)
    counts[all.indexOf(s)]++
  }
  return counts
}

describe('roundrobin (nginx smooth weighted)', () => {
  it('gives nginx\'s documented sequence a a b a c a a for weights 5,1,1, cycle after cycle', () => {
    const s = servers(5, 1, 1)
    const names = new Map(s.map((x, i) => [x, 'abc'[i]]))
    const rr = createBalancer('roundrobin', s)
    const seq = Array.from({length: 21}, () => names.get(rr.pick(s, 'x')!)).join('')
    assert.equal(seq, 'aabacaa'.repeat(3))
  })

  it('hands out exactly the weight proportions over whole cycles', () => {
    const s = servers(3, 2, 1)
    const rr = createBalancer('roundrobin', s)
    assert.deepEqual(countPicks(() => rr.pick(s, 'x'), 6000, s), [3000, 2000, 1000])
  })

  it('equal weights alternate strictly', () => {
    const s = servers(1, 1, 1)
    const rr = createBalancer('roundrobin', s)
    const seq = Array.from({length: 6}, () => s.indexOf(rr.pick(s, 'x')!))
    assert.deepEqual(seq, [0, 1, 2, 0, 1, 2])
  })

  it('shares among the servers that are up only', () => {
    const s = servers(3, 2, 1)
    const rr = createBalancer('roundrobin', s)
    const up = [s[1], s[2]]
    const counts = countPicks(() => rr.pick(up, 'x'), 3000, s)
    assert.deepEqual(counts, [0, 2000, 1000])
  })
})

describe('leastconn', () => {
  it('picks the fewest live sessions per weight', () => {
    const s = servers(1, 1, 1)
    s[0].active = 5
    s[1].active = 2
    s[2].active = 7
    const lc = createBalancer('leastconn', s)
    assert.equal(lc.pick(s, 'x'), s[1])
    const w = servers(2, 1)
    w[0].active = 4 // 2 per weight
    w[1].active = 3 // 3 per weight
    assert.equal(createBalancer('leastconn', w).pick(w, 'x'), w[0])
  })

  it('follows active counts as sessions come and go', () => {
    const s = servers(1, 1, 1)
    const lc = createBalancer('leastconn', s)
    for (let i = 0; i < 30; i++) lc.pick(s, 'x')!.acquire()
    assert.deepEqual(s.map((x) => x.active), [10, 10, 10])
    for (let i = 0; i < 6; i++) s[2].release()
    for (let i = 0; i < 6; i++) {
      const x = lc.pick(s, 'x')!
      assert.equal(x, s[2], 'refills the emptied server first')
      x.acquire()
    }
    assert.deepEqual(s.map((x) => x.active), [10, 10, 10])
  })

  it('takes turns among tied servers instead of always the first', () => {
    const s = servers(1, 1, 1)
    const lc = createBalancer('leastconn', s)
    assert.deepEqual(Array.from({length: 6}, () => s.indexOf(lc.pick(s, 'x')!)), [0, 1, 2, 0, 1, 2])
    s[0].active = 1
    assert.deepEqual(Array.from({length: 4}, () => s.indexOf(lc.pick(s, 'x')!)), [1, 2, 1, 2])
  })

  it('honours weights under load', () => {
    const s = servers(3, 1)
    const lc = createBalancer('leastconn', s)
    for (let i = 0; i < 400; i++) lc.pick(s, 'x')!.acquire()
    assert.deepEqual(s.map((x) => x.active), [300, 100])
  })
})

describe('source (weighted rendezvous hashing)', () => {
  const assign = (bal: Balancer<Server>, up: Server[]): Map<string, Server> =>
    new Map(CLIENTS.map((c) => [c, bal.pick(up, c)!]))

  it('keeps every client on the same server, and spreads clients evenly', () => {
    const s = servers(1, 1, 1, 1, 1)
    const h = createBalancer('source', s)
    const first = assign(h, s)
    const again = assign(createBalancer('source', s), s)
    assert.deepEqual([...again].map(([, v]) => v.key), [...first].map(([, v]) => v.key))
    const counts = s.map((x) => [...first.values()].filter((v) => v === x).length)
    for (const c of counts) assert.ok(c > 1800 && c < 2200, `share ${c}/10000 is not ≈ 20%: ${counts}`)
  })

  it('removing one of 5 servers moves only that server\'s clients (≈20%)', () => {
    const s = servers(1, 1, 1, 1, 1)
    const h = createBalancer('source', s)
    const before = assign(h, s)
    const gone = s[2]
    const after = assign(h, s.filter((x) => x !== gone))
    const moved = CLIENTS.filter((c) => before.get(c) !== after.get(c))
    assert.ok(moved.every((c) => before.get(c) === gone), 'a client of a surviving server moved')
    assert.equal(moved.length, CLIENTS.filter((c) => before.get(c) === gone).length)
    assert.ok(moved.length > 1700 && moved.length < 2300, `${moved.length} of 10000 moved, expected ≈ 2000`)
    // The removed server's clients spread over the four survivors, not onto one of them.
    const to = s.filter((x) => x !== gone).map((x) => moved.filter((c) => after.get(c) === x).length)
    for (const n of to) assert.ok(n > moved.length / 4 * 0.8 && n < moved.length / 4 * 1.2, `uneven spread ${to}`)
  })

  it('adding a sixth server moves ≈1/6 of clients, all onto the new server', () => {
    const six = servers(1, 1, 1, 1, 1, 1)
    const five = six.slice(0, 5)
    const h = createBalancer('source', six)
    const before = assign(h, five)
    const after = assign(h, six)
    const moved = CLIENTS.filter((c) => before.get(c) !== after.get(c))
    assert.ok(moved.every((c) => after.get(c) === six[5]), 'a client moved between old servers')
    assert.ok(moved.length > 1400 && moved.length < 1950, `${moved.length} of 10000 moved, expected ≈ 1667`)
  })

  it('gives a server a share proportional to its weight', () => {
    const s = servers(3, 1)
    const by = assign(createBalancer('source', s), s)
    const heavy = [...by.values()].filter((v) => v === s[0]).length
    assert.ok(heavy > 7200 && heavy < 7800, `weight 3 of 4 got ${heavy}/10000`)
  })

  it('the hashes are the published functions', () => {
    // FNV-1a 32 test vectors (Fowler/Noll/Vo): "" and "a".
    assert.equal(fnv1a(''), 0x811c9dc5)
    assert.equal(fnv1a('a'), 0xe40c292c)
    // MurmurHash3_x86_32 of the 4 bytes 00 00 00 00 with seed 0 (smhasher): 0x2362f9de.
    assert.equal(murmur3Block(0, 0), 0x2362f9de)
  })
})

describe('random (power of two choices)', () => {
  /** Mean gap between the most and least loaded of 5 servers while 500 sessions churn 20,000 times. */
  function churn(choose: (s: Server[], rnd: () => number) => Server, seed: number): {meanSpread: number; totals: number[]} {
    const s = servers(1, 1, 1, 1, 1)
    const rnd = seeded(seed)
    const live: Server[] = []
    let sum = 0
    for (let i = 0; i < 20_000; i++) {
      const x = choose(s, rnd)
      x.acquire()
      live.push(x)
      if (live.length <= 500) continue
      live.splice(Math.floor(rnd() * live.length), 1)[0].release()
      const act = s.map((v) => v.active)
      sum += Math.max(...act) - Math.min(...act)
    }
    return {meanSpread: sum / (20_000 - 500), totals: s.map((x) => x.total)}
  }

  it('keeps live sessions balanced as they come and go (seeded), far better than one random choice', () => {
    let bal: Balancer<Server> | undefined
    const p2c = churn((s, rnd) => (bal ??= createBalancer('random', s, rnd)).pick(s, 'x')!, 42)
    const one = churn((s, rnd) => s[Math.floor(rnd() * s.length)], 42)
    assert.ok(p2c.meanSpread < 5, `two choices: mean spread ${p2c.meanSpread.toFixed(2)}`)
    assert.ok(one.meanSpread > 3 * p2c.meanSpread, `control: one choice ${one.meanSpread.toFixed(2)} vs two ${p2c.meanSpread.toFixed(2)}`)
    for (const t of p2c.totals) assert.ok(t > 3700 && t < 4300, `total ${t} of 20000 is not ≈ 1/5`)
  })

  it('loads servers in proportion to weight', () => {
    const s = servers(3, 1, 1)
    const bal = createBalancer('random', s, seeded(7))
    for (let i = 0; i < 5000; i++) bal.pick(s, 'x')!.acquire()
    const [a, b, c] = s.map((x) => x.active)
    assert.ok(Math.abs(a - 3000) < 60 && Math.abs(b - 1000) < 60 && Math.abs(c - 1000) < 60, `${a} ${b} ${c}`)
  })

  it('with one server up, returns it without asking twice', () => {
    const s = servers(1, 1)
    let calls = 0
    const bal = createBalancer('random', s, () => { calls++; return 0.99 })
    assert.equal(bal.pick([s[1]], 'x'), s[1])
    assert.equal(calls, 1)
  })
})

describe('every balancer', () => {
  for (const method of METHODS) {
    it(`${method}: never picks a server that is not up, nor a weight-0 one; none up → undefined`, () => {
      const s = servers(2, 1, 1, 0)
      const bal = createBalancer(method, s, seeded(1))
      const up = [s[0], s[2], s[3]]
      for (const c of CLIENTS.slice(0, 2000)) {
        const x = bal.pick(up, c)
        assert.ok(x === s[0] || x === s[2], `${method} picked ${x?.key}`)
        x.acquire()
      }
      assert.equal(bal.pick([], '10.0.0.1'), undefined)
      assert.equal(bal.pick([s[3]], '10.0.0.1'), undefined)
    })
  }

  it('rejects an unknown method with the config error', () => {
    assert.throws(() => createBalancer('hash' as BalanceMethod, []), /DIVERT_ERR_CONFIG_INVALID|balance "hash"/)
  })
})

describe('Backend and Server', () => {
  it('picks only among servers that are up, and sees health changes at once', () => {
    for (const method of METHODS) {
      const b = new Backend(backendConfig(method, [1, 1, 1]), {random: seeded(3)})
      b.servers[0].up = false
      b.servers[2].up = false
      for (let i = 0; i < 50; i++) assert.equal(b.pick(`10.0.0.${i}`), b.servers[1], method)
      b.servers[1].up = false
      assert.equal(b.anyUp(), false)
      assert.equal(b.pick('10.0.0.1'), undefined)
      b.servers[2].up = true
      assert.equal(b.anyUp(), true)
      assert.equal(b.pick('10.0.0.1'), b.servers[2])
    }
  })

  it('pick does not acquire; acquire/release count live and total sessions', () => {
    const b = new Backend(backendConfig('roundrobin', [1]))
    const s = b.pick('10.0.0.1')!
    assert.equal(s.active, 0)
    s.acquire()
    s.acquire()
    s.release()
    s.release()
    s.release() // an extra release never goes negative
    assert.deepEqual([s.active, s.total], [0, 2])
  })

  it('stamps lastChange only on a real transition', () => {
    let now = 1000
    const b = new Backend(backendConfig('roundrobin', [1]), {now: () => now})
    const s = b.servers[0]
    assert.equal(s.lastChange, 1000)
    now = 2000
    s.up = true
    assert.equal(s.lastChange, 1000)
    s.up = false
    assert.equal(s.lastChange, 2000)
  })

  it('snapshot is plain camelCase JSON', () => {
    const cfg = {...backendConfig('leastconn', [2, 1]), proxyProtocol: 'v2' as const, health: {check: 'tcp' as const, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3}}
    const b = new Backend({...cfg, servers: [{address: parseAddress('[::1]:23'), weight: 2}, cfg.servers[1]]}, {now: () => 5})
    b.servers[0].acquire()
    b.servers[1].up = false
    b.servers[1].lastCheck = {ok: false, at: 6, error: 'connect ECONNREFUSED'}
    const view = JSON.parse(JSON.stringify(b.snapshot()))
    assert.deepEqual(view, {
      name: 'b', balance: 'leastconn', proxyProtocol: 'v2', fallback: 'default',
      health: {check: 'tcp', intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3},
      servers: [
        {address: '[::1]:23', weight: 2, up: true, active: 1, total: 1, lastChange: 5, lastCheck: null},
        {address: '127.0.0.2:9000', weight: 1, up: false, active: 0, total: 0, lastChange: 5, lastCheck: {ok: false, at: 6, error: 'connect ECONNREFUSED'}},
      ],
    })
    assert.deepEqual(new Backend(backendConfig('source', [1])).snapshot().proxyProtocol, null)
  })
})
