/**
 * Closing a session's TCP socket, with a reset (RST) when the session failed, whatever state the
 * socket's writable side is in.
 *
 * Node's socket.resetAndDestroy() is libuv's uv_tcp_close_reset(), which refuses (EINVAL) while a
 * shutdown request is pending; Node then emits that error and drops the handle without closing it:
 * no 'close', the descriptor stays open, the session never ends, and at exit Node's CleanupHandles
 * waits for the handle forever at 100 % CPU. A shutdown is pending from divert's own FIN
 * (socket.end() with nothing left to write issues it at once) until libuv's next loop iteration, so a
 * reset from the other side within that iteration meets it. There SO_LINGER {1, 0} is set directly —
 * what uv_tcp_close_reset does, and close(2) then sends the reset (socket(7)) — and the socket is
 * destroyed.
 */
import type net from 'node:net'
import {fdOf, setLingerZero} from '../sys/libc.js'

export function abort(s: net.Socket, reset: boolean): void {
  if (s.destroyed) return
  if (!reset || typeof s.resetAndDestroy !== 'function' || s.readyState === 'opening') return void s.destroy()
  // end() called and not yet finished: the shutdown may be issued already.
  if (!s.writableEnded || s.writableFinished) return void s.resetAndDestroy()
  const fd = fdOf(s)
  try {
    if (fd !== undefined) setLingerZero(fd)
  } catch {
    // Without koffi the peer gets the FIN alone (it has it already, or will).
  }
  s.destroy()
}
