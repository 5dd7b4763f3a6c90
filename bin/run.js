#!/usr/bin/env node
// The `divert` executable. Client commands run from dist/cli.cjs: oclif, undici and those commands in
// one file written by `npm run build` (scripts/bundle.mjs) and loaded with V8's code cache, so a call
// costs about one more bare Node start instead of five. `divert start` (the daemon) and any word the
// bundle does not hold (plugin commands such as `help`, typos) go through oclif's ordinary loader.
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {setFlagsFromString} from 'node:v8'
import {requireWithCodeCache} from '../dist/src/cli/code-cache.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const id = process.argv[2]

// `divert start`: SIGHUP's default action ends the process, and loading oclif and the daemon takes
// ~0.6 s before run-daemon.ts installs its reload handler. Hold a SIGHUP that comes earlier (the
// handler below, found through a global symbol); run-daemon.ts takes it over and reloads once ready.
// oclif is imported after this on purpose: a static import would load before any statement.
if (id === 'start') {
  const held = () => {
    held.asked = true
  }
  held.asked = false
  globalThis[Symbol.for('divert.heldSighup')] = held
  process.on('SIGHUP', held)
}

const bundled = id !== 'start'
// A client call parses one or two HTTP responses: V8's optimising tier for undici's llhttp parser
// (WebAssembly) costs it more CPU than the rest of the call. Set before the bundle is compiled, as
// V8 keys its code cache to the flags (a flag set later would make every cache miss).
if (bundled) setFlagsFromString('--liftoff-only')
const bundle = bundled ? requireWithCodeCache(`${root}dist/cli.cjs`) : undefined
if (bundle && (id === undefined || id.startsWith('-') || Object.hasOwn(bundle.COMMANDS, id))) {
  // oclif finds the commands in the bundle's COMMANDS export (its "explicit" command discovery);
  // package.json keeps the dist/commands pattern for bin/dev.js and the manifest.
  const pjson = JSON.parse(readFileSync(`${root}package.json`, 'utf8'))
  pjson.oclif.commands = {strategy: 'explicit', target: './dist/cli.cjs', identifier: 'COMMANDS'}
  await bundle.execute({loadOptions: {root, pjson}})
} else {
  const {execute} = await import('@oclif/core')
  await execute({dir: import.meta.url})
}
