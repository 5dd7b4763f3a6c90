/**
 * cidr.ts: address and prefix parsing, canonical formatting (RFC 5952), IPv4-mapped folding
 * (RFC 4291 §2.5.5.2). node:net's isIP and the WHATWG URL host serializer are the independent references.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {isIP} from 'node:net'
import fc from 'fast-check'
import {
  addressBytes,
  formatAddressBytes,
  formatPrefix,
  normalizeAddress,
  parseCidr,
  parseIPv4,
  parseIPv6,
  prefixContains,
  readAddress,
} from '../../src/addr/cidr.js'
import {DivertError} from '../../src/errors.js'

function canonical(text: string): string {
  return formatPrefix(parseCidr(text))
}

function assertInvalid(text: string, fragment?: RegExp): void {
  assert.throws(
    () => parseCidr(text),
    (e: unknown) => {
      assert.ok(e instanceof DivertError, `${text}: not a DivertError`)
      assert.equal(e.code, 'DIVERT_ERR_INVALID_ADDRESS')
      assert.ok(e.message.includes(`"${text}"`), `message names the input: ${e.message}`)
      if (fragment) assert.match(e.message, fragment)
      return true
    },
    `${JSON.stringify(text)} should be refused`,
  )
}

/** The WHATWG URL serializer compresses IPv6 like RFC 5952 and lowercases: an independent formatter. */
function urlHost(v6: string): string {
  return new URL(`http://[${v6}]/`).hostname.slice(1, -1)
}

test('canonical forms of IPv6 special cases', () => {
  assert.equal(canonical('::'), '::')
  assert.equal(canonical('::1'), '::1')
  assert.equal(canonical('::/0'), '::/0')
  assert.equal(canonical('0:0:0:0:0:0:0:1'), '::1')
  assert.equal(canonical('2001:DB8::/32'), '2001:db8::/32')
  assert.equal(canonical('2001:0db8:0000:0000:0000:0000:0000:0000/32'), '2001:db8::/32')
  assert.equal(canonical('1:0:0:1:0:0:0:1'), '1:0:0:1::1', 'longest zero run is compressed')
  assert.equal(canonical('1:0:0:2:0:0:3:4'), '1::2:0:0:3:4', 'first run wins a tie (RFC 5952 §4.2.3)')
  assert.equal(canonical('1:2:3:4:5:6:7::'), '1:2:3:4:5:6:7:0', 'a single zero group is not compressed (§4.2.2)')
  assert.equal(canonical('fe80::/10'), 'fe80::/10')
})

test('IPv4-mapped IPv6 folds to IPv4; embedded IPv4 that is not mapped stays IPv6', () => {
  const mapped = parseCidr('::ffff:1.2.3.4')
  assert.equal(mapped.family, 4)
  assert.equal(mapped.length, 32)
  assert.equal(formatPrefix(mapped), '1.2.3.4')
  assert.equal(canonical('::FFFF:7f00:1'), '127.0.0.1')
  assert.equal(canonical('0:0:0:0:0:ffff:10.1.2.3'), '10.1.2.3')
  assert.equal(canonical('::ffff:10.0.0.0/104'), '10.0.0.0/8')
  assert.equal(canonical('::ffff:0:0/96'), '0.0.0.0/0')
  assert.equal(canonical('::1.2.3.4'), '::102:304')
  assert.equal(canonical('64:ff9b::192.0.2.33'), '64:ff9b::c000:221')
  assertInvalid('::ffff:10.0.0.0/95', /IPv4-mapped range/)
  assertInvalid('::ffff:10.0.0.0/129', /between 0 and 128/)
})

test('IPv4 forms', () => {
  assert.equal(canonical('0.0.0.0/0'), '0.0.0.0/0')
  assert.equal(canonical('255.255.255.255'), '255.255.255.255')
  assert.equal(canonical('192.168.100.0/30'), '192.168.100.0/30')
  assert.equal(canonical(' 10.0.0.0/8 '), '10.0.0.0/8', 'surrounding blanks are trimmed')
  const p = parseCidr('10.1.2.3')
  assert.deepEqual([p.family, p.length, [...p.bytes]], [4, 32, [10, 1, 2, 3]])
})

