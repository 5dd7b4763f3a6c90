/**
 * The bpf(2) commands the fast path uses, with their `union bpf_attr` layouts written out
 * (include/uapi/linux/bpf.h; the kernel reads only the bytes of the command's own struct and
 * requires unused trailing bytes to be zero, so each attribute is a zeroed buffer of that size).
 *
 *   sockhash.ts ─mapCreate/progLoad/progAttach/mapUpdate…─▶ libc.bpf ─▶ kernel
 */
import {addressOf, bpf, SysError} from '../sys/libc.js'

export const BPF_MAP_CREATE = 0
export const BPF_MAP_LOOKUP_ELEM = 1
export const BPF_MAP_UPDATE_ELEM = 2
export const BPF_MAP_DELETE_ELEM = 3
export const BPF_PROG_LOAD = 5
export const BPF_PROG_ATTACH = 8

export const BPF_MAP_TYPE_HASH = 1
export const BPF_MAP_TYPE_SOCKHASH = 18
export const BPF_PROG_TYPE_SK_SKB = 14
export const BPF_SK_SKB_STREAM_VERDICT = 5

export const BPF_ANY = 0
export const BPF_NOEXIST = 1

/** Helper function ids (enum bpf_func_id, the `FN(...)` list in bpf.h). */
export const HELPER = {mapLookupElem: 1, getSocketCookie: 46, skRedirectHash: 72, skRelease: 86, skcToTcpSock: 137} as const

/** A program the verifier refused: the message carries the tail of its log. */
export class VerifierError extends Error {
  constructor(readonly cause: SysError, readonly log: string) {
    super(`BPF_PROG_LOAD refused (${cause.code}): ${log.trim().split('\n').slice(-12).join('\n')}`)
    this.name = 'VerifierError'
  }

  /**
   * One line: the verifier's complaint, which is the log's last line before its statistics
   * ("processed N insns …", kernel/bpf/verifier.c print_verification_stats).
   */
  get summary(): string {
    const lines = this.log.trim().split('\n').filter((l) => !/^processed \d+ insns/.test(l))
    return `BPF_PROG_LOAD refused (${this.cause.code}): ${lines.at(-1) ?? 'no verifier log'}`
  }
}

export interface MapSpec {
  type: number
  keySize: number
  valueSize: number
  maxEntries: number
  name: string
}

/** BPF_MAP_CREATE: returns the map's fd. */
export function mapCreate(spec: MapSpec): number {
  const a = Buffer.alloc(48)
  a.writeUInt32LE(spec.type, 0)
  a.writeUInt32LE(spec.keySize, 4)
  a.writeUInt32LE(spec.valueSize, 8)
  a.writeUInt32LE(spec.maxEntries, 12)
  a.write(spec.name.slice(0, 15), 28, 'latin1')
  return bpf(BPF_MAP_CREATE, a, `bpf(BPF_MAP_CREATE ${spec.name})`)
}

/**
 * BPF_PROG_LOAD with a GPL license (the sk_redirect and cookie helpers are gpl_only) and a verifier
 * log that is read only when the load fails: the first try runs without one, as libbpf does.
 */
export function progLoad(type: number, insns: Buffer, name: string): number {
  try {
    return loadWithLog(type, insns, name, 0)
  } catch (e) {
    if (!(e instanceof SysError)) throw e
    return loadWithLog(type, insns, name, 1)
  }
}

function loadWithLog(type: number, insns: Buffer, name: string, logLevel: number): number {
  const license = Buffer.from('GPL\0', 'latin1')
  const log = Buffer.alloc(logLevel ? 64 * 1024 : 0)
  const a = Buffer.alloc(72)
  a.writeUInt32LE(type, 0)
  a.writeUInt32LE(insns.length / 8, 4)
  a.writeBigUInt64LE(addressOf(insns), 8)
  a.writeBigUInt64LE(addressOf(license), 16)
  if (logLevel) {
    a.writeUInt32LE(logLevel, 24)
    a.writeUInt32LE(log.length, 28)
    a.writeBigUInt64LE(addressOf(log), 32)
  }
  a.write(name.slice(0, 15), 48, 'latin1')
  try {
    return bpf(BPF_PROG_LOAD, a, 'bpf(BPF_PROG_LOAD)')
  } catch (e) {
    if (!logLevel || !(e instanceof SysError)) throw e
    throw new VerifierError(e, log.toString('latin1', 0, Math.max(0, log.indexOf(0))))
  } finally {
    // The kernel read these through raw addresses: keep them alive until the call returned.
    keep(insns, license, log)
  }
}

/** BPF_PROG_ATTACH of a program to a map (sockmap/sockhash programs attach to the map, not a cgroup). */
export function progAttach(mapFd: number, progFd: number, attachType: number): void {
  const a = Buffer.alloc(20)
  a.writeUInt32LE(mapFd, 0)
  a.writeUInt32LE(progFd, 4)
  a.writeUInt32LE(attachType, 8)
  bpf(BPF_PROG_ATTACH, a, 'bpf(BPF_PROG_ATTACH)')
}

/** The attribute of the element commands: map fd, key and value pointers, flags. */
function elemAttr(mapFd: number, key: Buffer, value: Buffer | undefined, flags: number): Buffer {
  const a = Buffer.alloc(32)
  a.writeUInt32LE(mapFd, 0)
  a.writeBigUInt64LE(addressOf(key), 8)
  if (value) a.writeBigUInt64LE(addressOf(value), 16)
  a.writeBigUInt64LE(BigInt(flags), 24)
  return a
}

export function mapUpdate(mapFd: number, key: Buffer, value: Buffer, flags = BPF_ANY): void {
  bpf(BPF_MAP_UPDATE_ELEM, elemAttr(mapFd, key, value, flags), 'bpf(BPF_MAP_UPDATE_ELEM)')
  keep(key, value)
}

/** Fills `value`; false when the key is absent (ENOENT). */
export function mapLookup(mapFd: number, key: Buffer, value: Buffer): boolean {
  try {
    bpf(BPF_MAP_LOOKUP_ELEM, elemAttr(mapFd, key, value, 0), 'bpf(BPF_MAP_LOOKUP_ELEM)')
    return true
  } catch (e) {
    if (e instanceof SysError && e.code === 'ENOENT') return false
    throw e
  } finally {
    keep(key, value)
  }
}

/** Deletes a key; an absent key is not an error. */
export function mapDelete(mapFd: number, key: Buffer): void {
  try {
    bpf(BPF_MAP_DELETE_ELEM, elemAttr(mapFd, key, undefined, 0), 'bpf(BPF_MAP_DELETE_ELEM)')
  } catch (e) {
    if (!(e instanceof SysError && e.code === 'ENOENT')) throw e
  } finally {
    keep(key)
  }
}

/** Reachability fence: the buffers stay referenced until here. */
function keep(...buffers: Buffer[]): void {
  void buffers
}
