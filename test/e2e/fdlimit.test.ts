/**
 * `divert start` under a low open-files limit (prlimit --nofile=256:256): more clients than fit are
 * refused before the descriptors run out, counted and logged, and the operator's CLI still works.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {spawnSync} from 'node:child_process'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {spawnDaemon, tempDir} from '../helpers/daemon.js'
import {startServer, freePort} from '../helpers/servers.js'
import {cli, httpRequest, parseMetrics, rawHttp} from './harness.js'

const LIMIT = 256
const CLIENTS = 400
const hasPrlimit = spawnSync('prlimit', ['--version']).status === 0

/** Connects and waits for the backend's greeting (admitted) or the daemon's close (refused). */
function client(port: number): Promise<{socket: net.Socket; admitted: boolean}> {
  return new Promise((resolve) => {
    const socket = net.connect({port, host: '127.0.0.1'})
    socket.on('error', () => undefined)
    socket.once('data', () => resolve({socket, admitted: true}))
    socket.once('close', () => resolve({socket, admitted: false}))
  })
}

test('issue 11.9: at the open-files limit clients are refused, counted and logged, and divert list/add still work', {skip: hasPrlimit ? false : 'needs prlimit (util-linux)'}, async (t) => {
  const {dir, cleanup} = tempDir('divert-e2e-fd-')
  const prod = await startServer('prod')
  const port = await freePort()
  const file = join(dir, 'divert.yaml')
  writeFileSync(file, `listeners:\n  - { name: main, bind: "127.0.0.1:${port}", backend: prod }\nbackends:\n  prod: { servers: [ { address: "${prod.address}" } ] }\n`)
  const admin = join(dir, 'admin.sock')
  const daemon = await spawnDaemon(file, {admin, dir, wrapper: ['prlimit', `--nofile=${LIMIT}:${LIMIT}`]})
  const clients: net.Socket[] = []
  t.after(async () => {
    for (const s of clients) s.destroy()
    await daemon.stop('SIGKILL')
    await prod.close()
    cleanup()
  })
  const start = daemon.logs.find((l) => l.openFiles !== undefined)!
  assert.equal(start.openFiles, LIMIT)
  // Batches of 50, all held open: the admitted ones fill the session budget.
  let admitted = 0
  for (let i = 0; i < CLIENTS; i += 50) {
    const batch = await Promise.all(Array.from({length: 50}, () => client(port)))
    for (const c of batch) {
      clients.push(c.socket)
      if (c.admitted) admitted++
    }
  }
  const list = await cli(['list', '--json', '--admin', admin])
  assert.equal(list.code, 0, `divert list at the limit: ${list.stderr}`)
  const add = await cli(['add', '127.0.0.9', '--to', 'prod', '--admin', admin])
  assert.equal(add.code, 0, `divert add at the limit: ${add.stderr}`)

  const metrics = parseMetrics((await rawHttp({path: admin}, httpRequest('GET', '/metrics'))).body)
  assert.equal(metrics.get('divert_sessions_refused_total{listener="main"}'), CLIENTS - admitted)
  assert.equal(admitted, start.tcpSessions, `as many clients admitted as the start line said fit (${start.tcpSessions})`)
  const line = await daemon.waitForLog((l) => l.msg === 'session refused')
  assert.match(line.reason, /open-files limit/)
})
