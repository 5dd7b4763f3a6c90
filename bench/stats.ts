/**
 * Summary statistics of repeated runs: median and spread (min–max) of a metric, and the per-run
 * ratio of two targets measured in the same run (so a noisy run moves both sides of the ratio).
 */

export interface Summary {
  n: number
  median: number
  min: number
  max: number
  values: number[]
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/** Summary of the finite values; undefined when there is none. */
export function summarize(xs: Array<number | undefined>): Summary | undefined {
  const values = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x))
  if (values.length === 0) return undefined
  return {n: values.length, median: median(values), min: Math.min(...values), max: Math.max(...values), values}
}

/** Ratios subject[i] / peer[i] for every run i where both were measured and the peer is non-zero. */
export function pairedRatios(subject: Array<number | undefined>, peer: Array<number | undefined>): number[] {
  const out: number[] = []
  for (let i = 0; i < Math.min(subject.length, peer.length); i++) {
    const a = subject[i]
    const b = peer[i]
    if (typeof a === 'number' && typeof b === 'number' && Number.isFinite(a) && Number.isFinite(b) && b !== 0) out.push(a / b)
  }
  return out
}

/** Three significant digits, no exponent for everyday magnitudes: 0.0123, 1.23, 123, 12300. */
export function formatNumber(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '–'
  if (x === 0) return '0'
  const abs = Math.abs(x)
  if (abs >= 1000) return Math.round(x).toLocaleString('en-US')
  const digits = Math.max(0, 2 - Math.floor(Math.log10(abs)))
  return x.toFixed(Math.min(digits, 4))
}
