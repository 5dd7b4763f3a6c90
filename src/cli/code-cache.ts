/**
 * requireWithCodeCache: loads one CommonJS file (the CLI bundle, dist/cli.cjs) through vm.Script with
 * V8's code cache kept next to it (FILE.cache), so a `divert` call deserialises compiled code instead
 * of parsing a few megabytes of JavaScript each time. Node 22 does this for every module with
 * module.enableCompileCache(); Node 20, which divert supports, has no such switch, and the
 * v8-compile-cache package breaks import() inside cached code (it passes no importModuleDynamically).
 *
 *   bin/run.js ─▶ requireWithCodeCache(dist/cli.cjs) ─▶ vm.Script {cachedData: dist/cli.cjs.cache}
 *
 * A missing or rejected cache (another Node version, other V8 flags) is written again when the
 * process exits, by then holding the functions this call compiled too; a read-only install keeps
 * working without one.
 */
import {readFileSync, renameSync, rmSync, writeFileSync} from 'node:fs'
import {Module, createRequire} from 'node:module'
import {dirname} from 'node:path'
import {Script, constants as vmConstants} from 'node:vm'

/** The CommonJS wrapper Node itself puts around a module's source. */
const wrap = (source: string): string => `(function (exports, require, module, __filename, __dirname) { ${source}\n})`

/** The module's exports, or undefined when FILE does not exist (the bundle is not built). */
export function requireWithCodeCache<T>(file: string): T | undefined {
  const source = readIfThere(file)?.toString('utf8')
  if (source === undefined) return undefined
  const cacheFile = `${file}.cache`
  const cachedData = readIfThere(cacheFile)
  const script = new Script(wrap(source), {
    filename: file, cachedData,
    // import() inside the bundle (oclif loading an ESM plugin or hook) resolves like any module's.
    importModuleDynamically: vmConstants?.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  })
  if (cachedData === undefined || script.cachedDataRejected) process.once('exit', () => writeCache(script, cacheFile))
  const module = new Module(file)
  module.filename = file
  const require = createRequire(file)
  script.runInThisContext()(module.exports, require, module, file, dirname(file))
  // Whoever require()s FILE later (oclif's command discovery does) gets this instance, not a second copy.
  module.loaded = true
  require.cache[file] = module
  return module.exports as T
}

function readIfThere(file: string): Buffer | undefined {
  try {
    return readFileSync(file)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
}

/** Written beside and renamed over, so a concurrent call never reads half a cache. */
function writeCache(script: Script, cacheFile: string): void {
  const tmp = `${cacheFile}.${process.pid}`
  try {
    writeFileSync(tmp, script.createCachedData())
    renameSync(tmp, cacheFile)
  } catch {
    // a read-only install (npm install -g as root, run as a user): every call compiles afresh
    rmSync(tmp, {force: true})
  }
}
