/**
 * Field schemas shared by the config file (config/schema.ts) and the rule schema (rules/spec.ts), and
 * the conversion of zod issues into problems that say where the bad value was and what is expected.
 * A divert parser run inside zod (scalar) records its DivertError's code on the issue, so a surface
 * that reports one error (the admin API, the state file) keeps the parser's code; the config file
 * reports every problem as CONFIG_INVALID.
 *
 *   value → zod schema (scalar: parseDuration, parseSize, parseCidr…) → issues → SchemaProblem[] → message
 */
import {z} from 'zod'
import {parseSize} from './size.js'
import {DivertError, isDivertError, type ErrorName} from '../errors.js'

export type ConfigPath = (string | number)[]

export interface SchemaProblem {
  path: ConfigPath
  /** What is wrong and what was expected, without the path. */
  message: string
  /** Point at the key itself rather than its value (unknown keys). */
  atKey?: boolean
  /** The DivertError code of the parser that refused the value, when one did (see scalar). */
  code?: ErrorName
}

/** `backends.staging.servers[0].address`; keys that are not identifier-like are quoted. */
export function formatPath(path: readonly PropertyKey[]): string {
  return path
    .map((seg, i) => {
      if (typeof seg === 'number') return `[${seg}]`
      const key = String(seg)
      if (!/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) return `[${JSON.stringify(key)}]`
      return i === 0 ? key : `.${key}`
    })
    .join('')
}

/** How a wrong value is named in messages: `"abc"`, `300`, `a list`, `a mapping`, `nothing`. */
export function describeValue(v: unknown): string {
  if (v === null || v === undefined) return 'nothing'
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 57)}...` : v)
  if (Array.isArray(v)) return v.length === 0 ? 'an empty list' : 'a list'
  if (typeof v === 'object') return Object.keys(v).length === 0 ? 'an empty mapping' : 'a mapping'
  return String(v)
}

export function expecting(expected: string): {errorMap: z.ZodErrorMap} {
  return {
    errorMap: (iss, ctx) => ({
      message: iss.code === 'invalid_type' && ctx.data === undefined
        ? `is missing; expected ${expected}`
        : `got ${describeValue(ctx.data)}; expected ${expected}`,
    }),
  }
}

/**
 * A `.strict()` object whose unknown-key issue carries the allowed keys as its message
 * (comma-separated); issuesToProblems turns it into one problem per unknown key.
 */
export function strictObject<T extends z.ZodRawShape>(shape: T, expected: string) {
  const allowed = Object.keys(shape).join(', ')
  const {errorMap} = expecting(expected)
  return z
    .object(shape, {errorMap: (iss, ctx) => (iss.code === 'unrecognized_keys' ? {message: allowed} : errorMap(iss, ctx))})
    .strict()
}

/** Runs a divert parser on a scalar inside zod; its DivertError message (and code) becomes the issue. */
export function scalar<T>(expected: string, parse: (v: string | number, where: string) => T, numbers = false) {
  return z.unknown().transform((v, ctx): T => {
    const where = formatPath(ctx.path)
    if (typeof v !== 'string' && !(numbers && typeof v === 'number')) {
      ctx.addIssue({code: 'custom', message: v === undefined ? `is missing; expected ${expected}` : `got ${describeValue(v)}; expected ${expected}`})
      return z.NEVER
    }
    try {
      return parse(v, where)
    } catch (error) {
      if (!isDivertError(error)) throw error
      const message = error.message.startsWith(`${where}: `) ? error.message.slice(where.length + 2) : error.message
      ctx.addIssue({code: 'custom', message, params: {code: error.code.slice('DIVERT_ERR_'.length)}})
      return z.NEVER
    }
  })
}

export function size(numbers = true) {
  return scalar('a size, e.g. 64KiB, 1MiB, 100MB', (v, where) => {
    const bytes = parseSize(v, where)
    if (bytes <= 0) throw new DivertError('INVALID_SIZE', `${where}: ${describeValue(v)} is zero; expected a size above 0, e.g. 1MiB`)
    return bytes
  }, numbers)
}

export const path = (what: string) => z.string(expecting(`a file path for ${what}`)).min(1)

/** A reference to a backend or listener the config file defines (`known`), checked field by field. */
export function ref(kind: 'backend' | 'listener', known: string[]) {
  const list = known.length ? `one of: ${known.join(', ')}` : `a ${kind} defined under ${kind}s (none is)`
  return z.string(expecting(`the name of a ${kind}: ${list}`))
    .refine((n) => known.includes(n), (n) => ({message: `no ${kind} is named "${n}"; expected ${list}`}))
}

/** One problem per path (zod may report several for one value), unknown keys split per key. */
export function issuesToProblems(issues: z.ZodIssue[]): SchemaProblem[] {
  const out: SchemaProblem[] = []
  const seen = new Set<string>()
  const add = (p: SchemaProblem): void => {
    const key = formatPath(p.path)
    if (!seen.has(key)) out.push(p)
    seen.add(key)
  }
  for (const iss of issues) {
    if (iss.code !== 'unrecognized_keys') {
      const code = iss.code === 'custom' ? (iss.params?.code as ErrorName | undefined) : undefined
      add({path: iss.path, message: iss.message, ...(code ? {code} : {})})
      continue
    }
    const allowed = iss.message.split(', ')
    for (const key of iss.keys) add({path: [...iss.path, key], message: unknownKeyMessage(key, allowed), atKey: true})
  }
  return out
}

function unknownKeyMessage(key: string, allowed: string[]): string {
  const near = allowed.find((a) => editDistance(a, key.toLowerCase()) <= 2)
  return `unknown key "${key}"${near ? ` (did you mean "${near}"?)` : ''}; expected one of: ${allowed.join(', ')}`
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({length: b.length + 1}, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length]
}
