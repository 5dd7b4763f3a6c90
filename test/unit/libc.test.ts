/** The FFI layer (src/sys/libc.ts): struct encodings and errors, plus real calls on sockets of our own. */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import * as c from '../../src/sys/libc.js'

test('sockaddr_in and sockaddr_in6: family in host order, port and address in network order', () => {
  assert.equal(c.sockaddr('192.0.2.7', 8080).toString('hex'), '02001f90c0000207' + '00'.repeat(8))
  const six = c.sockaddr('2001:db8::1', 443)
  assert.equal(six.length, 28)
  assert.equal(six.subarray(0, 4).toString('hex'), '0a0001bb')
  assert.equal(six.subarray(8, 24).toString('hex'), '20010db8000000000000000000000001')
  assert.equal(c.ipv6Bytes('::ffff:198.51.100.1').toString('hex'), '00000000000000000000ffffc6336401')
  assert.equal(c.ipv6Bytes('::').toString('hex'), '00'.repeat(16))
  assert.throws(() => c.sockaddr('not-an-ip', 1), /not an IP address/)
})

test('a failed call throws a SysError named by its errno, as Node errors are', () => {
  const fd = c.openSocket(4, c.SOCK_STREAM)
  try {
    // 203.0.113.0/24 is documentation space: never local, so without IP_TRANSPARENT bind must fail.
    assert.throws(() => c.bindSocket(fd, '203.0.113.9', 0), (e: c.SysError) => e.code === 'EADDRNOTAVAIL' && /bind 203\.0\.113\.9:0/.test(e.message))
  } finally {
    c.closeFd(fd)
  }
})

test('options round-trip through the kernel: SO_REUSEADDR set and read back', () => {
  const fd = c.openSocket(6, c.SOCK_DGRAM)
  try {
    c.setIntOption(fd, c.SOL_SOCKET, c.SO_REUSEADDR, 1)
    assert.equal(c.getOption(fd, c.SOL_SOCKET, c.SO_REUSEADDR, 4).readInt32LE(), 1)
  } finally {
    c.closeFd(fd)
  }
})
