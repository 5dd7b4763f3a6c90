import {test} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync, readdirSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {DivertError, ERROR_CATALOG, errorCodes} from '../../src/errors.js'

const root = fileURLToPath(new URL('../../../', import.meta.url))
const readme = readFileSync(join(root, 'README.md'), 'utf8')

/** The TypeScript sources under `dir` (relative to the repository), path → text. */
function sources(dir: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const entry of readdirSync(join(root, dir), {recursive: true, withFileTypes: true})) {
    if (entry.isFile() && entry.name.endsWith('.ts')) {
      const path = join(entry.parentPath ?? entry.path, entry.name)
      out.set(path.slice(root.length), readFileSync(path, 'utf8'))
    }
  }
  return out
}

test('the README lists every error code with its HTTP status and exit code', () => {
  for (const code of errorCodes()) {
    const name = code.replace('DIVERT_ERR_', '') as keyof typeof ERROR_CATALOG
    const {status, exit} = ERROR_CATALOG[name]
    assert.match(readme, new RegExp(`\\| \`${code}\` \\| ${status} \\| ${exit} \\|`), `${code} missing or wrong in README`)
  }
})

test('the README lists no code that does not exist', () => {
  const listed = [...readme.matchAll(/`(DIVERT_ERR_[A-Z_]+)`/g)].map((m) => m[1])
  const known = new Set<string>(errorCodes())
  for (const c of listed) assert.ok(known.has(c), `README mentions unknown code ${c}`)
})

test('an error survives the admin API round trip with its code, status, exit code and details', () => {
  const e = new DivertError('BACKEND_UNKNOWN', 'unknown backend "x" (known: prod)', {details: {known: ['prod']}})
  const back = DivertError.fromJSON(JSON.parse(JSON.stringify(e.toJSON())))
  assert.equal(back.code, 'DIVERT_ERR_BACKEND_UNKNOWN')
  assert.equal(back.status, 404)
  assert.equal(back.exitCode, e.exitCode)
  assert.equal(back.message, e.message)
  assert.deepEqual(back.details, {known: ['prod']})
})

test('an unknown code from a daemon becomes ADMIN_PROTOCOL, not a crash', () => {
  const back = DivertError.fromJSON({error: 'x', code: 'SOMETHING_ELSE'})
  assert.equal(back.code, 'DIVERT_ERR_ADMIN_PROTOCOL')
  assert.equal(DivertError.fromJSON(null).code, 'DIVERT_ERR_ADMIN_PROTOCOL')
})

test('issue 12.7: every code is thrown somewhere in src/ or commands/, and a test other than this one expects it', () => {
  const code = [...sources('src'), ...sources('commands')].map(([, text]) => text).join('\n')
  const tests = [...sources('test')].filter(([path]) => path !== join('test', 'unit', 'errors.test.ts')).map(([, text]) => text).join('\n')
  const names = Object.keys(ERROR_CATALOG)
  const neverThrown = names.filter((n) => !new RegExp(`new DivertError\\(\\s*'${n}'`).test(code))
  const untested = names.filter((n) => !new RegExp(`DIVERT_ERR_${n}(?![A-Z_])`).test(tests))
  assert.deepEqual(neverThrown, [], 'codes no `new DivertError(CODE, …)` in src/ or commands/ creates')
  assert.deepEqual(untested, [], 'codes no test names as DIVERT_ERR_…')
})
