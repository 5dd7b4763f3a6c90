/**
 * File descriptors decide how many sessions the daemon can hold: a TCP session uses two (client and
 * server sockets), a UDP flow one (its upstream socket). Node raises its own soft RLIMIT_NOFILE to the
 * hard limit at start (node.cc, PlatformInit), so the daemon only reads the result from
 * /proc/self/limits — no setrlimit(2), no helper program.
 *
 * FD_RESERVE descriptors are kept out of the session budget, for what must work when sessions fill
 * the rest: the admin API (the operator's `divert list`/`add`), state-file writes, recordings, health
 * checks and mirrors. Sessions past the budget are refused (limits.ts), not left to fail in accept(2).
 */
import {readFileSync, readdirSync} from 'node:fs'

export interface FdLimits {
  soft: number
  hard: number
  /** Why the limit is lower than it could be, or could not be read. */
  problem?: string
}

/** Descriptors kept for the admin API, health checks, logs, state writes and recordings. */
export const FD_RESERVE = 64

export function readFdLimits(text = readProcLimits()): {soft: number; hard: number} | undefined {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text)
  if (!m) return undefined
  const n = (s: string): number => (s === 'unlimited' ? Number.POSITIVE_INFINITY : Number(s))
  return {soft: n(m[1]), hard: n(m[2])}
}

/** The open-files limit this process runs with (Node has already raised the soft limit as far as it may). */
export function openFilesLimit(read = readProcLimits): FdLimits {
  const limits = readFdLimits(read())
  if (!limits) return {soft: 0, hard: 0, problem: 'cannot read /proc/self/limits'}
  if (limits.soft < limits.hard) return {...limits, problem: `the soft limit stays below the hard limit (${limits.hard})`}
  return limits
}

/**
 * How many sessions fit: the limit, less the reserve and the descriptors already open (`inUse`:
 * stdio, the event loop's, listeners), is `fds`; TCP sessions need two each, UDP flows one.
 */
export function capacity(limits: {soft: number}, inUse = 0): {tcp: number; udp: number; fds: number} {
  const fds = Math.max(0, Math.min(limits.soft, Number.MAX_SAFE_INTEGER) - FD_RESERVE - inUse)
  return {tcp: Math.floor(fds / 2), udp: fds, fds}
}

/** Descriptors this process has open now (/proc/self/fd; 0 where there is no /proc). */
export function openFds(): number {
  try {
    return readdirSync('/proc/self/fd').length
  } catch {
    return 0
  }
}

function readProcLimits(): string {
  try {
    return readFileSync('/proc/self/limits', 'utf8')
  } catch {
    return ''
  }
}
