/**
 * The TCP path end to end with real loopback sockets and an in-process daemon: per-source routing,
 * byte integrity, half-close, back-pressure, resets, failover, PROXY headers and drain.
 */
import {test, before, after, describe} from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {execFile, spawn} from 'node:child_process'
import {createInterface} from 'node:readline'
import {randomBytes, createHash} from 'node:crypto'
import {startServer, connect, readBytes, readLine, whoAnswers, closed, until, freePort, type TestServer} from '../helpers/servers.js'
import {startInProcess, type InProcess} from '../helpers/daemon.js'
import {metric, metrics} from '../faults/kit.js'

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

describe('TCP diversion', () => {
  let prod1: TestServer, prod2: TestServer, staging: TestServer, debug: TestServer
  let d: InProcess
  let port: number
  let port6: number

  before(async () => {
    prod1 = await startServer('prod-1')
    prod2 = await startServer('prod-2')
    staging = await startServer('staging')
    debug = await startServer('debug')
    port = await freePort()
    port6 = await freePort('::1')
    d = await startInProcess(`
listeners:
  - { name: main, bind: "127.0.0.1:${port}", backend: prod }
  - { name: v6, bind: "[::1]:${port6}", backend: prod }
backends:
  prod:
    servers: [ { address: "${prod1.address}" }, { address: "${prod2.address}" } ]
  staging: { servers: [ { address: "${staging.address}" } ] }
  debug: { servers: [ { address: "${debug.address}" } ] }
rules:
  - { source: 127.0.0.2, to: staging }
  - { source: 127.0.0.64/26, to: staging }
  - { source: 127.0.0.72/29, to: debug }
  - { source: "::1", to: debug, listener: v6 }
`)
  })

  after(async () => {
    await d?.stop()
    await Promise.all([prod1, prod2, staging, debug].map((s) => s?.close()))
  })

  test('a rule for 127.0.0.2 sends it to staging while 127.0.0.3 reaches prod', async () => {
    assert.equal(await whoAnswers(port, '127.0.0.2'), 'staging')
    const other = await whoAnswers(port, '127.0.0.3')
    assert.match(other, /^prod-[12]$/)
  })

  test('round robin spreads other clients over both prod servers', async () => {
    const seen = new Set<string>()
    for (let i = 0; i < 4; i++) seen.add(await whoAnswers(port, '127.0.0.4'))
    assert.deepEqual([...seen].sort(), ['prod-1', 'prod-2'])
  })

  test('CIDR rules, and the longest prefix wins', async () => {
    assert.equal(await whoAnswers(port, '127.0.0.65'), 'staging') // in /26 only
    assert.equal(await whoAnswers(port, '127.0.0.73'), 'debug') // in /26 and the longer /29
  })

  test('an IPv6 client on a v6 listener matches its listener-scoped rule', async () => {
    assert.equal(await whoAnswers(port6, undefined, '::1'), 'debug')
  })

  test('4 MiB arrive intact in both directions', async () => {
    const payload = randomBytes(4 * 1024 * 1024)
    const s = await connect({port, localAddress: '127.0.0.2'})
    assert.equal(await readLine(s), 'staging')
    const back = readBytes(s, payload.length, 30_000)
    s.write(payload)
    assert.equal(sha(await back), sha(payload))
    s.destroy()
  })

  test('half-close: the client ends, the server still answers', async () => {
    const answering = await startServer('late', (socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (c) => chunks.push(c))
      socket.on('end', () => socket.end(`got ${Buffer.concat(chunks).length} bytes after your FIN`))
    })
    const p = await freePort()
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "${answering.address}" } ] } }
`)
    try {
      const s = await connect({port: p})
      s.end(Buffer.alloc(1000, 1))
      const reply = await readBytes(s, 'got 1000 bytes after your FIN'.length)
      assert.equal(reply.toString(), 'got 1000 bytes after your FIN')
      await closed(s)
      await until(() => h.logs.find('session closed').length === 1, 5000, 'close log')
      const line = h.logs.find('session closed')[0]
      assert.equal(line.cause, 'client-closed')
      assert.equal(line.bytesIn, 1000)
      assert.equal(line.bytesOut, 29)
      assert.equal(line.backend, 'b')
      assert.equal(typeof line.durationMs, 'number')
    } finally {
      await h.stop()
      await answering.close()
    }
  })

  test('a slow reader back-pressures the server instead of growing memory', async () => {
    let written = 0
    let serverSocket: net.Socket | undefined
    const firehose = await startServer('firehose', (socket) => {
      serverSocket = socket
      const chunk = Buffer.alloc(64 * 1024, 7)
      const pump = (): void => {
        while (written < 256 * 1024 * 1024) {
          written += chunk.length
          if (!socket.write(chunk)) return void socket.once('drain', pump)
        }
      }
      pump()
    })
    const p = await freePort()
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "${firehose.address}" } ] } }
`)
    try {
      const s = await connect({port: p})
      s.pause() // never reads
      await until(() => serverSocket !== undefined && serverSocket.writableLength > 0, 10_000, 'server to be blocked')
      // Let the pipeline settle, then check the server stays blocked with a bounded amount in flight.
      let last = -1
      await until(() => {
        const stable = written === last
        last = written
        return stable
      }, 10_000, 'server writes to stop')
      assert.ok(written < 64 * 1024 * 1024, `server wrote ${written} bytes into a client that reads nothing`)
      s.destroy()
    } finally {
      await h.stop()
      await firehose.close()
    }
  })

  test('a backend killed mid-stream resets the client, and the log says why', async () => {
    const doomed = await startServer('doomed', (socket) => {
      // After the write has left: a reset racing its own pending write goes out as a FIN.
      socket.write('partial', () => setTimeout(() => socket.resetAndDestroy(), 20))
    })
    const p = await freePort()
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "${doomed.address}" } ] } }
`)
    try {
      const s = await connect({port: p})
      const result = await closed(s)
      assert.equal(result.error?.code, 'ECONNRESET')
      await until(() => h.logs.find('session closed').length === 1, 5000, 'close log')
      assert.equal(h.logs.find('session closed')[0].cause, 'server-reset')
    } finally {
      await h.stop()
      await doomed.close()
    }
  })

  test('a client reset resets the server side', async () => {
    let serverSide: net.Socket | undefined
    const holder = await startServer('holder', (socket) => {
      serverSide = socket
    })
    const p = await freePort()
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "${holder.address}" } ] } }
`)
    try {
      const s = await connect({port: p})
      await until(() => serverSide !== undefined, 5000, 'server accept')
      const serverClosed = closed(serverSide!)
      s.resetAndDestroy()
      const r = await serverClosed
      assert.equal(r.error?.code, 'ECONNRESET')
      await until(() => h.logs.find('session closed').length === 1, 5000, 'close log')
      assert.equal(h.logs.find('session closed')[0].cause, 'client-reset')
    } finally {
      await h.stop()
      await holder.close()
    }
  })

  test('connect timeout to a black-holed backend closes the client and logs it', async () => {
    const p = await freePort()
    // A connector whose socket never connects stands in for a backend that never answers SYN.
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "127.0.0.1:9" } ], timeouts: { connect: 300ms }, health: { check: none } } }
`, {connect: () => new net.Socket()})
    try {
      const s = await connect({port: p})
      await closed(s)
      await until(() => h.logs.find('session closed').length === 1, 5000, 'close log')
      assert.equal(h.logs.find('session closed')[0].cause, 'connect-timeout')
    } finally {
      await h.stop()
    }
  })
})

describe('failover and PROXY protocol', () => {
  test('staging down: the client goes to the default backend with a warning; fallback reject refuses', async () => {
    const prod = await startServer('prod')
    const deadPort = await freePort()
    const p = await freePort()
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: prod } ]
backends:
  prod: { servers: [ { address: "${prod.address}" } ] }
  staging: { servers: [ { address: "127.0.0.1:${deadPort}" } ], health: { interval: 100ms, timeout: 100ms, rise: 1, fall: 1 } }
  strict: { servers: [ { address: "127.0.0.1:${deadPort}" } ], health: { interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }, fallback: reject }
rules:
  - { source: 127.0.0.2, to: staging }
  - { source: 127.0.0.3, to: strict }
`)
    try {
      await until(() => h.daemon.backends.get('staging')!.servers[0].up === false, 5000, 'staging to be marked down')
      await until(() => h.daemon.backends.get('strict')!.servers[0].up === false, 5000, 'strict to be marked down')
      assert.equal(await whoAnswers(p, '127.0.0.2'), 'prod')
      assert.ok(h.logs.find(/falling back/).length >= 1, 'a fallback warning is logged')
      const s = await connect({port: p, localAddress: '127.0.0.3'})
      await closed(s)
      const refused = h.logs.find('session refused')
      assert.equal(refused.length, 1)
      assert.match(refused[0].reason, /fallback: reject/)
      assert.ok(h.logs.lines.some((l) => l.msg?.includes('down') || l.up === false), 'health change logged')
    } finally {
      await h.stop()
      await prod.close()
    }
  })

  for (const version of ['v1', 'v2'] as const) {
    test(`PROXY ${version}: the backend learns the real IPv4 and IPv6 client`, async () => {
      const backend = await startServer('pp', (socket) => socket.end('ok\n'), {proxyProtocol: true})
      const p4 = await freePort()
      const p6 = await freePort('::1')
      const h = await startInProcess(`
listeners:
  - { name: a, bind: "127.0.0.1:${p4}", backend: b }
  - { name: b6, bind: "[::1]:${p6}", backend: b }
backends: { b: { servers: [ { address: "${backend.address}" } ], proxy_protocol: ${version} } }
`)
      try {
        const s4 = await connect({port: p4, localAddress: '127.0.0.5'})
        const port4 = s4.localPort
        assert.equal(await readLine(s4), 'ok')
        const s6 = await connect({port: p6, host: '::1'})
        const port6 = s6.localPort
        assert.equal(await readLine(s6), 'ok')
        const [h4, h6] = backend.headers
        assert.equal(h4!.version, version === 'v1' ? 1 : 2)
        assert.equal(h4!.source!.address, '127.0.0.5')
        assert.equal(h4!.source!.port, port4)
        assert.equal(h4!.destination!.address, '127.0.0.1')
        assert.equal(h4!.destination!.port, p4)
        assert.equal(h6!.source!.address, '::1')
        assert.equal(h6!.source!.port, port6)
        assert.equal(h6!.destination!.port, p6)
        s4.destroy()
        s6.destroy()
      } finally {
        await h.stop()
        await backend.close()
      }
    })
  }

  test('stop() drains: a live session may finish within the grace period', async () => {
    const slow = await startServer('slow', (socket) => {
      socket.on('data', () => setTimeout(() => socket.end('done\n'), 300))
    })
    const p = await freePort()
    const h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "${slow.address}" } ] } }
