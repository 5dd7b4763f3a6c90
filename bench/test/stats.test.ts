import {test} from 'node:test'
import assert from 'node:assert/strict'
import {formatNumber, median, pairedRatios, summarize} from '../stats.js'

test('median of odd and even counts, unsorted input left untouched', () => {
  const xs = [3, 1, 2]
  assert.equal(median(xs), 2)
  assert.deepEqual(xs, [3, 1, 2])
  assert.equal(median([4, 1, 3, 2]), 2.5)
  assert.ok(Number.isNaN(median([])))
})

test('summarize ignores missing and non-finite values', () => {
  assert.deepEqual(summarize([5, undefined, 1, Number.NaN, 3]), {n: 3, median: 3, min: 1, max: 5, values: [5, 1, 3]})
  assert.equal(summarize([undefined]), undefined)
})

test('pairedRatios pairs by run and skips runs missing either side or with a zero peer', () => {
  assert.deepEqual(pairedRatios([2, 4, undefined, 9], [1, 0, 3, 3]), [2, 3])
  assert.deepEqual(pairedRatios([1], []), [])
})

test('formatNumber keeps three significant digits and groups thousands', () => {
  assert.equal(formatNumber(0.012345), '0.0123')
  assert.equal(formatNumber(1.2345), '1.23')
  assert.equal(formatNumber(123.45), '123')
  assert.equal(formatNumber(12345.6), '12,346')
  assert.equal(formatNumber(0), '0')
  assert.equal(formatNumber(undefined), '–')
})
