/**
 * Issue 13 acceptance: gateway mode. divert runs on a LAN's gateway and diverts one device without
 * touching it or anyone else: only sources with rules are steered into divert (TPROXY), everyone
 * else is routed by the kernel as before.
 *
 *   dev1 192.0.2.10 ┐                 ┌ prod    198.51.100.10 (TCP and UDP: "prod sees <peer>")
 *   dev2 192.0.2.11 ┴─ lan ─ gw ─ srv ┴ staging 198.51.100.20 (the same, "staging sees <peer>")
 *                           (divert)
 *
 * Every namespace, link, nftables table and policy route exists only inside namespaces this test
 * creates (prefix dvg + pid) and is removed in `after`, also on failure. The servers listen on port 0
 * and say which ports they got; divert's TPROXY listener binds port 0 and its rules name the port it got.
 */
import {execFile} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'
import assert from 'node:assert/strict'
import {after, before, describe, it} from 'node:test'
import {gatewayTopology, Lab, netnsUnavailableReason, whichCommand, type LabProcess} from '../helpers/netns.js'
import {BIN} from '../helpers/daemon.js'

const execFileP = promisify(execFile)

const NET = {gwLan: '192.0.2.1', dev1: '192.0.2.10', dev2: '192.0.2.11', gwSrv: '198.51.100.1', prod: '198.51.100.10', staging: '198.51.100.20'}

const skipReason = netnsUnavailableReason() ?? (whichCommand('nft') ? undefined : 'needs `nft` (apt-get install nftables)')


/** Servers that report the peer they see: TCP writes one line and waits for the client's FIN; UDP answers each datagram. */
const REPORTER = `
const net = require('node:net'), dgram = require('node:dgram')
const [, ...specs] = process.argv
const ports = {}
let pending = specs.length * 2
const ready = () => { if (--pending === 0) console.log(JSON.stringify(ports)) }
for (const spec of specs) {
  const [name, host] = spec.split('=')
  const t = net.createServer({allowHalfOpen: true}, (s) => {
    s.on('error', () => {})
    s.write(name + ' sees ' + s.remoteAddress + '\\n')
    s.on('end', () => s.end()); s.resume()
  })
  t.listen(0, host, () => { ports[name + '-tcp'] = t.address().port; ready() })
  const u = dgram.createSocket('udp4')
  u.on('message', (m, r) => u.send(name + ' sees ' + r.address + ':' + r.port, r.port, r.address))
  u.bind(0, host, () => { ports[name + '-udp'] = u.address().port; ready() })
}
`

/**
 * A device's client: TCP prints the server's line (then holds the connection HOLD ms, so divert's
 * session list can be read meanwhile); UDP prints the reply and the address it came from.
 */
const CLIENT = `
const net = require('node:net'), dgram = require('node:dgram')
const [, proto, host, port, hold] = process.argv
const fail = (e) => { console.log('ERROR ' + e.message); process.exit(1) }
setTimeout(() => fail(new Error('no answer within 5 s')), 5000).unref()
if (proto === 'tcp') {
  const s = net.connect({host, port: Number(port), allowHalfOpen: true})
  s.on('error', fail)
  s.once('data', (d) => { console.log(String(d).trim()); setTimeout(() => s.end(), Number(hold || 0)) })
  s.on('end', () => process.exit(0))
} else {
  const u = dgram.createSocket('udp4')
  u.on('message', (m, r) => { console.log(String(m) + ' from ' + r.address + ':' + r.port); u.close() })
  u.send('hello', Number(port), host)
}
`

interface Ports {'prod-tcp': number; 'prod-udp': number; 'staging-tcp': number; 'staging-udp': number}

interface World {
  lab: Lab
  dir: string
  ns: {dev1: string; dev2: string; gw: string; srv: string}
  ports: Ports
  table: string
  config: string
  admin: string
  divert?: LabProcess
}

function buildLab(lab: Lab): Promise<World['ns']> {
  return gatewayTopology(lab, {gwLan: NET.gwLan, dev1: NET.dev1, dev2: NET.dev2, gwSrv: NET.gwSrv, servers: [NET.prod, NET.staging]})
}