`)
    try {
      const s = await connect({port: p})
      s.write('go')
      await until(() => h.daemon.registry.size === 1, 5000, 'session registered')
      const stopping = h.stop(5000)
      const line = await readLine(s)
      assert.equal(line, 'done')
      await stopping
      assert.ok(h.logs.find('session closed').every((l) => l.cause !== 'shutdown'))
      // New connections are refused once stopping began.
      await assert.rejects(connect({port: p}))
    } finally {
      await h.stop()
      await slow.close()
    }
  })
})

// ─── resets with data still buffered (issue 11.1) ────────────────────────────────────────────────

/**
 * A Python peer on both ends, reading with plain blocking recv(): a Node client that paused reading
 * may see 'end' after an RST on loopback, Python's recv() raises ConnectionResetError (docs/FIELD-NOTES.md).
 * Per session: the client sends one byte the server reads (the session is wired), then the `resets`
 * side sends up to 3 MiB (until its buffers are full) and closes with SO_LINGER 0 (an RST) while the
 * other side has read nothing; then the other side reads to the end. One JSON line per session.
 */
const RESET_PEERS = String.raw`
import socket, struct, sys, json, time
resets, n = sys.argv[1], int(sys.argv[2])
ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(16)
print(ls.getsockname()[1], flush=True)
divert_port = int(sys.stdin.readline())
def drain(s):
    s.settimeout(10); got = 0
    try:
        while True:
            b = s.recv(65536)
            if not b: return 'eof', got
            got += len(b)
    except ConnectionResetError: return 'reset', got
    except socket.timeout: return 'timeout', got
