import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {fileURLToPath} from 'node:url'
import {join, resolve} from 'node:path'
import {loadConfig, parseConfig, WORKER_MIN_CHARS, type ConfigProblem} from '../../src/config/load.js'
import {parseSize, formatSize} from '../../src/config/size.js'
import {DEFAULTS, type Config} from '../../src/config/types.js'
import {DivertError} from '../../src/errors.js'

// Compiled to dist/test/unit/; the fixtures stay in the source tree.
const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/config/', import.meta.url))

const lo = (port: number) => ({address: '127.0.0.1', port, family: 4 as const})

/** A valid base config; tests append or splice lines, so its line numbers matter. */
const BASE = `listeners:
  - name: telnet
    bind: 127.0.0.1:2323
    backend: prod
backends:
  prod:
    servers: [ { address: 127.0.0.1:2401 } ]
`

function failure(text: string, file = 'divert.yaml'): DivertError {
  try {
    parseConfig(text, file)
  } catch (error) {
    assert.ok(error instanceof DivertError, `expected a DivertError, got ${String(error)}`)
    return error
  }
  assert.fail('parseConfig accepted an invalid config')
}

function invalid(text: string, ...patterns: RegExp[]): DivertError {
  const e = failure(text)
  assert.equal(e.code, 'DIVERT_ERR_CONFIG_INVALID', e.message)
  for (const p of patterns) assert.match(e.message, p)
  return e
}

function problems(e: DivertError): ConfigProblem[] {
  return (e.details as {problems: ConfigProblem[]}).problems
}

