/** Durations as written in configs and flags: `300ms`, `10s`, `5m`, `2h`, `1d`, or combinations like `1m30s`. */
import {DivertError} from '../errors.js'

const UNIT_MS: Record<string, number> = {ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000}

export function parseDuration(text: string | number, where = 'duration'): number {
  if (typeof text === 'number') {
    // A bare number is milliseconds; timers and Date arithmetic want whole, exactly representable ones.
    if (Number.isFinite(text) && text >= 0 && Number.isSafeInteger(Math.round(text))) return Math.round(text)
    throw new DivertError('INVALID_DURATION', `${where}: ${text} is not a duration (expected e.g. 300ms, 10s, 5m)`)
  }
  const s = text.trim()
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy
  let total = 0
  let m: RegExpExecArray | null
  let consumed = 0
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * UNIT_MS[m[2]]
    consumed = re.lastIndex
  }
  if (s.length === 0 || consumed !== s.length) {
    throw new DivertError('INVALID_DURATION', `${where}: "${text}" is not a duration (expected a number with a unit: 300ms, 10s, 5m, 2h, 1d)`)
  }
  const ms = Math.round(total)
  // "9999…9d" parses to Infinity or to a float that is no longer a whole number of milliseconds.
  if (!Number.isSafeInteger(ms)) {
    throw new DivertError('INVALID_DURATION', `${where}: "${text}" is too long to be a duration (expected e.g. 300ms, 10s, 5m, 2h, 1d)`)
  }
  return ms
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return s % 60 ? `${m}m${s % 60}s` : `${m}m`
  const h = Math.floor(m / 60)
  if (h < 24) return m % 60 ? `${h}h${m % 60}m` : `${h}h`
  const d = Math.floor(h / 24)
  return h % 24 ? `${d}d${h % 24}h` : `${d}d`
}
