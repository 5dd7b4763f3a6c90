/**
 * A tiny eBPF assembler: the handful of instructions divert's one program needs, encoded as the
 * kernel reads them (struct bpf_insn: u8 code, u8 dst:4 src:4, s16 off, s32 imm; little-endian —
 * Documentation/bpf/standardization/instruction-set.rst). No compiler at install, no object files.
 *
 *   program (TypeScript calls) ─▶ Insn[] ─resolve labels─▶ Buffer ─▶ BPF_PROG_LOAD
 */

/** Registers r0–r10: r0 return value, r1–r5 arguments (clobbered by calls), r6–r9 callee-saved, r10 frame pointer. */
export type Reg = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10

// Instruction classes and fields (include/uapi/linux/bpf.h, bpf_common.h).
const LD = 0x00, LDX = 0x01, STX = 0x03, ALU = 0x04, JMP = 0x05, ALU64 = 0x07
const MEM = 0x60, IMM = 0x00, ATOMIC = 0xc0
const W = 0x00, DW = 0x18
const K = 0x00, X = 0x08
const ADD = 0x00, SUB = 0x10, OR = 0x40, LSH = 0x60, MOV = 0xb0
const JEQ = 0x10, JGT = 0x20, JNE = 0x50, CALL = 0x80, EXIT = 0x90
/** src_reg of a 64-bit immediate load meaning "imm is a map fd" (BPF_PSEUDO_MAP_FD). */
const PSEUDO_MAP_FD = 1

export interface Insn {
  code: number
  dst: Reg
  src: number
  off: number
  imm: number
  /** A jump's target, resolved to `off` by assemble(). */
  label?: string
}

const insn = (code: number, dst: Reg, src: number, off: number, imm: number, label?: string): Insn => ({code, dst, src, off, imm, label})

export const asm = {
  movReg: (dst: Reg, src: Reg): Insn => insn(ALU64 | MOV | X, dst, src, 0, 0),
  movImm: (dst: Reg, imm: number): Insn => insn(ALU64 | MOV | K, dst, 0, 0, imm),
  addImm: (dst: Reg, imm: number): Insn => insn(ALU64 | ADD | K, dst, 0, 0, imm),
  addReg: (dst: Reg, src: Reg): Insn => insn(ALU64 | ADD | X, dst, src, 0, 0),
  subReg: (dst: Reg, src: Reg): Insn => insn(ALU64 | SUB | X, dst, src, 0, 0),
  orReg: (dst: Reg, src: Reg): Insn => insn(ALU64 | OR | X, dst, src, 0, 0),
  lshImm: (dst: Reg, imm: number): Insn => insn(ALU64 | LSH | K, dst, 0, 0, imm),
  /** dst = (u32) src: a 32-bit move zero-extends into the upper half. */
  movReg32: (dst: Reg, src: Reg): Insn => insn(ALU | MOV | X, dst, src, 0, 0),
  /** dst = *(u64 *)(src + off) */
  loadDw: (dst: Reg, src: Reg, off: number): Insn => insn(LDX | MEM | DW, dst, src, off, 0),
  /** dst = *(u32 *)(src + off) */
  loadW: (dst: Reg, src: Reg, off: number): Insn => insn(LDX | MEM | W, dst, src, off, 0),
  /** *(u64 *)(dst + off) = src */
  storeDw: (dst: Reg, off: number, src: Reg): Insn => insn(STX | MEM | DW, dst, src, off, 0),
  /** lock *(u64 *)(dst + off) += src (BPF_ATOMIC with imm BPF_ADD: the old BPF_XADD). */
  atomicAddDw: (dst: Reg, off: number, src: Reg): Insn => insn(STX | ATOMIC | DW, dst, src, off, ADD),
  /** dst = the map whose fd is given: two instruction slots (BPF_LD | BPF_IMM | BPF_DW). */
  loadMapFd: (dst: Reg, fd: number): Insn[] => [insn(LD | IMM | DW, dst, PSEUDO_MAP_FD, 0, fd), insn(0, 0, 0, 0, 0)],
  jeqImm: (dst: Reg, imm: number, label: string): Insn => insn(JMP | JEQ | K, dst, 0, 0, imm, label),
  jneImm: (dst: Reg, imm: number, label: string): Insn => insn(JMP | JNE | K, dst, 0, 0, imm, label),
  /** Unsigned `dst > imm`. */
  jgtImm: (dst: Reg, imm: number, label: string): Insn => insn(JMP | JGT | K, dst, 0, 0, imm, label),
  ja: (label: string): Insn => insn(JMP, 0, 0, 0, 0, label),
  call: (helper: number): Insn => insn(JMP | CALL, 0, 0, 0, helper),
  exit: (): Insn => insn(JMP | EXIT, 0, 0, 0, 0),
}

/** A label marks the next instruction: `[..., label('out'), asm.exit()]`. */
export interface Label {
  name: string
}
export const label = (name: string): Label => ({name})

/** Resolves labels (a jump's offset counts instruction slots after the jump) and encodes. */
export function assemble(items: Array<Insn | Insn[] | Label>): Buffer {
  const flat: Insn[] = []
  const at = new Map<string, number>()
  for (const item of items) {
    if ('name' in item) at.set(item.name, flat.length)
    else if (Array.isArray(item)) flat.push(...item)
    else flat.push(item)
  }
  const out = Buffer.alloc(flat.length * 8)
  flat.forEach((i, n) => {
    let off = i.off
    if (i.label !== undefined) {
      const target = at.get(i.label)
      if (target === undefined) throw new Error(`bpf assembler: no label ${i.label}`)
      off = target - n - 1
    }
    out.writeUInt8(i.code, n * 8)
    out.writeUInt8((i.src << 4) | i.dst, n * 8 + 1)
    out.writeInt16LE(off, n * 8 + 2)
    out.writeInt32LE(i.imm, n * 8 + 4)
  })
  return out
}
