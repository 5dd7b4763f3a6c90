/**
 * The reload test's workload: one keep-alive HTTP request after another through divert (the latency
 * a proxied user feels), while `divert reload` replaces every one of 100,000 config rules. Reports
 * the worst round trip during the reload: the longest time divert's event loop was held.
 *
 *   bench (core 1) ─ GET /small.txt, keep-alive, one at a time ─▶ divert (core 0) ─▶ nginx origin
 *                  ─ POST /reload on the admin socket, after rewriting the rules' backend ─▶ divert
 */
import http from 'node:http'
import {readFileSync, writeFileSync} from 'node:fs'
import {performance} from 'node:perf_hooks'
import {LOOPBACK, SMALL_FILE} from './lab.js'
import {DivertError} from '../src/errors.js'

export interface ReloadFigures {
  reloadMs: number
  /** Longest request round trip that overlapped the reload. */
  worstRttMs: number
  /** Requests completed while the reload ran. */
  requests: number
}

/** Worst round trip allowed during a reload of 100,000 rules (the bench's goal, README "reload"). */
export const RELOAD_RTT_BUDGET_MS = 50

function get(agent: http.Agent, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.get({host: LOOPBACK, port, path: `/${SMALL_FILE}`, agent}, (res) => {
      res.resume()
      res.once('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`origin answered HTTP ${res.statusCode}`))))
    })
    req.once('error', reject)
  })
}

function postReload(admin: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({socketPath: admin, path: '/reload', method: 'POST', headers: {'x-divert-client': 'bench'}}, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c))
      res.once('end', () => (res.statusCode === 200 ? resolve() : reject(new DivertError('INTERNAL', `divert reload answered HTTP ${res.statusCode}: ${body.slice(0, 300)}`))))
    })
    req.once('error', reject)
    req.end()
  })
}

/**
 * Rewrites `configFile` so every rule diverts to `bulk` instead of `origin` (none matches the bench's
 * client, 127.0.0.1), then reloads while requests run back to back on one keep-alive connection.
 */
export async function reloadUnderLoad(port: number, configFile: string, admin: string): Promise<ReloadFigures> {
  const agent = new http.Agent({keepAlive: true, maxSockets: 1})
  try {
    for (let i = 0; i < 200; i++) await get(agent, port) // warm: connection up, JIT
    const text = readFileSync(configFile, 'utf8')
    const changed = text.replaceAll('to: origin, listener: http }', 'to: bulk, listener: http }')
    if (changed === text) throw new DivertError('INTERNAL', `no rule to change in ${configFile}`)
    writeFileSync(configFile, changed)
    let reloading = true
    let worst = 0
    let requests = 0
    const stream = (async () => {
      while (reloading) {
        const t = performance.now()
        await get(agent, port)
        worst = Math.max(worst, performance.now() - t)
        requests++
      }
    })()
    const started = performance.now()
    await postReload(admin).finally(() => (reloading = false))
    const reloadMs = performance.now() - started
    await stream
    return {reloadMs, worstRttMs: worst, requests}
  } finally {
    agent.destroy()
  }
}
