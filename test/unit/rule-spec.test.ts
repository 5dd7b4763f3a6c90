/**
 * The rule schema (rules/spec.ts) on its three surfaces — config file, POST /rules, state file — and
 * the one cross-check against a config (ruleConflicts). Pure: no sockets, no daemon.
 */
import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {parseConfig} from '../../src/config/load.js'
import {parseAddRule, parseStoredRules, ruleConflicts, type RuleContext} from '../../src/rules/spec.js'
import {StateStore} from '../../src/rules/state.js'
import {DivertError} from '../../src/errors.js'

const NOW = Date.UTC(2026, 11, 6)

const CONFIG = `listeners:
  - { name: telnet, bind: 127.0.0.1:2323, backend: prod }
  - { name: vpn, protocol: udp, bind: 127.0.0.1:1194, backend: prod }
backends:
  prod: { servers: [ { address: 127.0.0.1:2401 } ] }
  pp: { servers: [ { address: 127.0.0.1:2402 } ], proxy_protocol: v1 }
rules:
`

/** The config's problem with one rule (its message without file and line), or undefined when it takes it. */
function configSays(rule: Record<string, unknown>): string | undefined {
  try {
    parseConfig(`${CONFIG}  - ${JSON.stringify(rule)}\n`, 'divert.yaml')
    return undefined
  } catch (error) {
    assert.ok(error instanceof DivertError && error.code === 'DIVERT_ERR_CONFIG_INVALID', String(error))
    return error.message.replace(/^divert\.yaml:\d+:\d+: /, '')
  }
}

function requestSays(body: unknown): {code: string; message: string} | undefined {
  try {
    parseAddRule(body, NOW)
    return undefined
  } catch (error) {
    assert.ok(error instanceof DivertError, String(error))
    return {code: error.code, message: error.message}
  }
}

function stateSays(rule: Record<string, unknown>): string | undefined {
  return parseStoredRules([{id: 'r000001', createdAt: NOW, ...rule}], NOW).problem
}

