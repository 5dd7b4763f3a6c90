/**
 * Balancers: choose one server for a new session among the servers that are up. Each keeps its
 * per-config state (indexes, hash seeds, counters) from construction; `pick` is the hot path and
 * allocates nothing. A server with weight 0 is drained: it never gets a new session.
 *
 *   up servers + client address ─▶ Balancer.pick ─▶ server | undefined
 */
import type {BalanceMethod} from '../config/types.js'
import {DivertError} from '../errors.js'

/** What a balancer needs of a server (backend.ts's Server satisfies it; tests may pass plain objects). */
export interface Pickable {
  readonly key: string
  readonly weight: number
  readonly active: number
}

export interface Balancer<S extends Pickable = Pickable> {
  /** One of `up`, or undefined when none can take a session. Does not acquire. */
  pick(up: readonly S[], clientAddress: string): S | undefined
}

export function createBalancer<S extends Pickable = Pickable>(method: BalanceMethod, servers: readonly S[], random: () => number = Math.random): Balancer<S> {
  switch (method) {
    case 'roundrobin': return new SmoothRoundRobin(servers)
    case 'leastconn': return new LeastConnections(servers)
    case 'source': return new SourceHash(servers)
    case 'random': return new TwoRandomChoices(random)
    default: throw new DivertError('CONFIG_INVALID', `balance "${String(method)}" is not one of roundrobin, leastconn, source, random`)
  }
}

/** Position of each server in its backend, assigned at construction (later strangers on first sight). */
class ServerIndex<S> {
  private readonly map = new Map<S, number>()

  constructor(servers: readonly S[]) {
    for (const s of servers) this.of(s)
  }

  get size(): number {
    return this.map.size
  }

  of(server: S): number {
    let i = this.map.get(server)
    if (i === undefined) {
      i = this.map.size
      this.map.set(server, i)
    }
    return i
  }
}

/** a.active/a.weight < b.active/b.weight, cross-multiplied so no division and no float error. */
function lessLoaded(a: Pickable, b: Pickable): boolean {
  return a.active * b.weight < b.active * a.weight
}

function sameLoad(a: Pickable, b: Pickable): boolean {
  return a.active * b.weight === b.active * a.weight
}

/**
 * nginx's smooth weighted round robin (ngx_http_upstream_get_peer): each pick adds every up
 * server's weight to its current weight, takes the largest (first on a tie) and subtracts the total
 * from it. Weights 5,1,1 give a a b a c a a: the heavy server is spread out, not bunched. Down
 * servers are skipped and keep their current weight, as in nginx.
 */
class SmoothRoundRobin<S extends Pickable> implements Balancer<S> {
  private readonly index: ServerIndex<S>
  private readonly current: number[]

  constructor(servers: readonly S[]) {
    this.index = new ServerIndex(servers)
    this.current = servers.map(() => 0)
  }

  pick(up: readonly S[]): S | undefined {
    let best: S | undefined
    let bestIndex = -1
    let total = 0
    for (const s of up) {
      if (s.weight <= 0) continue
      const i = this.index.of(s)
      const cw = (this.current[i] ?? 0) + s.weight
      this.current[i] = cw
      total += s.weight
      if (best === undefined || cw > this.current[bestIndex]) {
        best = s
        bestIndex = i
      }
    }
    if (best !== undefined) this.current[bestIndex] -= total
    return best
  }
}

/**
 * Fewest live sessions per unit of weight. Among tied servers the first one after the previous
 * pick (in backend order, wrapping) wins, so equal servers take turns instead of the first one
 * taking every burst that arrives before its sessions are counted.
 */
class LeastConnections<S extends Pickable> implements Balancer<S> {
  private readonly index: ServerIndex<S>
  private last = -1

  constructor(servers: readonly S[]) {
    this.index = new ServerIndex(servers)
  }

