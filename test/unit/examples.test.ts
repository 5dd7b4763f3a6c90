import {test} from 'node:test'
import assert from 'node:assert/strict'
import {readdirSync, readFileSync, statSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseConfig} from '../../src/config/load.js'

const examples = fileURLToPath(new URL('../../../examples/', import.meta.url))

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n)
    if (statSync(p).isDirectory()) return yamlFiles(p)
    return /\.ya?ml$/.test(n) ? [p] : []
  })
}

test('every example config is valid', () => {
  const files = yamlFiles(examples)
  assert.ok(files.length >= 2, `expected example configs under ${examples}`)
  for (const f of files) assert.doesNotThrow(() => parseConfig(readFileSync(f, 'utf8'), f), f)
})

test('the quickstart listens and connects on loopback only', () => {
  const f = join(examples, 'quickstart', 'divert.yaml')
  const c = parseConfig(readFileSync(f, 'utf8'), f)
  const loopback = (h: string): boolean => h.startsWith('127.') || h === '::1'
  for (const l of c.listeners) assert.ok(loopback(l.bind.address), `${l.name} binds ${l.bind.address}`)
  for (const b of c.backends.values()) for (const s of b.servers) assert.ok(loopback(s.address.address), `${b.name} → ${s.address.address}`)
})

/** The first ```yaml block after `heading` in README.md. */
function readmeYaml(heading: string): string {
  const readme = readFileSync(join(examples, '..', 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf(`\n${heading}\n`))
  const m = /```yaml\n([\s\S]*?)```/.exec(section)
  assert.ok(section.length > 0 && m, `a yaml block under "${heading}" in README.md`)
  return m[1]
}

test('issue 11.28: the README\'s full example config (Config reference) passes the config loader', () => {
  // Parsed and validated only: its 192.168.x addresses are illustrations, nothing here binds or connects.
  const file = join(examples, '..', 'README.md')
  const c = parseConfig(readmeYaml('## Config reference'), file)
  assert.deepEqual(c.listeners.map((l) => [l.name, l.backend]), [['telnet', 'prod'], ['vpn', 'vpn-prod']])
  for (const l of c.listeners) assert.ok(c.backends.has(l.backend), `listener ${l.name}'s backend ${l.backend} is defined`)
  assert.equal(c.rules.length, 3)
})