describe('issue 12.5: one rule schema for the config file, POST /rules and the state file', () => {
  it('issue 12.5: what one surface refuses, the others refuse, each saying which field and what is expected', () => {
    const cases: Array<{rule: Record<string, unknown>; config: RegExp; request: [string, RegExp]; state: RegExp}> = [
      {
        rule: {source: '10.0.0.1/8', to: 'prod'},
        config: /^rules\[0\]\.source: "10\.0\.0\.1\/8" has host bits set below \/8: did you mean 10\.0\.0\.0\/8\?/,
        request: ['DIVERT_ERR_INVALID_ADDRESS', /^source: "10\.0\.0\.1\/8" has host bits set below \/8/],
        state: /^rules\[0\] \(10\.0\.0\.1\/8\): "10\.0\.0\.1\/8" has host bits set below \/8/,
      },
      {
        rule: {source: '10.0.0.1', note: 'nothing to do'},
        config: /^rules\[0\]: has no action; expected at least one of to, mirror, record$/,
        request: ['DIVERT_ERR_RULE_INVALID', /^a rule needs at least one action: --to BACKEND, --mirror BACKEND or --record FILE$/],
        state: /^rules\[0\] \(10\.0\.0\.1\): has no action; expected at least one of to, mirror, record$/,
      },
      {
        rule: {source: '10.0.0.1', to: 5},
        config: /^rules\[0\]\.to: got 5; expected the name of a backend/,
        request: ['DIVERT_ERR_ADMIN_BAD_REQUEST', /^--to: got 5; expected the name of a backend/],
        state: /^rules\[0\] \(10\.0\.0\.1\): to: got 5; expected the name of a backend/,
      },
      {
        rule: {source: '10.0.0.1', to: 'prod', note: 7},
        config: /^rules\[0\]\.note: got 7; expected text$/,
        request: ['DIVERT_ERR_ADMIN_BAD_REQUEST', /^--note: got 7; expected text$/],
        state: /^rules\[0\] \(10\.0\.0\.1\): note: got 7; expected text$/,
      },
      {
        rule: {source: '10.0.0.1', to: 'prod', sudo: 'yes'},
        config: /^rules\[0\]\.sudo: unknown key "sudo"; expected one of: source, to, mirror, record, listener, expires, note$/,
        request: ['DIVERT_ERR_ADMIN_BAD_REQUEST', /^unknown key "sudo"; expected one of: source, to, mirror, record, maxSize, listener, for, note, existing$/],
        state: /^rules\[0\] \(10\.0\.0\.1\): unknown key "sudo"; expected one of: id, source/,
      },
    ]
    for (const c of cases) {
      const what = JSON.stringify(c.rule)
      assert.match(configSays(c.rule) ?? 'accepted', c.config, `config, ${what}`)
      const r = requestSays(c.rule)
      assert.equal(r?.code, c.request[0], `request, ${what}: ${r?.message}`)
      assert.match(r.message, c.request[1], `request, ${what}`)
      assert.match(stateSays(c.rule) ?? 'accepted', c.state, `state, ${what}`)
    }
  })

  it('issue 12.5: what the config takes, the others take: an empty note, any spelling of a source (canonical after)', () => {
    const rule = {source: ' 10.0.0.1/32 ', to: 'prod', note: ''}
    assert.equal(configSays(rule), undefined)
    assert.deepEqual(parseAddRule(rule, NOW), {spec: {source: '10.0.0.1', to: 'prod'}, existing: 'keep'}, 'a request\'s empty text is "not given"')
    assert.deepEqual(parseStoredRules([{id: 'r000001', createdAt: 5, ...rule}], NOW), {rules: [{id: 'r000001', createdAt: 5, source: '10.0.0.1', to: 'prod', note: ''}]})
  })

  it('issue 12.5: POST /rules: each field parsed by its parser, with its code; null and empty text are absent', () => {
    const said = (body: unknown): string => {
      const r = requestSays(body)
      return r ? `${r.code.replace('DIVERT_ERR_', '')} ${r.message}` : 'accepted'
    }
    assert.match(said({source: '10.0.0.1', to: 'prod', for: 'soon'}), /^INVALID_DURATION --for: "soon" is not a duration/)
    assert.match(said({source: '10.0.0.1', to: 'prod', for: '0s'}), /^INVALID_DURATION --for: "0s" is zero; expected a duration above 0/)
    assert.match(said({source: '10.0.0.1', to: 'prod', for: `${1e8}d`}), /^INVALID_DURATION --for: .* ends after the last date a rule can carry \(year 275760\)/)
    assert.match(said({source: '10.0.0.1', record: '/x.pcap', maxSize: '0'}), /^INVALID_SIZE --max-size: "0" is zero; expected a size above 0/)
    assert.match(said({source: '10.0.0.1', record: '/x.pcap', maxSize: 'lots'}), /^INVALID_SIZE --max-size: "lots" is not a size/)
    assert.match(said({source: '10.0.0.1', to: 'prod', maxSize: '1MiB'}), /^RULE_INVALID --max-size limits a recording: give --record FILE too$/)
    assert.match(said({source: '10.0.0.1', to: 'prod', existing: 'maybe'}), /^ADMIN_BAD_REQUEST --existing: got "maybe"; expected keep or kill$/)
    assert.match(said({source: '10.0.0.1', to: 'prod', existing: ''}), /^ADMIN_BAD_REQUEST --existing: got ""/)
    assert.match(said({source: '', to: 'prod'}), /^INVALID_ADDRESS source: "" is not an IP address or CIDR/)
    assert.match(said({to: 'prod'}), /^ADMIN_BAD_REQUEST source: is missing; expected an IP or CIDR/)
    assert.match(said([]), /^ADMIN_BAD_REQUEST got an empty list; expected a JSON object body like/)
    assert.match(said(undefined), /^ADMIN_BAD_REQUEST is missing; expected a JSON object body like/)
    assert.deepEqual(parseAddRule({source: '2001:db8::/64', to: null, mirror: 'prod', listener: '', for: '30m', existing: 'kill', record: '/r.pcap', maxSize: '1KiB'}, NOW), {
      spec: {source: '2001:db8::/64', mirror: 'prod', record: '/r.pcap', recordMaxBytes: 1024, expiresAt: NOW + 30 * 60_000}, existing: 'kill',
    })
  })

  it('issue 12.5: the state file: ids well-formed and unique, times within what a Date holds, a size limit with a recording (what the table no longer re-checks)', () => {
    const said = (...rules: Array<Record<string, unknown>>): string | undefined => parseStoredRules(rules, NOW).problem
    assert.match(said({id: 'R000001', source: '10.0.0.1', to: 'p'}) ?? '', /^rules\[0\] \(10\.0\.0\.1\): id: got "R000001"; expected a rule id: "r" and 6 lowercase hex digits/)
    assert.match(said({id: 'r000001', source: '10.0.0.1', to: 'p'}, {id: 'r000001', source: '10.0.0.2', to: 'p'}) ?? '', /^rules\[1\] has id r000001, like rules\[0\]/)
    assert.match(said({id: 'r000001', source: '10.0.0.1', to: 'p', expiresAt: 1e300}) ?? '', /expiresAt: got 1e\+300; expected the expiry in epoch milliseconds, before the year 275760/)
    assert.match(said({id: 'r000001', source: '10.0.0.1', to: 'p', listener: ''}) ?? '', /listener: got ""; expected the name of a listener/)
    assert.match(said({id: 'r000001', source: '10.0.0.1', to: 'p', recordMaxBytes: 100}) ?? '', /recordMaxBytes: limits a recording, but the rule has no record/)
    assert.match(said({id: 'r000001', source: '10.0.0.1', record: '/r.pcap', recordMaxBytes: 0}) ?? '', /recordMaxBytes: got 0; expected a whole number of bytes above 0/)
    assert.match(said({id: 'r000001', to: 'p'}) ?? '', /^rules\[0\] \(no source\): is missing; expected an IP or CIDR/)
    assert.deepEqual(parseStoredRules([{id: 'r000001', source: '10.0.0.1', to: 'p'}], NOW).rules, [{id: 'r000001', source: '10.0.0.1', to: 'p', createdAt: NOW}], 'createdAt defaults to the load time')
  })

  it('issue 12.5: a hand-edited state file with a bad rule is moved aside on load (never dropped), and read alone leaves it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'divert-rule-spec-'))
    try {
      const file = join(dir, 'state.json')
      const text = JSON.stringify({version: 1, rules: [{id: 'r000001', source: '10.0.0.1', to: 'prod', createdAt: NOW}, {id: 'r000002', source: '10.0.0.2', to: 'prod', createdAt: 'yesterday'}]})
      writeFileSync(file, text)
      const store = new StateStore(file)
      const read = await store.read()
      assert.deepEqual(read.rules, [])
      assert.match(read.problem ?? '', /^rules\[1\] \(10\.0\.0\.2\): createdAt: got "yesterday"; expected the creation time in epoch milliseconds/)
      assert.deepEqual(readdirSync(dir), ['state.json'], 'read changes nothing')
      const loaded = await store.load()
      assert.deepEqual(loaded.rules, [])
      assert.equal(loaded.problem, read.problem)
      const aside = loaded.movedAside ?? ''
      assert.ok(aside.startsWith(`${file}.corrupt-`), aside)
      assert.equal(readFileSync(aside, 'utf8'), text, 'the bytes are kept')
      assert.deepEqual(readdirSync(dir), [aside.slice(dir.length + 1)])
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})

describe('issue 12.5: ruleConflicts, the one cross-check of a rule against a config', () => {
  const config: RuleContext = {
    backends: new Map([['prod', {}], ['pp', {proxyProtocol: 'v1' as const}], ['pp2', {proxyProtocol: 'v2' as const}]]),
    listeners: [{name: 'telnet', protocol: 'tcp'}, {name: 'vpn', protocol: 'udp'}],
  }

  it('issue 12.5: missing names first (to, mirror, listener), then PROXY v1 to a UDP listener — only when scoped to one', () => {
    assert.deepEqual(ruleConflicts({to: 'gone', mirror: 'also', listener: 'nope'}, config), [
      {kind: 'backend', name: 'gone'}, {kind: 'backend', name: 'also'}, {kind: 'listener', name: 'nope'},
    ])
    assert.deepEqual(ruleConflicts({to: 'pp', listener: 'vpn'}, config), [{kind: 'proxy-v1-udp', name: 'pp', listener: 'vpn'}])
    assert.deepEqual(ruleConflicts({to: 'pp', listener: 'telnet'}, config), [])
    assert.deepEqual(ruleConflicts({to: 'pp'}, config), [], 'unscoped: its TCP sessions carry the header, as the config file allows')
    assert.deepEqual(ruleConflicts({to: 'pp2', listener: 'vpn'}, config), [])
    assert.deepEqual(ruleConflicts({mirror: 'pp', listener: 'vpn'}, config), [], 'a mirror sends no PROXY header')
  })

  it('issue 12.5: the config file reports the conflict at the rule\'s `to`, as before', () => {
    assert.match(configSays({source: '10.0.0.1', to: 'pp', listener: 'vpn'}) ?? '', /^rules\[0\]\.to: backend "pp" sends PROXY protocol v1, which is TCP-only; expected a backend with proxy_protocol: v2 \(or none\) for a udp listener$/)
  })
})
