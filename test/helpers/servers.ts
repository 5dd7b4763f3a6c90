/**
 * Loopback test servers and clients: echo backends that say who they are (and which client a PROXY
 * header named), a sink, and clients bound to a chosen loopback source. Every server listens on port
 * 0, tracks its sockets and has an idempotent close (docs/STYLE.md §6).
 */
import net from 'node:net'
import dgram from 'node:dgram'
import {once} from 'node:events'
import {decodeProxyHeader} from '../../src/backends/proxy-protocol.js'

export interface TestServer {
  name: string
  port: number
  host: string
  address: string
  /** Sockets currently open on the server side. */
  sockets: Set<net.Socket>
  /** PROXY headers received, in order. */
  headers: Array<ReturnType<typeof decodeProxyHeader>>
  accepted: number
  close(): Promise<void>
}

export type Behaviour = (socket: net.Socket, server: TestServer) => void

/** Echo: the first reply is `<name>\n`, then every byte received is sent back. */
export const echo: Behaviour = (socket, server) => {
  socket.write(`${server.name}\n`)
  socket.pipe(socket)
}

export async function startServer(name: string, behaviour: Behaviour = echo, opts: {host?: string; proxyProtocol?: boolean} = {}): Promise<TestServer> {
  const host = opts.host ?? '127.0.0.1'
  const sockets = new Set<net.Socket>()
  let closed: Promise<void> | undefined
  const server = net.createServer({allowHalfOpen: true}, (socket) => {
    t.accepted++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => undefined)
    if (!opts.proxyProtocol) return behaviour(socket, t)
    readProxyHeader(socket).then((h) => {
      t.headers.push(h)
      behaviour(socket, t)
    }, () => socket.destroy())
  })
  server.listen(0, host)
  await once(server, 'listening')
  const port = (server.address() as net.AddressInfo).port
  const t: TestServer = {
    name, port, host, address: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, sockets, headers: [], accepted: 0,
    close: () => (closed ??= new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    })),
  }
  return t
}

/** Reads one PROXY header (v1 or v2) off the socket, leaving the rest of the stream in place. */
function readProxyHeader(socket: net.Socket): Promise<ReturnType<typeof decodeProxyHeader>> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk])
      let h
      try {
        h = decodeProxyHeader(buf)
      } catch (error) {
        socket.off('data', onData)
        return reject(error)
      }
      if (!h) return
      socket.off('data', onData)
      socket.pause()
      const rest = buf.subarray(h.length)
      if (rest.length > 0) socket.unshift(rest)
      resolve(h)
    }
    socket.on('data', onData)
  })
}

/** A free port on loopback (for configs written before the daemon starts). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = net.createServer()
  s.listen(0, host)
  await once(s, 'listening')
  const port = (s.address() as net.AddressInfo).port
  await new Promise((r) => s.close(r))
  return port
}

export async function freeUdpPort(host = '127.0.0.1'): Promise<number> {
  const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4')
  await new Promise<void>((r) => s.bind(0, host, r))
  const port = s.address().port
  await new Promise<void>((r) => s.close(r))
  return port
}

export interface ClientOpts {
  port: number
  host?: string
  localAddress?: string
  /** Keep the writable side open after a read EOF: what `ending` needs to tell a FIN from a reset. */
  allowHalfOpen?: boolean
}

export async function connect(opts: ClientOpts): Promise<net.Socket> {
  const socket = net.connect({port: opts.port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress, allowHalfOpen: opts.allowHalfOpen})
  await once(socket, 'connect')
  return socket
}

/** Reads until `n` bytes arrived (or the stream ends/fails) and returns them. */
export function readBytes(socket: net.Socket, n: number, timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let got = 0
    const timer = setTimeout(() => done(new Error(`timeout: ${got} of ${n} bytes after ${timeoutMs}ms`)), timeoutMs)
    const onData = (c: Buffer): void => {
      chunks.push(c)
      got += c.length
      if (got >= n) done()
    }
    const onEnd = (): void => done(got >= n ? undefined : new Error(`stream ended after ${got} of ${n} bytes`))
    const done = (error?: Error): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('error', onEnd)
      socket.off('close', onEnd)
      if (error) reject(error)
      else resolve(Buffer.concat(chunks))
    }
    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('error', onEnd)
    socket.once('close', onEnd)
  })
}

/** Reads one line ("…\n") from the socket. */
export async function readLine(socket: net.Socket, timeoutMs = 10_000): Promise<string> {
  const chunks: Buffer[] = []
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error('timeout waiting for a line')), timeoutMs)
    const onData = (c: Buffer): void => {
      const i = c.indexOf(10)
      if (i < 0) return void chunks.push(c)
      chunks.push(c.subarray(0, i))
      const rest = c.subarray(i + 1)
      // Stop listening before giving the rest back, or a flowing stream re-emits it to this listener.
      finish()
      if (rest.length > 0) socket.unshift(rest)
    }
    const onClose = (): void => finish(new Error('closed before a full line'))
    const finish = (error?: Error): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      if (error) reject(error)
      else resolve(Buffer.concat(chunks).toString('utf8'))
    }
    socket.on('data', onData)
    socket.once('close', onClose)
  })
}

/** Connects from `localAddress` and returns the name the echo backend announced. */
export async function whoAnswers(port: number, localAddress?: string, host = '127.0.0.1'): Promise<string> {
  const s = await connect({port, host, localAddress})
  try {
    return await readLine(s)
  } finally {
    s.destroy()
  }
}

/** Resolves when `socket` closes; tells whether it saw an error (reset) first. */
export function closed(socket: net.Socket): Promise<{error?: NodeJS.ErrnoException}> {
  return new Promise((resolve) => {
    let error: NodeJS.ErrnoException | undefined
    if (socket.destroyed && socket.closed) return resolve({})
    socket.on('error', (e) => (error = e))
    socket.once('close', () => resolve({error}))
  })
}

/**
 * How a connection ended: by a reset or by a FIN. A Node client cannot tell from 'end' alone: when a
 * reset arrives with data still unread, libuv reports EOF (docs/FIELD-NOTES.md, Resets). So, as divert does
 * itself, an empty write follows the EOF: after a FIN it succeeds, after a reset it fails. The socket
 * must be opened with `allowHalfOpen: true`, or Node ends our side before the probe.
 */
export function ending(socket: net.Socket): Promise<{reset: boolean; error?: NodeJS.ErrnoException}> {
  return new Promise((resolve) => {
    let error: NodeJS.ErrnoException | undefined
    let reset = false
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error ??= e
      if (e.code === 'ECONNRESET' || e.code === 'EPIPE') reset = true
    })
    socket.once('end', () => {
      if (!socket.writable) return
      socket.write(Buffer.alloc(0), (e) => {
        if (e) reset = true
        socket.destroy()
      })
    })
    socket.once('close', () => resolve({reset, error}))
  })
}

export async function until(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}
