import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {addressOf, formatAddress, localOf, parseAddress, remoteOf} from '../../src/addr/address.js'
import {DivertError} from '../../src/errors.js'

describe('issue 12: src/addr Address', () => {
  it('parses IP:port and [IPv6]:port into one shape', () => {
    assert.deepEqual(parseAddress('127.0.0.1:8080'), {address: '127.0.0.1', port: 8080, family: 4})
    assert.deepEqual(parseAddress('[::1]:53'), {address: '::1', port: 53, family: 6})
  })

  it('folds an IPv4-mapped IPv6 address to IPv4 and keeps a zone id for link-local servers', () => {
    assert.deepEqual(parseAddress('[::ffff:192.0.2.7]:23'), {address: '192.0.2.7', port: 23, family: 4})
    assert.deepEqual(parseAddress('[fe80::1%eth0]:23'), {address: 'fe80::1%eth0', port: 23, family: 6})
  })

  it('refuses names, bad ports and bare IPv6 with INVALID_ADDRESS naming the field', () => {
    for (const [text, why] of [['localhost:23', /"localhost" is not an IP address/], ['127.0.0.1:70000', /port 70000 is outside 0-65535/], ['::1:23', /is not IP:port/], ['127.0.0.1', /is not IP:port/]] as const) {
      assert.throws(() => parseAddress(text, '--to'), (e: unknown) => e instanceof DivertError && e.code === 'DIVERT_ERR_INVALID_ADDRESS' && why.test(e.message) && e.message.startsWith('--to '), text)
    }
  })

  it('formats with IPv6 in brackets, and round-trips through parse', () => {
    for (const text of ['10.1.2.3:0', '[2001:db8::7]:443', '[::]:1194']) assert.equal(formatAddress(parseAddress(text)), text)
  })

  it('addressOf normalises what sockets report: mapped folded, zone stripped', () => {
    assert.deepEqual(addressOf('::ffff:127.0.0.1', 4000), {address: '127.0.0.1', port: 4000, family: 4})
    assert.deepEqual(addressOf('::ffff:7f00:1', 1), {address: '127.0.0.1', port: 1, family: 4})
    assert.deepEqual(addressOf('fe80::2%veth0', 9), {address: 'fe80::2', port: 9, family: 6})
  })

  it('remoteOf / localOf read a socket\'s ends, undefined once they are gone', () => {
    assert.deepEqual(remoteOf({remoteAddress: '::ffff:192.0.2.1', remotePort: 5}), {address: '192.0.2.1', port: 5, family: 4})
    assert.deepEqual(localOf({localAddress: '::1', localPort: 6}), {address: '::1', port: 6, family: 6})
    assert.equal(remoteOf({}), undefined)
    assert.equal(localOf({localAddress: '::1'}), undefined)
  })
})