for i in range(n):
    c = socket.socket(); c.bind(('127.0.0.21', 0)); c.connect(('127.0.0.1', divert_port))
    client = '127.0.0.21:%d' % c.getsockname()[1]
    srv, _ = ls.accept()
    c.sendall(b'!'); assert srv.recv(1) == b'!'
    sender, reader = (srv, c) if resets == 'server' else (c, srv)
    sender.setblocking(False); sent, chunk, deadline = 0, b'x' * 65536, time.time() + 5
    while sent < 3 * 1024 * 1024 and time.time() < deadline:
        try: sent += sender.send(chunk)
        except BlockingIOError: break
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); sender.close()
    outcome, got = drain(reader)
    print(json.dumps({'client': client, 'sent': sent, 'outcome': outcome, 'got': got}), flush=True)
    reader.close()
`

const python3 = await new Promise<boolean>((resolve) => {
  execFile('python3', ['-c', 'pass'], (error) => resolve(!error))
})

describe('resets with data still in divert\'s buffers', {skip: python3 ? false : 'python3 is not installed (the test reads with a blocking Python client)'}, () => {
  for (const side of ['server', 'client'] as const) {
    test(`issue 11.1: a ${side} reset with data still buffered reaches the other side as a reset (10 of 10), logged ${side}-reset`, async () => {
      const py = spawn('python3', ['-c', RESET_PEERS, side, '10'], {stdio: ['pipe', 'pipe', 'inherit']})
      const lines = createInterface({input: py.stdout!})[Symbol.asyncIterator]()
      let h: InProcess | undefined
      try {
        const serverPort = Number((await lines.next()).value)
        const p = await freePort()
        h = await startInProcess(`
