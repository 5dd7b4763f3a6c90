import {test} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {DivertError, ERROR_CATALOG, errorCodes} from '../../src/errors.js'

const readme = readFileSync(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8')

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
