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

interface Member {
  name: string
  type: number
  bitOffset: number
}
interface Composite {
  name: string
  members: Member[]
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

/** The structs and unions of a BTF blob by type id (only those: nothing else is needed here). */
function composites(btf: Buffer): Map<number, Composite> {
  if (btf.readUInt16LE(0) !== BTF_MAGIC) throw new Error('not a little-endian BTF blob')
  const hdrLen = btf.readUInt32LE(4)
  const typesAt = hdrLen + btf.readUInt32LE(8), typesEnd = typesAt + btf.readUInt32LE(12)
  const stringsAt = hdrLen + btf.readUInt32LE(16)
  const str = (off: number): string => btf.toString('latin1', stringsAt + off, btf.indexOf(0, stringsAt + off))
  const out = new Map<number, Composite>()
  for (let at = typesAt, id = 1; at < typesEnd; id++) {
    const info = btf.readUInt32LE(at + 4)
    const kind = (info >>> 24) & 0x1f, vlen = info & 0xffff, bitfields = info >>> 31 === 1
    if (kind === KIND_STRUCT || kind === KIND_UNION) {
      const members: Member[] = []
      for (let m = 0; m < vlen; m++) {
        const p = at + 12 + m * 12, offset = btf.readUInt32LE(p + 8)
        members.push({name: str(btf.readUInt32LE(p)), type: btf.readUInt32LE(p + 4), bitOffset: bitfields ? offset & 0xffffff : offset})
      }
      out.set(id, {name: str(btf.readUInt32LE(at)), members})
    }
    at += 12 + extraBytes(kind, vlen)
  }
  return out
}

/** A member's bit offset, looking into anonymous struct and union members as C does. */
function find(types: Map<number, Composite>, c: Composite, member: string): number | undefined {
  for (const m of c.members) {
    if (m.name === member) return m.bitOffset
    const inner = m.name === '' ? types.get(m.type) : undefined
    const found = inner && find(types, inner, member)
    if (found !== undefined) return m.bitOffset + found
  }
  return undefined
}

/** The byte offset of `member` in `struct name` of the running kernel; throws when BTF or the field is missing. */
export function kernelOffset(struct: string, member: string, path = '/sys/kernel/btf/vmlinux'): number {
  const types = composites(readFileSync(path))
  for (const c of types.values()) {
    if (c.name !== struct) continue
    const bits = find(types, c, member)
    if (bits === undefined || bits % 8 !== 0) break
    return bits / 8
  }
  throw new Error(`kernel BTF (${path}) has no byte-aligned struct ${struct}.${member}`)
}
