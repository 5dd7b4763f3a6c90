#!/usr/bin/env node
// Runs the compiled node:test files. Node 20's `node --test` does not expand globs, so the files are
// listed here. Usage: node scripts/run-tests.mjs [unit|integration|e2e|faults|bench ...]
import {readdirSync, statSync} from 'node:fs'
import {join} from 'node:path'
import {spawnSync} from 'node:child_process'

const dist = new URL('../dist/', import.meta.url).pathname
const TIERS = {
  unit: 'test/unit',
  integration: 'test/integration',
  e2e: 'test/e2e',
  faults: 'test/faults',
  bench: 'bench/test',
}
const tiers = process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(TIERS)
const unknown = tiers.filter((t) => !(t in TIERS))
if (unknown.length > 0) {
  console.error(`unknown test tier ${unknown.join(', ')}; known: ${Object.keys(TIERS).join(', ')}`)
  process.exit(2)
}

function collect(dir) {
  let out = []
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) out = out.concat(collect(p))
    else if (name.endsWith('.test.js')) out.push(p)
  }
  return out
}

const files = tiers.flatMap((t) => {
  try {
    return collect(join(dist, TIERS[t]))
  } catch {
    return []
  }
})
if (files.length === 0) {
  console.error(`no test files under ${dist} for ${tiers.join(', ')}: run \`npm run build\` first`)
  process.exit(1)
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', ...files], {stdio: 'inherit'})
process.exit(r.status ?? 1)
