/**
 * Opening the file a recording writes to, so that whoever names the path (anyone with the admin API;
 * the daemon may run as root) can make divert create a new file or continue one of its own
 * recordings — and nothing else: never write into, block on, chmod or truncate anything else.
 *
 *   path ─▶ every directory on it real (no symlink) ─▶ O_CREAT|O_EXCL new file, 0600
 *                                                   └▶ exists: O_NONBLOCK open, fstat: regular, ours, a divert recording
 *        ─▶ /proc/self/fd/N names the requested path ─▶ write stream (continued after the last whole record)
 *
 * The kernel enforces what matters: O_EXCL|O_NOFOLLOW (open(2)) create only a new file and never
 * through a link, O_NONBLOCK keeps a FIFO or device from blocking the open (fifo(7)), and every check
 * of an existing file is an fstat of the descriptor actually opened, so a swap after the check cannot
 * slip through. A refusal leaves the target exactly as it was: content, mode, owner, times.
 */
import {constants as fsConstants, type Stats} from 'node:fs'
import {lstat, open, readlink, realpath, unlink, type FileHandle} from 'node:fs/promises'
import {basename, dirname, join, sep} from 'node:path'
import type {Writable} from 'node:stream'
import {DivertError} from '../errors.js'
import {PCAP_GLOBAL_HEADER_LEN, PCAP_RECORD_HEADER_LEN, pcapGlobalHeader} from './pcap-writer.js'

export interface OpenedRecordingFile {
  stream: Writable
  /** Bytes of recording already in the file (0 for a new file, which still needs its header). */
  resumeAt: number
}

/** libpcap refuses records longer than this (MAXIMUM_SNAPLEN in pcap-int.h): past it, the rest is not ours. */
const MAX_RECORD_DATA = 262_144

const {O_CREAT, O_EXCL, O_NOFOLLOW, O_WRONLY, O_RDWR, O_NONBLOCK, O_NOCTTY} = fsConstants

const refuse = (path: string, why: string): DivertError => new DivertError('RECORD_FAILED', `cannot record to ${path}: ${why}`)

/** Opens `path` (absolute and normalised) for a recording, or refuses with RECORD_FAILED saying why. */
export async function openRecordingFile(path: string): Promise<OpenedRecordingFile> {
  await checkDirectories(path)
  const created = await createNew(path)
  if (created) {
    await checkOpenedPath(created, path, true)
    return {stream: created.createWriteStream(), resumeAt: 0}
  }
  const fh = await openExisting(path)
  try {
    await checkOpenedPath(fh, path, false)
    const resumeAt = await ownRecordingEnd(fh, path)
    // A crash mid-write can leave part of a record: cut it, or readers see a truncated file.
    await fh.truncate(resumeAt)
    return {stream: fh.createWriteStream({start: resumeAt}), resumeAt}
  } catch (err) {
    await fh.close()
    throw err
  }
}

/**
 * Every directory on the path must exist and be a real directory: O_NOFOLLOW guards only the last
 * component, and a symlinked directory would let the path lead anywhere. The check after the open
 * (checkOpenedPath) is the one that cannot race; this one gives the clear message and avoids creating
 * a file through a link in the first place.
 */
async function checkDirectories(path: string): Promise<void> {
  const parts = dirname(path).split(sep).filter((p) => p !== '')
  for (let i = 1; i <= parts.length; i++) {
    const dir = sep + parts.slice(0, i).join(sep)
    const st = await lstat(dir).catch(() => undefined)
    if (!st) throw refuse(path, `directory ${dir} does not exist; create it or choose another --record path`)
    if (st.isSymbolicLink()) {
      const real = await realpath(dirname(path)).catch(() => undefined)
      const hint = real ? `, e.g. ${join(real, basename(path))}` : ''
      throw refuse(path, `${dir} is a symbolic link (to ${await readlink(dir)}); give a path without symbolic links${hint}`)
    }
    if (!st.isDirectory()) throw refuse(path, `${dir} is not a directory`)
  }
}

/** A new file, owner-only from birth (no chmod needed, umask can only narrow it); undefined when the name exists. */
async function createNew(path: string): Promise<FileHandle | undefined> {
  try {
    return await open(path, O_CREAT | O_EXCL | O_NOFOLLOW | O_WRONLY | O_NOCTTY, 0o600)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return undefined
    throw osError(path, err)
  }
}