describe('parseConfig: valid input', () => {
  it('normalises the full example with defaults filled in', async () => {
    const file = join(FIXTURES, 'full.yaml')
    const c = await loadConfig(file)
    const at = (p: string) => join(FIXTURES, p)
    const expected: Config = {
      file,
      admin: {socket: at('run/admin.sock'), listen: {address: '127.0.0.1', port: 7070, family: 4}, tokenFile: at('admin.token')},
      state: at('divert-state.json'),
      listeners: [
        {
          name: 'telnet', protocol: 'tcp', bind: lo(2323), backend: 'prod', maxConnections: 100, clientTimeoutMs: 600_000, perSource: {maxConnections: 0, ratePerSec: 0}, keepaliveMs: 60_000,
          udp: {idleTimeoutMs: 300_000, key: 'address-port', maxFlows: 10_000, recvBufferSize: 4 * 1024 * 1024},
        },
        {
          name: 'vpn', protocol: 'udp', bind: {address: '::1', port: 1194, family: 6}, backend: 'vpn-prod', maxConnections: 0, clientTimeoutMs: 0, perSource: {maxConnections: 0, ratePerSec: 0}, keepaliveMs: 60_000,
          udp: {idleTimeoutMs: 120_000, key: 'address', maxFlows: 10_000, recvBufferSize: 4 * 1024 * 1024},
        },
      ],
      backends: new Map([
        ['prod', {
          name: 'prod', balance: 'leastconn',
          servers: [{address: lo(2401), weight: 2}, {address: lo(2402), weight: 1}],
          health: {check: 'tcp', intervalMs: 5000, timeoutMs: 1000, rise: 2, fall: 5},
          fallback: 'default', connectTimeoutMs: 2000, serverTimeoutMs: 3_600_000, keepaliveMs: 60_000,
        }],
        ['staging', {
          name: 'staging', balance: 'roundrobin', servers: [{address: lo(2403), weight: 1}],
          proxyProtocol: 'v1', fallback: 'reject', connectTimeoutMs: 5000, serverTimeoutMs: 0, keepaliveMs: 60_000,
        }],
        ['vpn-prod', {
          name: 'vpn-prod', balance: 'roundrobin', servers: [{address: {address: '::1', port: 11940, family: 6}, weight: 1}],
          health: {check: 'none', intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3},
          proxyProtocol: 'v2', fallback: 'default', connectTimeoutMs: 5000, serverTimeoutMs: 0, keepaliveMs: 60_000,
        }],
      ]),
      rules: [
        {source: '127.0.0.7', to: 'staging', note: 'the broken modem'},
        {source: '2001:db8::/64', mirror: 'staging', record: at('captures/v6.pcap'), listener: 'vpn'},
        {source: '10.1.0.0/16', to: 'staging', listener: 'telnet', expiresAt: Date.UTC(2026, 11, 1)},
      ],
      captureMaxBytes: 100_000_000,
      mirrorBufferBytes: 64 * 1024,
      maxConnections: 0,
    }
    assert.deepEqual(c, expected)
  })

  it('fills every default for a minimal config', () => {
    const c = parseConfig(BASE, '/etc/divert/divert.yaml')
    assert.deepEqual(c, {
      file: '/etc/divert/divert.yaml',
      admin: {},
      listeners: [{
        name: 'telnet', protocol: 'tcp', bind: lo(2323), backend: 'prod', maxConnections: 0, clientTimeoutMs: 0, perSource: {maxConnections: 0, ratePerSec: 0}, keepaliveMs: 60_000,
        udp: {idleTimeoutMs: DEFAULTS.udpIdleTimeoutMs, key: DEFAULTS.udpKey, maxFlows: DEFAULTS.udpMaxFlows, recvBufferSize: DEFAULTS.udpRecvBufferSize},
      }],
      backends: new Map([['prod', {
        name: 'prod', balance: 'roundrobin', servers: [{address: lo(2401), weight: 1}], fallback: 'default',
        connectTimeoutMs: DEFAULTS.connectTimeoutMs, serverTimeoutMs: 0, keepaliveMs: 60_000,
      }]]),
      rules: [],
      captureMaxBytes: DEFAULTS.captureMaxBytes,
      mirrorBufferBytes: DEFAULTS.mirrorBufferBytes,
      maxConnections: 0,
    } satisfies Config)
  })

  it('fills health defaults key by key', () => {
    const c = parseConfig(`${BASE}    health: { timeout: 500ms }\n`, 'divert.yaml')
    assert.deepEqual(c.backends.get('prod')?.health, {...DEFAULTS.health, timeoutMs: 500})
  })

  it('reads JSON, which is YAML', () => {
    const json = JSON.stringify({
      listeners: [{name: 'telnet', bind: '127.0.0.1:2323', backend: 'prod'}],
      backends: {prod: {servers: [{address: '127.0.0.1:2401'}]}},
      rules: [{source: '127.0.0.7', to: 'prod'}],
    }, null, 2)
    const fromJson = parseConfig(json, 'divert.json')
    const fromYaml = parseConfig(`${BASE}rules:\n  - { source: 127.0.0.7, to: prod }\n`, 'divert.json')
    assert.deepEqual(fromJson, fromYaml)
  })

  it('places problems in JSON input too', () => {
    const json = '{\n  "listeners": [{"name": "a", "bind": "127.0.0.1:1", "backend": "prod"}],\n  "backends": {"prod": {"servers": [{"address": "nowhere"}]}}\n}'
    const e = failure(json, 'divert.json')
    assert.match(e.message, /^divert\.json:3:49: backends\.prod\.servers\[0\]\.address: address "nowhere"/)
  })

  it('resolves relative paths against the config file directory and keeps absolute ones', () => {
    const text = `admin: { socket: admin.sock, listen: 127.0.0.1:0, token_file: /secrets/token }
state: ../var/state.json
${BASE}rules:
  - { source: 127.0.0.7, record: captures/a.pcap }
  - { source: 127.0.0.8, record: /tmp/b.pcap }
`
    const c = parseConfig(text, 'conf/divert.yaml')
    const dir = resolve('conf')
    assert.equal(c.file, join(dir, 'divert.yaml'))
    assert.equal(c.admin.socket, join(dir, 'admin.sock'))
    assert.equal(c.admin.tokenFile, '/secrets/token')
    assert.equal(c.state, resolve('var/state.json'))
    assert.deepEqual(c.rules.map((r) => r.record), [join(dir, 'captures/a.pcap'), '/tmp/b.pcap'])
  })

  it('stores rule sources in canonical form', () => {
    const c = parseConfig(`${BASE}rules:
  - { source: "2001:DB8:0:0::/64", to: prod }
  - { source: 10.0.0.9/32, to: prod }
  - { source: "::ffff:10.0.0.10", to: prod }
`, 'divert.yaml')
    assert.deepEqual(c.rules.map((r) => r.source), ['2001:db8::/64', '10.0.0.9', '10.0.0.10'])
  })

  it('treats empty optional sections as absent', () => {
    const c = parseConfig(`admin:\nstate:\ncapture:\nrules:\n${BASE}`, 'divert.yaml')
    assert.deepEqual(c.rules, [])
    assert.deepEqual(c.admin, {})
    assert.equal(c.state, undefined)
  })

  it('accepts durations and sizes given as plain numbers (ms, bytes)', () => {
    const c = parseConfig(`capture: { max_size: 4096 }
listeners:
  - { name: u, protocol: udp, bind: 127.0.0.1:0, backend: prod, udp: { idle_timeout: 1500, recv_buffer: 65536 } }
backends:
  prod: { servers: [ { address: 127.0.0.1:1 } ], timeouts: { connect: 250 } }
`, 'divert.yaml')
    assert.equal(c.captureMaxBytes, 4096)
    assert.equal(c.listeners[0].udp.idleTimeoutMs, 1500)
    assert.equal(c.listeners[0].udp.recvBufferSize, 65536)
    assert.equal(c.backends.get('prod')?.connectTimeoutMs, 250)
  })

  it('allows several port-0 listeners and the same port on tcp and udp', () => {
    const c = parseConfig(`listeners:
  - { name: a, bind: 127.0.0.1:0, backend: prod }
  - { name: b, bind: 127.0.0.1:0, backend: prod }
  - { name: c, bind: 127.0.0.1:5000, backend: prod }
  - { name: d, protocol: udp, bind: 127.0.0.1:5000, backend: prod }
backends:
  prod: { servers: [ { address: 127.0.0.1:1 } ] }
`, 'divert.yaml')
    assert.equal(c.listeners.length, 4)
  })

  it('allows one source in several listener scopes', () => {
    const c = parseConfig(`${BASE}rules:
  - { source: 10.0.0.0/8, to: prod }
  - { source: 10.0.0.0/8, to: prod, listener: telnet }
`, 'divert.yaml')
    assert.equal(c.rules.length, 2)
  })
})

