/**
 * The pure renderers a human reads: outside strings are escaped (no control sequence reaches the
 * terminal raw) and tables fit the width they are given. Also the small terminal decisions (width,
 * colour), `--watch` framing and the "did you mean" matcher.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {PassThrough} from 'node:stream'
import {escapeControl} from '../../src/cli/escape.js'
import {closest} from '../../src/cli/not-found.js'
import {addRuleText, explainText, fleetKillText, fleetSessionsText, fleetStatusText, reloadText, removeText, rulesTable, sessionsTable, statusText} from '../../src/cli/render.js'
import {renderReplay} from '../../src/cli/render-replay.js'
import {colorAllowed, terminalWidth} from '../../src/cli/terminal.js'
import {watch} from '../../src/cli/watch.js'
import type {RuleView, SessionView, StatusView} from '../../src/admin/protocol.js'
import type {ReplayReport} from '../../src/capture/replay.js'

/** ESC[2J (clear screen), CR, BEL, C1 CSI (U+009B), DEL, a bidi override: all must show escaped. */
const HOSTILE = 'evil\u001b[2J\rfake\u0007 \u009b31m \u007f \u202e'
/** Every control character except the newlines the renderers put between lines. */
// eslint-disable-next-line no-control-regex -- looking for control characters is the point
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/

function rule(over: Partial<RuleView> = {}): RuleView {
  return {
    id: 'r0a1b2c', source: '192.168.100.0/30', to: 'staging', mirror: null, record: null, recordMaxBytes: null, listener: null,
    expiresAt: null, hits: 3, origin: 'runtime', note: null, createdAt: '2026-01-01T00:00:00Z', shadowedBy: null, ...over,
  }
}

function session(over: Partial<SessionView> = {}): SessionView {
  return {
    id: 't42', protocol: 'tcp', client: '[2001:db8:1234:5678:9abc:def0:1234:5678]:40423', listener: 'telnet-main-listener', backend: 'staging-backend-eu-west',
    server: '[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:8443', rule: 'r0a1b2c', bytesIn: 123_456_789, bytesOut: 987_654_321, ageMs: 3_723_000, idleMs: 61_000,
    startedAt: '2026-01-01T00:00:00Z', taps: {mirror: {state: 'active', dropped: 2048}, record: {state: 'recording'}}, ...over,
  }
}

function status(name = 'prod'): StatusView {
  return {
    version: '0.1.0', pid: 4242, configFile: `/etc/divert/${name}.yaml`, startedAt: '2026-01-01T00:00:00Z', uptimeMs: 90_000,
    listeners: [{name: `${name}-listener-with-a-long-name`, protocol: 'udp', bind: '[::]:1194', address: '[::]:1194', backend: `${name}-backend`, sessions: 12}],
    backends: [{name, balance: 'roundrobin', proxyProtocol: null, fallback: 'default', health: null, servers: [
      {address: '[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:8443', weight: 2, up: false, active: 1, total: 900, lastChange: 0, lastCheck: {ok: false, at: 0, error: `connect ECONNREFUSED [2001:db8:ffff:ffff:ffff:ffff:ffff:1]:8443 ${name}`}},
    ]}],
    totals: {activeSessions: 1, sessions: 2, bytesIn: 3, bytesOut: 4, rules: 5, refused: 0},
  }
}

function replay(error = 'connect ECONNREFUSED 127.0.0.1:7201'): ReplayReport {
  return {
    file: 'dev.pcap', to: '127.0.0.1:7201', speed: 1, fast: false, loops: 1,
    capture: {linktype: 1, nanosecond: false, records: 10, flows: 1, selected: 1},
    flows: [{
      id: 'tcp/0', loop: 1, protocol: 'tcp', client: '[2001:db8:1234:5678:9abc:def0:1234:5678]:40423', server: '127.0.0.1:23',
      bytesSent: 1000, bytesReceived: 10, recordedClientBytes: 1000, recordedServerBytes: 2000, durationMs: 5, error, gaps: [],
      compare: {identical: false, offset: 6, expected: `ok ${error}`, actual: 'no', lengthExpected: 20, lengthActual: 2},
    }],
    totals: {flows: 1, bytesSent: 1000, bytesReceived: 10, errors: 1, identical: 0, different: 1},
    skipped: [{count: 2, reason: `odd ${error}`}] as ReplayReport['skipped'], warnings: [],
    aborted: false,
  }
}

test('issue 11.13: escapeControl shows C0, C1, DEL, ESC and bidi controls visibly and leaves the rest alone', () => {
  assert.equal(escapeControl(HOSTILE), 'evil\\x1b[2J\\rfake\\x07 \\x9b31m \\x7f \\u202e')
  assert.equal(escapeControl('a\nb\tc\u0000'), 'a\\nb\\tc\\x00')
  assert.equal(escapeControl('ticket 4711 — grüße, 日本, C:\\path'), 'ticket 4711 — grüße, 日本, C:\\path')
})