async function startWorld(lab: Lab, dir: string): Promise<World> {
  const ns = await buildLab(lab)
  const reporter = lab.spawn(ns.srv, 'servers', process.execPath, ['-e', REPORTER, `prod=${NET.prod}`, `staging=${NET.staging}`])
  const ports = JSON.parse((await reporter.waitFor(/^\{.*\}$/, {timeoutMs: 10_000}))[0]) as Ports
  const table = `dvg${process.pid}`
  const config = join(dir, 'divert.yaml')
  const client = ', source: client'
  await writeFile(config, `
state: ${join(dir, 'state.json')}
transparent: { manage: true, table: ${table}${client} }
listeners:
  - { name: gw, protocol: tcp, bind: "0.0.0.0:0", transparent: true, backend: original, intercept: { ports: [${ports['prod-tcp']}] } }
  - { name: gwu, protocol: udp, bind: "${NET.prod}:${ports['prod-udp']}", transparent: true, backend: original, intercept: {} }
backends:
  staging: { servers: [ { address: "${NET.staging}:${ports['staging-tcp']}" } ], health: { check: none }${client} }
  staging-udp: { servers: [ { address: "${NET.staging}:${ports['staging-udp']}" } ], health: { check: none }${client} }
`)
  return {lab, dir, ns, ports, table, config, admin: join(dir, 'admin.sock')}
}

async function startDivert(w: World): Promise<LabProcess> {
  const p = w.lab.spawn(w.ns.gw, 'divert', process.execPath, [BIN, 'start', '-c', w.config, '--log-format', 'json', '--drain', '1s', '--admin', w.admin])
  await p.waitFor(/"msg":"divert ready"/, {timeoutMs: 20_000})
  w.divert = p
  return p
}

async function divert(w: World, ...args: string[]): Promise<string> {
  try {
    return (await execFileP(process.execPath, [BIN, ...args, '--admin', w.admin], {timeout: 20_000})).stdout
  } catch (err) {
    const e = err as {stderr?: string; message: string}
    throw new Error(`divert ${args.join(' ')} failed: ${e.stderr || e.message}`, {cause: err})
  }
}

interface SessionJson {client: string; backend: string; server: string; destination: string | null; protocol: string}

async function sessions(w: World): Promise<SessionJson[]> {
  return JSON.parse(await divert(w, 'sessions', '--json')) as SessionJson[]
}

/** What a device sees when it dials `host:port` (the one line the server, or divert on its behalf, answers). */
function dial(w: World, dev: 'dev1' | 'dev2', proto: 'tcp' | 'udp', host: string, port: number): Promise<string> {
  return w.lab.run(w.ns[dev], process.execPath, ['-e', CLIENT, proto, host, String(port)]).then((out) => out.trim())
}

/** Lines divert logged for sessions of `client` since `from`. */
function closedSessions(p: LabProcess, client: string, from: number): Array<Record<string, unknown>> {
  return p.lines.slice(from).filter((l) => l.includes('"session closed"')).map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => String(l.client).startsWith(`${client}:`))
}

async function kernelState(w: World): Promise<{tables: string; rules: string; routes: string}> {
  return {
    tables: await w.lab.run(w.ns.gw, 'nft', ['list', 'tables']),
    rules: await w.lab.run(w.ns.gw, 'ip', ['rule', 'show']),
    routes: await w.lab.run(w.ns.gw, 'ip', ['route', 'show', 'table', 'all', 'proto', '247']),
  }
}

function assertInstalled(k: {tables: string; rules: string; routes: string}, table: string): void {
  assert.match(k.tables, new RegExp(`table inet ${table}\\b`))
  assert.match(k.rules, /fwmark 0x1d1\/0x1d1 lookup 465 proto 247/)
  assert.match(k.routes, /local default dev lo table 465\b/)
}

function assertRemoved(k: {tables: string; rules: string; routes: string}, table: string): void {
  assert.doesNotMatch(k.tables, new RegExp(`table inet ${table}\\b`), `divert's table is still there:\n${k.tables}`)
  assert.doesNotMatch(k.rules, /fwmark|proto 247/, `a policy rule is still there:\n${k.rules}`)
  assert.equal(k.routes.trim(), '', `a route of divert's is still there:\n${k.routes}`)
}

