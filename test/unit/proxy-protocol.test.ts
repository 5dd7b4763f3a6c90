import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {decodeProxyHeader, encodeProxyV1, encodeProxyV2} from '../../src/backends/proxy-protocol.js'
import {DivertError} from '../../src/errors.js'
import {addressBytes, formatAddressBytes} from '../../src/addr/cidr.js'

const SIG = '0d0a0d0a000d0a515549540a'
const hex = (b: Buffer): string => b.toString('hex')
const ascii = (s: string): Buffer => Buffer.from(s, 'latin1')

function assertInvalid(buf: Buffer, pattern: RegExp): void {
  assert.throws(() => decodeProxyHeader(buf), (e: unknown) => {
    assert.ok(e instanceof DivertError, `expected DivertError, got ${String(e)}`)
    assert.equal(e.code, 'DIVERT_ERR_INVALID_ARGUMENT')
    assert.match(e.message, pattern)
    return true
  })
}

describe('encodeProxyV1', () => {
  it('writes the TCP4 line of proxy-protocol.txt §2.1 byte for byte', () => {
    const b = encodeProxyV1({address: '192.168.0.1', port: 56324}, {address: '192.168.0.11', port: 443})
    assert.equal(b.toString('latin1'), 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n')
  })

  it('writes TCP6 for IPv6 peers', () => {
    const b = encodeProxyV1({address: '2001:db8::1', port: 1}, {address: '::1', port: 65535})
    assert.equal(b.toString('latin1'), 'PROXY TCP6 2001:db8::1 ::1 1 65535\r\n')
  })

  it('maps the IPv4 side to ::ffff:a.b.c.d under TCP6 when the families differ', () => {
    assert.equal(encodeProxyV1({address: '192.0.2.7', port: 5000}, {address: '2001:db8::2', port: 23}).toString('latin1'),
      'PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 5000 23\r\n')
    assert.equal(encodeProxyV1({address: '2001:db8::9', port: 5000}, {address: '127.0.0.1', port: 23}).toString('latin1'),
      'PROXY TCP6 2001:db8::9 ::ffff:127.0.0.1 5000 23\r\n')
  })

  it('folds IPv4-mapped input (a dual-stack socket) back to TCP4 and strips zone ids', () => {
    assert.equal(encodeProxyV1({address: '::ffff:10.0.0.1', port: 1}, {address: '10.0.0.2', port: 2}).toString('latin1'),
      'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n')
    assert.equal(encodeProxyV1({address: 'fe80::1%lo', port: 1}, {address: 'fe80::2', port: 2}).toString('latin1'),
      'PROXY TCP6 fe80::1 fe80::2 1 2\r\n')
  })

  it('rejects what is not an IP or a port', () => {
    assert.throws(() => encodeProxyV1({address: 'localhost', port: 1}, {address: '127.0.0.1', port: 2}), /DIVERT_ERR_INVALID_ADDRESS|not an IPv4 or IPv6/)
    assert.throws(() => encodeProxyV1({address: '127.0.0.1', port: 70000}, {address: '127.0.0.1', port: 2}), /port 70000/)
    assert.throws(() => encodeProxyV2({address: '127.0.0.1', port: 1.5}, {address: '127.0.0.1', port: 2}, 'stream'), /port 1.5/)
  })
})

describe('encodeProxyV2', () => {
  it('writes TCP over IPv4 (0x21 0x11, 12-byte block)', () => {
    const b = encodeProxyV2({address: '192.168.0.1', port: 56324}, {address: '192.168.0.11', port: 443}, 'stream')
    assert.equal(hex(b), `${SIG}2111000c` + 'c0a80001' + 'c0a8000b' + 'dc04' + '01bb')
  })

  it('writes UDP over IPv4 (0x12)', () => {
    const b = encodeProxyV2({address: '10.1.2.3', port: 1194}, {address: '127.0.0.1', port: 53}, 'dgram')
    assert.equal(hex(b), `${SIG}2112000c` + '0a010203' + '7f000001' + '04aa' + '0035')
  })

  it('writes TCP and UDP over IPv6 (0x21 / 0x22, 36-byte block)', () => {
    const src = {address: '2001:db8::1', port: 1}
    const dst = {address: '2001:db8:0:1::ff', port: 2}
    const block = '20010db8000000000000000000000001' + '20010db8000000010000000000000' + '0ff' + '0001' + '0002'
    assert.equal(hex(encodeProxyV2(src, dst, 'stream')), `${SIG}21210024${block}`)
    assert.equal(hex(encodeProxyV2(src, dst, 'dgram')), `${SIG}21220024${block}`)
  })

  it('maps the IPv4 side to ::ffff:a.b.c.d in an AF_INET6 block when the families differ', () => {
    const b = encodeProxyV2({address: '192.0.2.1', port: 80}, {address: '::1', port: 8080}, 'stream')
    assert.equal(hex(b), `${SIG}21210024` + '00000000000000000000ffffc0000201' + '00000000000000000000000000000001' + '0050' + '1f90')
  })
})

describe('decodeProxyHeader', () => {
  it('decodes v1 and v2 vectors and reports where the payload starts', () => {
    const v1 = Buffer.concat([ascii('PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n'), ascii('GET / HTTP/1.1\r\n')])
    assert.deepEqual(decodeProxyHeader(v1), {
      version: 1, command: 'PROXY', transport: 'stream', length: 47,
      source: {address: '192.168.0.1', port: 56324}, destination: {address: '192.168.0.11', port: 443},
    })
    const v2 = Buffer.concat([Buffer.from(`${SIG}2122002420010db8000000000000000000000001000000000000000000000000000000010001ffff`, 'hex'), ascii('payload')])
    assert.deepEqual(decodeProxyHeader(v2), {
      version: 2, command: 'PROXY', transport: 'dgram', length: 52,
      source: {address: '2001:db8::1', port: 1}, destination: {address: '::1', port: 65535},
    })
  })

  it('folds IPv4-mapped addresses to IPv4 and canonicalises IPv6 text (RFC 5952)', () => {
    const h = decodeProxyHeader(ascii('PROXY TCP6 ::FFFF:192.0.2.7 2001:DB8:0:0:0:0:0:2 5000 23\r\n'))
    assert.deepEqual(h?.source, {address: '192.0.2.7', port: 5000})
    assert.deepEqual(h?.destination, {address: '2001:db8::2', port: 23})
  })

  it('accepts v1 UNKNOWN, v2 LOCAL and v2 AF_UNSPEC without addresses', () => {
    assert.deepEqual(decodeProxyHeader(ascii('PROXY UNKNOWN\r\nx')), {version: 1, command: 'PROXY', transport: 'unknown', length: 15})
    assert.deepEqual(decodeProxyHeader(ascii('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n')), {version: 1, command: 'PROXY', transport: 'unknown', length: 35})
    // LOCAL: the block (here a bogus family 0x11 with 12 bytes) is skipped, never read.
    assert.deepEqual(decodeProxyHeader(Buffer.from(`${SIG}2011000c${'00'.repeat(12)}`, 'hex')), {version: 2, command: 'LOCAL', transport: 'unknown', length: 28})
    assert.deepEqual(decodeProxyHeader(Buffer.from(`${SIG}20000000`, 'hex')), {version: 2, command: 'LOCAL', transport: 'unknown', length: 16})
    assert.deepEqual(decodeProxyHeader(Buffer.from(`${SIG}21000000`, 'hex')), {version: 2, command: 'PROXY', transport: 'unknown', length: 16})
  })

  it('skips well-formed TLVs after the addresses', () => {
    const tlvs = '04000300aabb' + '050002abcd' // NOOP (3 bytes) + UNIQUE_ID (2 bytes)
    const b = Buffer.from(`${SIG}21110017` + '7f000001' + '7f000002' + '0001' + '0002' + tlvs, 'hex')
    assert.equal(decodeProxyHeader(b)?.length, 16 + 12 + 11)
    assert.equal(decodeProxyHeader(b)?.source?.address, '127.0.0.1')
  })

  it('asks for more bytes on every strict prefix of a header', () => {
    const headers = [
      encodeProxyV1({address: '10.0.0.1', port: 1}, {address: '10.0.0.2', port: 2}),
      encodeProxyV1({address: '2001:db8::1', port: 1}, {address: '10.0.0.2', port: 2}),
      encodeProxyV2({address: '2001:db8::1', port: 1}, {address: '10.0.0.2', port: 2}, 'stream'),
      ascii('PROXY UNKNOWN\r\n'),
    ]
    for (const h of headers) {
      for (let n = 0; n < h.length; n++) assert.equal(decodeProxyHeader(h.subarray(0, n)), undefined, `prefix of ${n} bytes of ${hex(h)}`)
      assert.equal(decodeProxyHeader(h)?.length, h.length)
    }
  })

  it('rejects what is not a header, as early as it can tell', () => {
    assertInvalid(ascii('GET / HTTP/1.1\r\n'), /neither "PROXY " \(v1\) nor the v2 signature/)
    assertInvalid(ascii('PROXI'), /not with "PROXY "/)
    assertInvalid(ascii('PROXY TCP5'), /protocol "TCP5"/)
    assertInvalid(ascii('PROXY TCPQ'), /protocol "TCPQ"/)
    assertInvalid(ascii('PROXY UNKNOWNX'), /protocol "UNKNOWNX"/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'), /LF at offset 30 without a preceding CR/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX'), /CR at offset 30 is not followed by LF/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4\t5.6.7.8'), /byte 0x09/)
    assertInvalid(ascii(`PROXY TCP6 ${'a'.repeat(120)}`), /no CRLF within the first 107 bytes/)
    assertInvalid(ascii('PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n'), /source "01.2.3.4"/)
    assertInvalid(ascii('PROXY TCP4 ::1 5.6.7.8 1 2\r\n'), /source "::1" is not a dotted-quad/)
    assertInvalid(ascii('PROXY TCP6 1.2.3.4 ::1 1 2\r\n'), /source "1.2.3.4" is not an IPv6/)
    assertInvalid(ascii('PROXY TCP6 fe80::1%lo ::1 1 2\r\n'), /not an IPv6/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n'), /destination port "65536"/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n'), /source port "01"/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n'), /fields after the protocol/)
    assertInvalid(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n'), /fields after the protocol/)
    assertInvalid(Buffer.from('0d0a0d0a000d0a5155495420', 'hex'), /signature/)
    assertInvalid(Buffer.from(`${SIG}1111000c`, 'hex'), /version nibble is 1/)
    assertInvalid(Buffer.from(`${SIG}2211000c`, 'hex'), /command 0x2/)
    assertInvalid(Buffer.from(`${SIG}21410000`, 'hex'), /address family nibble 0x4/)
    assertInvalid(Buffer.from(`${SIG}21130000`, 'hex'), /transport nibble 0x3/)
    assertInvalid(Buffer.from(`${SIG}21210010${'00'.repeat(16)}`, 'hex'), /address block is 16 bytes, family 0x21 needs 36/)
    assertInvalid(Buffer.from(`${SIG}2111000e${'00'.repeat(14)}`, 'hex'), /TLV at offset 28 is cut short/)
    assertInvalid(Buffer.from(`${SIG}2111000f${'00'.repeat(12)}04000a`, 'hex'), /TLV runs past/)
  })
})

// ─── properties ────────────────────────────────────────────────────────────────────────────────

/** What the decoder should report for an address: IPv4-mapped folded, IPv6 in RFC 5952 form. */
function canonical(address: string): string {
  const a = addressBytes(address)
  assert.ok(a, `generator produced a non-address ${address}`)
  if (a.family === 6 && a.bytes.subarray(0, 10).every((b) => b === 0) && a.bytes[10] === 0xff && a.bytes[11] === 0xff) {
    return formatAddressBytes(4, a.bytes.subarray(12))
  }
  return formatAddressBytes(a.family, a.bytes)
}

const peer = fc.record({address: fc.oneof(fc.ipV4(), fc.ipV6()), port: fc.integer({min: 0, max: 65535})})

describe('PROXY protocol properties (fast-check)', () => {
  it('decode(encode(src, dst)) gives back the addresses and ports, v1 and v2, any families', () => {
    fc.assert(fc.property(peer, peer, fc.constantFrom('v1', 'v2-stream', 'v2-dgram'), fc.uint8Array({maxLength: 32}), (src, dst, kind, payload) => {
      const header = kind === 'v1' ? encodeProxyV1(src, dst) : encodeProxyV2(src, dst, kind === 'v2-dgram' ? 'dgram' : 'stream')
      const decoded = decodeProxyHeader(Buffer.concat([header, payload]))
      assert.ok(decoded)
      assert.equal(decoded.length, header.length)
      assert.equal(decoded.version, kind === 'v1' ? 1 : 2)
      assert.equal(decoded.transport, kind === 'v2-dgram' ? 'dgram' : 'stream')
      assert.deepEqual(decoded.source, {address: canonical(src.address), port: src.port})
      assert.deepEqual(decoded.destination, {address: canonical(dst.address), port: dst.port})
    }), {numRuns: 2000})
  })

  it('every strict prefix of an encoded header asks for more bytes', () => {
    fc.assert(fc.property(peer, peer, fc.boolean(), fc.nat(), (src, dst, v1, cut) => {
      const header = v1 ? encodeProxyV1(src, dst) : encodeProxyV2(src, dst, 'stream')
      assert.equal(decodeProxyHeader(header.subarray(0, cut % header.length)), undefined)
    }), {numRuns: 2000})
  })

  it('arbitrary bytes decode to a header, to "need more", or to INVALID_ARGUMENT — nothing else', () => {
    const v2sig = Buffer.from(SIG, 'hex')
    const bytes = fc.oneof(
      fc.uint8Array({maxLength: 300}).map((b) => Buffer.from(b)),
      fc.uint8Array({maxLength: 300}).map((b) => Buffer.concat([v2sig, Buffer.from(b)])),
      fc.tuple(fc.integer({min: 0, max: 255}), fc.integer({min: 0, max: 255}), fc.uint8Array({maxLength: 300}))
        .map(([v, f, b]) => Buffer.concat([v2sig, Buffer.from([v, f, b.length >> 8, b.length & 0xff]), Buffer.from(b)])),
      fc.string({maxLength: 120}).map((s) => ascii(`PROXY ${s}`)),
      fc.tuple(fc.constantFrom('TCP4 ', 'TCP6 ', 'UNKNOWN'), fc.string({maxLength: 100}), fc.constantFrom('', '\r', '\r\n'))
        .map(([p, s, end]) => ascii(`PROXY ${p}${s}${end}`)),
    )
    fc.assert(fc.property(bytes, (buf) => {
      let result
      try {
        result = decodeProxyHeader(buf)
      } catch (e) {
        assert.ok(e instanceof DivertError, `threw ${String(e)}`)
        assert.equal(e.code, 'DIVERT_ERR_INVALID_ARGUMENT')
        return
      }
      if (result) assert.ok(result.length > 0 && result.length <= buf.length)
    }), {numRuns: 5000})
  })
})