test('host bits set below the prefix are refused with a suggestion', () => {
  assertInvalid('10.0.0.1/8', /did you mean 10\.0\.0\.0\/8\?/)
  assertInvalid('2001:db8::1/32', /did you mean 2001:db8::\/32\?/)
  assertInvalid('0.0.0.1/0', /did you mean 0\.0\.0\.0\/0\?/)
})

test('malformed addresses and prefixes are refused', () => {
  const bad = [
    '', ' ', '/8', '10.0.0.0/', '10.0.0.0/33', '10.0.0.0/8/8', '10.0.0.0/-1', '10.0.0.0/ 8', '10.0.0.0/0x8', '10.0.0.0/1000',
    '::/129', '010.0.0.0/8', '10.00.0.0/8', '1.2.3', '1.2.3.4.5', '256.0.0.0', '1.2.3.4 5', 'host.example', 'localhost',
    ':::', '1::2::3', '12345::', ':1::', '1::2:', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8::', '::1.2.3', '::1.2.3.04',
    '1::2:3:4:5:6:1.2.3.4', 'ffff::g', '[::1]', '::1/64x',
  ]
  for (const text of bad) assertInvalid(text)
})

test('zone ids: ignored on client addresses, refused in rules', () => {
  assertInvalid('fe80::1%eth0', /zone id.*without "%eth0"/)
  assertInvalid('fe80::%eth0/64')
  assertInvalid('1.2.3.4%eth0')
  assert.equal(normalizeAddress('fe80::1%eth0'), 'fe80::1')
  assert.deepEqual(addressBytes('fe80::1%eth0')?.bytes, parseIPv6('fe80::1'))
  assert.equal(addressBytes('1.2.3.4%eth0'), undefined, 'IPv4 has no zones (node:net agrees)')
  assert.equal(addressBytes('fe80::1%'), undefined)
  assert.equal(addressBytes('fe80::1%eth 0'), undefined)
})

test('normalizeAddress folds every spelling of a mapped address and leaves others alone', () => {
  assert.equal(normalizeAddress('::ffff:127.0.0.2'), '127.0.0.2')
  assert.equal(normalizeAddress('::FFFF:127.0.0.2'), '127.0.0.2')
  assert.equal(normalizeAddress('::ffff:7f00:2'), '127.0.0.2')
  assert.equal(normalizeAddress('0:0:0:0:0:ffff:127.0.0.2'), '127.0.0.2')
  assert.equal(normalizeAddress('::ffff:127.0.0.2%lo'), '127.0.0.2')
  assert.equal(normalizeAddress('127.0.0.2'), '127.0.0.2')
  assert.equal(normalizeAddress('::1'), '::1')
  assert.equal(normalizeAddress('2001:db8::ffff:1'), '2001:db8::ffff:1')
  assert.equal(normalizeAddress('ffff::1'), 'ffff::1')
})

test('parseIPv4 / parseIPv6 / prefixContains', () => {
  assert.deepEqual(parseIPv4('1.2.3.4'), Uint8Array.from([1, 2, 3, 4]))
  assert.equal(parseIPv4('01.2.3.4'), undefined)
  assert.equal(parseIPv4('::1'), undefined)
  const mapped = parseIPv6('::ffff:1.2.3.4')!
  assert.deepEqual([...mapped.slice(10)], [0xff, 0xff, 1, 2, 3, 4], 'parseIPv6 does not fold')
  assert.equal(parseIPv6('1.2.3.4'), undefined)
  const net = parseCidr('10.0.0.0/8')
  assert.ok(prefixContains(net, '10.255.0.1'))
  assert.ok(prefixContains(net, '::ffff:10.1.1.1'))
  assert.ok(!prefixContains(net, '11.0.0.0'))
  assert.ok(!prefixContains(net, '::a00:1'), 'IPv4-compatible (not mapped) is IPv6')
  assert.ok(prefixContains(parseCidr('::/0'), '2001:db8::1'))
  assert.ok(!prefixContains(parseCidr('::/0'), '::ffff:1.2.3.4'), 'mapped clients belong to IPv4 rules')
})

