/**
 * The soak's verdict, pure: did resident memory and open descriptors stay flat while the load held?
 * Samples after the warm-up are split in thirds; the largest value of the last third may exceed the
 * largest of the first third by at most `tolerance` (10 %). Comparing maxima, not means, keeps a
 * garbage collection that happens to land in one third from deciding the verdict.
 *
 *   samples ─ drop warm-up ─▶ thirds ─▶ max(last) ≤ max(first) × (1 + tolerance) ?
 */

export interface Sample {
  /** Seconds since the load was fully up. */
  t: number
  phase: 'ramp' | 'warmup' | 'hold' | 'leave'
  rssKb: number
  fds: number
  sessions: number
  rules: number
}

export interface Flatness {
  metric: 'rssKb' | 'fds'
  firstMax: number
  lastMax: number
  /** lastMax / firstMax − 1. */
  growth: number
  flat: boolean
}

export function flatness(samples: Sample[], metric: 'rssKb' | 'fds', tolerance = 0.1): Flatness | undefined {
  const hold = samples.filter((s) => s.phase === 'hold')
  if (hold.length < 3) return undefined
  const third = Math.floor(hold.length / 3)
  const firstMax = Math.max(...hold.slice(0, third).map((s) => s[metric]))
  const lastMax = Math.max(...hold.slice(hold.length - third).map((s) => s[metric]))
  const growth = firstMax > 0 ? lastMax / firstMax - 1 : 0
  return {metric, firstMax, lastMax, growth, flat: growth <= tolerance}
}
