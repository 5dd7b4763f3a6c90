/**
 * Rule lookup benchmark: time per RuleTable.lookup() for tables of a given size, mixed IPv4, IPv6 and
 * IPv4-mapped clients, to show that lookup cost follows the prefix lengths present, not the rule count.
 *
 *   random rules → RuleTable ─ warm-up, then N timed lookups (process.hrtime.bigint) → ns per lookup
 *
 * Run directly (`node dist/bench/rules.js`) for a small table; `npm run bench` calls benchRuleLookup.
 */
import {pathToFileURL} from 'node:url'
import {RuleTable} from '../src/rules/table.js'

export interface RuleBenchResult {
  ruleCount: number
  nsPerLookup: number
  lookupsPerSec: number
  /** Share of lookups that found a rule (the rest walked every prefix length present). */
  hitRate: number
}

/**
 * 'typical': prefix lengths an operator writes (/8 /16 /24 /30 /32, /32 /48 /56 /64 /128).
 * 'any': every length 0–32 and 0–128, the worst case (one map probe per length present on a miss).
 */
export type LengthMix = 'typical' | 'any'

const TYPICAL_V4 = [8, 16, 24, 30, 32]
const TYPICAL_V6 = [32, 48, 56, 64, 128]
const CLIENTS = 4096

/** xorshift32: seeded, so runs compare like with like. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1
  return () => {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    return (x >>> 0) / 4294967296
  }
}

function u32(rand: () => number): number {
  return Math.floor(rand() * 0x100000000) >>> 0
}

function v4(w: number): string {
  return `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}`
}

function v6(w: number[]): string {
  return w.map((x) => `${(x >>> 16).toString(16)}:${(x & 0xffff).toString(16)}`).join(':')
}

function mask(length: number, word: number): number {
  const b = Math.max(0, Math.min(32, length - word * 32))
  return b === 0 ? 0 : b === 32 ? 0xffffffff : (0xffffffff << (32 - b)) >>> 0
}

function pickLength(rand: () => number, mix: LengthMix, family: 4 | 6): number {
  const typical = family === 4 ? TYPICAL_V4 : TYPICAL_V6
  if (mix === 'typical') return typical[Math.floor(rand() * typical.length)]
  return Math.floor(rand() * ((family === 4 ? 32 : 128) + 1))
}

interface Net {
  family: 4 | 6
  words: number[]
  length: number
}

/** Networks live in 10/8 and 2001:db8::/32, as an operator's rules would cluster. */
function randomNet(rand: () => number, mix: LengthMix): Net {
  const family = rand() < 0.5 ? 4 : 6
  const length = pickLength(rand, mix, family)
  const raw = family === 4 ? [0x0a000000 | (u32(rand) & 0xffffff)] : [0x20010db8, u32(rand) & 0xffff, u32(rand), u32(rand)]
  return {family, length, words: raw.map((w, i) => (w & mask(length, i)) >>> 0)}
}

function text(family: 4 | 6, words: number[]): string {
  return family === 4 ? v4(words[0]) : v6(words)
}

/**
 * Half the clients sit inside a rule's network (a hit); half are anywhere in the same family, which
 * almost always misses, like every client that is not being diverted (the common case). A tenth of
 * the IPv4 clients come as IPv4-mapped IPv6, as a dual-stack listener reports them.
 */
function randomClient(rand: () => number, nets: Net[]): string {
  const net = rand() < 0.5 ? nets[Math.floor(rand() * nets.length)] : undefined
  const family = net?.family ?? (rand() < 0.5 ? 4 : 6)
  const words = Array.from({length: family === 4 ? 1 : 4}, (_, i) => {
    const host = u32(rand)
    return net ? ((net.words[i] & mask(net.length, i)) | (host & ~mask(net.length, i))) >>> 0 : host
  })
  const t = text(family, words)
  return family === 4 && rand() < 0.1 ? `::ffff:${t}` : t
}

function buildTable(ruleCount: number, mix: LengthMix, rand: () => number): {table: RuleTable; nets: Net[]} {
  const table = new RuleTable()
  const nets: Net[] = []
  const listeners = [undefined, undefined, 'telnet', 'vpn']
  while (table.size < ruleCount) {
    const net = randomNet(rand, mix)
    const listener = listeners[Math.floor(rand() * 4)]
    table.add({source: `${text(net.family, net.words)}/${net.length}`, to: 'staging', listener}, 'runtime')
    nets.push(net)
  }
  return {table, nets}
}

function timeLookups(table: RuleTable, clients: string[], lookups: number): {ns: bigint; hits: number} {
  let hits = 0
  const start = process.hrtime.bigint()
  for (let i = 0; i < lookups; i++) {
    if (table.lookup(clients[i & (CLIENTS - 1)], (i & 1) === 0 ? 'telnet' : 'vpn') !== undefined) hits++
  }
  return {ns: process.hrtime.bigint() - start, hits}
}

/** Builds a table of `ruleCount` random v4+v6 rules and times `lookups` mixed lookups after a warm-up. */
export function benchRuleLookup(ruleCount: number, lookups = 1_000_000, mix: LengthMix = 'typical'): RuleBenchResult {
  const rand = rng(0x5eed + ruleCount)
  const {table, nets} = buildTable(ruleCount, mix, rand)
  const clients = Array.from({length: CLIENTS}, () => randomClient(rand, nets))
  timeLookups(table, clients, Math.min(lookups, 200_000))
  const {ns, hits} = timeLookups(table, clients, lookups)
  const nsPerLookup = Number(ns) / lookups
  return {ruleCount, nsPerLookup, lookupsPerSec: Math.round(1e9 / nsPerLookup), hitRate: hits / lookups}
}

function row(cells: string[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(10) : c.padStart(14))).join('')
}

function main(): void {
  console.log(row(['rules', 'lengths', 'ns/lookup', 'lookups/s', 'hit rate']))
  const runs: [number, LengthMix][] = [[10, 'typical'], [100_000, 'typical'], [10, 'any'], [100_000, 'any']]
  for (const [count, mix] of runs) {
    const r = benchRuleLookup(count, 1_000_000, mix)
    console.log(row([String(r.ruleCount), mix, r.nsPerLookup.toFixed(0), r.lookupsPerSec.toLocaleString('en-US'), `${(r.hitRate * 100).toFixed(0)}%`]))
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main()
