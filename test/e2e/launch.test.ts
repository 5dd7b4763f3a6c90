/**
 * How `divert` starts: client commands run from the build's bundle (dist/cli.cjs, with its V8 code
 * cache) rather than oclif and undici from node_modules, and the executable works the way `npm link`
 * or `npm install -g .` installs it — a symlink on PATH, called from any directory. Timings belong to
 * the bench (`npm run bench -- --only cli`); these tests check which code runs.
 */
import {test, describe, after} from 'node:test'
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync} from 'node:fs'
import {delimiter, dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {BIN, tempDir, type CliResult} from '../helpers/daemon.js'

const ROOT = fileURLToPath(new URL('../../../', import.meta.url))

/** Runs `command ARGS` (a node script or an executable) in `cwd` to completion. */
function run(command: string[], opts: {cwd: string; env?: NodeJS.ProcessEnv}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(command[0], command.slice(1), {cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...opts.env}})
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (c: Buffer) => (stdout += c))
    proc.stderr.on('data', (c: Buffer) => (stderr += c))
    const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000)
    proc.once('error', reject)
    proc.once('close', (code) => {
      clearTimeout(timer)
      resolve({code, stdout, stderr, json: () => JSON.parse(stdout)})
    })
  })
}

describe('launching divert', () => {
  const {dir, cleanup} = tempDir('divert-e2e-launch-')
  after(cleanup)
  const noDaemon = join(dir, 'no-daemon.sock')

  /** A preload that writes the CommonJS files the process loaded (require.cache) to OUT at exit. */
  const preload = join(dir, 'loaded.mjs')
  writeFileSync(preload, [
    "import {createRequire} from 'node:module'",
    "import {writeFileSync} from 'node:fs'",
    'const cache = createRequire(import.meta.url).cache',
    'process.on(\'exit\', () => writeFileSync(process.env.LOADED_OUT, JSON.stringify(Object.keys(cache))))',
  ].join('\n'))

  async function loadedBy(args: string[]): Promise<{result: CliResult; loaded: string[]}> {
    const out = join(dir, `loaded-${args[0].replace(/\W/g, '')}.json`)
    const result = await run([process.execPath, '--import', preload, BIN, ...args], {cwd: dir, env: {LOADED_OUT: out}})
    return {result, loaded: JSON.parse(readFileSync(out, 'utf8')) as string[]}
  }

  test('issue 11.25: client commands run from the bundle and its code cache, not oclif and undici from node_modules', async () => {
    const cache = join(ROOT, 'dist/cli.cjs.cache')
    const before = statSync(cache)
    for (const args of [['list', '--admin', noDaemon], ['--version'], ['--help'], ['check', '--help']]) {
      const {result, loaded} = await loadedBy(args)
      assert.notEqual(result.stdout + result.stderr, '', `divert ${args.join(' ')} printed something`)
      assert.ok(loaded.includes(join(ROOT, 'dist/cli.cjs')), `divert ${args.join(' ')} ran dist/cli.cjs`)
      const fromNodeModules = loaded.filter((f) => /node_modules[/\\](@oclif[/\\]core|undici)[/\\]/.test(f))
      assert.deepEqual(fromNodeModules, [], `divert ${args.join(' ')} loaded no oclif or undici file of its own`)
      if (args[0] === 'list') assert.match(result.stderr, /no divert daemon at .*no-daemon\.sock/)
    }
    // V8 accepted the cache: bin/run.js replaces a rejected one (a new file), so the inode is unchanged.
    assert.equal(statSync(cache).ino, before.ino, 'dist/cli.cjs.cache was accepted, not rewritten')
  })

  test('issue 11.26: package.json bin points at bin/run.js, which works through a symlink on PATH from any directory', async () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
    assert.equal(pkg.bin.divert, './bin/run.js')
    assert.equal(join(ROOT, pkg.bin.divert), BIN)
    // What `npm link` / `npm install -g .` make: PREFIX/bin/divert → the package's bin/run.js.
    const binDir = join(dir, 'prefix-bin')
    mkdirSync(binDir)
    symlinkSync(BIN, join(binDir, 'divert'))
    const cwd = join(dir, 'elsewhere')
    mkdirSync(cwd)
    const env = {PATH: [binDir, dirname(process.execPath), process.env.PATH ?? ''].join(delimiter)}
    const config = join(cwd, 'divert.yaml')
    writeFileSync(config, 'listeners:\n  - { name: main, bind: "127.0.0.1:7000", backend: prod }\nbackends:\n  prod: { servers: [ { address: "127.0.0.1:1" } ] }\n')

    const version = await run(['divert', '--version'], {cwd, env})
    assert.equal(version.code, 0, version.stderr)
    assert.match(version.stdout, new RegExp(`^divert/${pkg.version.replace(/\./g, '\\.')} `))
    const check = await run(['divert', 'check', '-c', 'divert.yaml'], {cwd, env})
    assert.equal(check.code, 0, check.stderr)
    assert.match(check.stdout, /^divert\.yaml: OK/)
    const list = await run(['divert', 'list', '--admin', noDaemon], {cwd, env})
    assert.equal(list.code, 5)
    assert.match(list.stderr, /no divert daemon/)
  })
})
