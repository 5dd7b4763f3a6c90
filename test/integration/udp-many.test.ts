/**
 * Many UDP clients at once (docs/FIELD-NOTES.md: `socat UDP-LISTEN,fork` sent most replies of 500 simultaneous
 * clients to the wrong one): 512 sockets on 64 loopback sources, 8 per address, each sending its own id.
 * Every reply must reach the client whose id it carries, and each client must be one flow.
 */
import {test, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {until} from '../helpers/servers.js'
import {startUdpEcho, UdpClient, type UdpEcho} from '../helpers/udp.js'

const ADDRESSES = 64
const PER_ADDRESS = 8
const ROUNDS = 3
/**
 * A datagram not answered within this long is sent again, at most MAX_TRIES times in all. A retry
 * is not a loss: on a busy machine the first reply may just be late (it then shows as a duplicate).
 */
const RETRY_MS = 2000
const MAX_TRIES = 3

interface Tally {
  wrong: number
  retries: number
  duplicates: number
  /** Datagrams sent, per client. */
  sent: number[]
}

let prod1: UdpEcho, prod2: UdpEcho
let d: InProcess
let port: number
const clients: UdpClient[] = []

before(async () => {
  // 512 datagrams in one burst: the backends' default 208 KiB receive buffers could overflow.
  ;[prod1, prod2] = await Promise.all([startUdpEcho('prod-1', {bufferSize: 4 << 20}), startUdpEcho('prod-2', {bufferSize: 4 << 20})])
  d = await startInProcess(`
listeners:
  - { name: many, protocol: udp, bind: "127.0.0.1:0", backend: prod }
backends:
  prod: { servers: [ { address: "${prod1.address}" }, { address: "${prod2.address}" } ] }
`)
  port = d.daemon.proxies.get('many')!.address()!.port
  for (let a = 0; a < ADDRESSES; a++) {
    const local = `127.0.1.${a + 1}`
    for (let k = 0; k < PER_ADDRESS; k++) clients.push(await UdpClient.open({local}))
  }
})

after(async () => {
  await Promise.all(clients.map((c) => c.close()))
  await d?.stop()
  await Promise.all([prod1, prod2].map((s) => s?.close()))
})

/** Sends `id:round` until its reply comes back (at most MAX_TRIES), counting replies for other ids. */
async function exchange(c: UdpClient, id: number, round: number, tally: Tally): Promise<string> {
  const want = `${id}:${round}`
  for (let attempt = 1; attempt <= MAX_TRIES; attempt++) {
    if (attempt > 1) tally.retries++
    const start = c.replies.length
    tally.sent[id]++
    await c.send(want, port)
    const deadline = Date.now() + RETRY_MS
    while (Date.now() < deadline) {
      const r = await c.next(deadline - Date.now()).catch(() => undefined)
      if (!r) break
      const [server, rid, rround] = r.payload.toString().split(':')
      if (rid !== String(id)) tally.wrong++
      else if (rround === String(round)) return server
      else tally.duplicates++
      assert.equal(r.from, `127.0.0.1:${port}`)
      if (c.replies.length - start > MAX_TRIES * ROUNDS) break
    }
  }
  throw new Error(`client ${id} got no reply to round ${round} after ${MAX_TRIES} tries`)
}

test(`${ADDRESSES * PER_ADDRESS} concurrent clients each get only their own replies, one flow each`, {timeout: 30_000}, async (t) => {
  const tally: Tally = {wrong: 0, retries: 0, duplicates: 0, sent: clients.map(() => 0)}
  const servers: Array<Set<string>> = clients.map(() => new Set())
  for (let round = 0; round < ROUNDS; round++) {
    const got = await Promise.all(clients.map((c, id) => exchange(c, id, round, tally)))
    got.forEach((s, id) => servers[id].add(s))
  }
  assert.equal(tally.wrong, 0, 'replies reached the wrong client')
  // Every datagram sent, retries included, is answered once: late replies are not lost ones.
  const sent = tally.sent.reduce((a, b) => a + b, 0)
  const answered = (): number => clients.reduce((a, c) => a + c.replies.length, 0)
  await until(() => answered() >= sent, 5000, 'a reply to every datagram sent').catch(() => undefined)
  t.diagnostic(`${sent} datagrams, ${tally.retries} retries, ${sent - answered()} lost`)
  assert.equal(answered(), sent, `loopback lost ${sent - answered()} of ${sent} datagrams (${tally.retries} retries)`)
  servers.forEach((s, id) => assert.equal(s.size, 1, `client ${id} was answered by ${[...s].join(' and ')}`))

  const flows = d.daemon.registry.snapshot({listener: 'many'})
  assert.equal(flows.length, clients.length)
  assert.deepEqual(new Set(flows.map((f) => f.client)), new Set(clients.map((c) => `${c.socket.address().address}:${c.port}`)))
  const sentBy = new Map(clients.map((c, id) => [`${c.socket.address().address}:${c.port}`, tally.sent[id]]))
  assert.ok(flows.every((f) => f.packetsIn === sentBy.get(f.client) && f.packetsOut === f.packetsIn), 'flow counters disagree with what the clients sent')
  // Server side: one upstream source per client, across both servers.
  const byId = new Map<string, Set<string>>()
  for (const dg of [...prod1.received, ...prod2.received]) {
    const id = dg.payload.toString().split(':')[0]
    byId.set(id, (byId.get(id) ?? new Set()).add(dg.from))
  }
  assert.equal(byId.size, clients.length)
  for (const [id, from] of byId) assert.equal(from.size, 1, `client ${id} reached the backend from ${[...from].join(', ')}`)
  assert.equal(prod1.sources().size + prod2.sources().size, clients.length)
  assert.equal(d.logs.find(/refused|error/).length, 0)
})
