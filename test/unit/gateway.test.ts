/**
 * Gateway mode without a kernel: the config's transparent keys, the plan of intercepted sources, the
 * nftables table it renders, and the Interceptor's commands (a fake runner stands in for nft and ip).
 */
import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import pino from 'pino'
import {parseConfig} from '../../src/config/load.js'
import {DivertError} from '../../src/errors.js'
import {parseCidr} from '../../src/addr/cidr.js'
import {planFor, renderTable, TABLE_COMMENT} from '../../src/net/intercept-plan.js'
import {Interceptor, kernelWarnings, RTPROT_DIVERT} from '../../src/net/interceptor.js'
import {sessionsTable, statusText} from '../../src/cli/render.js'
import type {StatusView} from '../../src/admin/protocol.js'

const silent = pino({level: 'silent'})

const GATEWAY = `
listeners:
  - { name: gw, bind: "0.0.0.0:15001", transparent: true, backend: original, intercept: { ports: [23, 2323, 23] } }
  - { name: vpn, protocol: udp, bind: "198.51.100.10:1194", transparent: true, backend: original, intercept: {} }
  - { name: plain, bind: "127.0.0.1:8080", backend: staging }
backends:
  staging: { servers: [ { address: "198.51.100.20:23" } ] }
`

function problems(yaml: string): string {
  try {
    parseConfig(yaml, 'divert.yaml')
  } catch (error) {
    return (error as DivertError).message
  }
  throw new Error('the config was accepted')
}

describe('issue 13: gateway mode config', () => {
  it('issue 13: transparent listeners, intercept ports (a UDP stand-in intercepts its own port) and the transparent defaults', () => {
    const c = parseConfig(GATEWAY, 'divert.yaml')
    assert.equal(c.listeners[0].transparent, true)
    assert.deepEqual(c.listeners[0].intercept, {ports: [23, 2323, 23]})
    assert.deepEqual(c.listeners[1].intercept, {ports: [1194]})
    assert.equal(c.listeners[2].transparent, undefined)
    const plan = planFor(c, [])
    assert.deepEqual({manage: plan.manage, table: plan.table, mark: plan.mark, routeTable: plan.routeTable, families: plan.families}, {manage: true, table: 'divert', mark: 0x1d1, routeTable: 465, families: [4]})
    assert.deepEqual(plan.listeners.map((l) => [l.name, l.ports]), [['gw', [23, 2323]], ['vpn', [1194]]])
  })

  it('issue 13: what gateway mode cannot do is refused with the reason', () => {
    const base = (listener: string, extra = ''): string => `listeners:\n  - ${listener}\nbackends:\n  staging: { servers: [ { address: "198.51.100.20:23" } ] }\n${extra}`
    assert.match(problems(base('{ name: a, bind: "0.0.0.0:1", backend: staging, intercept: { ports: [23] } }')), /listeners\[0\]\.intercept: needs transparent: true/)
    assert.match(problems(base('{ name: a, protocol: udp, bind: "0.0.0.0:1194", transparent: true, backend: staging }')), /listeners\[0\]\.bind: a transparent udp listener stands in for one server.*original destination/)
    assert.match(problems(base('{ name: a, protocol: udp, bind: "198.51.100.10:1194", transparent: true, backend: staging, intercept: { ports: [53] } }')), /intercepts only the port it stands in for; expected \[1194\]/)
    assert.match(problems(base('{ name: a, bind: "0.0.0.0:1", transparent: true, backend: staging, intercept: {} }')), /intercept\.ports: is missing; expected the destination ports/)
    assert.match(problems(base('{ name: a, bind: "0.0.0.0:1", backend: original }')), /listeners\[0\]\.backend: no backend is named "original"/)
    assert.match(problems(`${GATEWAY}  original: { servers: [ { address: "198.51.100.20:23" } ] }\n`), /backends\.original: "original" is built in/)
    assert.match(problems(`${GATEWAY}transparent: { route_table: 254 }\n`), /transparent\.route_table: is a table the kernel uses/)
    assert.match(problems(`${GATEWAY}transparent: { source: 10.0.0.1 }\n`), /transparent\.source: .*expected client/)
    assert.equal(parseConfig(`${GATEWAY}transparent: { source: client }\n`, 'divert.yaml').transparent?.source, 'client')
    assert.match(problems(`${GATEWAY}transparent: { table: "my-table" }\n`), /transparent\.table/)
  })
})