  pick(up: readonly S[]): S | undefined {
    let best: S | undefined
    let bestIndex = -1
    let bestDistance = Infinity
    for (const s of up) {
      if (s.weight <= 0) continue
      const i = this.index.of(s)
      const n = this.index.size
      const distance = (i - this.last - 1 + 2 * n) % n
      if (best === undefined || lessLoaded(s, best) || (sameLoad(s, best) && distance < bestDistance)) {
        best = s
        bestIndex = i
        bestDistance = distance
      }
    }
    if (best !== undefined) this.last = bestIndex
    return best
  }
}

/**
 * Weighted rendezvous (highest random weight) hashing of the client address: every server scores
 * the address, the highest score wins. A client keeps its server while that server stays up; when
 * one of N servers goes, only its clients move (≈1/N), and a new server takes ≈1/(N+1) from all.
 * Score = weight / -ln(u), u = hash(address, server) in (0,1) (Schindelhauer & Schomaker, "Weighted
 * distributed hash tables", 2005): a server's share is proportional to its weight. With equal
 * weights that score orders servers exactly as u does, so the logarithm is skipped.
 */
class SourceHash<S extends Pickable> implements Balancer<S> {
  private readonly index: ServerIndex<S>
  private readonly seeds: number[] = []
  private equalWeights = true
  private weight = NaN

  constructor(servers: readonly S[]) {
    this.index = new ServerIndex([])
    for (const s of servers) this.learn(s)
  }

  private learn(server: S): number {
    const i = this.index.of(server)
    if (this.seeds[i] === undefined) {
      this.seeds[i] = fnv1a(server.key)
      if (Number.isNaN(this.weight)) this.weight = server.weight
      else if (server.weight !== this.weight) this.equalWeights = false
    }
    return i
  }

  pick(up: readonly S[], clientAddress: string): S | undefined {
    const h = fnv1a(clientAddress)
    let best: S | undefined
    let bestScore = -Infinity
    for (const s of up) {
      if (s.weight <= 0) continue
      const u = murmur3Block(h, this.seeds[this.learn(s)])
      const score = this.equalWeights ? u : s.weight / -Math.log((u + 0.5) / 4294967296)
      if (score > bestScore) {
        best = s
        bestScore = score
      }
    }
    return best
  }
}

/**
 * Power of two random choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
 * Balancing", 2001): draw two distinct up servers with probability proportional to weight and keep
 * the one with fewer live sessions per weight. Load stays even without global state or herding.
 */
class TwoRandomChoices<S extends Pickable> implements Balancer<S> {
  constructor(private readonly random: () => number) {}

  pick(up: readonly S[]): S | undefined {
    let total = 0
    let eligible = 0
    for (const s of up) {
      if (s.weight <= 0) continue
      total += s.weight
      eligible++
    }
    if (eligible === 0) return undefined
    const a = this.draw(up, total, undefined)
    if (eligible === 1) return a
    const b = this.draw(up, total - a.weight, a)
    return lessLoaded(b, a) ? b : a
  }

  private draw(up: readonly S[], total: number, except: S | undefined): S {
    let r = this.random() * total
    let last: S | undefined
    for (const s of up) {
      if (s.weight <= 0 || s === except) continue
      last = s
      r -= s.weight
      if (r < 0) return s
    }
    return last as S // only reached through float rounding at r ≈ total
  }
}

/** 32-bit FNV-1a over the UTF-16 code units of a string (addresses and keys are ASCII). */
export function fnv1a(text: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/**
 * MurmurHash3_x86_32 of the single 4-byte block `block` with `seed` (Appleby, smhasher): a cheap
 * full-avalanche mix of the client hash with a per-server seed, so every server's score is an
 * independent-looking uniform 32-bit value.
 */
export function murmur3Block(block: number, seed: number): number {
  let k = Math.imul(block, 0xcc9e2d51)
  k = (k << 15) | (k >>> 17)
  k = Math.imul(k, 0x1b873593)
  let h = seed ^ k
  h = (h << 13) | (h >>> 19)
  h = (Math.imul(h, 5) + 0xe6546b64) | 0
  h ^= 4
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}
