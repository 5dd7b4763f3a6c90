/**
 * Free loopback ports for the processes the bench starts: the kernel picks one (bind to port 0), the
 * port is checked free for both TCP and UDP (the proxies bind the same number on either), released,
 * and never handed out twice in one bench.
 */
import {createServer} from 'node:net'
import {createSocket} from 'node:dgram'

const HOST = '127.0.0.1'

function kernelTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, HOST, () => {
      const {port} = srv.address() as {port: number}
      srv.close(() => resolve(port))
    })
  })
}

function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket('udp4')
    s.once('error', () => { s.close(); resolve(false) })
    s.bind(port, HOST, () => s.close(() => resolve(true)))
  })
}

export class PortPool {
  private readonly given = new Set<number>()

  async take(): Promise<number> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const port = await kernelTcpPort()
      if (this.given.has(port) || !(await udpFree(port))) continue
      this.given.add(port)
      return port
    }
    throw new RangeError('no loopback port free for both TCP and UDP after 50 tries')
  }
}