test('issue 11.13: every human renderer escapes the strings that come from outside', () => {
  const bad = rule({note: HOSTILE, listener: HOSTILE, record: `/tmp/${HOSTILE}.pcap`})
  const outputs: Record<string, string> = {
    rulesTable: rulesTable([bad]),
    sessionsTable: sessionsTable([session({listener: HOSTILE, backend: HOSTILE, taps: {[HOSTILE]: {state: HOSTILE}}})]),
    statusText: statusText(status(HOSTILE)),
    explainText: explainText([{ip: '127.0.0.2', listener: HOSTILE, rule: bad, backend: HOSTILE, server: '127.0.0.1:1', mirror: HOSTILE, record: HOSTILE, fallbackFrom: HOSTILE, refused: null, limit: HOSTILE, reasons: [HOSTILE]}]),
    addRuleText: addRuleText({rule: bad, replaced: bad, existing: {policy: 'keep', matched: 2, killed: 0}, kept: {note: HOSTILE}}),
    removeText: removeText({removed: [bad], restored: [bad]}),
    reloadText: reloadText({configFile: HOSTILE, listeners: {added: [HOSTILE], removed: [], changed: []}, backends: {added: [], removed: [HOSTILE], changed: []}, rules: 1}),
    renderReplay: renderReplay(replay(HOSTILE)),
  }
  for (const [name, text] of Object.entries(outputs)) {
    assert.doesNotMatch(text, RAW, `${name} printed a raw control character: ${JSON.stringify(text)}`)
    assert.ok(text.includes('evil\\x1b[2J'), `${name} shows the escape visibly: ${text}`)
  }
})

test('issue 11.29: tables fit 80 and 120 columns: low-priority columns go first, long cells wrap, nothing is cut off', () => {
  const note = 'ticket 4711: the field team asked for this device to reach staging until the firmware rollout is done'
  const rules = [rule({note, listener: 'telnet-main-listener', expiresAt: new Date(Date.now() + 3_600_000).toISOString()}), rule({id: 'r999999', source: '2001:db8:1234:5678:9abc:def0:1234:0/112', mirror: 'staging', record: '/var/lib/divert/captures/a-rather-long-capture-name.pcap'})]
  const sessions = [session(), session({id: 'u7', protocol: 'udp', packetsIn: 100, packetsOut: 90})]
  for (const width of [80, 120]) {
    const tables = {rules: rulesTable(rules, Date.now(), width), sessions: sessionsTable(sessions, width), status: statusText(status(), width), replay: renderReplay(replay(), width)}
    for (const [name, text] of Object.entries(tables)) {
      // Table lines only: prose lines (status head, replay summary) wrap in the terminal like any text.
      const long = text.split('\n').filter((l) => /^[┌│├└]/.test(l) && [...l].length > width)
      assert.deepEqual(long, [], `${name} at ${width} columns:\n${text}`)
    }
    // The note and the id survive, whole, only wrapped: joining the note column's cells gives it back.
    assert.ok(tables.rules.includes('r0a1b2c') && tables.rules.includes('r999999'))
    const words = note.split(' ')
    for (const w of words) assert.ok(tables.rules.includes(w), `note word ${w} at ${width}:\n${tables.rules}`)
    assert.ok(tables.sessions.includes('t42') && tables.sessions.includes('u7'))
  }
  // Unlimited (a pipe): the natural, unwrapped table, as before.
  const wide = rulesTable(rules)
  assert.ok(wide.split('\n').some((l) => l.includes(note)), wide)
  assert.ok(wide.split('\n')[1].length > 120)
})

test('issue 11.29: terminal width comes from COLUMNS, else a terminal\'s width, else unlimited; colour only on a terminal without NO_COLOR', () => {
  assert.equal(terminalWidth({COLUMNS: '80'}, {isTTY: true, columns: 200}), 80)
  assert.equal(terminalWidth({}, {isTTY: true, columns: 132}), 132)
  assert.equal(terminalWidth({COLUMNS: 'wide'}, {isTTY: false}), Number.POSITIVE_INFINITY)
  assert.equal(terminalWidth({}, {isTTY: false, columns: 100}), Number.POSITIVE_INFINITY)
  assert.equal(colorAllowed(true, {}), true)
  assert.equal(colorAllowed(true, {NO_COLOR: '1'}), false)
  assert.equal(colorAllowed(true, {NO_COLOR: ''}), true, 'NO_COLOR set but empty does not count (no-color.org)')
  assert.equal(colorAllowed(false, {}), false)
})

async function frames(isTTY: boolean): Promise<string> {
  const out = Object.assign(new PassThrough(), {isTTY})
  let text = ''
  out.on('data', (c: Buffer) => (text += c))
  let n = 0
  // The third render stops the loop the way Ctrl-C does; two frames have been written by then.
  await watch(async () => {
    if (++n === 3) process.emit('SIGINT')
    return `frame ${n}`
  }, 1, out)
  return text
}

test('issue 11.29: --watch redraws in place on a terminal, and prints plain snapshots with no escape codes into a pipe', async () => {
  const tty = await frames(true)
  assert.equal(tty.split('\u001b[H\u001b[2J').length, 3, JSON.stringify(tty))
  const piped = await frames(false)
  assert.ok(!piped.includes('\u001b'), JSON.stringify(piped))
  assert.match(piped, /^--- .+ ---\nframe 1\n\n--- .+ ---\nframe 2\n\n$/)
})

