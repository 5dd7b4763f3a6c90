/** The kernel fast path's pure parts (issue 15): the eBPF assembler's encoding and the `fast_path` setting. */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {asm, assemble, label} from '../../src/fastpath/asm.js'
import {verdictProgram} from '../../src/fastpath/sockhash.js'
import {kernelOffset} from '../../src/fastpath/btf.js'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {parseConfig} from '../../src/config/load.js'
import {DivertError} from '../../src/errors.js'

const BASE = `listeners:
  - { name: l, bind: "127.0.0.1:2323", backend: b }
backends:
  b: { servers: [ { address: "127.0.0.1:2401" } ] }
`

test('issue 15: instructions encode as struct bpf_insn (code, dst|src<<4, off, imm; little-endian)', () => {
  assert.equal(assemble([asm.movImm(0, 1), asm.exit()]).toString('hex'), 'b700000001000000' + '9500000000000000')
  assert.equal(assemble([asm.movReg(6, 1)]).toString('hex'), 'bf16000000000000')
  assert.equal(assemble([asm.loadW(2, 6, 0)]).toString('hex'), '6162000000000000')
  assert.equal(assemble([asm.storeDw(10, -8, 0)]).toString('hex'), '7b0af8ff00000000')
  assert.equal(assemble([asm.atomicAddDw(7, 8, 1)]).toString('hex'), 'db17080000000000')
  assert.equal(assemble([asm.call(72)]).toString('hex'), '8500000048000000')
  // The back-pressure bound's arithmetic: 64-bit add/sub/or/lsh, a zero-extending 32-bit move, unsigned >.
  assert.equal(assemble([asm.addReg(1, 2), asm.subReg(1, 9), asm.orReg(1, 9), asm.lshImm(1, 32)]).toString('hex'), '0f21000000000000' + '1f91000000000000' + '4f91000000000000' + '6701000020000000')
  assert.equal(assemble([asm.movReg32(1, 1)]).toString('hex'), 'bc11000000000000')
  assert.equal(assemble([asm.jgtImm(1, 4194304, 'x'), label('x')]).toString('hex'), '2501000000004000')
  // A map fd load takes two slots, the first with src_reg BPF_PSEUDO_MAP_FD (1).
  assert.equal(assemble([asm.loadMapFd(1, 5)]).toString('hex'), '1811000005000000' + '0000000000000000')
})

test('issue 15: a jump counts the slots after it up to its label, two-slot loads included', () => {
  const code = assemble([asm.jeqImm(0, 0, 'out'), asm.loadMapFd(1, 3), asm.movImm(0, 1), label('out'), asm.exit()])
  assert.equal(code.readInt16LE(2), 3)
  assert.throws(() => assemble([asm.jneImm(0, 0, 'nowhere')]), /no label nowhere/)
})

test('issue 15: the verdict program ends in exits only and names its three maps (the SOCKHASH twice: the peer socket, the redirect)', () => {
  const code = verdictProgram(11, 12, 13, 1576)
  const fds = []
  for (let i = 0; i < code.length; i += 8) if (code[i] === 0x18) fds.push(code.readInt32LE(i + 4))
  assert.deepEqual(fds, [11, 12, 13, 13])
  assert.equal(code[code.length - 8], 0x95, 'the last instruction is exit')
})

/** A BTF blob (Documentation/bpf/btf.rst): a u32, an anonymous struct holding write_seq, and tcp_sock embedding it at byte 8. */
function btfBlob(): Buffer {
  const strings = Buffer.from('\0u32\0write_seq\0tcp_sock\0snd_una\0', 'latin1')
  const at = (name: string): number => strings.indexOf(`\0${name}\0`) + 1
  const t = (name: number, kind: number, vlen: number, size: number, ...extra: number[]): number[] => [name, (kind << 24) | vlen, size, ...extra]
  const types = Buffer.from(new Uint32Array([
    ...t(at('u32'), 1, 0, 4, 32),
    ...t(0, 4, 1, 8, at('write_seq'), 1, 32),
    ...t(at('tcp_sock'), 4, 2, 16, at('snd_una'), 1, 0, 0, 2, 64),
  ]).buffer)
  const header = Buffer.alloc(24)
  header.writeUInt16LE(0xeb9f, 0)
  header.writeUInt8(1, 2)
  header.writeUInt32LE(24, 4)
  header.writeUInt32LE(0, 8)
  header.writeUInt32LE(types.length, 12)
  header.writeUInt32LE(types.length, 16)
  header.writeUInt32LE(strings.length, 20)
  return Buffer.concat([header, types, strings])
}

test('issue 15: a struct member offset comes from kernel BTF, anonymous members included; a missing one is an error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'divert-btf-'))
  try {
    const file = join(dir, 'vmlinux')
    writeFileSync(file, btfBlob())
    assert.equal(kernelOffset('tcp_sock', 'write_seq', file), 12)
    assert.equal(kernelOffset('tcp_sock', 'snd_una', file), 0)
    assert.throws(() => kernelOffset('tcp_sock', 'bytes_acked', file), /no byte-aligned struct tcp_sock.bytes_acked/)
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})

test('issue 15: fast_path is auto or off; anything else names the key and the choices', () => {
  assert.equal(parseConfig(`fast_path: auto\n${BASE}`, 'd.yaml').fastPath, 'auto')
  assert.equal(parseConfig(`fast_path: off\n${BASE}`, 'd.yaml').fastPath, 'off')
  assert.throws(() => parseConfig(`fast_path: always\n${BASE}`, 'd.yaml'), (e: DivertError) => {
    assert.equal(e.code, 'DIVERT_ERR_CONFIG_INVALID')
    assert.match(e.message, /fast_path: .*auto or off/)
    return true
  })
})
