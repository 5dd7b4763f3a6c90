#!/usr/bin/env node
// Loopback echo backends for the quickstart, at the server addresses the config names (by default
// examples/quickstart/divert.yaml: prod-1 on 127.0.0.1:7101, TCP and UDP; prod-2 on 127.0.0.1:7102;
// staging on 127.0.0.1:7201, which expects a PROXY v2 header and says which client divert told it
// about). Each answers every line with "[name] line". Change a port in the config and the echo
// backend follows it.
//   node examples/quickstart/backends.mjs [-c CONFIG]
import net from 'node:net'
import dgram from 'node:dgram'
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'
import {parseConfig} from '../../dist/src/config/load.js'
import {decodeProxyHeader} from '../../dist/src/backends/proxy-protocol.js'

export const defaultConfig = fileURLToPath(new URL('./divert.yaml', import.meta.url))

/** A port of the quickstart is in use: `message` is the one line to show. */
export class PortTakenError extends Error {}

/**
 * One echo backend per server address of the config: named after the first backend that lists it
 * ("prod-1", "prod-2" for a backend with several servers, "staging" for one), speaking PROXY v2 when
 * that backend sends it, and answering UDP too when a udp listener sends to that backend.
 */
export function echoBackends(configFile) {
  const config = parseConfig(readFileSync(configFile, 'utf8'), configFile)
  const udpBackends = new Set(config.listeners.filter((l) => l.protocol === 'udp').map((l) => l.backend))
  const byAddress = new Map()
  for (const b of config.backends.values()) {
    b.servers.forEach((s, i) => {
      const key = `${s.address.address}:${s.address.port}`
      const echo = byAddress.get(key) ?? {name: b.servers.length > 1 ? `${b.name}-${i + 1}` : b.name, host: s.address.address, port: s.address.port, udp: false, proxyProtocol: false}
      echo.udp ||= udpBackends.has(b.name)
      echo.proxyProtocol ||= b.proxyProtocol === 'v2'
      byAddress.set(key, echo)
    })
  }
  return [...byAddress.values()]
}

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

function onConnection(b) {
  return (socket) => {
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
  }
}

/** Binds, turning "address in use" into a PortTakenError that says which port and how to change it. */
function bound(what, b, configFile, bind) {
  return new Promise((resolve, reject) => bind(resolve, (error) => {
    if (error.code !== 'EADDRINUSE') return reject(error)
    reject(new PortTakenError(`quickstart: ${what} port ${b.port} on ${b.host} (echo backend ${b.name}) is taken by another program; ` +
      `free it, or change that server's port in ${configFile} (the echo backends follow the config)`))
  }))
}

/**
 * Checks that divert's listener ports are free before divert starts, so a taken one gets the same
 * one-line answer as a backend's (divert itself would also refuse, exit 4, without the hint).
 */
export async function checkListenerPorts(configFile = defaultConfig) {
  const config = parseConfig(readFileSync(configFile, 'utf8'), configFile)
  for (const l of config.listeners) {
    const {address: host, port} = l.bind
    await new Promise((resolve, reject) => {
      const taken = () => reject(new PortTakenError(`quickstart: ${l.protocol.toUpperCase()} port ${port} on ${host} (divert listener ${l.name}) is taken by another program; ` +
        `free it, or change listeners[].bind of ${l.name} in ${configFile} and pass --port to client.mjs`))
      const onError = (error) => (error.code === 'EADDRINUSE' ? taken() : reject(error))
      if (l.protocol === 'udp') {
        const s = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4')
        s.once('error', onError).bind(port, host, () => s.close(resolve))
      } else {
        const s = net.createServer()
        s.once('error', onError).listen(port, host, () => s.close(resolve))
      }
    })
  }
}

/** Starts the echo backends of `configFile`; resolves to a function that closes them all. */
export async function startBackends(configFile = defaultConfig, log = console.log) {
  const closers = []
  const closeAll = () => closers.forEach((c) => c())
  try {
    for (const b of echoBackends(configFile)) {
      const server = net.createServer(onConnection(b))
      await bound('TCP', b, configFile, (ok, fail) => server.once('error', fail).listen(b.port, b.host, ok))
      closers.push(() => server.close())
      if (b.udp) {
        const udp = dgram.createSocket(net.isIPv6(b.host) ? 'udp6' : 'udp4')
        udp.on('message', (msg, rinfo) => udp.send(`[${b.name}] ${msg.toString('utf8').trimEnd()}\n`, rinfo.port, rinfo.address))
        await bound('UDP', b, configFile, (ok, fail) => udp.once('error', fail).bind(b.port, b.host, ok))
        closers.push(() => udp.close())
      }
      log(`backend ${b.name} listening on ${b.host}:${b.port}${b.udp ? ' (tcp and udp)' : ''}`)
    }
  } catch (error) {
    closeAll()
    throw error
  }
  return closeAll
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const {values} = parseArgs({options: {config: {type: 'string', short: 'c', default: defaultConfig}}})
  await startBackends(values.config).catch((error) => {
    if (!(error instanceof PortTakenError)) throw error
    console.error(error.message)
    process.exit(1)
  })
}
