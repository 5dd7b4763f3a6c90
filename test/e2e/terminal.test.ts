/**
 * The CLI on a terminal and off it, without a daemon: a mistyped command, shell completion, and
 * colour — which appears only on a terminal (a pseudo-terminal from util-linux `script(1)` here) and
 * never with NO_COLOR set (https://no-color.org).
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {fileURLToPath} from 'node:url'
import {BIN, runCli, tempDir} from '../helpers/daemon.js'

const hasScript = spawnSync('script', ['--version']).status === 0
const noScript = hasScript ? false : 'needs script(1) from util-linux (Debian: bsdutils) for a pseudo-terminal'
const LOG = fileURLToPath(new URL('../../src/log.js', import.meta.url))

/** Runs `node ARGS` with a pseudo-terminal as stdin/stdout (script -q -e -c), returns what it printed. */
function onTerminal(nodeArgs: string[], env: NodeJS.ProcessEnv): Promise<{code: number | null; out: string}> {
  const quoted = [process.execPath, ...nodeArgs].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')
  return new Promise((resolve, reject) => {
    // Neither variable inherited: Node counts FORCE_COLOR as set even when empty (and then warns about NO_COLOR).
    // Nor CI: supports-color (oclif's help) turns colour off on a terminal when CI is set, as .ci/run
    // does; and a terminal type, since CI may run with none.
    const {FORCE_COLOR: _force, NO_COLOR: _no, CI: _ci, ...inherited} = process.env
    const p = spawn('script', ['-q', '-e', '-c', quoted, '/dev/null'], {stdio: ['ignore', 'pipe', 'pipe'], env: {...inherited, TERM: 'xterm-256color', ...env}})
    let out = ''
    p.stdout.on('data', (c: Buffer) => (out += c))
    p.stderr.on('data', (c: Buffer) => (out += c))
    const timer = setTimeout(() => {
      p.kill('SIGKILL')
      reject(new Error(`no exit within 20 s: ${out}`))
    }, 20_000)
    p.on('close', (code) => {
      clearTimeout(timer)
      resolve({code, out})
    })
  })
}

test('issue 11.29: `divert lsit` suggests `divert list` and exits 2 at once, with stdin a pipe that stays open (no prompt)', async () => {
  const p = spawn(process.execPath, [BIN, 'lsit'], {stdio: ['pipe', 'pipe', 'pipe']})
  let out = ''
  let err = ''
  p.stdout.on('data', (c: Buffer) => (out += c))
  p.stderr.on('data', (c: Buffer) => (err += c))
  try {
    const code = await Promise.race([
      new Promise<number | null>((resolve) => p.on('close', resolve)),
      new Promise<never>((_r, reject) => setTimeout(() => reject(new Error(`still running after 15 s (waiting for a prompt?): ${err}`)), 15_000)),
    ])
    assert.equal(code, 2, err)
    assert.equal(out, '')
    assert.equal(err, 'divert: "lsit" is not a divert command; did you mean `divert list`? (see `divert --help`)\n')
  } finally {
    p.kill('SIGKILL')
  }
})

test('issue 11.29: `divert autocomplete script bash` prints the line that sets up completion', async (t) => {
  const {dir, cleanup} = tempDir()
  t.after(cleanup)
  const r = await runCli(['autocomplete', 'script', 'bash'], {env: {XDG_CACHE_HOME: dir}})
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /DIVERT_AC_BASH_SETUP_PATH=.*source \$DIVERT_AC_BASH_SETUP_PATH/)
})

test('issue 11.29: on a terminal `divert --help` is coloured, and NO_COLOR turns the colour off', {skip: noScript}, async () => {
  const [coloured, plain] = await Promise.all([onTerminal([BIN, '--help'], {}), onTerminal([BIN, '--help'], {NO_COLOR: '1'})])
  assert.equal(coloured.code, 0, coloured.out)
  assert.ok(coloured.out.includes('\u001b['), 'help on a terminal uses colour (else this test proves nothing)')
  assert.match(plain.out, /USAGE/)
  assert.ok(!plain.out.includes('\u001b'), JSON.stringify(plain.out.slice(0, 300)))
})

test('issue 11.29: on a terminal the daemon\'s pretty logs are coloured, and NO_COLOR turns the colour off', {skip: noScript}, async () => {
  const script = `const {createLogger} = await import(${JSON.stringify(LOG)}); createLogger({format: 'pretty'}).logger.info('divert ready')`
  const args = ['--input-type=module', '-e', script]
  const [coloured, plain] = await Promise.all([onTerminal(args, {}), onTerminal(args, {NO_COLOR: '1'})])
  assert.equal(coloured.code, 0, coloured.out)
  assert.ok(coloured.out.includes('\u001b[') && coloured.out.includes('divert ready'), 'pretty logs on a terminal use colour (else this test proves nothing)')
  assert.match(plain.out, /INFO.*divert ready/)
  assert.ok(!plain.out.includes('\u001b'), JSON.stringify(plain.out))
  assert.doesNotMatch(plain.out, /Warning/, plain.out)
})
