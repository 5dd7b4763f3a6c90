/**
 * Fuzzing the PROXY protocol codec (issue 7 §6), beyond the round-trip and random-bytes properties of
 * proxy-protocol.test.ts: mutated real headers, TLVs, other spellings of the same v1 line, the
 * decoder's consistency (payload never matters, a rejection is never taken back) and the encoders
 * on arbitrary input. Outcomes allowed: a header, undefined (need more bytes), or a DivertError.
 *
 *   generated peers ─▶ encodeProxyV1/V2 ─▶ mutate ─▶ decodeProxyHeader ─▶ header | undefined | DivertError
 */
import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {isIP} from 'node:net'
import fc from 'fast-check'
import {decodeProxyHeader, encodeProxyV1, encodeProxyV2, type ProxyHeader} from '../../src/backends/proxy-protocol.js'
import type {Address} from '../../src/addr/address.js'
import {DivertError} from '../../src/errors.js'
import {addressBytes, formatAddressBytes} from '../../src/addr/cidr.js'

/** DIVERT_FUZZ_SCALE=10 runs ten times as many cases (a deeper run before a release). */
const runs = (n: number): number => Math.max(1, Math.round(n * Number(process.env.DIVERT_FUZZ_SCALE ?? 1)))
// A failing property reports the assertion that failed, not only the counterexample.
fc.configureGlobal({includeErrorInReport: true})

type Decoded = {header: ProxyHeader} | {more: true} | {error: DivertError}

/** Decodes and classifies; any other throw, or a header that claims bytes it was not given, fails. */
function decode(buf: Buffer): Decoded {
  let h: ProxyHeader | undefined
  try {
    h = decodeProxyHeader(buf)
  } catch (e) {
    assert.ok(e instanceof DivertError, `decodeProxyHeader threw ${String((e as Error)?.stack ?? e)} on ${buf.toString('hex')}`)
    assert.equal(e.code, 'DIVERT_ERR_INVALID_ARGUMENT')
    return {error: e}
  }
  if (h === undefined) return {more: true}
  checkHeader(h, buf)
  return {header: h}
}

function checkHeader(h: ProxyHeader, buf: Buffer): void {
  assert.ok(Number.isInteger(h.length) && h.length > 0 && h.length <= buf.length, `length ${h.length} of ${buf.length} bytes`)
  assert.equal(h.version, buf[0] === 0x0d ? 2 : 1)
  assert.equal(h.source === undefined, h.destination === undefined)
  for (const p of [h.source, h.destination]) {
    if (!p) continue
    assert.ok(isIP(p.address) !== 0, `address ${p.address}`)
    assert.equal(p.address, canonical(p.address), 'addresses come back canonical')
    assert.ok(Number.isInteger(p.port) && p.port >= 0 && p.port <= 65535)
  }
}

/** IPv4-mapped folded to IPv4, IPv6 in RFC 5952 form: what the decoder promises. */
function canonical(address: string): string {
  const a = addressBytes(address)
  assert.ok(a, `not an address: ${address}`)
  if (a.family === 6 && a.bytes.subarray(0, 10).every((b) => b === 0) && a.bytes[10] === 0xff && a.bytes[11] === 0xff) {
    return formatAddressBytes(4, a.bytes.subarray(12))
  }
  return formatAddressBytes(a.family, a.bytes)
}

// ─── generators ────────────────────────────────────────────────────────────────────────────────

const port = fc.integer({min: 0, max: 65535})
const v4 = fc.ipV4()
/** IPv6 as fast-check writes it, plus the dual-stack spellings a Node socket reports. */
const v6 = fc.oneof(fc.ipV6(), v4.map((a) => `::ffff:${a}`), v4.map((a) => `::FFFF:${a}`), fc.ipV6().map((a) => `${a}%eth0`))
const peer: fc.Arbitrary<Pick<Address, 'address' | 'port'>> = fc.record({address: fc.oneof(v4, v6), port})

const header = fc.tuple(peer, peer, fc.constantFrom('v1', 'v2-stream', 'v2-dgram')).map(([src, dst, kind]) =>
  kind === 'v1' ? encodeProxyV1(src, dst) : encodeProxyV2(src, dst, kind === 'v2-dgram' ? 'dgram' : 'stream'))

const bytes = (max: number): fc.Arbitrary<Buffer> => fc.uint8Array({maxLength: max}).map((b) => Buffer.from(b))

