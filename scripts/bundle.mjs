#!/usr/bin/env node
// Writes dist/cli.cjs after `tsc` and the manifest: the CLI's fast path. A `divert` call used to spend
// most of its 0.6–0.8 s resolving, reading and compiling some 400 CommonJS files of oclif and undici.
// Here esbuild puts oclif, undici and every client command (all but `start`, the daemon, which keeps
// running the tsc output) in one CommonJS file, and bin/run.js loads it with a V8 code cache
// (dist/cli.cjs.cache), so a call parses nothing it has parsed before. The cache is written at the end
// of one representative call below; bin/run.js writes it again when V8 rejects it (another Node).
import {build} from 'esbuild'
import {spawnSync} from 'node:child_process'
import {readdirSync, rmSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
/** Commands left to the tsc output: the long-running daemon, whose start-up time does not matter. */
const UNBUNDLED = new Set(['start'])

const ids = readdirSync(join(root, 'dist/commands')).filter((f) => f.endsWith('.js')).map((f) => f.slice(0, -3)).filter((id) => !UNBUNDLED.has(id))
// COMMANDS (oclif's "explicit" command discovery) holds getters: a command's module, and what it alone
// imports (the config loader for `check`, pcap code for `replay`), is initialised only when oclif
// asks for that command — require() makes esbuild wrap those ESM modules in lazy initialisers.
const entry = [
  "exports.execute = require('@oclif/core').execute",
  `exports.COMMANDS = Object.defineProperties({}, {${ids.map((id) => `${JSON.stringify(id)}: {enumerable: true, get: () => require('./dist/commands/${id}.js').default}`).join(', ')}})`,
].join('\n')

/**
 * `import {Client} from 'undici'` in the bundle takes undici's Client and its request API alone, the
 * way undici's own index.js assembles them: the index also loads fetch, WebSocket, caches and mocks
 * (a megabyte the admin client never runs), and through them Node's built-in copy of undici.
 */
const undiciClientOnly = {
  name: 'undici-client-only',
  setup(b) {
    b.onResolve({filter: /^undici$/}, () => ({path: 'undici-client-only', namespace: 'divert'}))
    b.onLoad({filter: /.*/, namespace: 'divert'}, () => ({
      contents: [
        "Object.assign(require('undici/lib/dispatcher/dispatcher.js').prototype, require('undici/lib/api/index.js'))",
        "module.exports = {Client: require('undici/lib/dispatcher/client.js')}",
      ].join('\n'),
      resolveDir: root, loader: 'js',
    }))
  },
}

const out = join(root, 'dist/cli.cjs')
rmSync(`${out}.cache`, {force: true})
await build({
  stdin: {contents: entry, resolveDir: root, sourcefile: 'cli-entry.js'},
  outfile: out, bundle: true, platform: 'node', format: 'cjs', target: 'node20', logLevel: 'warning',
  // oclif reads tsconfig.json through `typescript` only in development (bin/dev.js): never bundled.
  external: ['typescript'],
  plugins: [undiciClientOnly],
  minifyWhitespace: true, minifySyntax: true,
  // The sources are ESM; in a CommonJS bundle import.meta.url is the bundle's own URL.
  define: {'import.meta.url': '__divert_import_meta_url'},
  banner: {js: "const __divert_import_meta_url = require('node:url').pathToFileURL(__filename).href;"},
})

// One call through the fast path (oclif, a command, undici, an error) leaves the code cache behind:
// bin/run.js writes it when it is missing. No daemon listens on that socket; exit 5 is expected.
spawnSync(process.execPath, [join(root, 'bin/run.js'), 'list', '--admin', join(root, 'dist/no-daemon.sock')], {stdio: 'ignore', cwd: root})