describe('issue 13: gateway mode in network namespaces', {skip: skipReason}, () => {
  const lab = new Lab(`dvg${process.pid}`)
  let dir = ''
  let w: World
  const seen = NET.dev1

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'divert-gateway-'))
    w = await startWorld(lab, dir)
    await startDivert(w)
  }, {timeout: 60_000})

  after(async () => {
    const keep = Boolean(process.env.DIVERT_E2E_KEEP_LOGS) && dir !== ''
    await lab.close(keep ? dir : undefined)
    if (keep) console.error(`# gateway e2e: logs and configs kept in ${dir}`)
    else if (dir) await rm(dir, {recursive: true, force: true})
  })

  it('issue 13: before any rule, devices reach prod at its own address and divert holds no session for them', async () => {
    assertInstalled(await kernelState(w), w.table)
    const from = w.divert!.mark()
    assert.equal(await dial(w, 'dev1', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${NET.dev1}`)
    assert.match(await dial(w, 'dev1', 'udp', NET.prod, w.ports['prod-udp']), new RegExp(`^prod sees ${NET.dev1}:\\d+ from ${NET.prod}:${w.ports['prod-udp']}$`))
    assert.deepEqual(await sessions(w), [])
    assert.deepEqual(closedSessions(w.divert!, NET.dev1, from), [])
    const status = JSON.parse(await divert(w, 'status', '--json'))
    assert.equal(status.mode, 'gateway')
    assert.equal(status.transparent.installed, true)
    assert.deepEqual(status.transparent.listeners.map((l: {name: string; sources: string[]}) => [l.name, l.sources]), [['gw', []], ['gwu', []]])
    const explain = JSON.parse(await divert(w, 'explain', NET.dev1, '--listener', 'gw', '--json'))
    assert.equal(explain[0].intercepted, false)
  })

  it('issue 13: `divert add DEVICE --to staging` lands the device\'s next connection to prod\'s address on staging; another device still reaches prod directly', async () => {
    await divert(w, 'add', NET.dev1, '--to', 'staging', '--listener', 'gw')
    await divert(w, 'add', NET.dev1, '--to', 'staging-udp', '--listener', 'gwu')
    const from = w.divert!.mark()
    // A held connection: divert lists it, with the destination the device dialled.
    const held = w.lab.spawn(w.ns.dev1, 'dev1-held', process.execPath, ['-e', CLIENT, 'tcp', NET.prod, String(w.ports['prod-tcp']), '3000'])
    await held.waitFor(new RegExp(`^staging sees ${seen}$`), {timeoutMs: 10_000})
    const live = (await sessions(w)).filter((s) => s.protocol === 'tcp')
    assert.equal(live.length, 1, JSON.stringify(live))
    assert.equal(live[0].destination, `${NET.prod}:${w.ports['prod-tcp']}`)
    assert.equal(live[0].backend, 'staging')
    assert.match(await divert(w, 'sessions'), new RegExp(`destination[\\s\\S]*${NET.prod.replace(/\./g, '\\.')}:${w.ports['prod-tcp']}`))
    await held.exited

    // UDP: the reply comes from prod's address (divert stands in for it), the answer from staging.
    assert.match(await dial(w, 'dev1', 'udp', NET.prod, w.ports['prod-udp']), new RegExp(`^staging sees ${seen}:\\d+ from ${NET.prod}:${w.ports['prod-udp']}$`))
    const flows = (await sessions(w)).filter((s) => s.protocol === 'udp')
    assert.equal(flows.length, 1)
    assert.equal(flows[0].destination, `${NET.prod}:${w.ports['prod-udp']}`)

    // dev2 has no rule: the kernel routes it past divert.
    assert.equal(await dial(w, 'dev2', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${NET.dev2}`)
    assert.match(await dial(w, 'dev2', 'udp', NET.prod, w.ports['prod-udp']), new RegExp(`^prod sees ${NET.dev2}:\\d+ from ${NET.prod}:`))
    assert.equal((await sessions(w)).filter((s) => s.client.startsWith(`${NET.dev2}:`)).length, 0)
    assert.deepEqual(closedSessions(w.divert!, NET.dev2, from), [])
    const status = JSON.parse(await divert(w, 'status', '--json'))
    assert.deepEqual(status.transparent.listeners.map((l: {sources: string[]}) => l.sources), [[NET.dev1], [NET.dev1]])
    assert.equal(JSON.parse(await divert(w, 'explain', NET.dev1, '--listener', 'gw', '--json'))[0].intercepted, true)
    assert.equal(JSON.parse(await divert(w, 'explain', NET.dev2, '--listener', 'gw', '--json'))[0].intercepted, false)
  })

  it('issue 13: a device without a rule that dials the TPROXY listener\'s port on another host is not pulled in', async () => {
    const status = JSON.parse(await divert(w, 'status', '--json')) as {listeners: Array<{name: string; address: string}>}
    const port = Number(status.listeners.find((l) => l.name === 'gw')!.address.split(':').pop())
    const from = w.divert!.mark()
    // Nothing listens on that port at prod: the device must get prod's refusal, and divert see nothing.
    assert.match(await dial(w, 'dev2', 'tcp', NET.prod, port).catch((e: Error) => e.message), /ECONNREFUSED/)
    assert.deepEqual(closedSessions(w.divert!, NET.dev2, from), [])
  })

  it('issue 13: `divert rm` restores the direct path', async () => {
    await divert(w, 'rm', NET.dev1, '--listener', 'gw')
    await divert(w, 'rm', NET.dev1, '--listener', 'gwu')
    const from = w.divert!.mark()
    assert.equal(await dial(w, 'dev1', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${NET.dev1}`)
    assert.match(await dial(w, 'dev1', 'udp', NET.prod, w.ports['prod-udp']), new RegExp(`^prod sees ${NET.dev1}:\\d+ from ${NET.prod}:`))
    assert.deepEqual(closedSessions(w.divert!, NET.dev1, from).filter((l) => l.protocol === 'tcp'), [])
  })

  it('issue 13: a record-only rule intercepts, passes to the original destination and writes the pcap', async () => {
    const pcap = join(w.dir, 'dev1.pcap')
    await divert(w, 'add', NET.dev1, '--record', pcap, '--listener', 'gw')
    const from = w.divert!.mark()
    // With transparent.source: client, backend original connects from the device's own address too.
    assert.equal(await dial(w, 'dev1', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${seen}`)
    const line = await w.divert!.waitFor(/"msg":"session closed"/, {timeoutMs: 10_000, fromLine: from})
    const closed = JSON.parse(line.input) as Record<string, unknown>
    assert.equal(closed.backend, 'original')
    assert.equal(closed.destination, `${NET.prod}:${w.ports['prod-tcp']}`)
    await divert(w, 'rm', NET.dev1, '--listener', 'gw')
    const bytes = readFileSync(pcap)
    assert.ok(bytes.length > 24, 'the recording holds packets after its header')
    assert.ok(bytes.includes(Buffer.from(`prod sees ${seen}`)), 'the recording holds prod\'s answer')
  })

  it('issue 13: a reload that adds a config rule intercepts its source; one that drops it, no longer', async () => {
    const original = readFileSync(w.config, 'utf8')
    await writeFile(w.config, `${original}rules:\n  - { source: ${NET.dev2}, to: staging, listener: gw }\n`)
    await divert(w, 'reload')
    assert.equal(await dial(w, 'dev2', 'tcp', NET.prod, w.ports['prod-tcp']), `staging sees ${seen.replace(NET.dev1, NET.dev2)}`)
    await writeFile(w.config, original)
    await divert(w, 'reload')
    assert.equal(await dial(w, 'dev2', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${NET.dev2}`)
  })

  it('issue 13: without CAP_NET_ADMIN, start fails with one line naming what is missing', {skip: whichCommand('setpriv') ? undefined : 'needs setpriv (util-linux)'}, async () => {
    const before = await kernelState(w)
    const run = execFileP('ip', ['netns', 'exec', w.ns.gw, 'setpriv', '--bounding-set=-net_admin', '--inh-caps=-net_admin', process.execPath, BIN, 'start', '-c', w.config, '--admin', join(w.dir, 'other.sock')], {timeout: 20_000})
    const e = await run.then(() => assert.fail('divert started without CAP_NET_ADMIN'), (err: {code: number; stderr: string}) => err)
    assert.equal(e.code, 4)
    const lines = e.stderr.split('\n').filter((l) => l.trim() !== '')
    assert.equal(lines.length, 1, e.stderr)
    assert.match(lines[0], /needs root or CAP_NET_ADMIN/)
    assert.deepEqual(await kernelState(w), before, 'the failed start touched nothing')
  })

  it('issue 13: SIGTERM removes every nftables rule and policy route divert added', async () => {
    await w.divert!.stop()
    assertRemoved(await kernelState(w), w.table)
    assert.equal(await dial(w, 'dev1', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${NET.dev1}`)
  })

  it('issue 13: after a crash (SIGKILL) the next start removes what was left and installs anew', async () => {
    const first = await startDivert(w)
    await divert(w, 'add', NET.dev1, '--to', 'staging', '--listener', 'gw')
    first.child.kill('SIGKILL')
    await first.exited
    assertInstalled(await kernelState(w), w.table)
    // Left behind, the table names a listener that is gone: TPROXY finds no socket, the rule does
    // not match, and the diverted device reaches its original destination directly (README, failure modes).
    assert.equal(await dial(w, 'dev1', 'tcp', NET.prod, w.ports['prod-tcp']), `prod sees ${NET.dev1}`)
    const second = await startDivert(w)
    assert.match(second.text(), /removed the nftables table a previous divert left/)
    assertInstalled(await kernelState(w), w.table)
    // The runtime rule came back from the state file, and the new table steers dev1 again.
    assert.equal(await dial(w, 'dev1', 'tcp', NET.prod, w.ports['prod-tcp']), `staging sees ${seen}`)
    await second.stop()
    assertRemoved(await kernelState(w), w.table)
  })
})