listeners: [ { name: l, bind: "127.0.0.1:${p}", backend: b } ]
backends: { b: { servers: [ { address: "127.0.0.1:${serverPort}" } ], health: { check: none } } }
`)
        py.stdin!.write(`${p}\n`)
        const results: Array<{client: string; sent: number; outcome: string; got: number}> = []
        for (let i = 0; i < 10; i++) results.push(JSON.parse((await lines.next()).value as string))
        await until(() => h!.logs.find('session closed').length === 10, 10_000, '10 close lines')
        const causes = new Map(h.logs.find('session closed').map((l) => [l.client as string, l.cause as string]))
        const seen = results.map((r) => `${r.outcome}/${causes.get(r.client)}`)
        assert.deepEqual(seen, Array(10).fill(`reset/${side}-reset`), JSON.stringify(results))
        const m = await metrics(h)
        assert.equal(metric(m, 'divert_sessions_closed_total', {listener: 'l', cause: `${side}-reset`}), 10)
      } finally {
        py.kill()
        await h?.stop()
      }
    })
  }
})

// ─── TCP keepalive on both sides (issue 11.2) ───────────────────────────────────────────────────

const ss = await new Promise<boolean>((resolve) => {
  execFile('ss', ['-V'], (error) => resolve(!error))
})

/** `ss -tnoH` keepalive timers (seconds left) of the established sockets a filter selects. */
function keepaliveTimers(filter: string): Promise<Array<number | undefined>> {
  return new Promise((resolve, reject) => {
    execFile('ss', ['-tnoH', 'state', 'established', filter], (error, out) => {
      if (error) return reject(error)
      resolve(out.split('\n').filter((l) => l.trim()).map((l) => {
        const t = /timer:\(keepalive,([^,]+),/.exec(l)?.[1]
        if (t === undefined) return undefined
        // iproute2 prints "1min29sec", "6.812ms" (seconds with a millisecond fraction) or "850ms".
        const m = /^(?:(\d+)min)?(?:(\d+)sec)?$/.exec(t)
        if (m && (m[1] || m[2])) return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0)
        const f = /^(\d+)\.(\d+)(?:ms|sec)$/.exec(t)
        if (f) return Number(`${f[1]}.${f[2]}`)
        return Number(/^(\d+)ms$/.exec(t)?.[1] ?? NaN) / 1000
      }))
    })
  })
}

describe('TCP keepalive', {skip: ss ? false : 'ss (Debian package iproute2) is not installed'}, () => {
  test('issue 11.2: the accepted client socket and the upstream socket of a session have keepalive with the configured idle times', async () => {
    const on = await startServer('on')
    const off = await startServer('off')
    const pOn = await freePort()
    const pOff = await freePort()
    const h = await startInProcess(`
listeners:
  - { name: on, bind: "127.0.0.1:${pOn}", backend: on, keepalive: 7s }
  - { name: off, bind: "127.0.0.1:${pOff}", backend: off, keepalive: off }
backends:
  on: { servers: [ { address: "${on.address}" } ], keepalive: 9s }
  off: { servers: [ { address: "${off.address}" } ], keepalive: 0 }
`)
    const sockets: net.Socket[] = []
    try {
      for (const [p, name] of [[pOn, 'on'], [pOff, 'off']] as const) {
        const s = await connect({port: p, localAddress: '127.0.0.22'})
        sockets.push(s)
        assert.equal(await readLine(s), name) // the upstream side is connected
      }
      const [client] = await keepaliveTimers(`( sport = :${pOn} )`)
      const [upstream] = await keepaliveTimers(`( dport = :${on.port} )`)
      assert.ok(client !== undefined && client > 5 && client <= 7, `client side keepalive timer ${client}s, expected just under 7s`)
      assert.ok(upstream !== undefined && upstream > 7 && upstream <= 9, `upstream keepalive timer ${upstream}s, expected just under 9s`)
      assert.deepEqual(await keepaliveTimers(`( sport = :${pOff} or dport = :${off.port} )`), [undefined, undefined], 'keepalive: off leaves both sockets without a keepalive timer')
    } finally {
      for (const s of sockets) s.destroy()
      await h.stop()
      await Promise.all([on.close(), off.close()])
    }
  })
})