/**
 * Opens what is already at `path` without following a link, blocking (a FIFO with no reader, a tape)
 * or taking a terminal. lstat first, so a device or FIFO is normally refused without being opened at
 * all; the fstat in ownRecordingEnd is what holds if the name changes in between.
 */
async function openExisting(path: string): Promise<FileHandle> {
  const st = await lstat(path).catch(() => undefined)
  if (st && !st.isFile()) throw refuse(path, notRegular(st))
  try {
    return await open(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ELOOP') throw refuse(path, 'it is a symbolic link; give the real path')
    throw osError(path, err)
  }
}

/** EACCES, EROFS, ENOSPC…: the system's word for it, and what to check. */
function osError(path: string, err: unknown): DivertError {
  return new DivertError('RECORD_FAILED', `cannot record to ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'} (${(err as Error).message}); check the path and its permissions`, {cause: err})
}

function notRegular(st: Stats): string {
  const what = st.isSymbolicLink() ? 'a symbolic link' : st.isFIFO() ? 'a FIFO' : st.isBlockDevice() ? 'a block device'
    : st.isCharacterDevice() ? 'a character device' : st.isSocket() ? 'a socket' : st.isDirectory() ? 'a directory' : 'not a regular file'
  return `it is ${what}; a recording must be a regular file: choose a new file name and divert creates it`
}

/**
 * The descriptor must name exactly the requested path: the kernel's own name for it
 * (/proc/self/fd/N, proc(5)) differs when a directory on the way was a symlink at open time. Without
 * /proc the component check before the open stands. A file we created through such a path is removed.
 */
async function checkOpenedPath(fh: FileHandle, path: string, created: boolean): Promise<void> {
  const real = await readlink(`/proc/self/fd/${fh.fd}`).catch(() => undefined)
  if (real === undefined || real === path) return
  await fh.close()
  if (created) await unlink(real).catch(() => undefined)
  throw refuse(path, `a directory on the path is a symbolic link (the file is really ${real}); give a path without symbolic links`)
}

/**
 * Where the existing recording ends, after checking with fstat that the descriptor is a regular file
 * owned by the daemon's user that starts with our exact 24-byte header; anything else is refused
 * before a byte of it is read or changed.
 */
async function ownRecordingEnd(fh: FileHandle, path: string): Promise<number> {
  const st = await fh.stat()
  if (!st.isFile()) throw refuse(path, notRegular(st))
  const uid = process.geteuid?.()
  if (uid !== undefined && st.uid !== uid) {
    throw refuse(path, `it exists and is owned by uid ${st.uid}, not by the daemon's user (uid ${uid}); refusing to touch it — choose a new file name`)
  }
  const head = Buffer.alloc(PCAP_GLOBAL_HEADER_LEN)
  const ours = st.size >= head.length && (await fh.read(head, 0, head.length, 0)).bytesRead === head.length && head.equals(pcapGlobalHeader())
  if (!ours) {
    throw refuse(path, `it exists and is not a divert recording${st.size === 0 ? ' (it is empty)' : ''}: refusing to overwrite it — choose a new file name or delete it`)
  }
  return walkRecords(fh, st.size)
}

/**
 * Follows the record headers' lengths (pcap-savefile(5)) from the file header to the last record
 * that is whole, reading through a 1 MiB buffer: a 100 MiB file costs about a hundred reads.
 */
async function walkRecords(fh: FileHandle, size: number): Promise<number> {
  const buf = Buffer.alloc(1024 * 1024)
  let pos = PCAP_GLOBAL_HEADER_LEN
  let bufStart = 0
  let bufLen = 0
  while (pos + PCAP_RECORD_HEADER_LEN <= size) {
    if (pos + PCAP_RECORD_HEADER_LEN > bufStart + bufLen) {
      bufStart = pos
      bufLen = (await fh.read(buf, 0, buf.length, pos)).bytesRead
      if (bufLen < PCAP_RECORD_HEADER_LEN) break
    }
    const caplen = buf.readUInt32LE(pos - bufStart + 8)
    if (caplen > MAX_RECORD_DATA || pos + PCAP_RECORD_HEADER_LEN + caplen > size) break
    pos += PCAP_RECORD_HEADER_LEN + caplen
  }
  return pos
}
