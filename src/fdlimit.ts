/**
 * File descriptors decide how many sessions the daemon can hold: a TCP session uses two (client and
 * server sockets), a UDP flow one (its upstream socket). Node has no setrlimit(2), so the daemon asks
 * util-linux `prlimit --pid SELF` to raise its own soft limit to the hard limit — allowed for any
 * process without privileges (setrlimit(2): the soft limit may go up to the hard limit).
 */
import {execFileSync} from 'node:child_process'
import {readFileSync} from 'node:fs'

export interface FdLimits {
  soft: number
  hard: number
  raisedFrom?: number
  /** Why the soft limit could not be raised, when it could not. */
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

export function raiseFdLimit(run: (soft: number) => void = prlimitSelf, read = (): string => readProcLimits()): FdLimits {
  const before = readFdLimits(read())
  if (!before) return {soft: 0, hard: 0, problem: 'cannot read /proc/self/limits'}
  if (before.soft >= before.hard) return before
  try {
    run(before.hard)
  } catch (error) {
    return {...before, problem: `prlimit failed: ${(error as Error).message.split('\n')[0]}`}
  }
  const after = readFdLimits(read()) ?? before
  return after.soft > before.soft ? {...after, raisedFrom: before.soft} : {...after, problem: 'the soft limit did not change'}
}

/** How many sessions fit: TCP sessions need two descriptors each, UDP flows one. */
export function capacity(limits: {soft: number}): {tcp: number; udp: number} {
  const free = Math.max(0, limits.soft - FD_RESERVE)
  return {tcp: Math.floor(free / 2), udp: free}
}

function prlimitSelf(soft: number): void {
  const value = Number.isFinite(soft) ? String(soft) : 'unlimited'
  execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${value}:`], {stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000})
}

function readProcLimits(): string {
  try {
    return readFileSync('/proc/self/limits', 'utf8')
  } catch {
    return ''
  }
}
