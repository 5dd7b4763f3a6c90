/**
 * The system calls Node does not expose, through koffi (an FFI whose npm package carries prebuilt
 * binaries, so nothing is compiled at install): socket options such as IP_TRANSPARENT and SO_MARK,
 * binding a socket before Node takes it over, and raw syscall(2) for bpf(2).
 *
 *   caller ─open/setInt/bind…─▶ libc (koffi, loaded on first use) ─▶ kernel
 *
 * koffi is loaded lazily: the CLI and a daemon that needs none of this never pay for it. Every call
 * that fails throws a SysError whose `code` is the errno name (EPERM, EADDRINUSE…), as Node's own
 * errors have, so callers and messages treat both alike.
 */
import {createRequire} from 'node:module'
import os from 'node:os'
import {isIP} from 'node:net'

export const AF_INET = 2
export const AF_INET6 = 10
export const SOCK_STREAM = 1
export const SOCK_DGRAM = 2
const SOCK_NONBLOCK = 0o4000
const SOCK_CLOEXEC = 0o2000000

export const SOL_SOCKET = 1
export const SO_REUSEADDR = 2
export const SO_MARK = 36
export const SOL_IP = 0
export const IP_TRANSPARENT = 19
export const IP_RECVORIGDSTADDR = 20
export const SOL_IPV6 = 41
export const IPV6_TRANSPARENT = 75
export const IPV6_RECVORIGDSTADDR = 74
export const IPPROTO_TCP = 6
export const TCP_INFO = 11
export const SO_RCVLOWAT = 18
export const SO_COOKIE = 57
export const SO_LINGER = 13
/** ioctl(2) requests of tcp(7): unread bytes in the receive queue, unsent+unacked in the send queue. */
export const SIOCINQ = 0x541b
export const SIOCOUTQ = 0x5411

/** syscall numbers for x86_64 and aarch64 (the only architectures koffi's prebuilt set and divert target). */
export const SYS_bpf = process.arch === 'arm64' ? 280 : 321

export class SysError extends Error {
  constructor(readonly syscall: string, readonly errno: number, readonly code: string) {
    super(`${syscall}: ${code} (${os.constants.errno ? describeErrno(errno) : errno})`)
    this.name = 'SysError'
  }
}

interface Libc {
  socket(domain: number, type: number, protocol: number): number
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number
  getsockopt(fd: number, level: number, name: number, value: Buffer, len: Buffer): number
  bind(fd: number, addr: Buffer, len: number): number
  close(fd: number): number
  syscall(nr: number, a: number, b: Buffer | null, c: number): number
  ioctl(fd: number, request: number, arg: Buffer): number
  recv(fd: number, buf: Buffer, len: number, flags: number): number
  address(b: Buffer): bigint
  errno(): number
}

let loaded: Libc | undefined

/** libc through koffi, loaded once. Throws a plain Error naming the cause if koffi cannot load. */
export function libc(): Libc {
  if (loaded) return loaded
  const require = createRequire(import.meta.url)
  const koffi = require('koffi') as typeof import('koffi')
  const lib = koffi.load('libc.so.6')
  loaded = {
    socket: lib.func('int socket(int, int, int)'),
    setsockopt: lib.func('int setsockopt(int, int, int, const void *, uint32_t)'),
    getsockopt: lib.func('int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)'),
    bind: lib.func('int bind(int, const void *, uint32_t)'),
    close: lib.func('int close(int)'),
    // syscall(2) is variadic; bpf(2) takes (cmd, union bpf_attr *, size).
    syscall: lib.func('long syscall(long, long, void *, long)'),
    ioctl: lib.func('int ioctl(int, unsigned long, _Out_ void *)'),
    recv: lib.func('long recv(int, _Out_ void *, size_t, int)'),
    // bpf(2) attributes carry user pointers as u64: Buffers' backing stores do not move.
    address: (b: Buffer) => koffi.address(b) as bigint,
    errno: () => koffi.errno(),
  } as Libc
  return loaded
}

function check(syscall: string, rc: number): number {
  if (rc >= 0) return rc
  const errno = libc().errno()
  throw new SysError(syscall, errno, errnoName(errno))
}

/** A new non-blocking, close-on-exec socket. */
export function openSocket(family: 4 | 6, type: typeof SOCK_STREAM | typeof SOCK_DGRAM): number {
  return check('socket', libc().socket(family === 6 ? AF_INET6 : AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0))
}

export function setIntOption(fd: number, level: number, name: number, value: number, what = 'setsockopt'): void {
  const b = Buffer.alloc(4)
  b.writeInt32LE(value)
  check(what, libc().setsockopt(fd, level, name, b, 4))
}

/** SO_LINGER on with a zero timeout (struct linger {1, 0}, socket(7)): close(2) then sends a reset and drops unsent data. */
export function setLingerZero(fd: number): void {
  const b = Buffer.alloc(8)
  b.writeInt32LE(1, 0)
  check('setsockopt(SO_LINGER)', libc().setsockopt(fd, SOL_SOCKET, SO_LINGER, b, 8))
}

