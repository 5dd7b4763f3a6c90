/**
 * The UDP path end to end with real loopback sockets and an in-process daemon: per-client flows that
 * keep their server and upstream socket, per-source rules (IPv4 and IPv6), `udp.key`, idle timeout,
 * max_flows, 64 KiB datagrams, an unreachable backend port, PROXY v2 over DGRAM, and sessions/kill.
 */
import {test, describe, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {randomBytes, createHash} from 'node:crypto'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {freeUdpPort, until} from '../helpers/servers.js'
import {startUdpEcho, UdpClient, raw, silent, type UdpEcho, type Datagram} from '../helpers/udp.js'
import {AdminClient} from '../../src/admin/client.js'
import {parseCidr} from '../../src/addr/cidr.js'
import type {DaemonOptions} from '../../src/daemon.js'

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** A daemon plus the clients a test opened, all closed by `stop()`. */
interface Lab {
  d: InProcess
  port(listener: string): number
  client(local?: string, bufferSize?: number): Promise<UdpClient>
  flows(listener: string, address?: string): ReturnType<InProcess['daemon']['registry']['snapshot']>
  stop(): Promise<void>
}

/** Listeners bind port 0; `port(name)` reads the port the kernel chose (no free-port race). */
async function lab(yaml: string, opts: Partial<DaemonOptions> = {}): Promise<Lab> {
  const d = await startInProcess(yaml, opts)
  const clients: UdpClient[] = []
  return {
    d,
    port: (name) => d.daemon.proxies.get(name)!.address()!.port,
    client: async (local = '127.0.0.1', bufferSize) => {
      const c = await UdpClient.open({local, bufferSize})
      clients.push(c)
      return c
    },
    flows: (listener, address) => d.daemon.registry.snapshot({listener, source: address ? parseCidr(address) : undefined}),
    stop: async () => {
      await Promise.all(clients.map((c) => c.close()))
      await d.stop()
    },
  }
}

const text = (d: Datagram): string => d.payload.toString('utf8')

describe('UDP flows and rules', () => {
  let prod1: UdpEcho, prod2: UdpEcho, staging: UdpEcho
  let l: Lab

  before(async () => {
    ;[prod1, prod2, staging] = await Promise.all([startUdpEcho('prod-1'), startUdpEcho('prod-2'), startUdpEcho('staging')])
    l = await lab(`
listeners:
  - { name: main, protocol: udp, bind: "127.0.0.1:0", backend: prod }
  - { name: v6, protocol: udp, bind: "[::1]:0", backend: prod }
  - { name: v6-plain, protocol: udp, bind: "[::1]:0", backend: prod }
backends:
  prod: { balance: roundrobin, servers: [ { address: "${prod1.address}" }, { address: "${prod2.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
rules:
  - { source: 127.0.0.2, to: staging }
  - { source: "::1", to: staging, listener: v6 }
`)
  })

  after(async () => {
    await l?.stop()
    await Promise.all([prod1, prod2, staging].map((s) => s?.close()))
  })

  test('each client keeps one server and one upstream socket; replies come from the listener', async () => {
    const port = l.port('main')
    const sources = [10, 11, 12, 13, 14, 15].map((n) => `127.0.0.${n}`)
    const clients = await Promise.all(sources.map((a) => l.client(a)))
    // Rounds of concurrent requests, so the clients' datagrams interleave at the listener.
    for (let round = 0; round < 5; round++) {
      const replies = await Promise.all(clients.map((c, i) => c.request(`c${i}-${round}`, port)))
      replies.forEach((r, i) => {
        assert.match(text(r), new RegExp(`^prod-[12]:c${i}-${round}$`), `client ${i} got someone else's reply`)
        assert.equal(r.from, `127.0.0.1:${port}`, 'the reply must come from the address the client sent to')
      })
    }
    clients.forEach((c, i) => {
      const servers = new Set(c.replies.map((r) => text(r).split(':')[0]))
      assert.equal(servers.size, 1, `client ${i} was answered by ${[...servers].join(' and ')}`)
    })
    const all = [...prod1.received, ...prod2.received]
    const upstreams = clients.map((_, i) => new Set(all.filter((d) => text(d).startsWith(`c${i}-`)).map((d) => d.from)))
    upstreams.forEach((u, i) => assert.equal(u.size, 1, `client ${i} reached its server from ${[...u].join(', ')}`))
    assert.equal(new Set(upstreams.map((u) => [...u][0])).size, clients.length, 'two clients shared an upstream socket')
    assert.ok(prod1.received.length > 0 && prod2.received.length > 0, 'round robin should use both prod servers')
    const flows = sources.flatMap((a) => l.flows('main', a))
    assert.equal(flows.length, clients.length)
    assert.ok(flows.every((f) => f.protocol === 'udp' && f.backend === 'prod'))
  })

  test('a rule sends 127.0.0.2 to staging while 127.0.0.3 reaches prod', async () => {
    const port = l.port('main')
    const [two, three] = await Promise.all([l.client('127.0.0.2'), l.client('127.0.0.3')])
    assert.equal(text(await two.request('hello', port)), 'staging:hello')
    assert.match(text(await three.request('hello', port)), /^prod-[12]:hello$/)
    const [flow] = l.flows('main', '127.0.0.2')
    assert.equal(flow.backend, 'staging')
    assert.ok(flow.rule, 'the flow should name the rule that diverted it')
  })

  test('IPv6 listener on [::1]: a listener-scoped rule diverts ::1; the other v6 listener does not', async () => {
    const c = await l.client('::1')
    const v6 = await c.request('six', l.port('v6'), '::1')
    assert.equal(text(v6), 'staging:six')
    assert.equal(v6.from, `[::1]:${l.port('v6')}`)
    const plain = await c.request('six', l.port('v6-plain'), '::1')
    assert.match(text(plain), /^prod-[12]:six$/)
    assert.equal(plain.from, `[::1]:${l.port('v6-plain')}`)
    assert.equal(l.flows('v6')[0].client, `[::1]:${c.port}`)
  })
})

describe('udp.key', () => {
  let prod1: UdpEcho, prod2: UdpEcho
  let l: Lab

  before(async () => {
    ;[prod1, prod2] = await Promise.all([startUdpEcho('prod-1'), startUdpEcho('prod-2')])
    l = await lab(`
listeners:
  - { name: by-address, protocol: udp, bind: "127.0.0.1:0", backend: prod, udp: { key: address } }
  - { name: by-port, protocol: udp, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "${prod1.address}" }, { address: "${prod2.address}" } ] }
`)
  })

  after(async () => {
    await l?.stop()
    await Promise.all([prod1, prod2].map((s) => s?.close()))
  })

  const upstreamOf = (tag: string): Set<string> => new Set([...prod1.received, ...prod2.received].filter((d) => text(d).endsWith(tag)).map((d) => d.from))

  test('key: address — a client that changes its source port keeps its flow; replies go to the new port', async () => {
    const port = l.port('by-address')
    const first = await l.client('127.0.0.20')
    const a = text(await first.request('before#A', port))
    const flow = l.flows('by-address', '127.0.0.20')
    assert.equal(flow.length, 1)
    const moved = await l.client('127.0.0.20')
    assert.notEqual(moved.port, first.port)
    const b = await moved.request('after#A', port)
    assert.equal(text(b).split(':')[0], a.split(':')[0], 'the moved client reached another server')
    assert.equal(upstreamOf('#A').size, 1, 'the moved client got a new upstream socket')
    const now = l.flows('by-address', '127.0.0.20')
    assert.deepEqual(now.map((f) => f.id), flow.map((f) => f.id))
    assert.equal(first.replies.length, 1, 'the reply went to the old port')
    assert.equal(b.from, `127.0.0.1:${port}`)
  })

  test('key: address-port (default) — a new source port is a new flow', async () => {
    const port = l.port('by-port')
    const first = await l.client('127.0.0.21')
    await first.request('before#B', port)
    const second = await l.client('127.0.0.21')
    await second.request('after#B', port)
    const flows = l.flows('by-port', '127.0.0.21')
    assert.equal(flows.length, 2)
    assert.deepEqual(new Set(flows.map((f) => f.client)), new Set([`127.0.0.21:${first.port}`, `127.0.0.21:${second.port}`]))
    assert.equal(upstreamOf('#B').size, 2)
  })
})

describe('udp.key: address — a client that moved', () => {
  let prod: UdpEcho
  let l: Lab

  before(async () => {
    prod = await startUdpEcho('prod', {proxyProtocol: true})
    l = await lab(`
listeners:
  - { name: by-address, protocol: udp, bind: "127.0.0.1:0", backend: prod, udp: { key: address } }
backends:
  prod: { servers: [ { address: "${prod.address}" } ], proxy_protocol: v2 }
`)
  })

  after(async () => {
    await l?.stop()
    await prod?.close()
  })

  test('issue 11.21: the session shows the client\'s new port (sessions view, PROXY header, close line) and replies go there', async () => {
    const port = l.port('by-address')
    const first = await l.client('127.0.0.23')
    assert.equal(text(await first.request('one', port)), 'prod:one')
    const moved = await l.client('127.0.0.23')
    assert.notEqual(moved.port, first.port)
    assert.equal(text(await moved.request('two', port)), 'prod:two')
    assert.equal(first.replies.length, 1, 'the reply went to the new port, not the first one')
    const admin = new AdminClient(l.d.admin)
    try {
      const views = await admin.sessions({source: '127.0.0.23'})
      assert.deepEqual(views.map((v) => v.client), [`127.0.0.23:${moved.port}`])
      assert.deepEqual(await admin.killSession(views[0].id), {killed: 1})
      const line = l.d.logs.find('session closed').find((x) => x.session === views[0].id)
      assert.equal(line?.client, `127.0.0.23:${moved.port}`)
      assert.equal(line?.bytesIn, 'onetwo'.length)
      assert.deepEqual(prod.received.at(-1)!.header?.source, {address: '127.0.0.23', port: moved.port}, 'the PROXY header names the new port')
    } finally {
      await admin.close()
    }
  })
})

describe('udp.idle_timeout', () => {
  let prod: UdpEcho, mute: UdpEcho
  let l: Lab

  before(async () => {
    ;[prod, mute] = await Promise.all([startUdpEcho('prod'), startUdpEcho('mute', {reply: silent})])
    l = await lab(`
listeners:
  - { name: idle, protocol: udp, bind: "127.0.0.1:0", backend: prod, udp: { idle_timeout: 1s } }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  mute: { servers: [ { address: "${mute.address}" } ] }
rules:
  - { source: 127.0.0.31, to: mute }
`, {tickMs: 100})
  })

  after(async () => {
    await l?.stop()
    await Promise.all([prod, mute].map((s) => s?.close()))
  })

  /** Resolves with how long after `since` the client's flow left the registry. */
  async function goneAfter(address: string, since: number): Promise<number> {
    await until(() => l.flows('idle', address).length === 0, 4000, `the flow of ${address} to expire`)
    return Date.now() - since
  }

  test('a silent flow closes after ~1 s and logs idle-timeout; so does one whose backend never answers', async () => {
    const port = l.port('idle')
    const [talker, ignored] = await Promise.all([l.client('127.0.0.30'), l.client('127.0.0.31')])
    await talker.request('once', port)
    const t0 = Date.now()
    await ignored.send('into the void', port)
    await until(() => mute.received.length === 1, 2000, 'the datagram to reach the mute backend')
    assert.equal(l.flows('idle', '127.0.0.31').length, 1)
    const [a, b] = await Promise.all([goneAfter('127.0.0.30', t0), goneAfter('127.0.0.31', t0)])
    for (const ms of [a, b]) assert.ok(ms >= 900 && ms < 2000, `closed ${ms} ms after the last datagram, expected ~1000`)
    const closes = l.d.logs.find('session closed').filter((x) => x.listener === 'idle')
    assert.deepEqual(closes.map((x) => x.cause), ['idle-timeout', 'idle-timeout'])
    assert.equal(closes.find((x) => x.client.startsWith('127.0.0.31:'))?.bytesOut, 0)
    assert.equal(mute.received.length, 1)
  })

  test('a flow with steady traffic is not closed', async () => {
    const port = l.port('idle')
    const c = await l.client('127.0.0.32')
    await c.request('0', port)
    const [flow] = l.flows('idle', '127.0.0.32')
    // 2.5 s of traffic every 200 ms: 2.5 idle timeouts, never 1 s of silence.
    for (let i = 1; i <= 12; i++) {
      await new Promise((r) => setTimeout(r, 200))
      assert.equal(text(await c.request(String(i), port)), `prod:${i}`)
    }
    assert.deepEqual(l.flows('idle', '127.0.0.32').map((f) => f.id), [flow.id])
    assert.equal(l.d.logs.find('session closed').filter((x) => x.session === flow.id).length, 0)
  })
})

describe('udp.max_flows', () => {
  let prod: UdpEcho
  let l: Lab

  before(async () => {
    prod = await startUdpEcho('prod')
    l = await lab(`
listeners:
  - { name: limited, protocol: udp, bind: "127.0.0.1:0", backend: prod, udp: { max_flows: 3 } }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
`)
  })

  after(async () => {
    await l?.stop()
    await prod?.close()
  })

  test('the 4th client is dropped, counted and logged once; the first three are unaffected', async () => {
    const port = l.port('limited')
    const clients = await Promise.all([40, 41, 42, 43].map((n) => l.client(`127.0.0.${n}`)))
    const [first, , , fourth] = clients
    for (const c of clients.slice(0, 3)) await c.request('hi', port)
    const ids = l.flows('limited').map((f) => f.id).sort()
    for (let i = 0; i < 5; i++) await fourth.send(`drop ${i}`, port)
    // The listener reads datagrams in arrival order: once this reply is back, the 4th client's were handled.
    assert.equal(text(await first.request('still here', port)), 'prod:still here')
    assert.equal(fourth.replies.length, 0)
    assert.equal(prod.received.filter((d) => text(d).startsWith('drop')).length, 0)
    assert.equal(l.d.daemon.refused.get('limited'), 5)
    const refusals = l.d.logs.find(/refused/).filter((x) => x.listener === 'limited')
    assert.equal(refusals.length, 1, 'refusals are logged once, not per datagram')
    assert.match(refusals[0].reason, /max_flows \(3\)/)
    assert.match(refusals[0].client, /^127\.0\.0\.43:/)
    for (const c of clients.slice(0, 3)) assert.equal(text(await c.request('again', port)), 'prod:again')
    assert.deepEqual(l.flows('limited').map((f) => f.id).sort(), ids)
    const admin = new AdminClient(l.d.admin)
    try {
      assert.match(await admin.metrics(), /^divert_sessions_refused_total\{listener="limited"\} 5$/m)
    } finally {
      await admin.close()
    }
  })
})

describe('UDP datagram sizes, unreachable ports, PROXY v2', () => {
  let prod: UdpEcho, big: UdpEcho, pp: UdpEcho
  let deadPort: number
  let l: Lab

  before(async () => {
    ;[prod, big, pp] = await Promise.all([
      startUdpEcho('prod'), startUdpEcho('big', {reply: raw, bufferSize: 1 << 20}), startUdpEcho('pp', {proxyProtocol: true}),
    ])
    deadPort = await freeUdpPort()
    l = await lab(`
listeners:
  - { name: main, protocol: udp, bind: "127.0.0.1:0", backend: prod }
  - { name: big, protocol: udp, bind: "127.0.0.1:0", backend: big }
  - { name: pp, protocol: udp, bind: "127.0.0.1:0", backend: pp }
  - { name: pp6, protocol: udp, bind: "[::1]:0", backend: pp }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  big: { servers: [ { address: "${big.address}" } ] }
  pp: { servers: [ { address: "${pp.address}" } ], proxy_protocol: v2 }
  dead: { servers: [ { address: "127.0.0.1:${deadPort}" } ] }
  broadcast: { servers: [ { address: "127.255.255.255:${deadPort}" } ] }
rules:
  - { source: 127.0.0.50, to: dead }
  - { source: 127.0.0.55, to: broadcast }
`)
  })

  after(async () => {
    await l?.stop()
    await Promise.all([prod, big, pp].map((s) => s?.close()))
  })

  test('65,507-byte datagrams (the IPv4 maximum) arrive intact both ways', async () => {
    const c = await l.client('127.0.0.1', 1 << 20)
    for (let i = 0; i < 3; i++) {
      const payload = randomBytes(65_507)
      const back = await c.request(payload, l.port('big'))
      assert.equal(back.payload.length, payload.length)
      assert.equal(sha(back.payload), sha(payload))
      assert.equal(sha(big.received.at(-1)!.payload), sha(payload))
    }
    const [flow] = l.flows('big')
    assert.equal(flow.bytesIn, 3 * 65_507)
    assert.equal(flow.bytesOut, 3 * 65_507)
  })

  test('a backend port with nothing listening (ECONNREFUSED) breaks neither the listener nor other flows', async () => {
    const port = l.port('main')
    const [victim, bystander] = await Promise.all([l.client('127.0.0.50'), l.client('127.0.0.51')])
    await bystander.request('before', port)
    const [flow] = l.flows('main', '127.0.0.51')
    // Each datagram to the dead port draws an ICMP port unreachable; each bystander reply is a barrier.
    for (let i = 0; i < 5; i++) {
      await victim.send(`to nowhere ${i}`, port)
      assert.equal(text(await bystander.request(`between ${i}`, port)), `prod:between ${i}`)
    }
    assert.equal(victim.replies.length, 0)
    const newcomer = await l.client('127.0.0.52')
    assert.equal(text(await newcomer.request('new', port)), 'prod:new')
    assert.deepEqual(l.flows('main', '127.0.0.51').map((f) => f.id), [flow.id])
    const [dead] = l.flows('main', '127.0.0.50')
    assert.equal(dead.backend, 'dead')
    assert.equal(dead.packetsIn, 5)
    l.d.daemon.registry.kill({source: parseCidr('127.0.0.50')})
    const line = l.d.logs.find('session closed').find((x) => x.session === dead.id)
    assert.ok(line && line.upstreamErrors >= 1, `the ICMP errors should be counted on the flow: ${JSON.stringify(line)}`)
    assert.deepEqual(l.d.logs.find('udp listener error'), [])
  })

  test('an upstream socket that cannot connect ends its flow (connect-failed), not the daemon', async () => {
    const port = l.port('main')
    const [victim, bystander] = await Promise.all([l.client('127.0.0.55'), l.client('127.0.0.56')])
    // connect(2) to lo's broadcast address without SO_BROADCAST fails with EACCES (ip(7)); nothing is sent.
    await victim.send('one', port)
    await victim.send('two', port)
    await until(() => l.d.logs.find('session closed').filter((x) => x.client.startsWith('127.0.0.55:')).length === 2, 2000, 'two failed flows')
    const failed = l.d.logs.find('session closed').filter((x) => x.client.startsWith('127.0.0.55:'))
    assert.deepEqual(failed.map((x) => [x.cause, x.error, x.backend]), [['connect-failed', 'EACCES', 'broadcast'], ['connect-failed', 'EACCES', 'broadcast']])
    assert.equal(l.flows('main', '127.0.0.55').length, 0)
    assert.equal(text(await bystander.request('fine', port)), 'prod:fine')
  })

  test('PROXY v2 over UDP: every datagram carries a DGRAM header naming the client and the listener', async () => {
    const c = await l.client('127.0.0.60')
    const before = pp.received.length
    for (let i = 0; i < 3; i++) assert.equal(text(await c.request(`payload ${i}`, l.port('pp'))), `pp:payload ${i}`)
    const got = pp.received.slice(before)
    assert.equal(got.length, 3)
    got.forEach((d, i) => {
      assert.equal(text(d), `payload ${i}`)
      assert.deepEqual({version: d.header?.version, command: d.header?.command, transport: d.header?.transport}, {version: 2, command: 'PROXY', transport: 'dgram'})
      assert.deepEqual(d.header?.source, {address: '127.0.0.60', port: c.port})
      assert.deepEqual(d.header?.destination, {address: '127.0.0.1', port: l.port('pp')})
    })
    assert.equal(pp.badHeaders, 0)
  })

  test('PROXY v2 over UDP from an IPv6 listener names the IPv6 client', async () => {
    const c = await l.client('::1')
    assert.equal(text(await c.request('v6', l.port('pp6'), '::1')), 'pp:v6')
    const d = pp.received.at(-1)!
    assert.deepEqual(d.header?.source, {address: '::1', port: c.port})
    assert.deepEqual(d.header?.destination, {address: '::1', port: l.port('pp6')})
  })
})

describe('UDP sessions: listing and kill', () => {
  let prod: UdpEcho, staging: UdpEcho
  let l: Lab

  before(async () => {
    ;[prod, staging] = await Promise.all([startUdpEcho('prod'), startUdpEcho('staging')])
    l = await lab(`
listeners:
  - { name: main, protocol: udp, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  staging: { servers: [ { address: "${staging.address}" } ] }
`)
  })

  after(async () => {
    await l?.stop()
    await Promise.all([prod, staging].map((s) => s?.close()))
  })

  test('flows are listed with protocol udp and counters both ways', async () => {
    const c = await l.client('127.0.0.70')
    for (let i = 0; i < 3; i++) await c.request('0123456789', l.port('main'))
    const admin = new AdminClient(l.d.admin)
    try {
      const [s] = await admin.sessions({source: '127.0.0.70'})
      assert.equal(s.protocol, 'udp')
      assert.equal(s.client, `127.0.0.70:${c.port}`)
      assert.equal(s.listener, 'main')
      assert.equal(s.backend, 'prod')
      assert.equal(s.server, prod.address)
      assert.deepEqual([s.packetsIn, s.packetsOut, s.bytesIn, s.bytesOut], [3, 3, 30, 3 * 'prod:0123456789'.length])
    } finally {
      await admin.close()
    }
  })

  test('a new rule keeps the live flow; after kill the next datagram opens a flow under the new rule', async () => {
    const port = l.port('main')
    const c = await l.client('127.0.0.71')
    assert.equal(text(await c.request('1', port)), 'prod:1')
    const [old] = l.flows('main', '127.0.0.71')
    l.d.daemon.rules.add({source: '127.0.0.71', to: 'staging'}, 'runtime')
    assert.equal(text(await c.request('2', port)), 'prod:2', 'the live flow keeps its server')
    const admin = new AdminClient(l.d.admin)
    try {
      assert.deepEqual(await admin.killSession(old.id), {killed: 1})
    } finally {
      await admin.close()
    }
    assert.equal(l.flows('main', '127.0.0.71').length, 0)
    assert.equal(l.d.logs.find('session closed').find((x) => x.session === old.id)?.cause, 'killed')
    assert.equal(text(await c.request('3', port)), 'staging:3')
    const [fresh] = l.flows('main', '127.0.0.71')
    assert.notEqual(fresh.id, old.id)
    assert.equal(fresh.backend, 'staging')
    assert.equal(fresh.client, `127.0.0.71:${c.port}`)
  })
})

test('zero-length keepalive datagrams keep a flow alive past the idle timeout', async () => {
  const echo = await startUdpEcho('keep', {reply: silent})
  const h = await startInProcess(`
listeners: [ { name: k, protocol: udp, bind: "127.0.0.1:0", backend: b, udp: { idle_timeout: 1s } } ]
backends: { b: { servers: [ { address: "127.0.0.1:${echo.port}" } ] } }
`, {tickMs: 100})
  const client = await UdpClient.open({local: '127.0.0.1'})
  try {
    const port = h.daemon.proxies.get('k')!.address()!.port
    const started = Date.now()
    while (Date.now() - started < 2500) {
      await client.send(Buffer.alloc(0), port)
      await new Promise((r) => setTimeout(r, 200))
    }
    assert.equal(h.logs.find('session closed').length, 0, 'the flow was never closed as idle')
    assert.equal(echo.sources().size, 1, 'one upstream socket for the whole time')
  } finally {
    await client.close()
    await h.stop()
    await echo.close()
  }
})
