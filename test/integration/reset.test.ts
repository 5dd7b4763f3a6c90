/**
 * Closing a session's socket with a reset (src/net/reset.ts) on loopback, in every state its writable
 * side can be in when the other side of the session fails — notably just after divert's own FIN, when
 * Node's resetAndDestroy alone leaves the socket open for ever (found by the 2,000-session integrity
 * run of issue 15: a daemon that could not exit).
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {once} from 'node:events'
import {abort} from '../../src/net/reset.js'
import {startServer, closed, ending, until, type TestServer} from '../helpers/servers.js'

/** Resolves with what `p` resolves to, or rejects after `ms` naming `what`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms)))
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}

const states: Record<string, (s: net.Socket) => Promise<void>> = {
  'open both ways': async () => undefined,
  // end() with nothing queued issues the shutdown at once; libuv runs it on its next iteration.
  'just after its own FIN, the shutdown pending': async (s) => void s.end(),
  'with its own FIN sent': async (s) => {
    s.end()
    await once(s, 'finish')
  },
  'with writes still queued before its FIN': async (s) => {
    s.write(Buffer.alloc(16 * 1024 * 1024))
    s.end()
  },
}

for (const [state, reach] of Object.entries(states)) {
  test(`issue 15: a socket reset ${state} closes, and its peer sees the reset`, async () => {
    let peer: net.Socket | undefined
    const srv: TestServer = await startServer('peer', (s) => {
      s.pause()
      peer = s
    })
    try {
      const s = net.connect({port: srv.port, host: srv.host, allowHalfOpen: true})
      await once(s, 'connect')
      await until(() => peer !== undefined, 5000, 'the server to accept')
      const seen = ending(peer!)
      peer!.resume()
      const ours = closed(s)
      await reach(s)
      abort(s, true)
      const {error} = await within(ours, 2000, "the socket's 'close'")
      assert.equal(error, undefined, 'no error on our side')
      assert.equal((await within(seen, 2000, 'the peer to see the end')).reset, true, 'the peer saw a reset, not a FIN')
    } finally {
      await srv.close()
    }
  })
}