/** The descriptor of a Node socket, from its handle (libuv's uv_fileno); undefined once closed. */
export function fdOf(s: object): number | undefined {
  const fd = (s as unknown as {_handle?: {fd?: number}})._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/** getsockopt into a buffer of `size` bytes; returns the bytes the kernel filled. */
export function getOption(fd: number, level: number, name: number, size: number, what = 'getsockopt'): Buffer {
  const out = Buffer.alloc(size)
  const len = Buffer.alloc(4)
  len.writeUInt32LE(size)
  check(what, libc().getsockopt(fd, level, name, out, len))
  return out.subarray(0, len.readUInt32LE())
}

export function bindSocket(fd: number, address: string, port: number): void {
  const addr = sockaddr(address, port)
  check(`bind ${address.includes(':') ? `[${address}]` : address}:${port}`, libc().bind(fd, addr, addr.length))
}

/**
 * A socket bound to `address:port` with IP_TRANSPARENT (ip(7)) / IPV6_TRANSPARENT (ipv6(7)) set
 * first, so it may bind an address that is not local and, once TPROXY steers packets to it, accept
 * connections and datagrams addressed to any destination. SO_REUSEADDR as Node sets it on its own
 * listeners. Needs CAP_NET_ADMIN (or CAP_NET_RAW). Returns the fd for `listen({fd})` or
 * `bind({fd})`; on failure the fd is closed and the SysError thrown.
 */
export function openTransparent(type: typeof SOCK_STREAM | typeof SOCK_DGRAM, address: string, port: number): number {
  const family = address.includes(':') ? 6 : 4
  const fd = openSocket(family, type)
  try {
    setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
    if (family === 6) setIntOption(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, 'setsockopt IPV6_TRANSPARENT')
    else setIntOption(fd, SOL_IP, IP_TRANSPARENT, 1, 'setsockopt IP_TRANSPARENT')
    bindSocket(fd, address, port)
    return fd
  } catch (error) {
    closeFd(fd)
    throw error
  }
}

export function closeFd(fd: number): void {
  libc().close(fd)
}

/** bpf(2): returns the syscall's result (an fd for the *_CREATE and PROG_LOAD commands). */
export function bpf(cmd: number, attr: Buffer, what = `bpf(${cmd})`): number {
  return check(what, libc().syscall(SYS_bpf, cmd, attr, attr.length))
}

/** The address of a Buffer's bytes, for the pointer fields of bpf(2) attributes. */
export function addressOf(b: Buffer): bigint {
  return libc().address(b)
}

/** An ioctl(2) whose result is an int written through the pointer (SIOCINQ, SIOCOUTQ). */
export function ioctlInt(fd: number, request: number, what = 'ioctl'): number {
  const out = Buffer.alloc(4)
  check(what, libc().ioctl(fd, request, out))
  return out.readInt32LE()
}

const MSG_DONTWAIT = 0x40

/**
 * recv(2) without blocking into `buf`: the bytes read (0 at end of stream), or -1 when there is
 * nothing to read now (EAGAIN).
 */
export function recvNow(fd: number, buf: Buffer): number {
  const n = libc().recv(fd, buf, buf.length, MSG_DONTWAIT)
  if (n >= 0) return n
  const errno = libc().errno()
  if (errno === os.constants.errno.EAGAIN) return -1
  throw new SysError('recv', errno, errnoName(errno))
}

/** struct sockaddr_in / sockaddr_in6 (ip(7), ipv6(7)): family in host order, port and address in network order. */
export function sockaddr(address: string, port: number): Buffer {
  const family = isIP(address)
  if (family === 4) {
    const b = Buffer.alloc(16)
    b.writeUInt16LE(AF_INET, 0)
    b.writeUInt16BE(port, 2)
    address.split('.').forEach((o, i) => b.writeUInt8(Number(o), 4 + i))
    return b
  }
  if (family === 6) {
    const b = Buffer.alloc(28)
    b.writeUInt16LE(AF_INET6, 0)
    b.writeUInt16BE(port, 2)
    ipv6Bytes(address).copy(b, 8)
    return b
  }
  throw new Error(`not an IP address: ${address}`)
}

/** The 16 bytes of an IPv6 address (with :: and a dotted IPv4 tail expanded). */
export function ipv6Bytes(address: string): Buffer {
  let a = address.replace(/%.*$/, '')
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(a)
  if (v4) {
    const o = v4[1].split('.').map(Number)
    a = a.slice(0, -v4[1].length) + `${((o[0] << 8) | o[1]).toString(16)}:${((o[2] << 8) | o[3]).toString(16)}`
  }
  const [head, tail] = a.split('::')
  const h = head ? head.split(':') : []
  const t = tail === undefined ? [] : tail ? tail.split(':') : []
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  const b = Buffer.alloc(16)
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2))
  return b
}

const names = new Map<number, string>(Object.entries(os.constants.errno).map(([k, v]) => [v, k]))

export function errnoName(errno: number): string {
  return names.get(errno) ?? `errno ${errno}`
}

function describeErrno(errno: number): string {
  const name = names.get(errno)
  if (!name) return `errno ${errno}`
  return name === 'EPERM' || name === 'EACCES' ? 'needs root or CAP_NET_ADMIN' : `errno ${errno}`
}