describe('issue 13: the intercept plan and its nftables table', () => {
  const config = parseConfig(GATEWAY, 'divert.yaml')
  const rules = [
    {prefix: parseCidr('192.0.2.0/24')},
    {prefix: parseCidr('192.0.2.10')},
    {prefix: parseCidr('203.0.113.7'), listener: 'vpn'},
    {prefix: parseCidr('2001:db8::7')},
    {prefix: parseCidr('198.51.100.99'), listener: 'plain'},
  ]

  it('issue 13: each listener takes the unscoped rules and its own, no prefix inside another', () => {
    const plan = planFor(config, rules)
    assert.deepEqual(plan.listeners.map((l) => [l.name, l.sources]), [['gw', ['192.0.2.0/24', '2001:db8::7']], ['vpn', ['192.0.2.0/24', '203.0.113.7', '2001:db8::7']]])
  })

  it('issue 13: the table: a UDP stand-in first (its other clients left alone), then the socket mark, then the TCP steer', () => {
    const text = renderTable(planFor(config, rules))
    const lines = text.split('\n').map((l) => l.trim())
    assert.deepEqual(lines.slice(0, 4), ['table inet divert {}', 'delete table inet divert', 'table inet divert {', `comment ${JSON.stringify(`${TABLE_COMMENT} (pid ${process.pid})`)}`])
    const mark = 'meta mark set meta mark or 0x1d1'
    const i = (s: string): number => lines.findIndex((l) => l.startsWith(s))
    const standIn = i(`ip saddr @l1_v4 ip daddr 198.51.100.10 udp dport 1194 tproxy ip to 198.51.100.10:1194 ${mark} accept`)
    const others = i('ip daddr 198.51.100.10 udp dport 1194 return')
    const socket = i(`meta l4proto { tcp, udp } socket transparent 1 socket wildcard 0 ${mark} accept`)
    const steer = i(`ip saddr @l0_v4 tcp dport { 23, 2323 } tproxy ip to :15001 ${mark} accept`)
    assert.ok(standIn >= 0 && others > standIn && socket > others && steer > socket, text)
    assert.match(text, /set l0_v4 \{\n\s+type ipv4_addr; flags interval; elements = \{ 192\.0\.2\.0\/24 \}/)
    assert.match(text, /set l1_v4 \{\n\s+type ipv4_addr; flags interval; elements = \{ 192\.0\.2\.0\/24, 203\.0\.113\.7 \}/)
  })

  it('issue 13: a listener bound to port 0 is steered to the port it got', () => {
    const c = parseConfig(GATEWAY.replace('0.0.0.0:15001', '0.0.0.0:0'), 'divert.yaml')
    assert.match(renderTable(planFor(c, [], (name) => (name === 'gw' ? 40001 : undefined))), /tproxy ip to :40001 /)
  })
})

/** A fake nft/ip: answers listings from `state`, records every command. */
function fakeKernel(state: {table?: string; rules?: object[]; routes?: object[]; failNft?: boolean}) {
  const calls: string[] = []
  const run = async (file: string, args: string[], input?: string): Promise<string> => {
    const cmd = `${file.split('/').pop()} ${args.join(' ')}`
    calls.push(input ? `${cmd} <<${input.split('\n')[0]}` : cmd)
    if (cmd.startsWith('nft list table')) {
      if (state.table === undefined) throw Object.assign(new Error('exit 1'), {stderr: 'Error: No such file or directory'})
      return state.table
    }
    if (cmd.startsWith('nft -f') && state.failNft) throw Object.assign(new Error('exit 1'), {stderr: 'Error: Could not process rule: Operation not supported\n'})
    if (cmd.startsWith('ip -j -4 rule show')) return JSON.stringify(state.rules ?? [])
    if (cmd.startsWith('ip -j -4 route show')) return JSON.stringify(state.routes ?? [])
    if (cmd.startsWith('ip -j')) return '[]'
    return ''
  }
  return {calls, run}
}

describe('issue 13: the Interceptor installs, follows and removes, and cleans up after a crash', () => {
  const plan = planFor(parseConfig(GATEWAY, 'divert.yaml'), [{prefix: parseCidr('192.0.2.10')}])

  it('issue 13: start removes what a crashed divert left (its table by comment, its rules and routes by protocol), then installs', async () => {
    const k = fakeKernel({
      table: `table inet divert {\n\tcomment "${TABLE_COMMENT} (pid 2147483646)"\n}`,
      rules: [
        {priority: 32765, fwmark: '0x1d1', fwmask: '0x1d1', table: '465', protocol: String(RTPROT_DIVERT)}, {priority: 0, table: 'local'},
        // Another divert's (its own mark and routing table): left alone.
        {priority: 32764, fwmark: '0x2', fwmask: '0x2', table: '99', protocol: String(RTPROT_DIVERT)},
      ],
      routes: [{type: 'local', dst: 'default', dev: 'lo', table: '465', protocol: String(RTPROT_DIVERT)}],
    })
    const i = new Interceptor({logger: silent, run: k.run})
    i.preflight()
    await i.start(plan)
    assert.ok(k.calls.includes('nft delete table inet divert'), k.calls.join('\n'))
    assert.ok(k.calls.includes(`ip -4 rule del priority 32765 fwmark 0x1d1/0x1d1 lookup 465 protocol ${RTPROT_DIVERT}`), k.calls.join('\n'))
    assert.ok(k.calls.includes(`ip -4 route del local 0.0.0.0/0 dev lo table 465 proto ${RTPROT_DIVERT}`), k.calls.join('\n'))
    assert.ok(k.calls.includes('nft -f - <<table inet divert {}'), k.calls.join('\n'))
    assert.ok(k.calls.includes(`ip -4 rule add fwmark 0x1d1/0x1d1 lookup 465 protocol ${RTPROT_DIVERT}`))
    assert.ok(k.calls.includes(`ip -4 route replace local 0.0.0.0/0 dev lo table 465 proto ${RTPROT_DIVERT}`))
    assert.equal(k.calls.filter((c) => c.includes('rule del')).length, 1, 'only this instance\'s rule is deleted')
    assert.deepEqual(i.view(), {installed: true, error: null})
  })

  it('issue 13: a table of that name without divert\'s comment is not divert\'s: start refuses to touch it', async () => {
    const k = fakeKernel({table: 'table inet divert {\n}'})
    const i = new Interceptor({logger: silent, run: k.run})
    await assert.rejects(i.start(plan), (e: DivertError) => e.code === 'DIVERT_ERR_TRANSPARENT_UNAVAILABLE' && /exists and is not divert's/.test(e.message))
    assert.ok(!k.calls.some((c) => c.includes('delete')), k.calls.join('\n'))
  })

  it('issue 13: a table of that name whose divert still runs is another instance\'s: start refuses to touch it', async () => {
    const k = fakeKernel({table: `table inet divert {\n\tcomment "${TABLE_COMMENT} (pid ${process.ppid})"\n}`})
    const i = new Interceptor({logger: silent, run: k.run})
    await assert.rejects(i.start(plan), (e: DivertError) => new RegExp(`belongs to divert pid ${process.ppid}, which still runs`).test(e.message))
    assert.ok(!k.calls.some((c) => c.includes('delete')), k.calls.join('\n'))
  })

  it('issue 13: a failed update is kept for `divert status`, not thrown; stop removes the table and route', async () => {
    const state: {failNft?: boolean} = {}
    const k = fakeKernel(state)
    const i = new Interceptor({logger: silent, run: k.run})
    await i.start(plan)
    state.failNft = true
    await i.sync({...plan, listeners: plan.listeners.map((l) => ({...l, sources: []}))})
    assert.match(i.view().error ?? '', /`nft -f -` failed: Error: Could not process rule/)
    state.failNft = false
    await i.quiesce()
    assert.equal(i.view().error, null)
    k.calls.length = 0
    await i.stop()
    assert.ok(k.calls.includes('nft delete table inet divert'), k.calls.join('\n'))
    assert.deepEqual(i.view(), {installed: false, error: null})
  })
})

describe('issue 13: host settings that break gateway mode are named at start', () => {
  it('issue 13: bridge-nf-call-iptables on and ip_forward off each get a warning with the fix; good settings none', () => {
    const bad = kernelWarnings((p) => (p.endsWith('bridge-nf-call-iptables') ? '1' : '0'))
    assert.deepEqual(bad.map((w) => w.fields.sysctl), ['net.bridge.bridge-nf-call-iptables', 'net.ipv4.ip_forward'])
    assert.match(bad[0].message, /sysctl -w net\.bridge\.bridge-nf-call-iptables=0/)
    assert.deepEqual(kernelWarnings((p) => (p.endsWith('ip_forward') ? '1' : undefined)), [])
  })
})

describe('issue 13: the README\'s gateway story', () => {
  it('issue 13: its config passes the loader and its table is what divert renders for it', () => {
    const readme = readFileSync(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8')
    const section = readme.slice(readme.indexOf('\n## Gateway mode, as a story\n'))
    const yaml = /```yaml\n([\s\S]*?)```/.exec(section)![1]
    const c = parseConfig(yaml, 'README.md')
    const rendered = renderTable(planFor(c, [{prefix: parseCidr('192.0.2.10')}])).split('\n').map((l) => l.replace(/ comment "[^"]*"$/, '').trim())
    const shown = /```text\n([\s\S]*?)```/.exec(section)![1].split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter((l) => l.includes('tproxy') || l.includes('return') || l.includes('socket transparent'))
    assert.equal(shown.length, 4)
    for (const line of shown) assert.ok(rendered.includes(line), `README shows a rule divert does not render: ${line}\n${rendered.join('\n')}`)
  })
})

describe('issue 13: what the CLI prints in gateway mode', () => {
  const base: StatusView = {
    version: '0', pid: 1, configFile: '/etc/divert.yaml', startedAt: '2026-01-01T00:00:00Z', uptimeMs: 1000, listeners: [], backends: [],
    totals: {activeSessions: 0, sessions: 0, bytesIn: 0, bytesOut: 0, rules: 1, refused: 0},
  }

  it('issue 13: divert status names the mode, what is installed and each intercepting listener\'s ports and sources', () => {
    const text = statusText({...base, mode: 'gateway', transparent: {
      manage: true, table: 'divert', mark: 0x1d1, routeTable: 465, installed: true, error: null,
      listeners: [{name: 'gw', protocol: 'tcp', bind: '0.0.0.0:15001', ports: [23], sources: ['192.0.2.10']}, {name: 'vpn', protocol: 'udp', bind: '198.51.100.10:1194', ports: [1194], sources: []}],
    }})
    assert.match(text, /mode: gateway; installed: nftables table inet divert, mark 0x1d1, route table 465/)
    assert.match(text, /gw\s.*23\s.*192\.0\.2\.10/)
    assert.match(text, /vpn\s.*198\.51\.100\.10:1194\s.*none \(nobody is intercepted\)/)
    assert.doesNotMatch(statusText({...base, mode: 'proxy', transparent: null}), /mode: gateway/)
  })

  it('issue 13: divert sessions shows the destination column only when a session has one', () => {
    const s = {id: 't1', protocol: 'tcp' as const, client: '192.0.2.10:40000', listener: 'gw', backend: 'staging', server: '198.51.100.20:23', rule: 'r1', bytesIn: 1, bytesOut: 2, ageMs: 1000, idleMs: 0, startedAt: '2026-01-01T00:00:00Z'}
    assert.match(sessionsTable([{...s, destination: '198.51.100.10:23'}]), /destination[\s\S]*198\.51\.100\.10:23/)
    assert.doesNotMatch(sessionsTable([{...s, destination: null}]), /destination/)
  })
})
