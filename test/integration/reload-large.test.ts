/**
 * A reload of a large rule set while a session is proxied: the session's round trips stay short
 * (the daemon's event loop is never held for long), and the new rules are in force afterwards.
 * In-process daemon, one keep-alive ping-pong client through it; all traffic on loopback.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {performance} from 'node:perf_hooks'
import {startServer, connect, readLine, readBytes, freePort} from '../helpers/servers.js'
import {startInProcess} from '../helpers/daemon.js'

/** /32 sources in 10.0.0.0/8: rules no client here matches (the client is 127.0.0.1). */
function config(port: number, prod: string, staging: string, rules: number, to: string): string {
  const lines = [`listeners: [ { name: l, bind: "127.0.0.1:${port}", backend: prod } ]`,
    `backends: { prod: { servers: [ { address: "${prod}" } ] }, staging: { servers: [ { address: "${staging}" } ] } }`, 'rules:']
  for (let i = 0; i < rules; i++) lines.push(`  - { source: 10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}, to: ${to} }`)
  return `${lines.join('\n')}\n`
}

test('issue 11.4: a reload of 20,000 rules never holds a proxied session\'s round trip for long, and the new rules apply', async (t) => {
  const RULES = 20_000
  // The old reload parsed and built in the event loop: 3 s and more for 20,000 rules on this class of machine.
  const BOUND_MS = 1000
  const [prod, staging] = [await startServer('prod'), await startServer('staging')]
  const port = await freePort()
  const h = await startInProcess(config(port, prod.address, staging.address, RULES, 'prod'))
  const client = await connect({port})
  try {
    assert.equal(await readLine(client), 'prod')
    assert.equal(h.daemon.rules.lookup('10.0.78.31', 'l')?.to, 'prod')
    writeFileSync(join(h.dir, 'divert.yaml'), config(port, prod.address, staging.address, RULES, 'staging'))
    let done = false
    let worst = 0
    let trips = 0
    const pings = (async () => {
      while (!done) {
        const t = performance.now()
        client.write('ping\n')
        assert.equal((await readBytes(client, 5, 10_000)).toString(), 'ping\n')
        worst = Math.max(worst, performance.now() - t)
        trips++
      }
    })()
    const started = performance.now()
    const result = await h.daemon.reload('test').finally(() => (done = true))
    const took = performance.now() - started
    await pings
    assert.equal(result.rules, RULES)
    assert.equal(h.daemon.rules.lookup('10.0.78.31', 'l')?.to, 'staging', 'the new rules are in force')
    assert.ok(trips > 10, `only ${trips} round trips during a ${took.toFixed(0)} ms reload`)
    assert.ok(worst < BOUND_MS, `worst round trip during the reload was ${worst.toFixed(0)} ms (reload took ${took.toFixed(0)} ms, ${trips} round trips)`)
    t.diagnostic(`reload ${took.toFixed(0)} ms, worst round trip ${worst.toFixed(1)} ms over ${trips} trips`)
  } finally {
    client.destroy()
    await h.stop()
    await Promise.all([prod.close(), staging.close()])
  }
})
