/**
 * The machine a result was measured on: CPU model, core count, kernel, Node and tool versions, and the
 * load average before and after (another busy process on the box makes every figure noisier).
 */
import {cpus, loadavg, release, totalmem} from 'node:os'
import type {ToolReport} from './tools.js'

export interface MachineInfo {
  cpuModel: string
  nproc: number
  kernel: string
  memoryGiB: number
  node: string
  tools: Record<string, string>
  loadavgStart: number[]
  loadavgEnd?: number[]
  nofileHard: number
}

export function machineInfo(tools: ToolReport, nofileHard: number): MachineInfo {
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    // The machine's cores: availableParallelism() would report the bench's own taskset (1 core).
    nproc: cpus().length,
    kernel: release(),
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    tools: Object.fromEntries(tools.tools.map((t) => [t.name, t.detail])),
    loadavgStart: loadavg(),
    nofileHard,
  }
}

export function finishMachineInfo(m: MachineInfo): MachineInfo {
  return {...m, loadavgEnd: loadavg()}
}
