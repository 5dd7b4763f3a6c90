/** Backend options of upstream sockets in the config: `source:` and `mark:` (issue 13). */
import {describe, it} from 'node:test'
import assert from 'node:assert/strict'
import {parseConfig} from '../../src/config/load.js'
import {DivertError} from '../../src/errors.js'

const config = (backend: string, server = '127.0.0.1:2401'): string => `
listeners:
  - { name: main, bind: 127.0.0.1:2323, backend: b }
backends:
  b: { servers: [ { address: "${server}" } ]${backend} }
`

function invalid(text: string, pattern: RegExp): void {
  assert.throws(() => parseConfig(text, 'divert.yaml'), (e: unknown) => e instanceof DivertError && e.code === 'DIVERT_ERR_CONFIG_INVALID' && pattern.test(e.message), String(pattern))
}

describe('issue 13: backend source: and mark:', () => {
  it('accepts source: client, a local IP (normalised) and a mark in decimal or hex; absent by default', () => {
    const b = (extra: string, server?: string) => parseConfig(config(extra, server), 'divert.yaml').backends.get('b')!
    assert.equal(b(', source: client').source, 'client')
    assert.equal(b(', source: "::ffff:10.0.0.1"').source, '10.0.0.1')
    assert.equal(b(', source: "2001:db8::1"', '[2001:db8::7]:23').source, '2001:db8::1')
    assert.equal(b(', mark: 0x2a').mark, 42)
    assert.equal(b(', mark: 4294967295').mark, 4294967295)
    const plain = b('')
    assert.equal('source' in plain || 'mark' in plain, false)
  })

  it('refuses what is neither client nor an IP, a mark outside 32 bits, and a source of the wrong family', () => {
    invalid(config(', source: banana'), /backends\.b\.source: "banana" is neither client nor an IP address/)
    invalid(config(', source: "10.0.0.1:80"'), /backends\.b\.source: .* is neither client nor an IP address/)
    invalid(config(', mark: -1'), /backends\.b\.mark: .*0 to 4294967295/)
    invalid(config(', mark: 4294967296'), /backends\.b\.mark: .*0 to 4294967295/)
    invalid(config(', mark: "x"'), /backends\.b\.mark/)
    invalid(config(', source: "2001:db8::1"'), /backends\.b\.source: is an IPv6 address but servers\[0\] \(127\.0\.0\.1:2401\) is not/)
  })
})
