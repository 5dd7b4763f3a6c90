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
  for (const l of c.listeners) assert.ok(loopback(l.bind.host), `${l.name} binds ${l.bind.host}`)
  for (const b of c.backends.values()) for (const s of b.servers) assert.ok(loopback(s.address.host), `${b.name} → ${s.address.host}`)
})
