/**
 * What /proc says about a child process (proc(5)): its resident memory, CPU time and which signals
 * it catches — facts a test can wait for or bound instead of guessing timing.
 */
import {readFileSync, readdirSync} from 'node:fs'
import {constants} from 'node:os'

function status(pid: number): string {
  return readFileSync(`/proc/${pid}/status`, 'utf8')
}

/** VmRSS in KiB. */
export function rssKiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+)/m.exec(status(pid))?.[1] ?? 0)
}

/** utime + stime in clock ticks (field 14 and 15 of /proc/PID/stat; the command name may hold spaces). */
export function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(fields[11]) + Number(fields[12])
}

/** Write-like system calls so far (`syscw` of /proc/PID/io; the process must be this user's). */
export function writeCalls(pid: number): number {
  return Number(/^syscw:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? 0)
}

/** Whether the process has a handler for `signal` (the SigCgt mask); false once it is gone. */
export function catches(pid: number, signal: NodeJS.Signals): boolean {
  let text: string
  try {
    text = status(pid)
  } catch {
    return false
  }
  const mask = BigInt(`0x${/^SigCgt:\s+(\w+)/m.exec(text)?.[1] ?? '0'}`)
  return (mask & (1n << BigInt(constants.signals[signal] - 1))) !== 0n
}

/** Descriptors the process holds now (entries of /proc/PID/fd). */
export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}