describe('parseConfig: YAML syntax', () => {
  it('reports a syntax error with line and column', () => {
    const e = failure('listeners: [ { name: a\nbackends: {}\n')
    assert.equal(e.code, 'DIVERT_ERR_CONFIG_SYNTAX')
    assert.match(e.message, /^divert\.yaml:2:1: /)
  })

  it('rejects duplicate keys and names the key', () => {
    const e = failure(`${BASE}  prod:\n    servers: [ { address: 127.0.0.1:2 } ]\n`)
    assert.equal(e.code, 'DIVERT_ERR_CONFIG_SYNTAX')
    assert.match(e.message, /^divert\.yaml:8:3: Map keys must be unique \(key "prod" appears twice\)$/)
  })

  it('reports an alias to an unknown anchor where the alias is', () => {
    const e = failure(`${BASE}rules: *missing\n`)
    assert.equal(e.code, 'DIVERT_ERR_CONFIG_SYNTAX')
    assert.match(e.message, /^divert\.yaml:8:8: .*missing/)
  })
})

describe('parseConfig: document shape', () => {
  it('says an empty file is empty', () => {
    for (const text of ['', '\n# nothing yet\n', '~\n']) {
      invalid(text, /^divert\.yaml:1:1: the file is empty; expected a mapping with listeners and backends$/)
    }
  })

  it('says a document that is not a mapping is not one', () => {
    invalid('- telnet\n- vpn\n', /^divert\.yaml:1:1: got a list; expected a mapping with listeners and backends$/)
    invalid('hello\n', /^divert\.yaml:1:1: got "hello"; expected a mapping/)
  })

  it('reports missing required sections at the parent node', () => {
    const e = invalid('state: ./s.json\n', /divert\.yaml:1:1: listeners: is missing; expected a list of at least one listener/,
      /divert\.yaml:1:1: backends: is missing; expected a mapping of backend name to backend/)
    assert.equal(problems(e).length, 2)
  })

  it('reports empty listeners and backends', () => {
    invalid('listeners: []\nbackends: {}\n', /divert\.yaml:1:12: listeners: got an empty list; expected a list of at least one listener/,
      /divert\.yaml:2:11: backends: is empty; expected at least one backend/)
  })

  it('reports a missing listener field at the listener', () => {
    invalid(BASE.replace('    bind: 127.0.0.1:2323\n', ''), /divert\.yaml:2:5: listeners\[0\]\.bind: is missing; expected IP:port/)
  })
})