/** One edit of a byte string, with positions taken modulo its length so every edit applies. */
const edit = fc.oneof(
  fc.record({kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({min: 0, max: 7})}),
  fc.record({kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({min: 0, max: 255})}),
  fc.record({kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({min: 1, max: 8})}),
  fc.record({kind: fc.constant('insert' as const), at: fc.nat(), data: bytes(8)}),
  fc.record({kind: fc.constant('truncate' as const), at: fc.nat()}),
  fc.record({kind: fc.constant('text' as const), at: fc.nat(), data: fc.constantFrom(' ', '\r', '\n', '\r\n', ':', '.', '0', 'TCP4', 'TCP6', 'UNKNOWN', 'ffff', '%', '-1', '65536')}),
)
type Edit = typeof edit extends fc.Arbitrary<infer T> ? T : never

function applyEdit(buf: Buffer, e: Edit): Buffer {
  const at = buf.length === 0 ? 0 : e.at % buf.length
  switch (e.kind) {
    case 'flip': {
      const out = Buffer.from(buf)
      if (out.length > 0) out[at] ^= 1 << e.bit
      return out
    }
    case 'set': {
      const out = Buffer.from(buf)
      if (out.length > 0) out[at] = e.value
      return out
    }
    case 'delete':
      return Buffer.concat([buf.subarray(0, at), buf.subarray(at + e.len)])
    case 'insert':
      return Buffer.concat([buf.subarray(0, at), e.data, buf.subarray(at)])
    case 'text':
      return Buffer.concat([buf.subarray(0, at), Buffer.from(e.data, 'latin1'), buf.subarray(at)])
    case 'truncate':
      return buf.subarray(0, at)
  }
}

const mutated = fc.tuple(header, fc.array(edit, {minLength: 1, maxLength: 4}), bytes(16))
  .map(([h, edits, payload]) => edits.reduce(applyEdit, Buffer.concat([h, payload])))

/** A v2 TLV (proxy-protocol.txt §2.2.1): type, 16-bit length, value. */
const tlv = fc.tuple(fc.integer({min: 0, max: 255}), bytes(40)).map(([type, value]) => {
  const b = Buffer.alloc(3 + value.length)
  b[0] = type
  b.writeUInt16BE(value.length, 1)
  value.copy(b, 3)
  return b
})

/** Appends TLVs to a v2 header and grows its length field to cover them. */
function withTlvs(h: Buffer, tlvs: Buffer[]): Buffer {
  const out = Buffer.concat([h, ...tlvs])
  out.writeUInt16BE(out.length - 16, 14)
  return out
}

/** Other valid spellings of one IPv6 address in a v1 line: expanded, zero-padded, upper case. */
function spellings(address: string): fc.Arbitrary<string> {
  const a = addressBytes(address)!
  const words = Array.from({length: 8}, (_, i) => ((a.bytes[2 * i] << 8) | a.bytes[2 * i + 1]).toString(16))
  return fc.constantFrom(
    words.join(':'),
    words.map((w) => w.padStart(4, '0')).join(':'),
    words.join(':').toUpperCase(),
    formatAddressBytes(6, a.bytes).toUpperCase(),
  )
}

const v6Bytes = fc.uint8Array({minLength: 16, maxLength: 16}).map((b) => formatAddressBytes(6, b))

// ─── properties ────────────────────────────────────────────────────────────────────────────────

