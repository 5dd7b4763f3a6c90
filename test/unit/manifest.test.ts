/**
 * The oclif manifest written by `npm run build` (scripts/manifest.mjs) lists exactly the built
 * commands with their flags: oclif trusts it and imports only the command being run, so a stale
 * manifest would hide a command or a flag.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync, readdirSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

const root = new URL('../../../', import.meta.url)

test('oclif.manifest.json names every built command, with its flags, at the package version', () => {
  const manifest = JSON.parse(readFileSync(new URL('oclif.manifest.json', root), 'utf8'))
  const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8'))
  const built = readdirSync(fileURLToPath(new URL('dist/commands/', root))).filter((f) => f.endsWith('.js')).map((f) => f.slice(0, -3)).sort()
  assert.deepEqual(Object.keys(manifest.commands).sort(), built)
  assert.equal(manifest.version, pkg.version)
  for (const id of built) assert.ok(manifest.commands[id].flags && manifest.commands[id].summary && manifest.commands[id].examples.length > 0, `${id} has flags, a summary and examples`)
  assert.ok(manifest.commands.start.flags.config, 'start --config is in the manifest')
})