test('issue 11.29: a mistyped command finds the nearest command, and nothing for a word that is not near one', () => {
  const ids = ['add', 'autocomplete', 'explain', 'help', 'kill', 'list', 'reload', 'replay', 'rm', 'sessions', 'start', 'status']
  assert.equal(closest('lsit', ids), 'list')
  assert.equal(closest('sesions', ids), 'sessions')
  assert.equal(closest('stauts', ids), 'status')
  assert.equal(closest('STATUS', ids), 'status')
  assert.equal(closest('frobnicate', ids), undefined)
  assert.equal(closest('xy', ids), undefined)
})

test('issue 14: fleet views have an instance column, list unreachable instances, and escape what instances say', () => {
  const down = {instance: `ghost${HOSTILE}`, adminUrl: 'http://10.0.0.9:7070', reachable: false, error: `no answer ${HOSTILE}`}
  const up = {instance: 'edge-1', adminUrl: 'http://10.0.0.5:7070', reachable: true, error: null}
  const sessions = fleetSessionsText({instances: [up, down], sessions: [{...session(), instance: 'edge-1'}]}, 200)
  assert.match(sessions.split('\n')[1], /instance/)
  assert.match(sessions, /edge-1/)
  assert.match(sessions, /instance ghost.* UNREACHABLE at http:\/\/10\.0\.0\.9:7070: no answer/)
  const redis = {kind: 'redis' as const, url: 'redis://10.0.0.5:6379/0', connected: false, version: 7, since: '2026-01-01T00:00:00Z', error: 'connect ECONNREFUSED'}
  const st = fleetStatusText({instances: [{...up, status: {...status(), instance: 'edge-1', store: redis}}, {...down, status: null}]}, 400)
  assert.match(st, /edge-1 +│ up/)
  assert.match(st, /DISCONNECTED since 2026-01-01T00:00:00Z \(connect ECONNREFUSED\)/)
  assert.match(st, /UNREACHABLE/)
  assert.match(fleetKillText({killed: 3, instances: [{...up, killed: 3}, {...down, killed: null}]}), /^closed 3 sessions \(edge-1: 3\)\ninstance ghost/)
  for (const text of [sessions, st, fleetKillText({killed: 0, instances: [{...down, killed: null}]})]) assert.doesNotMatch(text, RAW)
  assert.match(statusText({...status(), instance: 'edge-1', store: redis}), /instance edge-1, rule store redis:\/\/10\.0\.0\.5:6379\/0 DISCONNECTED/)
  assert.doesNotMatch(statusText({...status(), store: {kind: 'file', path: '/x'}}), /rule store/, 'the state-file status reads as before')
})

test('issue 15: status shows the fast path in one line (active, unavailable with the kernel\'s reason escaped, off); sessions mark what the kernel moves and still fit', () => {
  const line = (fastPath: StatusView['fastPath']): string[] => statusText({...status(), fastPath}).split('\n').filter((l) => l.startsWith('fast path:'))
  assert.deepEqual(line({mode: 'auto', state: 'active', active: 3, spliced: 120}), ['fast path: active; the kernel moves 3 sessions now, 120 since start'])
  assert.deepEqual(line({mode: 'auto', state: 'active', active: 1, spliced: 1}), ['fast path: active; the kernel moves 1 session now, 1 since start'])
  assert.deepEqual(line({mode: 'off', state: 'off'}), ['fast path: off (fast_path: off; every byte goes through divert)'])
  const [unavailable] = line({mode: 'auto', state: 'unavailable', reason: `bpf(BPF_MAP_CREATE divert_socks): EPERM ${HOSTILE}`})
  assert.match(unavailable, /^fast path: UNAVAILABLE \(fast_path: auto, but the kernel refused: bpf\(BPF_MAP_CREATE divert_socks\): EPERM evil\\x1b\[2J.*; every byte goes through divert\)$/)
  assert.doesNotMatch(unavailable, RAW)
  assert.deepEqual(line(undefined), [], 'an instance that does not report it (an older one in a fleet): no line')

  const spliced = session({id: 't1', taps: undefined, kernel: true})
  const plain = session({id: 't2', kernel: false})
  const wide = sessionsTable([spliced, plain])
  assert.match(wide.split('\n')[1], /│ idle +│ path +│ taps/)
  assert.match(wide.split('\n').find((l) => l.includes('t1 '))!, /│ kernel │/)
  assert.match(wide.split('\n').find((l) => l.includes('t2 '))!, /│ divert │/)
  assert.doesNotMatch(sessionsTable([plain]), /path/, 'no column while no session is in the kernel')
  for (const width of [80, 120]) {
    const text = sessionsTable([spliced, plain], width)
    assert.deepEqual(text.split('\n').filter((l) => [...l].length > width), [], `${width} columns:\n${text}`)
    assert.ok(text.includes('t1') && text.includes('t2'))
  }
  assert.match(sessionsTable([spliced, plain], 120), /kernel/, 'at 120 columns the marker stays')
})
