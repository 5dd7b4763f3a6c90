/**
 * Byte-stream comparison for `divert replay --compare`: where the target's answer first departs from
 * the recorded one, shown as short hex + printable excerpts around that byte.
 */

export interface StreamComparison {
  identical: boolean
  /** First differing byte (or where the shorter stream ended). */
  offset?: number
  expectedExcerpt?: string
  actualExcerpt?: string
  lengthExpected: number
  lengthActual: number
}

const BLOCK = 4096

/** Index of the first byte where `a` and `b` differ (the shorter length if one is a prefix), or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length)
  let i = 0
  // Whole blocks first: Buffer.equals is a memcmp, far faster than a JS loop over large streams.
  while (i + BLOCK <= n && a.subarray(i, i + BLOCK).equals(b.subarray(i, i + BLOCK))) i += BLOCK
  for (; i < n; i++) if (a[i] !== b[i]) return i
  return a.length === b.length ? -1 : n
}

export function compareStreams(expected: Buffer, actual: Buffer, width = 16): StreamComparison {
  const offset = firstDifference(expected, actual)
  const lengths = {lengthExpected: expected.length, lengthActual: actual.length}
  if (offset < 0) return {identical: true, ...lengths}
  return {
    identical: false,
    offset,
    expectedExcerpt: excerpt(expected, offset, width),
    actualExcerpt: excerpt(actual, offset, width),
    ...lengths,
  }
}

/**
 * Up to `width` bytes around `offset` (a quarter of them before it) as `…48 65 6c 6c 6f |Hello|…`:
 * hex, then the same bytes with non-printable ones as '.', with '…' where the buffer goes on.
 * An offset at or past the end shows the last bytes and `(end)`.
 */
export function excerpt(buf: Buffer, offset: number, width = 16): string {
  if (buf.length === 0) return '(empty)'
  const lead = Math.floor(width / 4)
  const start = Math.max(0, Math.min(offset - lead, buf.length - width))
  const end = Math.min(buf.length, start + width)
  const bytes = buf.subarray(start, end)
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ')
  const text = [...bytes].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('')
  const tail = end < buf.length ? '…' : offset >= buf.length ? ' (end)' : ''
  return `${start > 0 ? '…' : ''}${hex} |${text}|${tail}`
}
