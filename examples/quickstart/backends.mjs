#!/usr/bin/env node
// Three loopback echo backends for the quickstart: prod-1 (127.0.0.1:7101, TCP and UDP),
// prod-2 (127.0.0.1:7102) and staging (127.0.0.1:7201, expects a PROXY v2 header and says which
// client divert told it about). Each answers every line with "[name] line".
import net from 'node:net'
import dgram from 'node:dgram'
import {decodeProxyHeader} from '../../dist/src/backends/proxy-protocol.js'

const backends = [
  {name: 'prod-1', port: 7101, udp: true},
  {name: 'prod-2', port: 7102},
  {name: 'staging', port: 7201, proxyProtocol: true},
]

function serve(socket, name, client) {
  socket.write(`[${name}] hello ${client}\n`)
  let pending = ''
  socket.on('data', (chunk) => {
    pending += chunk.toString('utf8')
    let i
    while ((i = pending.indexOf('\n')) >= 0) {
      socket.write(`[${name}] ${pending.slice(0, i)}\n`)
      pending = pending.slice(i + 1)
    }
  })
}

export async function startBackends(log = console.log) {
  const closers = []
  for (const b of backends) {
    const server = net.createServer((socket) => {
      socket.on('error', () => undefined)
      const peer = `${socket.remoteAddress}:${socket.remotePort}`
      if (!b.proxyProtocol) return serve(socket, b.name, peer)
      let buf = Buffer.alloc(0)
      const onData = (chunk) => {
        buf = Buffer.concat([buf, chunk])
        let h
        try {
          h = decodeProxyHeader(buf)
        } catch (error) {
          socket.end(`[${b.name}] bad PROXY header: ${error.message}\n`)
          return
        }
        if (!h) return
        socket.off('data', onData)
        const rest = buf.subarray(h.length)
        if (rest.length > 0) socket.unshift(rest)
        serve(socket, b.name, `${h.source?.address}:${h.source?.port} (from the PROXY v2 header)`)
      }
      socket.on('data', onData)
    })
    await new Promise((resolve, reject) => server.once('error', reject).listen(b.port, '127.0.0.1', resolve))
    closers.push(() => server.close())
    if (b.udp) {
      const udp = dgram.createSocket('udp4')
      udp.on('message', (msg, rinfo) => udp.send(`[${b.name}] ${msg.toString('utf8').trimEnd()}\n`, rinfo.port, rinfo.address))
      await new Promise((resolve) => udp.bind(b.port, '127.0.0.1', resolve))
      closers.push(() => udp.close())
    }
    log(`backend ${b.name} listening on 127.0.0.1:${b.port}${b.udp ? ' (tcp and udp)' : ''}`)
  }
  return () => closers.forEach((c) => c())
}

if (import.meta.url === `file://${process.argv[1]}`) await startBackends()
