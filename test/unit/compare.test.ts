import {test, describe} from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {compareStreams, excerpt, firstDifference} from '../../src/capture/compare.js'

describe('firstDifference', () => {
  test('identical, differing, and prefix streams', () => {
    assert.equal(firstDifference(Buffer.from('abc'), Buffer.from('abc')), -1)
    assert.equal(firstDifference(Buffer.from('abc'), Buffer.from('abd')), 2)
    assert.equal(firstDifference(Buffer.from('abc'), Buffer.from('ab')), 2)
    assert.equal(firstDifference(Buffer.alloc(0), Buffer.from('x')), 0)
    assert.equal(firstDifference(Buffer.alloc(0), Buffer.alloc(0)), -1)
  })

  test('finds a difference deep in a large stream (past whole compared blocks)', () => {
    const a = Buffer.alloc(100_000, 7)
    const b = Buffer.from(a)
    b[81_923] = 8
    assert.equal(firstDifference(a, b), 81_923)
  })

  test('property: agrees with a byte-by-byte scan', () => {
    fc.assert(
      fc.property(fc.uint8Array({maxLength: 9000}), fc.nat(), fc.integer({min: 0, max: 255}), fc.boolean(), (bytes, at, value, cut) => {
        const a = Buffer.from(bytes)
        const b = Buffer.from(bytes)
        if (b.length > 0) b[at % b.length] = value
        const c = cut ? b.subarray(0, at % (b.length + 1)) : b
        let expected = -1
        for (let i = 0; i < Math.max(a.length, c.length); i++) {
          if (i >= a.length || i >= c.length || a[i] !== c[i]) {
            expected = i
            break
          }
        }
        assert.equal(firstDifference(a, c), expected)
      }),
      {numRuns: 300},
    )
  })
})

describe('excerpt', () => {
  test('hex then printable text, ellipses where the buffer goes on', () => {
    const buf = Buffer.from('GET /index.html HTTP/1.1\r\nHost: example\r\n')
    assert.equal(excerpt(buf, 0, 8), '47 45 54 20 2f 69 6e 64 |GET /ind|…')
    assert.equal(excerpt(buf, 18, 8), '…48 54 54 50 2f 31 2e 31 |HTTP/1.1|…')
    assert.equal(excerpt(buf, buf.length - 1, 4), '…6c 65 0d 0a |le..|')
    assert.equal(excerpt(Buffer.from('Hello'), 2, 16), '48 65 6c 6c 6f |Hello|')
  })

  test('an offset at the end shows the last bytes and (end); an empty buffer says so', () => {
    assert.equal(excerpt(Buffer.from('abcdef'), 6, 4), '…63 64 65 66 |cdef| (end)')
    assert.equal(excerpt(Buffer.alloc(0), 0), '(empty)')
  })
})

describe('compareStreams', () => {
  test('identical streams', () => {
    assert.deepEqual(compareStreams(Buffer.from('same'), Buffer.from('same')), {identical: true, lengthExpected: 4, lengthActual: 4})
  })

  test('the first differing byte with excerpts of both sides', () => {
    const c = compareStreams(Buffer.from('HTTP/1.1 200 OK\r\n'), Buffer.from('HTTP/1.1 500 Internal Server Error\r\n'), 8)
    assert.equal(c.identical, false)
    assert.equal(c.offset, 9)
    assert.equal(c.expectedExcerpt, '…31 20 32 30 30 20 4f 4b |1 200 OK|…')
    assert.equal(c.actualExcerpt, '…31 20 35 30 30 20 49 6e |1 500 In|…')
    assert.equal(c.lengthExpected, 17)
    assert.equal(c.lengthActual, 36)
  })

  test('a shorter answer differs where it ends', () => {
    const c = compareStreams(Buffer.from('hello world'), Buffer.from('hello'))
    assert.equal(c.offset, 5)
    assert.match(c.actualExcerpt ?? '', /\|hello\| \(end\)$/)
  })
})