test('readAddress writes 32-bit words and folds mapped addresses', () => {
  const out = new Int32Array(4).fill(7)
  assert.equal(readAddress('255.1.2.3', out), 4)
  assert.deepEqual([...out], [0xff010203 | 0, 0, 0, 0])
  assert.equal(readAddress('2001:db8::ffff:1', out), 6)
  assert.deepEqual([...out], [0x20010db8, 0, 0, 0xffff0001 | 0])
  assert.equal(readAddress('::ffff:10.0.0.1', out), 4)
  assert.deepEqual([...out], [0x0a000001, 0, 0, 0])
  assert.equal(readAddress('nonsense', out), 0)
})

const HEXISH = fc.constantFrom(...'0123456789abcdefABCDEF:.%'.split(''), '::', 'ffff', '%eth0', '1.2.3.4', '0', '00')

/** Valid addresses with one random edit: the inputs most likely to find a disagreement at a boundary. */
const mutated = fc
  .tuple(fc.oneof(fc.ipV4(), fc.ipV6()), fc.nat(), fc.constantFrom('insert', 'delete', 'replace'), HEXISH)
  .map(([s, at, op, c]) => {
    const i = at % (s.length + 1)
    if (op === 'insert') return s.slice(0, i) + c + s.slice(i)
    if (op === 'delete') return s.slice(0, i) + s.slice(i + 1)
    return s.slice(0, i) + c + s.slice(i + 1)
  })

test('readAddress accepts exactly what node:net isIP accepts', () => {
  const out = new Int32Array(4)
  const candidates = fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.ipV4Extended(),
    mutated,
    fc.string({unit: HEXISH, maxLength: 14}),
    fc.ipV6().map((s) => `${s}%${'eth0'}`),
    fc.ipV4().map((s) => `::ffff:${s}`),
  )
  fc.assert(
    fc.property(candidates, (s) => {
      assert.equal(readAddress(s, out) !== 0, isIP(s) !== 0, JSON.stringify(s))
    }),
    {numRuns: 20_000},
  )
})

test('parsed and re-formatted IPv6 equals the URL serializer (RFC 5952 compression)', () => {
  fc.assert(
    fc.property(fc.ipV6(), (s) => {
      assert.equal(formatAddressBytes(6, parseIPv6(s)!), urlHost(s), s)
    }),
    {numRuns: 5_000},
  )
})

test('mapped IPv6 reads as the same IPv4 address', () => {
  const a = new Int32Array(4)
  const b = new Int32Array(4)
  fc.assert(
    fc.property(fc.ipV4(), (v4) => {
      assert.equal(readAddress(v4, a), 4)
      assert.equal(readAddress(`::ffff:${v4}`, b), 4)
      assert.deepEqual(b, a)
      assert.equal(normalizeAddress(urlHost(`::ffff:${v4}`)), v4, 'hex spelling folds too')
    }),
    {numRuns: 2_000},
  )
})

test('formatPrefix and parseCidr round-trip any prefix', () => {
  const prefix = fc.oneof(
    fc.tuple(fc.constant(4 as const), fc.uint8Array({minLength: 4, maxLength: 4}), fc.integer({min: 0, max: 32})),
    fc.tuple(fc.constant(6 as const), fc.uint8Array({minLength: 16, maxLength: 16}), fc.integer({min: 0, max: 128})),
  )
  fc.assert(
    fc.property(prefix, ([family, raw, length]) => {
      const bytes = raw.map((v, i) => v & (0xff << (8 - Math.max(0, Math.min(8, length - i * 8)))) & 0xff)
      const mapped = family === 6 && bytes.slice(0, 10).every((v) => v === 0) && bytes[10] === 0xff && bytes[11] === 0xff
      fc.pre(!mapped)
      const text = formatPrefix({family, bytes, length})
      const back = parseCidr(text)
      assert.deepEqual([back.family, back.length, [...back.bytes]], [family, length, [...bytes]], text)
      assert.equal(formatPrefix(back), text)
    }),
    {numRuns: 5_000},
  )
})
