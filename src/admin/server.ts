/**
 * AdminServer: the daemon's HTTP/1.1 + JSON admin API (README "Admin API") on a unix socket created
 * owner-only (0600), and optionally on TCP where every request needs `Authorization: Bearer TOKEN`.
 * It parses and bounds requests and maps errors to `{error, code, status}`; what each route does
 * lives in routes.ts. Nothing an admin client sends can throw past this file or disturb traffic.
 *
 *   CLI (undici) ─HTTP─▶ AdminServer ─▶ routes ─▶ Control (daemon's owners)
 */
import http from 'node:http'
import net from 'node:net'
import {createHash, timingSafeEqual} from 'node:crypto'
import {chmodSync, lstatSync, unlinkSync} from 'node:fs'
import type {Logger} from 'pino'
import {DivertError, isDivertError} from '../errors.js'
import type {Address} from '../addr/address.js'
import {formatAddress} from '../addr/address.js'
import {routeRequest, type Control, type RequestContext} from './routes.js'

export const BODY_LIMIT = 64 * 1024

/**
 * Bounds on admin connections, so that clients which connect and send nothing (or a request byte by
 * byte) cannot hold descriptors the proxy needs — no token is needed to connect to the TCP listener.
 * Node checks the header and request deadlines every `connectionsCheckingInterval`, counting from
 * the connection's start (or the request's first byte), so an idle connection ends within
 * HEADERS_TIMEOUT_MS + CHECK_INTERVAL_MS. Past MAX_CONNECTIONS per listener, Node closes new
 * connections at once (net.Server maxConnections).
 */
export const ADMIN_LIMITS = {headersTimeoutMs: 3000, requestTimeoutMs: 10_000, checkIntervalMs: 500, maxConnections: 64} as const

/** A client that ignores our FIN after an error answer must not keep the socket: destroyed this much later. */
const CLOSE_GRACE_MS = 1000

export interface AdminServerOptions {
  control: Control
  logger: Logger
  socket?: string
  tcp?: {listen: Address; token: string}
  bodyLimit?: number
}

export class AdminServer {
  private readonly servers: http.Server[] = []
  private readonly opts: AdminServerOptions
  /** Set once this server bound the unix socket: only then is the path ours to remove. */
  private boundSocket?: string

  constructor(opts: AdminServerOptions) {
    this.opts = opts
  }

  async listen(): Promise<void> {
    if (this.opts.socket) await this.listenUnix(this.opts.socket)
    if (this.opts.tcp) await this.listenTcp(this.opts.tcp.listen, this.opts.tcp.token)
  }

  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => {
      s.close(() => resolve())
      s.closeAllConnections()
    })))
    this.removeSocketSync()
  }

  /** Removes the unix socket this server bound (never one it did not), synchronously: safe right before process.exit(). */
  removeSocketSync(): void {
    if (!this.boundSocket) return
    try {
      unlinkSync(this.boundSocket)
    } catch {
      // already gone
    }
    this.boundSocket = undefined
  }

  tcpAddress(): net.AddressInfo | undefined {
    const s = this.servers.find((x) => typeof x.address() === 'object')
    return s?.address() as net.AddressInfo | undefined
  }

  private create(auth?: (req: http.IncomingMessage) => boolean): http.Server {
    // requireHostHeader off: Host means nothing on a unix socket, and Node's own 400 for a missing one
    // would have no JSON body.
    const {headersTimeoutMs, requestTimeoutMs, checkIntervalMs, maxConnections} = ADMIN_LIMITS
    const server = http.createServer({
      requestTimeout: requestTimeoutMs, headersTimeout: headersTimeoutMs, connectionsCheckingInterval: checkIntervalMs, requireHostHeader: false,
    }, (req, res) => {
      void this.handle(req, res, auth)
    })
    server.maxConnections = maxConnections
    // An Expect other than 100-continue: RFC 9110 §10.1.1 lets a server answer 417 or ignore it. Node's
    // automatic 417 has no JSON body, so the request is served as if the header were absent.
    server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => void this.handle(req, res, auth))
    server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => badHttp(err, socket))
    this.servers.push(server)
    return server
  }

  private async listenUnix(path: string): Promise<void> {
    await removeStaleSocket(path)
    const server = this.create()
    // umask at bind(2) time makes the socket 0600 from birth: no window in which others could connect.
    const old = process.umask(0o177)
    try {
      await listen(server, {path}, `admin socket ${path}`)
    } finally {
      process.umask(old)
    }
    chmodSync(path, 0o600)
    this.boundSocket = path
  }

  private async listenTcp(at: Address, token: string): Promise<void> {
    const expected = digest(token)
    const auth = (req: http.IncomingMessage): boolean => {
      const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')
      // Compare digests so timingSafeEqual sees equal lengths and the token's length does not leak.
      return m !== null && timingSafeEqual(digest(m[1].trim()), expected)
    }
    await listen(this.create(auth), {host: at.address, port: at.port}, `admin listener ${formatAddress(at)}`)
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, auth?: (req: http.IncomingMessage) => boolean): Promise<void> {
    try {
      if (auth && !auth(req)) {
        res.setHeader('WWW-Authenticate', 'Bearer')
        throw new DivertError('ADMIN_UNAUTHORIZED', 'this admin listener needs "Authorization: Bearer <token>" with the token from admin.token_file')
      }
      const url = requestUrl(req.url)
      const body = await readBody(req, this.opts.bodyLimit ?? BODY_LIMIT)
      const ctx: RequestContext = {method: req.method ?? 'GET', url, body, who: whoIsAsking(req, Boolean(auth))}
      const out = await routeRequest(this.opts.control, ctx)
      if (typeof out === 'string') send(res, 200, out, 'text/plain; version=0.0.4; charset=utf-8')
      else send(res, 200, JSON.stringify(out), 'application/json')
    } catch (error) {
      const e = isDivertError(error) ? error : new DivertError('INTERNAL', `internal error: ${(error as Error)?.message ?? String(error)}`, {cause: error})
      if (!isDivertError(error)) this.opts.logger.error({err: error, url: req.url, method: req.method}, 'admin request failed')
      if (e.code === 'DIVERT_ERR_ADMIN_METHOD' && e.details?.allow) res.setHeader('Allow', String(e.details.allow))
      // The rest of an oversized body stays unread, so this connection cannot carry another request:
      // say so (RFC 9112 §9.6) and close it once the answer is out, not before.
      const tooLarge = e.code === 'DIVERT_ERR_ADMIN_BODY_TOO_LARGE'
      if (tooLarge && !res.headersSent) res.setHeader('Connection', 'close')
      send(res, e.status, JSON.stringify(e.toJSON()), 'application/json')
      if (tooLarge) res.once('finish', () => req.destroy())
    }
  }
}

