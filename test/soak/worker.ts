/**
 * The soak's load, one role per child process (each process has its own open-files limit, and the
 * daemon needs most of one for itself): `backends` (TCP echo servers prod and staging, a UDP echo),
 * `tcp` (N held connections, each pinged now and then, every byte counted both ways) and `udp`
 * (M flows kept alive by a datagram every few seconds). The parent drives them over the IPC channel.
 *
 *   soak.ts ─fork─▶ worker backends | tcp | udp ─IPC stats─▶ soak.ts
 */
import net from 'node:net'
import dgram from 'node:dgram'
import {once} from 'node:events'

export type ToWorker =
  | {type: 'open'; port: number; count: number; sources: string[]; pingEveryMs: number}
  | {type: 'stats'}
  | {type: 'leave'}

export interface WorkerStats {
  open: number
  opened: number
  failed: number
  /** Sessions that ended while they should have been held. */
  dropped: number
  sent: number
  received: number
  /** Bytes (TCP) or datagrams (UDP) still owed by the echo when the worker left. */
  missing?: number
}

export type FromWorker =
  | {type: 'ready'; ports?: {prod: number; staging: number; udp: number}}
  | {type: 'opened'; stats: WorkerStats}
  | {type: 'stats'; stats: WorkerStats}
  | {type: 'left'; stats: WorkerStats}

const CONCURRENCY = 128

function send(m: FromWorker): void {
  process.send!(m)
}

/** Runs `jobs` at most `limit` at a time. */
async function pool(count: number, limit: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({length: Math.min(limit, count)}, async () => {
    while (next < count) await job(next++)
  }))
}

async function backends(): Promise<void> {
  const sockets = new Set<net.Socket>()
  const tcp = async (name: string): Promise<number> => {
    const server = net.createServer({noDelay: true}, (s) => {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => undefined)
      s.write(`${name}\n`)
      s.pipe(s)
    })
    server.listen({port: 0, host: '127.0.0.1', backlog: 4096})
    await once(server, 'listening')
    return (server.address() as net.AddressInfo).port
  }
  const udp = dgram.createSocket('udp4')
  udp.on('message', (msg, rinfo) => udp.send(msg, rinfo.port, rinfo.address))
  udp.on('error', () => undefined)
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve))
  udp.setRecvBufferSize(8 * 1024 * 1024)
  send({type: 'ready', ports: {prod: await tcp('prod'), staging: await tcp('staging'), udp: udp.address().port}})
}

/** N held TCP sessions; every byte sent must come back, after the backend's greeting line. */
function tcpClients(): void {
  const live = new Set<net.Socket>()
  const stats: WorkerStats = {open: 0, opened: 0, failed: 0, dropped: 0, sent: 0, received: 0}
  let leaving = false
  let greetings = 0
  let pinger: NodeJS.Timeout | undefined

  const openOne = (port: number, localAddress: string): Promise<void> => new Promise((resolve) => {
    const s = net.connect({port, host: '127.0.0.1', localAddress, noDelay: true})
    let greeted = false
    s.on('data', (c: Buffer) => {
      stats.received += c.length
      if (!greeted) {
        greeted = true
        greetings += c.indexOf(10) + 1
        resolve()
      }
    })
    s.once('connect', () => {
      live.add(s)
      stats.opened++
    })
    s.on('error', () => undefined)
    s.once('close', () => {
      if (!greeted) {
        stats.failed++
        resolve()
      } else if (!leaving) stats.dropped++
      live.delete(s)
    })
  })

  const ping = (everyMs: number): void => {
    // Each second, the share of sessions that makes each one speak once per `everyMs`.
    const share = Math.max(1, Math.ceil(live.size / (everyMs / 1000)))
    let i = 0
    for (const s of live) {
      if (i++ >= share) break
      live.delete(s)
      live.add(s) // to the back: round robin over the set's order
      s.write('ping\n')
      stats.sent += 5
    }
  }

  process.on('message', async (m: ToWorker) => {
    if (m.type === 'open') {
      await pool(m.count, CONCURRENCY, (i) => openOne(m.port, m.sources[i % m.sources.length]))
      pinger = setInterval(() => ping(m.pingEveryMs), 1000)
      send({type: 'opened', stats: {...stats, open: live.size}})
    } else if (m.type === 'stats') {
      send({type: 'stats', stats: {...stats, open: live.size}})
    } else if (m.type === 'leave') {
      clearInterval(pinger)
      // Let the last pings come back before counting what is missing.
      await new Promise((r) => setTimeout(r, 2000))
      leaving = true
      const missing = stats.sent + greetings - stats.received
      for (const s of live) s.end()
      send({type: 'left', stats: {...stats, open: live.size, missing}})
    }
  })
  send({type: 'ready'})
}

/** M UDP flows, one socket each; a datagram every `pingEveryMs` keeps each flow inside the idle timeout. */
function udpClients(): void {
  const sockets: dgram.Socket[] = []
  const stats: WorkerStats = {open: 0, opened: 0, failed: 0, dropped: 0, sent: 0, received: 0}
  let port = 0
  let pinger: NodeJS.Timeout | undefined
  let cursor = 0

  const openOne = async (localAddress: string): Promise<void> => {
    const s = dgram.createSocket('udp4')
    s.on('error', () => undefined)
    await new Promise<void>((resolve) => s.bind(0, localAddress, resolve))
    const answered = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 3000)
      s.once('message', () => {
        clearTimeout(timer)
        resolve(true)
      })
    })
    s.on('message', () => stats.received++)
    s.send('hello', port, '127.0.0.1')
    stats.sent++
    if (await answered) {
      sockets.push(s)
      stats.opened++
    } else {
      stats.failed++
      s.close()
    }
  }

  process.on('message', async (m: ToWorker) => {
    if (m.type === 'open') {
      port = m.port
      await pool(m.count, CONCURRENCY, (i) => openOne(m.sources[i % m.sources.length]))
      pinger = setInterval(() => {
        const share = Math.max(1, Math.ceil(sockets.length / (m.pingEveryMs / 1000)))
        for (let k = 0; k < share && sockets.length > 0; k++) {
          sockets[cursor++ % sockets.length].send('ping', port, '127.0.0.1')
          stats.sent++
        }
      }, 1000)
      send({type: 'opened', stats: {...stats, open: sockets.length}})
    } else if (m.type === 'stats') {
      send({type: 'stats', stats: {...stats, open: sockets.length}})
    } else if (m.type === 'leave') {
      clearInterval(pinger)
      await new Promise((r) => setTimeout(r, 2000))
      const missing = stats.sent - stats.received
      for (const s of sockets) s.close()
      send({type: 'left', stats: {...stats, open: 0, missing}})
    }
  })
  send({type: 'ready'})
}

const role = process.argv[2]
if (role === 'backends') await backends()
else if (role === 'tcp') tcpClients()
else if (role === 'udp') udpClients()
else throw new Error(`unknown soak worker role ${role}`)
