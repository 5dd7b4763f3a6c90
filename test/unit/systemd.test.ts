/**
 * examples/systemd: the unit file is well-formed systemd INI with the settings the README promises,
 * it starts divert with the config in the same folder, and that config's paths lie in the unit's
 * directories. `systemd-analyze verify` checks the unit too when the binary exists.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import {basename, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseConfig} from '../../src/config/load.js'
import {parseDuration} from '../../src/config/duration.js'
import {BIN, tempDir} from '../helpers/daemon.js'

const folder = fileURLToPath(new URL('../../../examples/systemd/', import.meta.url))
const unitText = readFileSync(join(folder, 'divert.service'), 'utf8')

/** systemd.syntax(7): [Section] headers, Key=Value lines, # or ; comments, blank lines; a key may repeat. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>()
  let current: Map<string, string[]> | undefined
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return
    const header = /^\[([A-Za-z]+)\]$/.exec(line)
    if (header) {
      current = new Map()
      sections.set(header[1], current)
      return
    }
    const kv = /^([A-Za-z][A-Za-z0-9]*)=(.*)$/.exec(line)
    assert.ok(kv, `line ${i + 1} is neither a [Section] nor Key=Value: ${raw}`)
    assert.ok(current, `line ${i + 1} comes before any [Section]`)
    assert.ok(!line.endsWith('\\'), `line ${i + 1}: no continuation lines, keep each setting on one line`)
    current.set(kv[1], [...(current.get(kv[1]) ?? []), kv[2]])
  })
  return sections
}

const unit = parseUnit(unitText)
const service = unit.get('Service')!
const one = (key: string): string => {
  const v = service.get(key)
  assert.ok(v && v.length === 1, `[Service] ${key}= once`)
  return v[0]
}

test('issue 11.29: the systemd unit is well-formed and sets what running divert as a service needs', () => {
  assert.deepEqual([...unit.keys()], ['Unit', 'Service', 'Install'])
  assert.equal(one('Type'), 'simple')
  assert.equal(one('ExecReload'), '/bin/kill -HUP $MAINPID')
  assert.equal(one('KillSignal'), 'SIGTERM')
  assert.equal(one('RuntimeDirectory'), 'divert')
  assert.match(one('StateDirectory'), /^divert\b/)
  assert.equal(one('ProtectSystem'), 'strict')
  assert.ok(one('ReadWritePaths').includes('captures'))
  assert.equal(one('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE')
  assert.ok(Number(one('LimitNOFILE')) >= 65536)
  assert.match(unitText, /CAP_NET_ADMIN/, 'a note about CAP_NET_ADMIN for a later transparent mode')
  assert.ok(!service.has('MemoryDenyWriteExecute'), 'V8\'s JIT needs writable-executable memory')
  assert.equal(unit.get('Install')!.get('WantedBy')?.[0], 'multi-user.target')
})

test('issue 11.29: the unit starts divert with the folder\'s config, whose socket, state and recordings lie in the unit\'s directories, and stops after the drain', () => {
  const exec = one('ExecStart').split(/\s+/)
  assert.equal(exec[0], '/usr/local/bin/divert')
  assert.equal(exec[1], 'start')
  const configPath = exec[exec.indexOf('-c') + 1]
  assert.equal(configPath, '/etc/divert/divert.yaml')
  const example = join(folder, basename(configPath))
  assert.ok(existsSync(example), `examples/systemd provides ${basename(configPath)}`)
  const config = parseConfig(readFileSync(example, 'utf8'), configPath)
  assert.equal(config.admin.socket, '/run/divert/admin.sock', 'the admin socket is in RuntimeDirectory (/run/divert)')
  assert.ok(config.state?.startsWith('/var/lib/divert/'), 'the state file is in StateDirectory (/var/lib/divert)')
  const writable = ['/var/lib/divert/', ...one('ReadWritePaths').split(/\s+/).map((p) => `${p.replace(/^-/, '')}/`)]
  for (const r of config.rules) if (r.record) assert.ok(writable.some((w) => r.record!.startsWith(w)), `${r.record} is writable for the service`)
  const drain = parseDuration(exec[exec.indexOf('--drain') + 1], '--drain')
  assert.ok(parseDuration(one('TimeoutStopSec'), 'TimeoutStopSec') > drain, 'TimeoutStopSec is longer than the drain')
})

test('issue 11.29: systemd-analyze verify accepts the unit (with ExecStart pointing at this checkout\'s divert)', (t) => {
  if (spawnSync('systemd-analyze', ['--version']).status !== 0) return t.skip('systemd-analyze is not installed (Debian: systemd)')
  const {dir, cleanup} = tempDir()
  t.after(cleanup)
  // verify requires the ExecStart binary to exist: stand this checkout's bin/run.js in for the installed path.
  const file = join(dir, 'divert.service')
  writeFileSync(file, unitText.replace('/usr/local/bin/divert', BIN))
  const r = spawnSync('systemd-analyze', ['verify', file], {encoding: 'utf8', timeout: 20_000})
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`)
  assert.equal(r.stderr.trim(), '', r.stderr)
})
