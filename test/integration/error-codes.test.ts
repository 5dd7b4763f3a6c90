/**
 * Error codes that no other test reached (issue 12 item 7): a listener that cannot bind, a state
 * file that cannot be read, an admin API that answers something other than divert JSON. Real sockets
 * and files, in process. (Replay's REPLAY_FAILED: integration/replay.test.ts.)
 */
import {describe, test} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import dgram from 'node:dgram'
import http from 'node:http'
import {once} from 'node:events'
import {mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import pino from 'pino'
import {Daemon} from '../../src/daemon.js'
import {AdminClient} from '../../src/admin/client.js'
import {DivertError} from '../../src/errors.js'
import {tempDir} from '../helpers/daemon.js'

const silent = pino({level: 'silent'})

/** Daemon.start on `yaml` in a fresh temp dir; resolves with the error it fails with (stopping it if it started). */
async function startFails(yaml: (dir: string) => string): Promise<DivertError> {
  const {dir, cleanup} = tempDir('divert-codes-')
  try {
    const configFile = join(dir, 'divert.yaml')
    writeFileSync(configFile, yaml(dir))
    const d = await Daemon.start({configFile, admin: join(dir, 'admin.sock'), logger: silent}).catch((e: unknown) => e)
    if (d instanceof Daemon) {
      await d.stop(0)
      assert.fail('the daemon started')
    }
    assert.ok(d instanceof DivertError, String(d))
    return d
  } finally {
    cleanup()
  }
}

const listenerOn = (bind: string, protocol = 'tcp'): string =>
  `listeners:\n  - { name: main, protocol: ${protocol}, bind: "${bind}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "127.0.0.1:1" } ], health: { check: none } }\n`

describe('issue 12.7: codes no other test reached', () => {
  test('issue 12.7: a TCP or UDP listener on a port in use fails start with DIVERT_ERR_LISTEN_FAILED (exit 4), naming the address', async () => {
    const squatter = net.createServer().listen(0, '127.0.0.1')
    const udpSquatter = dgram.createSocket('udp4').bind(0, '127.0.0.1')
    await Promise.all([once(squatter, 'listening'), once(udpSquatter, 'listening')])
    const port = (squatter.address() as net.AddressInfo).port
    const udpPort = udpSquatter.address().port
    try {
      const tcp = await startFails(() => listenerOn(`127.0.0.1:${port}`))
      assert.equal(tcp.code, 'DIVERT_ERR_LISTEN_FAILED')
      assert.equal(tcp.exitCode, 4)
      assert.match(tcp.message, new RegExp(`listener main cannot bind 127\\.0\\.0\\.1:${port}: the address is already in use`))
      const udp = await startFails(() => listenerOn(`127.0.0.1:${udpPort}`, 'udp'))
      assert.equal(udp.code, 'DIVERT_ERR_LISTEN_FAILED')
      assert.match(udp.message, new RegExp(`listener main cannot bind udp 127\\.0\\.0\\.1:${udpPort}`))
    } finally {
      squatter.close()
      udpSquatter.close()
    }
  })

  test('issue 12.7: a state file that cannot be read (a directory) fails start with DIVERT_ERR_STATE_CORRUPT (exit 4), naming it', async () => {
    const e = await startFails((dir) => {
      mkdirSync(join(dir, 'state.json'))
      return `state: ./state.json\n${listenerOn('127.0.0.1:0')}`
    })
    assert.equal(e.code, 'DIVERT_ERR_STATE_CORRUPT')
    assert.equal(e.exitCode, 4)
    assert.match(e.message, /cannot read state file .*state\.json: EISDIR/)
  })

  test('issue 12.7: an admin API that answers something other than divert JSON is DIVERT_ERR_ADMIN_PROTOCOL (exit 5)', async () => {
    const {dir, cleanup} = tempDir('divert-codes-')
    const answers = ['<html>not divert</html>', '{"truncated": ']
    const server = http.createServer((_req, res) => {
      const body = answers.shift() ?? ''
      res.writeHead(body.startsWith('<') ? 502 : 200, {'content-type': body.startsWith('<') ? 'text/html' : 'application/json'}).end(body)
    })
    const path = join(dir, 'admin.sock')
    server.listen(path)
    await once(server, 'listening')
    const client = new AdminClient(path)
    try {
      for (const what of [/answered HTTP 502: <html>not divert<\/html>/, /sent malformed JSON \(HTTP 200\)/]) {
        await assert.rejects(client.request('GET', '/status'), (e: unknown) => {
          assert.ok(e instanceof DivertError, String(e))
          assert.equal(e.code, 'DIVERT_ERR_ADMIN_PROTOCOL')
          assert.equal(e.exitCode, 5)
          assert.match(e.message, what)
          return true
        })
      }
    } finally {
      await client.close()
      server.close()
      cleanup()
    }
  })
})

