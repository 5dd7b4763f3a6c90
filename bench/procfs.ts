/**
 * What a process tree costs, read from /proc (proc(5)): CPU time (utime + stime of /proc/PID/stat),
 * resident memory (VmRSS of /proc/PID/status) and open file descriptors (/proc/PID/fd). A proxy is
 * measured as its whole tree (nginx: master + worker).
 */
import {readFileSync, readdirSync} from 'node:fs'
import {execFileSync} from 'node:child_process'

export interface StatFields {
  pid: number
  ppid: number
  /** utime + stime, in clock ticks. */
  ticks: number
  /** minflt: page faults served without I/O (memory handed back to the kernel and touched again). */
  minorFaults: number
}

/** Parses /proc/PID/stat. comm (field 2) may hold spaces and parentheses: fields resume after the last ')'. */
export function parseStat(text: string): StatFields {
  const close = text.lastIndexOf(')')
  const pid = Number(text.slice(0, text.indexOf(' ')))
  const rest = text.slice(close + 2).split(' ')
  // rest[0] is field 3 (state): ppid is field 4, minflt 10, utime 14, stime 15.
  const ppid = Number(rest[1])
  const minorFaults = Number(rest[7])
  const ticks = Number(rest[11]) + Number(rest[12])
  if (close < 0 || !Number.isFinite(pid) || !Number.isFinite(ticks)) throw new RangeError(`not a /proc/PID/stat line: ${text.slice(0, 80)}`)
  return {pid, ppid, ticks, minorFaults}
}

/** VmRSS in KiB from /proc/PID/status text; 0 for a kernel thread or zombie, which has none. */
export function parseRssKb(status: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)
  return m ? Number(m[1]) : 0
}

/** The hard RLIMIT_NOFILE from /proc/self/limits text. */
export function parseNofileHard(limits: string): number {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits)
  if (!m) throw new RangeError('no "Max open files" line in /proc/self/limits')
  return m[2] === 'unlimited' ? 1_048_576 : Number(m[2])
}

/**
 * Busy CPU time of the whole machine in clock ticks, from the aggregate `cpu` line of /proc/stat
 * (proc(5)): user + nice + system + irq + softirq + steal (guest time is already inside user). Idle
 * and iowait are left out. It counts what no process tree shows: softirq work and kernel workers,
 * such as the sk_psock_backlog kworker that sends the bytes the kernel fast path redirects.
 */
export function parseMachineBusy(stat: string): number {
  const m = /^cpu\s+(.*)$/m.exec(stat)
  const f = m ? m[1].trim().split(/\s+/).map(Number) : []
  if (f.length < 8 || f.some((x) => !Number.isFinite(x))) throw new RangeError(`no aggregate cpu line in /proc/stat: ${stat.slice(0, 80)}`)
  const [user, nice, system, , , irq, softirq, steal] = f
  return user + nice + system + irq + softirq + steal
}

/** Busy CPU seconds of the whole machine since boot (parseMachineBusy). */
export function machineBusySec(): number {
  return parseMachineBusy(readFileSync('/proc/stat', 'utf8')) / clockTicks()
}

let clkTck = 0
/** Clock ticks per second (sysconf(_SC_CLK_TCK)); 100 on every Linux the bench targets. */
export function clockTicks(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], {encoding: 'utf8'}).trim()) || 100
    } catch {
      clkTck = 100
    }
  }
  return clkTck
}

function readStat(pid: number): StatFields | undefined {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return undefined
  }
}

/** root and every live descendant. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const st = readStat(Number(name))
    if (st) children.set(st.ppid, [...(children.get(st.ppid) ?? []), st.pid])
  }
  const out: number[] = []
  const todo = [root]
  while (todo.length > 0) {
    const pid = todo.pop() as number
    out.push(pid)
    todo.push(...(children.get(pid) ?? []))
  }
  return out
}

export interface Usage {
  cpuSec: number
  minorFaults: number
  rssKb: number
  fds: number
}

function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length
  } catch {
    return 0
  }
}

function rssKb(pid: number): number {
  try {
    return parseRssKb(readFileSync(`/proc/${pid}/status`, 'utf8'))
  } catch {
    return 0
  }
}

export function usage(pids: number[]): Usage {
  let ticks = 0
  let minorFaults = 0
  let rss = 0
  let fds = 0
  for (const pid of pids) {
    const stat = readStat(pid)
    ticks += stat?.ticks ?? 0
    minorFaults += stat?.minorFaults ?? 0
    rss += rssKb(pid)
    fds += fdCount(pid)
  }
  return {cpuSec: ticks / clockTicks(), minorFaults, rssKb: rss, fds}
}

export function nofileHardLimit(): number {
  return parseNofileHard(readFileSync('/proc/self/limits', 'utf8'))
}