/**
 * Bytes that are not HTTP never reach a route: Node hands them to 'clientError' with no response
 * object, so the answer is written on the socket by hand (Node http docs, Event 'clientError') — still
 * the `{error, code, status}` body every other error gets.
 */
function badHttp(err: NodeJS.ErrnoException, socket: net.Socket): void {
  if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy()
  const why = err.code === 'HPE_HEADER_OVERFLOW' ? 'the request headers are too large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'the request took too long to arrive' : err.message
  const body = JSON.stringify(new DivertError('ADMIN_BAD_REQUEST', `malformed HTTP request (${why}): the admin API speaks HTTP/1.1 with JSON bodies`).toJSON())
  socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
  // end() only sends our FIN (the admin servers allow half-open sockets): a client that never closes
  // its side would keep the descriptor.
  const t = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref()
  socket.once('close', () => clearTimeout(t))
}

/** Node's parser accepts request-targets that WHATWG URL rejects (`GET http://[ HTTP/1.1`): a 400, not a 500. */
function requestUrl(target = '/'): URL {
  try {
    return new URL(target, 'http://divert')
  } catch {
    throw new DivertError('ADMIN_BAD_REQUEST', `request target ${JSON.stringify(target.slice(0, 200))} is not a valid URL path`)
  }
}

function send(res: http.ServerResponse, status: number, body: string, type: string): void {
  if (res.headersSent) return void res.end()
  res.writeHead(status, {'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store'})
  res.end(body)
}

function readBody(req: http.IncomingMessage, limit: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > limit) return reject(tooLarge(limit))
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > limit) {
        req.removeAllListeners('data')
        reject(tooLarge(limit))
        return
      }
      chunks.push(c)
    })
    req.on('error', reject)
    req.on('end', () => {
      if (size === 0) return resolve(undefined)
      const text = Buffer.concat(chunks).toString('utf8')
      try {
        resolve(JSON.parse(text))
      } catch (error) {
        reject(new DivertError('ADMIN_BAD_REQUEST', `request body is not JSON: ${(error as Error).message}`))
      }
    })
  })
}

function tooLarge(limit: number): DivertError {
  return new DivertError('ADMIN_BODY_TOO_LARGE', `request body is larger than ${limit} bytes`)
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

/** Who made an admin change, for the audit log. Unix clients say who they are; the socket is owner-only anyway. */
function whoIsAsking(req: http.IncomingMessage, tcp: boolean): string {
  const said = String(req.headers['x-divert-client'] ?? '').slice(0, 200)
  const where = tcp ? `tcp ${req.socket.remoteAddress}:${req.socket.remotePort}` : 'unix socket'
  return said ? `${said} via ${where}` : where
}

function listen(server: http.Server, opts: net.ListenOptions, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      reject(new DivertError('LISTEN_FAILED', `cannot listen on ${what}: ${error.code === 'EADDRINUSE' ? 'already in use' : error.message}`, {cause: error}))
    }
    server.once('error', onError)
    server.listen(opts, () => {
      server.off('error', onError)
      resolve()
    })
  })
}

/** A socket file left by a daemon that died is removed; one that answers means a daemon is running. */
async function removeStaleSocket(path: string): Promise<void> {
  const alive = await new Promise<boolean | 'missing'>((resolve) => {
    const s = net.connect({path})
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ENOENT' ? 'missing' : false))
  })
  if (alive === true) throw new DivertError('LISTEN_FAILED', `another divert daemon is already listening on ${path}: stop it, or give this one another --admin path`)
  if (alive !== false) return
  if (!lstatSync(path).isSocket()) throw new DivertError('LISTEN_FAILED', `${path} exists and is not a socket: give the admin socket another path`)
  unlinkSync(path)
}
