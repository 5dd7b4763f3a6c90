/** The kernel fast path's pure parts (issue 15): the eBPF assembler's encoding and the `fast_path` setting. */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {asm, assemble, label} from '../../src/fastpath/asm.js'
import {verdictProgram} from '../../src/fastpath/sockhash.js'
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

test('issue 15: fast_path is auto or off; anything else names the key and the choices', () => {
  assert.equal(parseConfig(`fast_path: auto\n${BASE}`, 'd.yaml').fastPath, 'auto')
  assert.equal(parseConfig(`fast_path: off\n${BASE}`, 'd.yaml').fastPath, 'off')
  assert.throws(() => parseConfig(`fast_path: always\n${BASE}`, 'd.yaml'), (e: DivertError) => {
    assert.equal(e.code, 'DIVERT_ERR_CONFIG_INVALID')
    assert.match(e.message, /fast_path: .*auto or off/)
    return true
  })
})