describe('PROXY protocol fuzzing (fast-check)', () => {
  it('mutated valid headers (bit flips, byte sets, deletions, insertions, truncation) give a header, "need more" or INVALID_ARGUMENT', () => {
    const seen = {header: 0, more: 0, error: 0}
    fc.assert(fc.property(mutated, (buf) => {
      const d = decode(buf)
      seen['header' in d ? 'header' : 'more' in d ? 'more' : 'error']++
    }), {numRuns: runs(10000)})
    // The mutations must reach every outcome, or the property tests less than it claims.
    for (const [k, n] of Object.entries(seen)) assert.ok(n > 50, `only ${n} inputs decoded to "${k}": ${JSON.stringify(seen)}`)
  })

  it('a decoded header does not depend on the payload after it, nor on bytes not yet received', () => {
    fc.assert(fc.property(fc.oneof(header, mutated), bytes(64), (buf, more) => {
      const d = decode(buf)
      if (!('header' in d)) return
      assert.deepEqual(decode(buf.subarray(0, d.header.length)), d, 'the header alone decodes the same')
      assert.deepEqual(decode(Buffer.concat([buf, more])), d, 'more payload changes nothing')
    }), {numRuns: runs(5000)})
  })

  it('a rejection is never taken back by more bytes, and "need more" holds for every prefix', () => {
    fc.assert(fc.property(fc.oneof(mutated, bytes(120)), bytes(64), fc.nat(), (buf, more, cut) => {
      const d = decode(buf)
      if ('error' in d) assert.ok('error' in decode(Buffer.concat([buf, more])), `${buf.toString('hex')} + more was accepted`)
      if ('more' in d) assert.ok('more' in decode(buf.subarray(0, cut % (buf.length + 1))), 'a prefix of a valid beginning is one too')
    }), {numRuns: runs(5000)})
  })

  it('v2 headers with well-formed TLVs decode to the same addresses; a TLV overrunning the header is rejected', () => {
    fc.assert(fc.property(peer, peer, fc.boolean(), fc.array(tlv, {maxLength: 6}), fc.integer({min: 1, max: 3}), (src, dst, dgram, tlvs, short) => {
      const plain = encodeProxyV2(src, dst, dgram ? 'dgram' : 'stream')
      const good = withTlvs(plain, tlvs)
      const d = decode(good)
      assert.ok('header' in d, 'well-formed TLVs are accepted')
      assert.equal(d.header.length, good.length)
      assert.deepEqual({...d.header, length: 0}, {...(decode(plain) as {header: ProxyHeader}).header, length: 0})
      fc.pre(tlvs.length > 0)
      // Shrinking the header length so it ends inside the last TLV (1-3 bytes short, never all of it):
      // HAProxy rejects this, and so must we.
      const cut = Buffer.from(good)
      cut.writeUInt16BE(good.length - 16 - Math.min(short, tlvs[tlvs.length - 1].length - 1), 14)
      assert.ok('error' in decode(cut), `TLVs cut short by ${short} bytes were accepted`)
    }), {numRuns: runs(3000)})
  })

  it('v1 lines with other spellings of the same IPv6 addresses decode to the canonical addresses', () => {
    const line = fc.tuple(v6Bytes, v6Bytes).chain(([s, d]) => fc.tuple(fc.constant(s), fc.constant(d), spellings(s), spellings(d), port, port))
    fc.assert(fc.property(line, ([s, d, sText, dText, sp, dp]) => {
      const got = decode(Buffer.from(`PROXY TCP6 ${sText} ${dText} ${sp} ${dp}\r\n`, 'latin1'))
      assert.ok('header' in got, `rejected ${sText} ${dText}`)
      assert.deepEqual(got.header.source, {address: canonical(s), port: sp})
      assert.deepEqual(got.header.destination, {address: canonical(d), port: dp})
    }), {numRuns: runs(3000)})
  })

  it('the encoders take any string and number: a header that decodes back, or INVALID_ADDRESS / INVALID_ARGUMENT', () => {
    const address = fc.oneof(v4, v6, fc.string({unit: 'binary', maxLength: 50}), fc.constantFrom('', '::', '0.0.0.0', '1.2.3', '1.2.3.4.5', '::ffff:1.2.3.999', 'fe80::1%', '%', '::ffff:7f00:1', '0:0:0:0:0:ffff:127.0.0.1'))
    const anyPort = fc.oneof(port, fc.integer(), fc.double(), fc.constantFrom(-0, NaN, Infinity, 65536))
    const anyPeer = fc.record({address, port: anyPort})
    fc.assert(fc.property(anyPeer, anyPeer, fc.constantFrom('v1', 'stream', 'dgram'), (src, dst, kind) => {
      let h: Buffer
      try {
        h = kind === 'v1' ? encodeProxyV1(src, dst) : encodeProxyV2(src, dst, kind)
      } catch (e) {
        assert.ok(e instanceof DivertError, `encoder threw ${String(e)} for ${JSON.stringify([src, dst])}`)
        assert.ok(e.code === 'DIVERT_ERR_INVALID_ADDRESS' || e.code === 'DIVERT_ERR_INVALID_ARGUMENT', e.code)
        return
      }
      const d = decode(h)
      assert.ok('header' in d, `an encoded header did not decode: ${h.toString('hex')}`)
      assert.equal(d.header.length, h.length)
      // `+ 0` folds -0, which the encoder accepts as port 0.
      assert.deepEqual(d.header.source, {address: canonical(src.address.replace(/%.*$/, '')), port: src.port + 0})
      assert.deepEqual(d.header.destination, {address: canonical(dst.address.replace(/%.*$/, '')), port: dst.port + 0})
    }), {numRuns: runs(3000)})
  })
})
