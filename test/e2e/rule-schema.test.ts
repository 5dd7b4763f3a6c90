/**
 * One rule schema for every way a rule comes in (issue 12 item 5): what the config file refuses,
 * `divert add`, the state file and a reload refuse too — PROXY v1 to a UDP listener first of all,
 * which the config refused while `divert add` took it and the UDP proxy silently sent no header.
 *
 *   divert add ─┐
 *   state file ─┼─▶ rule schema + ruleConflicts (the config in force) ─▶ refused / skipped / moved aside
 *   reload     ─┘
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync, readdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {startLab, cli, expectCliError, type Lab} from './harness.js'

const V1_UDP = /listener "vpn" is udp, and backend "pp" sends PROXY protocol v1, which is TCP-only; expected a backend with proxy_protocol: v2 \(or none\) for a udp listener/

describe('issue 12.5: one rule schema for config, divert add, the state file and reload', () => {
  let lab: Lab
  let state: string

  before(async () => {
    lab = await startLab({
      top: () => 'state: ./state.json',
      listeners: () => ['{ name: vpn, protocol: udp, bind: "127.0.0.1:0", backend: prod }'],
      backends: (l) => `  pp: { servers: [ { address: "${l.servers.staging.address}" } ], proxy_protocol: v1 }`,
    })
    state = join(lab.dir, 'state.json')
  })

  after(async () => {
    await lab?.close()
  })

  async function sources(): Promise<string[]> {
    const r = await lab.cli('list', '--json')
    assert.equal(r.code, 0, r.stderr)
    return r.json().filter((x: any) => x.origin === 'runtime').map((x: any) => `${x.source} ${x.listener ?? '*'}`)
  }

  /** Restarts the daemon on a hand-written state file; returns the files moved aside since. */
  async function restartWith(rules: unknown[]): Promise<string[]> {
    const before = new Set(readdirSync(lab.dir))
    assert.equal(await lab.restart(() => writeFileSync(state, JSON.stringify({version: 1, rules}), {mode: 0o600})), 0)
    return readdirSync(lab.dir).filter((f) => !before.has(f) && f.startsWith('state.json.corrupt-'))
  }

  test('issue 12.5: divert add refuses PROXY v1 to a UDP listener (RULE_INVALID), as the config does; to a TCP listener or unscoped it is taken', async () => {
    await expectCliError(lab.cli, {args: ['add', '127.0.0.40', '--to', 'pp', '--listener', 'vpn'], code: 'DIVERT_ERR_RULE_INVALID', exit: 2, message: V1_UDP})
    assert.deepEqual(await sources(), [], 'nothing was added')
    for (const scope of [['--listener', 'main'], []]) {
      const r = await lab.cli('add', '127.0.0.40', '--to', 'pp', ...scope)
      assert.equal(r.code, 0, r.stderr)
    }
    assert.deepEqual((await sources()).sort(), ['127.0.0.40 *', '127.0.0.40 main'])
    assert.equal((await lab.cli('rm', '--all')).code, 0)
  })

  test('issue 12.5: the same value is refused the same way by the config and by divert add (a zero recording size)', async () => {
    await expectCliError(lab.cli, {
      args: ['add', '127.0.0.45', '--record', join(lab.dir, 'x.pcap'), '--max-size', '0'],
      code: 'DIVERT_ERR_INVALID_SIZE', exit: 2, message: /--max-size: "0" is zero; expected a size above 0, e\.g\. 1MiB$/,
    })
    await expectCliError(lab.cli, {
      args: ['add', '127.0.0.45', '--to', 'staging', '--for', '0s'],
      code: 'DIVERT_ERR_INVALID_DURATION', exit: 2, message: /--for: "0s" is zero; expected a duration above 0, e\.g\. 30m$/,
    })
    assert.deepEqual(await sources(), [])
  })

  test('issue 12.5: a stored rule with PROXY v1 to a UDP listener is skipped at start (the file is kept), and divert check reports it', async () => {
    const now = Date.now()
    const aside = await restartWith([
      {id: 'r0012a1', source: '127.0.0.41', to: 'pp', listener: 'vpn', createdAt: now},
      {id: 'r0012a2', source: '127.0.0.42', to: 'staging', createdAt: now},
    ])
    assert.deepEqual(aside, [], 'a rule that does not fit the config is skipped, not a corrupt file')
    assert.deepEqual(await sources(), ['127.0.0.42 *'])
    const skipped = lab.daemon.logs.find((l) => l.level === 50 && /rules\[0\] \(r0012a1 for 127\.0\.0\.41\) not applied/.test(String(l.msg)))
    assert.ok(skipped, `an error line names the skipped rule: ${JSON.stringify(lab.daemon.logs.filter((l) => l.level >= 40))}`)
    assert.match(String(skipped.msg), V1_UDP)
    const check = await cli(['check', '-c', lab.configFile])
    assert.equal(check.code, 2, check.stdout)
    assert.match(check.stderr, /state\.json: runtime rule r0012a1 for 127\.0\.0\.41: listener "vpn" is udp, and backend "pp" sends PROXY protocol v1.*`divert start` would skip it/)
    assert.equal((await lab.cli('rm', '--all')).code, 0)
  })

  test('issue 12.5: a reload that would make a runtime rule PROXY v1 to a UDP listener is refused, naming the rule', async () => {
    const added = await lab.cli('add', '127.0.0.43', '--to', 'debug', '--listener', 'vpn')
    assert.equal(added.code, 0, added.stderr)
    const id = /r[0-9a-f]{6}/.exec(added.stdout)![0]
    const original = readFileSync(lab.configFile, 'utf8')
    const v1 = original.replace(/^( {2}debug: \{ servers: \[ .* \])( \})$/m, '$1, proxy_protocol: v1$2')
    assert.notEqual(v1, original)
    writeFileSync(lab.configFile, v1)
    try {
      await expectCliError(lab.cli, {
        args: ['reload'], code: 'DIVERT_ERR_CONFIG_INVALID', exit: 2,
        message: new RegExp(`runtime rule ${id} \\(127\\.0\\.0\\.43\\) would no longer fit: listener "vpn" is udp, and backend "debug" sends PROXY protocol v1.*divert rm ${id}`),
      })
    } finally {
      writeFileSync(lab.configFile, original)
    }
    assert.deepEqual(await sources(), ['127.0.0.43 vpn'])
    assert.equal((await lab.cli('rm', '--all')).code, 0)
  })

  test('issue 12.5: a hand-edited state rule the schema refuses (createdAt not a time) moves the file aside with STATE_CORRUPT, naming the rule, field and what is expected', async () => {
    const rules = [{id: 'r0012b1', source: '127.0.0.44', to: 'staging', createdAt: 'yesterday'}]
    const aside = await restartWith(rules)
    assert.equal(aside.length, 1, 'moved aside')
    assert.equal(readFileSync(join(lab.dir, aside[0]), 'utf8'), JSON.stringify({version: 1, rules}), 'with its bytes')
    const logged = lab.daemon.logs.find((l) => l.level === 50 && l.code === 'DIVERT_ERR_STATE_CORRUPT')
    assert.ok(logged, `an error line with the code: ${JSON.stringify(lab.daemon.logs.filter((l) => l.level >= 40))}`)
    assert.match(String(logged.msg), /rules\[0\] \(127\.0\.0\.44\): createdAt: got "yesterday"; expected the creation time in epoch milliseconds/)
    const list = await lab.cli('list')
    assert.equal(list.code, 0, `divert list still works: ${list.stderr}`)
    assert.deepEqual(await sources(), [])
  })

  test('issue 12.5: a state rule with an empty note is restored, as the config takes `note: ""`', async () => {
    const aside = await restartWith([{id: 'r0012c1', source: '127.0.0.46', to: 'staging', note: '', createdAt: Date.now()}])
    assert.deepEqual(aside, [])
    assert.deepEqual(await sources(), ['127.0.0.46 *'])
    assert.equal((await lab.cli('rm', '--all')).code, 0)
  })
})
