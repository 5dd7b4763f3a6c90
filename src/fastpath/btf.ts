/**
 * Field offsets of kernel structs, read from the running kernel's BTF (/sys/kernel/btf/vmlinux,
 * Documentation/bpf/btf.rst): the verdict program reads `struct tcp_sock` fields through a pointer
 * the verifier types with that BTF, and their offsets differ between kernel builds.
 *
 *   /sys/kernel/btf/vmlinux ─parse types─▶ struct name + member ─▶ byte offset
 */
import {readFileSync} from 'node:fs'

const BTF_MAGIC = 0xeb9f
const KIND_INT = 1, KIND_ARRAY = 3, KIND_STRUCT = 4, KIND_UNION = 5, KIND_ENUM = 6, KIND_FUNC_PROTO = 13
const KIND_VAR = 14, KIND_DATASEC = 15, KIND_DECL_TAG = 17, KIND_ENUM64 = 19

/** Where a struct or union's members are in the blob: decoded only when looked into. */
interface Composite {
  nameOff: number
  /** Byte offset of its first struct btf_member. */
  membersAt: number
  vlen: number
  bitfields: boolean
}

/** Bytes of kind-specific data after each 12-byte struct btf_type (include/uapi/linux/btf.h). */
function extraBytes(kind: number, vlen: number): number {
  switch (kind) {
    case KIND_INT: case KIND_VAR: case KIND_DECL_TAG: return 4
    case KIND_ARRAY: return 12
    case KIND_STRUCT: case KIND_UNION: case KIND_DATASEC: case KIND_ENUM64: return 12 * vlen
    case KIND_ENUM: case KIND_FUNC_PROTO: return 8 * vlen
    default: return 0
  }
}

/**
 * The BTF blob and its structs and unions by type id. Types are variable-length records, so every one
 * is walked once, but nothing is decoded beyond kind and length (vmlinux holds ~100,000 types: decoding
 * every member name made this 150 ms of divert's start-up).
 */
class Btf {
  readonly composites = new Map<number, Composite>()
  private readonly stringsAt: number

  constructor(private readonly btf: Buffer) {
    if (btf.readUInt16LE(0) !== BTF_MAGIC) throw new Error('not a little-endian BTF blob')
    const hdrLen = btf.readUInt32LE(4)
    const typesAt = hdrLen + btf.readUInt32LE(8), typesEnd = typesAt + btf.readUInt32LE(12)
    this.stringsAt = hdrLen + btf.readUInt32LE(16)
    for (let at = typesAt, id = 1; at < typesEnd; id++) {
      const info = btf.readUInt32LE(at + 4)
      const kind = (info >>> 24) & 0x1f, vlen = info & 0xffff
      if (kind === KIND_STRUCT || kind === KIND_UNION) this.composites.set(id, {nameOff: btf.readUInt32LE(at), membersAt: at + 12, vlen, bitfields: info >>> 31 === 1})
      at += 12 + extraBytes(kind, vlen)
    }
  }

  /** Whether the string at `off` is `name`, compared in place. */
  named(off: number, name: string): boolean {
    const at = this.stringsAt + off
    return this.btf.toString('latin1', at, at + name.length) === name && this.btf[at + name.length] === 0
  }

  /** A member's bit offset, looking into anonymous struct and union members as C does. */
  find(c: Composite, member: string): number | undefined {
    for (let m = 0; m < c.vlen; m++) {
      const p = c.membersAt + m * 12, nameOff = this.btf.readUInt32LE(p), raw = this.btf.readUInt32LE(p + 8)
      const bitOffset = c.bitfields ? raw & 0xffffff : raw
      if (this.named(nameOff, member)) return bitOffset
      const inner = nameOff === 0 ? this.composites.get(this.btf.readUInt32LE(p + 4)) : undefined
      const found = inner && this.find(inner, member)
      if (found !== undefined) return bitOffset + found
    }
    return undefined
  }
}

/** The byte offset of `member` in `struct name` of the running kernel; throws when BTF or the field is missing. */
export function kernelOffset(struct: string, member: string, path = '/sys/kernel/btf/vmlinux'): number {
  const btf = new Btf(readFileSync(path))
  for (const c of btf.composites.values()) {
    if (!btf.named(c.nameOff, struct)) continue
    const bits = btf.find(c, member)
    if (bits === undefined || bits % 8 !== 0) break
    return bits / 8
  }
  throw new Error(`kernel BTF (${path}) has no byte-aligned struct ${struct}.${member}`)
}