describe('parseConfig: unknown keys', () => {
  it('names the key and the allowed keys, at several depths', () => {
    const text = `listeners:
  - name: telnet
    protocol: udp
    backend: prod
    colour: red
    udp: { idle: 3s }
    bind: 127.0.0.1:2323
backends:
  prod:
    servers: [ { address: 127.0.0.1:2401, wieght: 2 } ]
    health: { intervall: 2s }
listners: []
`
    const e = invalid(text,
      /divert\.yaml:5:5: listeners\[0\]\.colour: unknown key "colour"; expected one of: name, protocol, bind, backend, max_connections, timeouts, per_source, udp, keepalive, transparent, intercept$/m,
      /divert\.yaml:6:12: listeners\[0\]\.udp\.idle: unknown key "idle"; expected one of: idle_timeout, key, max_flows, recv_buffer$/m,
      /divert\.yaml:10:43: backends\.prod\.servers\[0\]\.wieght: unknown key "wieght" \(did you mean "weight"\?\); expected one of: address, weight$/m,
      /divert\.yaml:11:15: backends\.prod\.health\.intervall: unknown key "intervall" \(did you mean "interval"\?\); expected one of: check, interval, timeout, rise, fall$/m,
      /divert\.yaml:12:1: listners: unknown key "listners" \(did you mean "listeners"\?\); expected one of: admin, state, fleet, capture, fast_path, limits, listeners, backends, rules, transparent$/m,
    )
    assert.equal(problems(e).length, 5, e.message)
  })

  it('reports each unknown key of one mapping separately', () => {
    const e = invalid(`${BASE}    foo: 1\n    bar: 2\n`, /divert\.yaml:8:5: backends\.prod\.foo: unknown key "foo"/, /divert\.yaml:9:5: backends\.prod\.bar: unknown key "bar"/)
    assert.equal(problems(e).length, 2)
  })
})

