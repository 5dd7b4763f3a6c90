/**
 * Byte sizes as written in configs: `512` (bytes), `64KiB`, `100MB`, `1GiB`, `1.5MiB`.
 * Binary units (KiB, MiB, GiB, TiB) are powers of 1024 and decimal ones (kB, MB, GB, TB) powers of
 * 1000, as IEC 80000-13 defines them, so `100MB` and `100MiB` differ on purpose.
 */
import {DivertError} from '../errors.js'

const UNIT_BYTES: Record<string, number> = {
  b: 1,
  kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4,
}

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i

/** Parses a size to whole bytes; a bare number is bytes. Throws INVALID_SIZE naming `where`. */
export function parseSize(text: string | number, where = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text
    throw sizeError(where, String(text))
  }
  const m = SIZE_RE.exec(text.trim())
  const unit = m ? UNIT_BYTES[(m[2] || 'b').toLowerCase()] : undefined
  if (!m || unit === undefined) throw sizeError(where, `"${text}"`)
  // A fraction of a unit rounds to whole bytes (1.1KiB → 1126); a fraction of one byte is a typo.
  if (unit === 1 && m[1].includes('.')) throw sizeError(where, `"${text}"`)
  const bytes = Math.round(Number(m[1]) * unit)
  if (!Number.isSafeInteger(bytes)) throw sizeError(where, `"${text}"`)
  return bytes
}

function sizeError(where: string, shown: string): DivertError {
  return new DivertError(
    'INVALID_SIZE',
    `${where}: ${shown} is not a size (expected bytes or a number with a unit: 512, 64KiB, 1MiB, 100MB, 1GiB)`,
  )
}

/** Short human form for messages and tables: 1048576 → "1MiB", 1500 → "1500B". */
export function formatSize(bytes: number): string {
  for (const [unit, n] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`
  }
  return `${bytes}B`
}
