/**
 * `divert check -c FILE` as a user runs it (nginx -t, haproxy -c): the same validation as `divert
 * start`, config rules and the state file's runtime rules included, with nothing bound or written.
 */
import {test, describe, after} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {once} from 'node:events'
import {mkdirSync, readFileSync, readdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {tempDir} from '../helpers/daemon.js'
import {cli} from './harness.js'

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/config/', import.meta.url))

describe('divert check', () => {
  const {dir, cleanup} = tempDir('divert-e2e-check-')
  after(cleanup)

  function config(name: string, text: string): string {
    const file = join(dir, name)
    writeFileSync(file, text)
    return file
  }

  const valid = (bind: string, extra = ''): string =>
    `listeners:\n  - { name: main, bind: "${bind}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "127.0.0.1:1" } ] }\n  staging: { servers: [ { address: "127.0.0.1:2" } ] }\n${extra}`

  test('issue 11.27: a valid config exits 0 with a one-line summary; --json prints the result object', async () => {
    const file = config('good.yaml', valid('127.0.0.1:7000', 'rules:\n  - { source: 127.0.0.9, to: staging }\n'))
    const [text, json] = await Promise.all([cli(['check', '-c', file]), cli(['check', '-c', file, '--json'])])
    assert.equal(text.code, 0, text.stderr)
    assert.equal(text.stdout, `${file}: OK — 1 listener, 2 backends, 1 config rule, 0 runtime rules\n`)
    assert.equal(json.code, 0, json.stderr)
    assert.deepEqual(json.json(), {ok: true, file, listeners: 1, backends: 2, rules: {config: 1, runtime: 0}})
  })

  test('issue 11.27: a bad config exits 2 with file:line:column on stderr', async () => {
    const fixture = join(FIXTURES, 'bad-address.yaml')
    const dupRules = config('dup.yaml', valid('127.0.0.1:7000', 'rules:\n  - { source: 127.0.0.9, to: staging }\n  - { source: 127.0.0.9/32, to: prod }\n'))
    const [r1, r2, r3] = await Promise.all([cli(['check', '-c', fixture]), cli(['check', '-c', dupRules]), cli(['check', '-c', fixture, '--json'])])
    assert.equal(r1.code, 2)
    assert.equal(r1.stdout, '')
    assert.match(r1.stderr, /bad-address\.yaml:7:18: backends\.staging\.servers\[0\]\.address: /)
    assert.equal(r2.code, 2, r2.stdout)
    assert.match(r2.stderr, /127\.0\.0\.9/)
    assert.equal(r3.code, 2)
    assert.equal(r3.json().code, 'DIVERT_ERR_CONFIG_INVALID')
  })

  test('issue 11.27: a listener port already in use still checks OK: nothing is bound', async () => {
    const taken = net.createServer().listen(0, '127.0.0.1')
    await once(taken, 'listening')
    try {
      const port = (taken.address() as net.AddressInfo).port
      const r = await cli(['check', '-c', config('taken.yaml', valid(`127.0.0.1:${port}`))])
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /OK — 1 listener/)
    } finally {
      taken.close()
    }
  })

  test('issue 11.27: the state file\'s rules are checked and the file is left as it was', async () => {
    const sub = join(dir, 'with-state')
    const state = (rules: unknown[]): string => JSON.stringify({version: 1, rules})
    mkdirSync(sub)
    const file = join(sub, 'divert.yaml')
    writeFileSync(file, valid('127.0.0.1:7000', 'state: ./state.json\n'))
    writeFileSync(join(sub, 'state.json'), state([{id: 'r000001', source: '127.0.0.5', to: 'staging', createdAt: Date.now()}]))
    const ok = await cli(['check', '-c', file])
    assert.equal(ok.code, 0, ok.stderr)
    assert.match(ok.stdout, /1 runtime rule \(state .*state\.json\)/)

    writeFileSync(join(sub, 'state.json'), state([{id: 'r000002', source: '127.0.0.6', to: 'gone', createdAt: Date.now()}]))
    const stale = await cli(['check', '-c', file])
    assert.equal(stale.code, 2)
    assert.match(stale.stderr, /state\.json: runtime rule r000002 for 127\.0\.0\.6: names backend "gone"/)

    writeFileSync(join(sub, 'state.json'), '{not json')
    const corrupt = await cli(['check', '-c', file])
    assert.equal(corrupt.code, 2)
    assert.match(corrupt.stderr, /state\.json: not JSON/)
    assert.equal(readFileSync(join(sub, 'state.json'), 'utf8'), '{not json', 'the corrupt state file is not moved aside')
    assert.deepEqual(readdirSync(sub).sort(), ['divert.yaml', 'state.json'])
  })

  test('issue 11.27: check --help shows examples', async () => {
    const r = await cli(['check', '--help'])
    assert.equal(r.code, 0)
    assert.match(r.stdout, /EXAMPLES[\s\S]*divert check -c divert\.yaml/)
  })
})