describe('parseConfig: values', () => {
  it('places a bad server address at its node', () => {
    const text = `listeners:
  - { name: telnet, bind: 127.0.0.1:2323, backend: prod }
backends:
  prod: { servers: [ { address: 127.0.0.1:2401 } ] }
  staging:
    servers:
      - address: 192.168.137.103
`
    const e = invalid(text, /^divert\.yaml:7:18: backends\.staging\.servers\[0\]\.address: address "192\.168\.137\.103" is not IP:port/)
    assert.deepEqual(problems(e).map((p) => [p.path, p.line, p.column]), [['backends.staging.servers[0].address', 7, 18]])
  })

  it('rejects bad binds, ports and host names', () => {
    invalid(BASE.replace('127.0.0.1:2323', '127.0.0.1:70000'), /divert\.yaml:3:11: listeners\[0\]\.bind: .*port 70000 is outside 0-65535/)
    invalid(BASE.replace('127.0.0.1:2323', 'localhost:23'), /divert\.yaml:3:11: listeners\[0\]\.bind: .*"localhost" is not an IP address/)
    invalid(BASE.replace('127.0.0.1:2323', '2323'), /divert\.yaml:3:11: listeners\[0\]\.bind: got 2323; expected IP:port/)
  })

  it('uses the duration parser message for bad durations', () => {
    invalid(`${BASE}    timeouts: { connect: 5 seconds }\n`,
      /divert\.yaml:8:26: backends\.prod\.timeouts\.connect: "5 seconds" is not a duration \(expected a number with a unit/)
  })

  it('rejects bad sizes', () => {
    invalid(`capture: { max_size: 100 parsecs, mirror_buffer: 0 }\n${BASE}`,
      /divert\.yaml:1:22: capture\.max_size: "100 parsecs" is not a size/,
      /divert\.yaml:1:50: capture\.mirror_buffer: 0 is zero; expected a size above 0/)
  })

  it('rejects bad enums with the allowed values', () => {
    invalid(`${BASE}    balance: fastest\n    proxy_protocol: v3\n`,
      /divert\.yaml:8:14: backends\.prod\.balance: got "fastest"; expected roundrobin, leastconn, source or random/,
      /divert\.yaml:9:21: backends\.prod\.proxy_protocol: got "v3"; expected v1 or v2/)
    invalid(BASE.replace('    bind:', '    protocol: sctp\n    bind:'), /divert\.yaml:3:15: listeners\[0\]\.protocol: got "sctp"; expected tcp or udp/)
  })

  it('rejects a server weight outside 1..256', () => {
    invalid(BASE.replace('2401 }', '2401, weight: 300 }'), /divert\.yaml:7:51: backends\.prod\.servers\[0\]\.weight: got 300; expected an integer from 1 to 256/)
    invalid(BASE.replace('2401 }', '2401, weight: 1.5 }'), /backends\.prod\.servers\[0\]\.weight: got 1\.5; expected an integer/)
  })

  it('rejects a listener name outside the allowed characters', () => {
    invalid(BASE.replace('name: telnet', 'name: "tel net"'), /divert\.yaml:2:11: listeners\[0\]\.name: got "tel net"; expected a name of letters/)
  })

  it('requires health interval and timeout above 0 and rise, fall at least 1', () => {
    const e = invalid(`${BASE}    health: { interval: 0s, timeout: 0, rise: 0, fall: 0 }\n`,
      /divert\.yaml:8:25: backends\.prod\.health\.interval: "0s" is zero; expected a duration above 0/,
      /divert\.yaml:8:38: backends\.prod\.health\.timeout: 0 is zero/,
      /divert\.yaml:8:47: backends\.prod\.health\.rise: got 0; expected an integer from 1 to 1000/,
      /divert\.yaml:8:56: backends\.prod\.health\.fall: got 0; expected an integer from 1 to 1000/)
    assert.equal(problems(e).length, 4)
  })

  it('requires max_flows at least 1', () => {
    invalid(`listeners:
  - name: vpn
    protocol: udp
    bind: 127.0.0.1:1194
    backend: prod
    udp: { max_flows: 0 }
backends:
  prod: { servers: [ { address: 127.0.0.1:1 } ] }
`, /divert\.yaml:6:23: listeners\[0\]\.udp\.max_flows: got 0; expected an integer ≥ 1/)
  })

  it('rejects a udp block on a tcp listener', () => {
    invalid(BASE.replace('    backend: prod\n', '    backend: prod\n    udp: { max_flows: 10 }\n'),
      /divert\.yaml:5:10: listeners\[0\]\.udp: is only allowed on a udp listener; expected protocol: udp/)
  })

  it('requires admin.token_file with admin.listen', () => {
    invalid(`admin:\n  listen: 127.0.0.1:7070\n${BASE}`, /divert\.yaml:2:11: admin\.listen: needs admin\.token_file/)
  })
})

describe('parseConfig: rules', () => {
  it('checks the source as an IP or CIDR', () => {
    invalid(`${BASE}rules:\n  - { source: 10.0.0.1/8, to: prod }\n`, /divert\.yaml:9:15: rules\[0\]\.source: "10\.0\.0\.1\/8" has host bits set below \/8: did you mean 10\.0\.0\.0\/8\?/)
    invalid(`${BASE}rules:\n  - { source: modem, to: prod }\n`, /divert\.yaml:9:15: rules\[0\]\.source: "modem" is not an IP address or CIDR/)
  })

  it('requires at least one action', () => {
    invalid(`${BASE}rules:\n  - { source: 10.0.0.1, note: nothing }\n`, /divert\.yaml:9:5: rules\[0\]: has no action; expected at least one of to, mirror, record$/)
  })

  it('requires to and mirror to name defined backends, listing the known ones', () => {
    invalid(`${BASE}  staging: { servers: [ { address: 127.0.0.1:2 } ] }\nrules:\n  - { source: 10.0.0.1, to: stage, mirror: mirror }\n`,
      /divert\.yaml:10:29: rules\[0\]\.to: no backend is named "stage"; expected one of: prod, staging/,
      /divert\.yaml:10:44: rules\[0\]\.mirror: no backend is named "mirror"; expected one of: prod, staging/)
  })

  it('requires a listener default backend to be defined', () => {
    invalid(BASE.replace('backend: prod', 'backend: production'), /divert\.yaml:4:14: listeners\[0\]\.backend: no backend is named "production"; expected one of: prod/)
  })

  it('requires a rule listener to be defined', () => {
    invalid(`${BASE}rules:\n  - { source: 10.0.0.1, to: prod, listener: ssh }\n`, /divert\.yaml:9:45: rules\[0\]\.listener: no listener is named "ssh"; expected one of: telnet/)
  })

  it('parses expires as an ISO-8601 date-time with a zone', () => {
    const c = parseConfig(`${BASE}rules:\n  - { source: 10.0.0.1, to: prod, expires: "2026-12-01T02:00:00+02:00" }\n`, 'divert.yaml')
    assert.equal(c.rules[0].expiresAt, Date.UTC(2026, 11, 1))
    invalid(`${BASE}rules:\n  - { source: 10.0.0.1, to: prod, expires: tomorrow }\n`,
      /divert\.yaml:9:44: rules\[0\]\.expires: got "tomorrow"; expected an ISO-8601 date-time with a zone/)
    invalid(`${BASE}rules:\n  - { source: 10.0.0.1, to: prod, expires: "2026-02-30T00:00:00Z" }\n`, /rules\[0\]\.expires: got "2026-02-30T00:00:00Z"/)
  })

  it('rejects two rules with the same source and scope, whatever the spelling', () => {
    invalid(`${BASE}rules:\n  - { source: 10.0.0.1, to: prod }\n  - { source: 10.0.0.1/32, mirror: prod }\n`,
      /divert\.yaml:10:15: rules\[1\]\.source: rules\[0\] already has source 10\.0\.0\.1 for all listeners; expected one rule per source and listener scope/)
  })
})

describe('parseConfig: checks across entries', () => {
  it('a backend with source: and a server that failed reports that server, not a TypeError (found by the config fuzzer)', () => {
    for (const server of ['{ address: nope }', '{ weight: 2 }']) {
      const e = invalid(`listeners:
  - { name: a, bind: 127.0.0.1:1, backend: b }
backends:
  b: { source: 127.0.0.5, servers: [ ${server} ] }
`, /backends\.b\.servers\[0\]/)
      assert.doesNotMatch(e.message, /TypeError|Cannot read/)
    }
  })

  it('rejects duplicate listener names and binds', () => {
    const e = invalid(`listeners:
  - { name: telnet, bind: 127.0.0.1:2323, backend: prod }
  - { name: telnet, bind: 127.0.0.1:2323, backend: prod }
  - { name: v6a, bind: "[::]:23", backend: prod }
  - { name: v6b, bind: "[0::0]:23", backend: prod }
backends:
  prod: { servers: [ { address: 127.0.0.1:1 } ] }
`,
      /divert\.yaml:3:13: listeners\[1\]\.name: "telnet" is already the name of listeners\[0\]; expected a unique listener name/,
      /divert\.yaml:3:27: listeners\[1\]\.bind: tcp 127\.0\.0\.1:2323 is already bound by listener "telnet" \(listeners\[0\]\)/,
      /divert\.yaml:5:24: listeners\[3\]\.bind: tcp \[0::0\]:23 is already bound by listener "v6a"/)
    assert.equal(problems(e).length, 3)
  })

  it('rejects PROXY v1 on a udp listener default backend and on a rule scoped to one', () => {
    invalid(`listeners:
  - { name: vpn, protocol: udp, bind: 127.0.0.1:1194, backend: pp }
backends:
  pp: { servers: [ { address: 127.0.0.1:1 } ], proxy_protocol: v1 }
rules:
  - { source: 10.0.0.1, to: pp, listener: vpn }
`, /divert\.yaml:2:64: listeners\[0\]\.backend: backend "pp" sends PROXY protocol v1, which is TCP-only; expected a backend with proxy_protocol: v2/,
    /divert\.yaml:6:29: rules\[0\]\.to: backend "pp" sends PROXY protocol v1/)
  })
})

describe('parseConfig: reporting', () => {
  it('reports several problems together, sorted by position, with details', () => {
    const e = invalid(`listeners:
  - name: telnet
    bind: 0.0.0.0:99999
    backend: nope
backends:
  prod:
    servers: [ { address: 127.0.0.1 } ]
    health: { interval: abc }
`)
    const lines = e.message.split('\n')
    assert.equal(lines.length, 4)
    assert.deepEqual(problems(e).map((p) => [p.path, p.line, p.column]), [
      ['listeners[0].bind', 3, 11],
      ['listeners[0].backend', 4, 14],
      ['backends.prod.servers[0].address', 7, 27],
      ['backends.prod.health.interval', 8, 25],
    ])
    assert.match(problems(e)[1].message, /^no backend is named "nope"; expected one of: prod$/)
  })

  it('caps the list at 20 and says how many more there are', () => {
    const listeners = Array.from({length: 25}, (_, i) => `  - { name: l${i}, bind: bad, backend: prod }`).join('\n')
    const e = invalid(`listeners:\n${listeners}\nbackends:\n  prod: { servers: [ { address: 127.0.0.1:1 } ] }\n`)
    const lines = e.message.split('\n')
    assert.equal(lines.length, 21)
    assert.equal(problems(e).length, 20)
    assert.equal(lines[20], 'divert.yaml: 5 more problems not shown; fix these first')
  })

  it('names the file as given', () => {
    assert.match(failure('[]', 'configs/divert.yaml').message, /^configs\/divert\.yaml:1:1: /)
  })
})

describe('loadConfig', () => {
  it('reports a missing file as CONFIG_READ with the path and the OS reason', async () => {
    const file = join(FIXTURES, 'does-not-exist.yaml')
    await assert.rejects(loadConfig(file), (e: unknown) => {
      assert.ok(e instanceof DivertError)
      assert.equal(e.code, 'DIVERT_ERR_CONFIG_READ')
      assert.ok(e.message.includes(file), e.message)
      assert.match(e.message, /no such file \(ENOENT\)/)
      return true
    })
  })

  it('reports a directory as CONFIG_READ', async () => {
    await assert.rejects(loadConfig(FIXTURES), (e: unknown) => e instanceof DivertError && e.code === 'DIVERT_ERR_CONFIG_READ' && /EISDIR/.test(e.message))
  })

  it('issue 11.4: a large file (parsed in a worker thread) gives the same Config, and the same errors at the same FILE:LINE:COL', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'divert-config-'))
    try {
      const rules = Array.from({length: 3000}, (_, i) => `  - { source: 10.0.${i >> 8}.${i & 255}, to: prod }`)
      const head = 'listeners: [ { name: l, bind: "127.0.0.1:0", backend: prod } ]\nbackends: { prod: { servers: [ { address: "127.0.0.1:9" } ] } }\nrules:\n'
      const good = join(dir, 'good.yaml')
      writeFileSync(good, `${head}${rules.join('\n')}\n`)
      assert.ok(readFileSync(good, 'utf8').length >= WORKER_MIN_CHARS, 'the file is large enough for the worker')
      const loaded = await loadConfig(good)
      assert.deepEqual(loaded, parseConfig(readFileSync(good, 'utf8'), good))
      assert.equal(loaded.rules.length, 3000)
      const bad = join(dir, 'bad.yaml')
      writeFileSync(bad, `${head}${rules.join('\n')}\n  - { source: 10.0.0.300, to: nowhere }\n`)
      const inProcess = (() => {
        try {
          parseConfig(readFileSync(bad, 'utf8'), bad)
        } catch (e) {
          return e as DivertError
        }
        assert.fail('expected an error')
      })()
      await assert.rejects(loadConfig(bad), (e: unknown) => {
        assert.ok(e instanceof DivertError)
        assert.deepEqual([e.code, e.message, e.details], [inProcess.code, inProcess.message, inProcess.details])
        assert.match(e.message, new RegExp(`bad\\.yaml:3004:\\d+: rules\\[3000\\]\\.source: `))
        return true
      })
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('reports problems with the file name as given', async () => {
    await assert.rejects(loadConfig(join(FIXTURES, 'bad-address.yaml')), (e: unknown) => {
      assert.ok(e instanceof DivertError)
      assert.equal(e.code, 'DIVERT_ERR_CONFIG_INVALID')
      assert.match(e.message, /bad-address\.yaml:7:18: backends\.staging\.servers\[0\]\.address: /)
      return true
    })
  })
})

describe('parseSize', () => {
  it('reads bytes, decimal and binary units', () => {
    const cases: [string | number, number][] = [
      ['512', 512], [512, 512], ['0', 0], ['64KiB', 65_536], ['1MiB', 1_048_576], ['1GiB', 1_073_741_824],
      ['100MB', 100_000_000], ['1kB', 1000], ['1.5MiB', 1_572_864], ['2 mib', 2_097_152], ['10B', 10],
    ]
    for (const [text, bytes] of cases) assert.equal(parseSize(text, 'x'), bytes, String(text))
  })

  it('rejects what is not a size, naming where', () => {
    for (const text of ['', 'MB', '-1', '1.5', '10 parsecs', '1e3', 1.5, -1, Number.NaN]) {
      assert.throws(() => parseSize(text, 'capture.max_size'), (e: unknown) => e instanceof DivertError && /^capture\.max_size: .* is not a size/.test(e.message), String(text))
    }
  })

  it('formats sizes back in the largest exact binary unit', () => {
    assert.equal(formatSize(4 * 1024 * 1024), '4MiB')
    assert.equal(formatSize(1500), '1500B')
    assert.equal(formatSize(parseSize('64KiB')), '64KiB')
  })
})

describe('parseConfig: TCP keepalive', () => {
  const withKeepalive = (listener: string, backend: string): string => `listeners:
  - { name: telnet, bind: 127.0.0.1:2323, backend: prod${listener} }
backends:
  prod: { servers: [ { address: 127.0.0.1:2401 } ]${backend} }
`

  it('issue 11.2: keepalive defaults to 60 s on both sides; a duration sets it, off and 0 disable it', () => {
    const d = parseConfig(BASE, 'divert.yaml')
    assert.equal(d.listeners[0].keepaliveMs, 60_000)
    assert.equal(d.backends.get('prod')?.keepaliveMs, 60_000)
    const set = parseConfig(withKeepalive(', keepalive: 7s', ', keepalive: 2m'), 'divert.yaml')
    assert.equal(set.listeners[0].keepaliveMs, 7000)
    assert.equal(set.backends.get('prod')?.keepaliveMs, 120_000)
    const off = parseConfig(withKeepalive(', keepalive: off', ', keepalive: 0'), 'divert.yaml')
    assert.equal(off.listeners[0].keepaliveMs, 0)
    assert.equal(off.backends.get('prod')?.keepaliveMs, 0)
  })

  it('issue 11.2: a keepalive that the kernel cannot take is an error at its line and column', () => {
    const expected = 'expected a whole number of seconds from 1s to 9h6m7s \\(e\\.g\\. 60s\\), or off / 0 to disable'
    invalid(withKeepalive(', keepalive: 1500ms', ''), new RegExp(`^divert\\.yaml:2:69: listeners\\[0\\]\\.keepalive: "1500ms" is not a keepalive time; ${expected}$`))
    invalid(withKeepalive('', ', keepalive: 10h'), new RegExp(`^divert\\.yaml:4:64: backends\\.prod\\.keepalive: "10h" is not a keepalive time; ${expected}$`))
    invalid(withKeepalive(', keepalive: on', ''), /^divert\.yaml:2:69: listeners\[0\]\.keepalive: "on" is not a duration/)
    invalid(withKeepalive('', ', keepalive: [60s]'), new RegExp(`^divert\\.yaml:4:64: backends\\.prod\\.keepalive: got a list; ${expected}$`))
    invalid(`listeners:
  - { name: u, protocol: udp, bind: 127.0.0.1:0, backend: prod, keepalive: 30s }
backends:
  prod: { servers: [ { address: 127.0.0.1:2401 } ] }
`, /^divert\.yaml:2:76: listeners\[0\]\.keepalive: is TCP keepalive, only allowed on a tcp listener; expected protocol: tcp, or no keepalive$/)
  })
})

describe('issue 14: state: redis://… and fleet:', () => {
  it('issue 14: a Redis URL is the shared store, kept as written (not a path); a file path stays a file', () => {
    const shared = parseConfig(`state: redis://10.0.0.5:6379/2\nfleet: { name: edge-1, admin_url: "http://10.0.0.5:7070" }\n${BASE}`, '/etc/divert/divert.yaml')
    assert.equal(shared.redis, 'redis://10.0.0.5:6379/2')
    assert.equal(shared.state, undefined)
    assert.deepEqual(shared.fleet, {name: 'edge-1', adminUrl: 'http://10.0.0.5:7070'})
    assert.equal(parseConfig(`state: rediss://:pw@cache.example:6380\n${BASE}`, 'divert.yaml').redis, 'rediss://:pw@cache.example:6380')
    const file = parseConfig(`state: ./state.json\n${BASE}`, '/etc/divert/divert.yaml')
    assert.equal(file.state, '/etc/divert/state.json')
    assert.equal(file.redis, undefined)
    assert.equal(file.fleet, undefined)
  })

  it('issue 14: a wrong store URL or fleet entry is an error at its line, the password not shown', () => {
    invalid(`state: redis://:secret@host/zero\n${BASE}`, /^divert\.yaml:1:8: state: got "redis:\/\/\*\*\*@host\/zero": the database "zero" is not a number/)
    assert.doesNotMatch(failure(`state: redis://:secret@host/zero\n${BASE}`).message, /secret/)
    invalid(`state: http://host:6379\n${BASE}`, /state: got "http:\/\/host:6379": the scheme http:\/\/ is not one divert keeps rules in/)
    invalid(`fleet: { name: "edge 1" }\n${BASE}`, /fleet\.name/)
    invalid(`fleet: { nmae: edge-1 }\n${BASE}`, /fleet\.nmae: unknown key "nmae" \(did you mean "name"\?\)/)
  })
})
