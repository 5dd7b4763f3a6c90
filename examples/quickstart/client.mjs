#!/usr/bin/env node
// A tiny client for the quickstart, standing in for "a device": connects to divert from a chosen
// loopback source address, sends one line and prints what comes back.
//   node examples/quickstart/client.mjs --from 127.0.0.2 [--udp] [--port 7000] [message]
import net from 'node:net'
import dgram from 'node:dgram'
import {parseArgs} from 'node:util'

const {values, positionals} = parseArgs({
  options: {from: {type: 'string', default: '127.0.0.1'}, port: {type: 'string', default: '7000'}, udp: {type: 'boolean', default: false}},
  allowPositionals: true,
})
const message = positionals.join(' ') || 'hello'
const port = Number(values.port)

if (values.udp) {
  const s = dgram.createSocket('udp4')
  s.bind(0, values.from, () => s.send(`${message}\n`, port, '127.0.0.1'))
  s.on('message', (m) => {
    process.stdout.write(m)
    s.close()
  })
  setTimeout(() => {
    console.error('no answer within 2s')
    process.exit(1)
  }, 2000).unref()
} else {
  const s = net.connect({port, host: '127.0.0.1', localAddress: values.from}, () => s.write(`${message}\n`))
  let lines = 0
  s.on('data', (d) => {
    process.stdout.write(d)
    lines += d.toString().split('\n').length - 1
    if (lines >= 2) s.end()
  })
  s.on('error', (e) => {
    console.error(`client: ${e.message}`)
    process.exit(1)
  })
}
