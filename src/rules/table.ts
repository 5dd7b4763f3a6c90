/**
 * RuleTable: the single owner of the runtime rules (README "Design"). Its methods change the rules;
 * `snapshot()` serves readers; `lookup()` answers, for each new session, which rule a client gets.
 *
 *   client address, listener ─ lookup ─▶ longest prefix → listener-scoped before unscoped → runtime before config
 *
 * Index: per family, one hash map per prefix length present, visited longest first, so a lookup costs
 * at most one map probe per distinct length (≤ 33 for v4, ≤ 129 for v6) whatever the number of rules.
 * At one prefix a slot holds the unscoped rule and the listener-scoped ones, each in two layers: a
 * runtime rule shadows the config rule with the same source and scope, which returns when it goes.
 */
import {createHash, randomInt} from 'node:crypto'
import {DivertError} from '../errors.js'
import type {RuleSpec} from '../config/types.js'
import {formatPrefix, parseCidr, readAddress, type Prefix} from '../addr/cidr.js'
import {eachInSlices} from '../slices.js'
import {realClock, type Clock} from '../clock.js'
import {RULE_ID} from './spec.js'

export type RuleOrigin = 'config' | 'runtime'

/** A rule in the table: what was asked (RuleSpec) plus what the table keeps about it. */
export interface Rule extends RuleSpec {
  id: string
  /** Canonical text of the prefix (formatPrefix). */
  source: string
  prefix: Prefix
  origin: RuleOrigin
  createdAt: number
  /** Sessions routed by this rule; the router increments it, lookup does not. */
  hits: number
  /** Set only on snapshot copies of a config rule that a runtime rule currently overrides: its id. */
  shadowedBy?: string
}

/** A rule as the admin API sends it: camelCase, stable, null for absent values, ISO dates. */
export interface RuleView {
  id: string
  source: string
  to: string | null
  mirror: string | null
  record: string | null
  recordMaxBytes: number | null
  listener: string | null
  expiresAt: string | null
  hits: number
  origin: RuleOrigin
  note: string | null
  createdAt: string
  /** Id of the runtime rule that overrides this config rule for now, else null. */
  shadowedBy: string | null
}

export interface RuleTableOptions {
  /** The daemon's clock: expiry and creation times (realClock when absent). */
  clock?: Clock
  /** Returns 'r' + 6 lowercase hex characters; the table retries when the id is taken. */
  newId?: () => string
  /** Named in RULE_FROM_CONFIG messages. */
  configFile?: string
}

export type AddSpec = RuleSpec & {id?: string; createdAt?: number}

const ID_ATTEMPTS = 1000

/** A reload's config rules, built beside the live table (buildConfigRules) until swapConfigRules. Opaque to callers. */
export interface ConfigBuild {
  live: RuleTable
  /** The new table: config rules only until swapIn moves the runtime rules in. */
  next: RuleTable
  specs: RuleSpec[]
  prefixes: Prefix[]
  /** kept[i]: the live rule for spec i is unchanged and carried over (same object, id and hits). */
  kept: boolean[]
  /** Canonical source + scope → first index, for duplicates. */
  seen: Map<string, number>
}

interface Layer {
  config?: Rule
  runtime?: Rule
}

/** Everything at one (family, prefix): the 32-bit words of the network, and the rules by scope. */
interface Slot {
  w0: number
  w1: number
  w2: number
  w3: number
  unscoped?: Layer
  scoped?: Map<string, Layer>
  /** Next slot whose words hash alike (v6 only; v4 keys are the network itself). */
  next?: Slot
}

interface Level {
  length: number
  /** Network mask of this length as four 32-bit words. */
  mask: Int32Array
  slots: Map<number, Slot>
  count: number
}

interface FamilyIndex {
  family: 4 | 6
  /** Levels present, longest prefix first: the lookup order. */
  order: Level[]
  byLength: Map<number, Level>
}

function maskWords(family: 4 | 6, length: number): Int32Array {
  const out = new Int32Array(4)
  for (let w = 0; w < (family === 4 ? 1 : 4); w++) {
    const b = Math.max(0, Math.min(32, length - w * 32))
    out[w] = b === 0 ? 0 : b === 32 ? -1 : -1 << (32 - b)
  }
  return out
}

/**
 * Mixes four words into a 32-bit map key (murmur3 finalizer constants); collisions chain via `next`.
 * Exported so a test can build a real collision; not part of the table's API.
 */
export function hashWords(w0: number, w1: number, w2: number, w3: number): number {
  let h = Math.imul(w0 ^ 0x9e3779b9, 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 13) ^ w1, 0xc2b2ae35)
  h = Math.imul(h ^ (h >>> 16) ^ w2, 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 13) ^ w3, 0xc2b2ae35)
  return (h ^ (h >>> 16)) | 0
}

function slotKey(family: 4 | 6, w0: number, w1: number, w2: number, w3: number): number {
  return family === 4 ? w0 : hashWords(w0, w1, w2, w3)
}

function prefixWords(prefix: Prefix): Int32Array {
  const out = new Int32Array(4)
  for (let i = 0; i < prefix.bytes.length; i++) out[i >> 2] |= prefix.bytes[i] << (24 - (i & 3) * 8)
  return out
}

function emptyLayer(layer: Layer | undefined): boolean {
  return layer === undefined || (layer.config === undefined && layer.runtime === undefined)
}

function defaultId(): string {
  return 'r' + randomInt(0, 0x1000000).toString(16).padStart(6, '0')
}

/**
 * A config rule's id, derived from what it matches (canonical source and listener scope) so it is the
 * same on every start and reload: `divert rm r…`, logs and the rule label of /metrics stay valid
 * across restarts. `attempt` > 0 gives the next candidate when the first is taken.
 */
function configId(source: string, listener: string | undefined, attempt: number): string {
  const digest = createHash('sha256').update(`${source} ${listener ?? '*'} ${attempt}`).digest()
  return 'r' + digest.toString('hex', 0, 3)
}

function iso(ms: number): string {
  return new Date(ms).toISOString()
}

/** Snapshot order: family, longer prefix first, source text, unscoped before scoped, runtime first. */
function compareRules(a: Rule, b: Rule): number {
  return (
    a.prefix.family - b.prefix.family ||
    b.prefix.length - a.prefix.length ||
    (a.source < b.source ? -1 : a.source > b.source ? 1 : 0) ||
    (a.listener ?? '').localeCompare(b.listener ?? '') ||
    (a.origin === b.origin ? 0 : a.origin === 'runtime' ? -1 : 1)
  )
}

function sameSpec(rule: Rule, spec: RuleSpec): boolean {
  return (
    rule.to === spec.to &&
    rule.mirror === spec.mirror &&
    rule.record === spec.record &&
    rule.expiresAt === spec.expiresAt &&
    rule.note === spec.note
  )
}

export class RuleTable {
  private readonly clock: Clock
  private readonly now: () => number
  private readonly newId: () => string
  private readonly configFile?: string
  // Not readonly: a reload builds the new config rules in a table beside this one and swaps these in.
  private v4: FamilyIndex = {family: 4, order: [], byLength: new Map()}
  private v6: FamilyIndex = {family: 6, order: [], byLength: new Map()}
  private ids = new Map<string, Rule>()
  /** Rules that carry an expiry, so expire() and nextExpiry() need not walk every rule. */
  private expiring = new Set<Rule>()
  private readonly scratch = new Int32Array(4)
  /** Set on a table being built for a reload: ids the live table's runtime rules hold are taken too. */
  private taken?: (id: string) => boolean

  constructor(opts: RuleTableOptions = {}) {
    this.clock = opts.clock ?? realClock
    this.now = this.clock.now
    this.newId = opts.newId ?? defaultId
    this.configFile = opts.configFile
  }

  get size(): number {
    return this.ids.size
  }

  /**
   * Adds or replaces the rule for (canonical source, listener scope) in the `origin` layer. The spec's
   * fields were checked where it came in (rules/spec.ts); throws INVALID_ADDRESS, RULE_ID_TAKEN.
   */
  add(spec: AddSpec, origin: RuleOrigin): {rule: Rule; replaced?: Rule; shadows?: Rule} {
    const prefix = parseCidr(spec.source)
    const replaced = this.layerFor(prefix, spec.listener, false)?.[origin]
    const rule = this.build(spec, prefix, origin, replaced)
    const layer = this.layerFor(prefix, spec.listener, true)!
    if (replaced) this.forget(replaced)
    layer[origin] = rule
    this.remember(rule)
    return {rule, ...(replaced ? {replaced} : {}), ...(origin === 'runtime' && layer.config ? {shadows: layer.config} : {})}
  }

  /**
   * Removes by id, or by source (any spelling of the same prefix) and optional listener; by source the
   * runtime rule goes first, so a config rule it shadowed matches again.
   */
  remove(idOrSource: string, opts: {listener?: string; allowConfig?: boolean} = {}): Rule {
    const rule = RULE_ID.test(idOrSource) ? this.ids.get(idOrSource) : this.find(idOrSource, opts.listener)
    if (!rule) throw this.notFound(idOrSource, opts.listener)
    if (rule.origin === 'config' && !opts.allowConfig) {
      const file = this.configFile ?? 'the config file'
      throw new DivertError(
        'RULE_FROM_CONFIG',
        `rule ${rule.id} (${describe(rule)}) cannot be removed at runtime: it comes from ${file} — edit the file and run \`divert reload\``,
        {details: {id: rule.id, source: rule.source, file: this.configFile}},
      )
    }
    this.detach(rule)
    return rule
  }

  removeAll(origin: RuleOrigin): Rule[] {
    const gone = [...this.ids.values()].filter((r) => r.origin === origin).sort(compareRules)
    for (const rule of gone) this.detach(rule)
    return gone
  }

  get(id: string): Rule | undefined {
    return this.ids.get(id)
  }

  /** The rule in effect for exactly this source and scope (runtime over config), expired or not. */
  find(source: string, listener?: string): Rule | undefined {
    const layer = this.layerFor(parseCidr(source), listener, false)
    return layer?.runtime ?? layer?.config
  }

  /**
   * The rule a new session from `address` on `listener` gets, or undefined (default backend). Hot
   * path: parses into a reused buffer and probes one map per prefix length present, longest first.
   */
  lookup(address: string, listener: string): Rule | undefined {
    const w = this.scratch
    const family = readAddress(address, w)
    if (family === 0) return undefined
    const order = family === 4 ? this.v4.order : this.v6.order
    for (let i = 0; i < order.length; i++) {
      const level = order[i]
      const m = level.mask
      const w0 = w[0] & m[0]
      const w1 = w[1] & m[1]
      const w2 = w[2] & m[2]
      const w3 = w[3] & m[3]
      let slot = level.slots.get(slotKey(family, w0, w1, w2, w3))
      while (slot !== undefined && (slot.w0 !== w0 || slot.w1 !== w1 || slot.w2 !== w2 || slot.w3 !== w3)) slot = slot.next
      if (slot === undefined) continue
      const rule = this.pick(slot, listener)
      if (rule !== undefined) return rule
    }
    return undefined
  }

  /** Removes rules whose expiresAt <= now and returns them, earliest first (the daemon logs them). */
  expire(): Rule[] {
    const now = this.now()
    const gone = [...this.expiring].filter((r) => r.expiresAt! <= now).sort((a, b) => a.expiresAt! - b.expiresAt!)
    for (const rule of gone) this.detach(rule)
    return gone
  }

  nextExpiry(): number | undefined {
    let next: number | undefined
    for (const rule of this.expiring) if (next === undefined || rule.expiresAt! < next) next = rule.expiresAt
    return next
  }

  /**
   * Replaces every config rule with `specs` in one step (reload); runtime rules are untouched. A rule
   * whose source, scope and actions did not change keeps its id and hit count. Everything is
   * validated before anything changes: on error the table is as it was.
   */
  replaceConfigRules(specs: RuleSpec[]): void {
    const build = this.startBuild(specs)
    for (let i = 0; i < specs.length; i++) this.checkConfig(build, i)
    for (let i = 0; i < specs.length; i++) this.placeConfig(build, i)
    this.swapIn(build.next)
  }

  /**
   * replaceConfigRules for a running daemon: the new rules are built in a table beside this one, in
   * slices that let the event loop run (100,000 rules take seconds of CPU), while lookups keep
   * answering from the current rules; then one synchronous swap puts them in force. Runtime rules
   * added or removed meanwhile are carried over as they are at the swap. One build at a time (the
   * daemon runs reloads one after the other).
   */
  async replaceConfigRulesAsync(specs: RuleSpec[]): Promise<void> {
    this.swapConfigRules(await this.buildConfigRules(specs))
  }

  /**
   * The first half of replaceConfigRulesAsync, for a reload that must know the rules are valid before
   * it binds listeners: validates and builds (throws as replaceConfigRules does, changing nothing).
   */
  async buildConfigRules(specs: RuleSpec[]): Promise<ConfigBuild> {
    const build = this.startBuild(specs)
    await eachInSlices(specs.length, (i) => this.checkConfig(build, i))
    await eachInSlices(specs.length, (i) => this.placeConfig(build, i))
    return build
  }

  /** The second half: puts a build of this table in force, synchronously. */
  swapConfigRules(build: ConfigBuild): void {
    if (build.live !== this) throw new DivertError('INTERNAL', 'swapConfigRules: the rules were built for another table')
    this.swapIn(build.next)
  }

  /** The rules of one origin, unsorted and not copied: for walking, not for display (snapshot()). */
  rulesOf(origin: RuleOrigin): Rule[] {
    const out: Rule[] = []
    for (const rule of this.ids.values()) if (rule.origin === origin) out.push(rule)
    return out
  }

  /**
   * Puts `next` (config rules only, from startBuild) in force: this table's runtime rules move
   * into it, then its index replaces this one's. Synchronous, so no lookup sees half of each; costs
   * one pass over the current rules.
   */
  private swapIn(next: RuleTable): void {
    for (const rule of this.ids.values()) if (rule.origin === 'runtime') next.adopt(rule)
    this.v4 = next.v4
    this.v6 = next.v6
    this.ids = next.ids
    this.expiring = next.expiring
  }

  /** Adds a live runtime rule object as it is (id, hits); a new config rule that drew its id meanwhile takes another. */
  private adopt(rule: Rule): void {
    const clash = this.ids.get(rule.id)
    if (clash) {
      this.forget(clash)
      clash.id = this.idFor(undefined, undefined, (n) => configId(clash.source, clash.listener, n))
      this.remember(clash)
    }
    this.layerFor(rule.prefix, rule.listener, true)!.runtime = rule
    this.remember(rule)
  }

  /** Copies of every rule (shadowed config rules too, marked), sorted for display. */
  snapshot(): Rule[] {
    const out: Rule[] = []
    for (const rule of this.ids.values()) {
      const copy: Rule = {...rule, prefix: {...rule.prefix, bytes: Uint8Array.from(rule.prefix.bytes)}}
      const shadow = rule.origin === 'config' ? this.layerFor(rule.prefix, rule.listener, false)?.runtime : undefined
      if (shadow) copy.shadowedBy = shadow.id
      out.push(copy)
    }
    return out.sort(compareRules)
  }

  /** What it takes to add the same rule again (same id and creation time): state file, rollback. */
  static spec(rule: Rule): AddSpec & {id: string; createdAt: number} {
    const {id, source, to, mirror, record, recordMaxBytes, listener, expiresAt, note, createdAt} = rule
    return {id, source, to, mirror, record, recordMaxBytes, listener, expiresAt, note, createdAt}
  }

  static view(rule: Rule): RuleView {
    return {
      id: rule.id,
      source: rule.source,
      to: rule.to ?? null,
      mirror: rule.mirror ?? null,
      record: rule.record ?? null,
      recordMaxBytes: rule.recordMaxBytes ?? null,
      listener: rule.listener ?? null,
      expiresAt: rule.expiresAt === undefined ? null : iso(rule.expiresAt),
      hits: rule.hits,
      origin: rule.origin,
      note: rule.note ?? null,
      createdAt: iso(rule.createdAt),
      shadowedBy: rule.shadowedBy ?? null,
    }
  }

  /**
   * A reload's config rules, to be built in a fresh table beside this one in two passes over the
   * specs, each item by item (so the daemon can slice them): checkConfig, then placeConfig. The
   * fresh table's derived ids avoid this table's runtime rules.
   */
  private startBuild(specs: RuleSpec[]): ConfigBuild {
    const next = new RuleTable({clock: this.clock, newId: this.newId, configFile: this.configFile})
    next.taken = (id) => this.ids.get(id)?.origin === 'runtime'
    return {live: this, next, specs, prefixes: [], kept: [], seen: new Map()}
  }

  /** Validates spec i, catches a duplicate, and carries over the live rule when nothing about it changed. */
  private checkConfig(b: ConfigBuild, i: number): void {
    const spec = b.specs[i]
    const prefix = parseCidr(spec.source)
    checkDuplicate(b.seen, spec, `${formatPrefix(prefix)} ${spec.listener ?? ''}`, i)
    b.prefixes[i] = prefix
    const old = this.layerFor(prefix, spec.listener, false)?.config
    b.kept[i] = old !== undefined && sameSpec(old, spec)
    if (b.kept[i]) b.next.putConfig(old!)
  }

  /**
   * Builds rule i unless carried over. Ids come out as an in-place replacement gave them: derived in
   * spec order, skipping those of carried-over and runtime rules.
   */
  private placeConfig(b: ConfigBuild, i: number): void {
    if (!b.kept[i]) b.next.putConfig(b.next.build(b.specs[i], b.prefixes[i], 'config', undefined))
  }

  /** Puts a config rule (new, or carried over as the same object with its hits) into this table. */
  private putConfig(rule: Rule): void {
    this.layerFor(rule.prefix, rule.listener, true)!.config = rule
    this.remember(rule)
  }

  private pick(slot: Slot, listener: string): Rule | undefined {
    if (slot.scoped !== undefined) {
      const layer = slot.scoped.get(listener)
      const rule = layer === undefined ? undefined : this.live(layer)
      if (rule !== undefined) return rule
    }
    return slot.unscoped === undefined ? undefined : this.live(slot.unscoped)
  }

  /** The layer's rule in effect now: an expired rule never matches, even before expire() removes it. */
  private live(layer: Layer): Rule | undefined {
    const r = layer.runtime
    if (r !== undefined && (r.expiresAt === undefined || r.expiresAt > this.now())) return r
    const c = layer.config
    if (c !== undefined && (c.expiresAt === undefined || c.expiresAt > this.now())) return c
    return undefined
  }

  private build(spec: AddSpec, prefix: Prefix, origin: RuleOrigin, replacing: Rule | undefined): Rule {
    const source = formatPrefix(prefix)
    return {
      id: this.idFor(spec.id, replacing, origin === 'config' ? (n) => configId(source, spec.listener, n) : undefined),
      source,
      prefix,
      to: spec.to,
      mirror: spec.mirror,
      record: spec.record,
      recordMaxBytes: spec.recordMaxBytes,
      listener: spec.listener,
      expiresAt: spec.expiresAt,
      note: spec.note,
      origin,
      createdAt: spec.createdAt ?? this.now(),
      hits: 0,
    }
  }

  /**
   * A given id (state file, well-formed per its schema) must be free; otherwise a config rule gets its
   * derived id (configId) and a runtime rule a fresh random one.
   */
  private idFor(given: string | undefined, replacing: Rule | undefined, derive?: (attempt: number) => string): string {
    if (given !== undefined) {
      const owner = this.ids.get(given)
      if (owner && owner !== replacing) {
        throw new DivertError('RULE_ID_TAKEN', `rule id ${given} is already used by the rule for ${describe(owner)}; expected an id no other rule has`)
      }
      return given
    }
    for (let i = 0; i < ID_ATTEMPTS; i++) {
      const id = derive ? derive(i) : this.newId()
      if (!RULE_ID.test(id)) throw new DivertError('INTERNAL', `the rule id generator returned "${id}", not "r" and 6 hex digits`)
      if (!this.ids.has(id) && !this.taken?.(id)) return id
    }
    throw new DivertError('INTERNAL', `no free rule id after ${ID_ATTEMPTS} attempts (${this.ids.size} rules)`)
  }

  private notFound(idOrSource: string, listener: string | undefined): DivertError {
    if (RULE_ID.test(idOrSource)) {
      return new DivertError('RULE_NOT_FOUND', `no rule has id ${idOrSource}; run \`divert list\` to see the rules and their ids`)
    }
    const scope = listener === undefined ? 'without a listener scope' : `for listener ${listener}`
    const others = this.scopesOf(parseCidr(idOrSource)).filter((l) => l !== listener)
    const hint = others.length > 0 ? ` (there are rules for it with --listener ${others.join(', ')})` : ''
    return new DivertError(
      'RULE_NOT_FOUND',
      `no rule for source ${idOrSource} ${scope}${hint}; run \`divert list\` to see the rules`,
    )
  }

  /** Listener scopes that have a rule at exactly this prefix; unscoped shows as undefined. */
  private scopesOf(prefix: Prefix): (string | undefined)[] {
    const slot = this.slotFor(prefix, false)
    if (!slot) return []
    const scoped = slot.scoped ? [...slot.scoped.keys()].sort() : []
    return emptyLayer(slot.unscoped) ? scoped : [undefined, ...scoped]
  }

  private remember(rule: Rule): void {
    this.ids.set(rule.id, rule)
    if (rule.expiresAt !== undefined) this.expiring.add(rule)
  }

  private forget(rule: Rule): void {
    this.ids.delete(rule.id)
    this.expiring.delete(rule)
  }

  /** Takes a rule out of its layer, and prunes the layer, slot and level it leaves empty. */
  private detach(rule: Rule): void {
    this.forget(rule)
    const index = rule.prefix.family === 4 ? this.v4 : this.v6
    const level = index.byLength.get(rule.prefix.length)
    const slot = this.slotFor(rule.prefix, false)
    if (!level || !slot) return
    const layer = rule.listener === undefined ? slot.unscoped : slot.scoped?.get(rule.listener)
    if (!layer || layer[rule.origin] !== rule) return
    layer[rule.origin] = undefined
    if (!emptyLayer(layer)) return
    if (rule.listener === undefined) slot.unscoped = undefined
    else slot.scoped!.delete(rule.listener)
    if (slot.scoped?.size === 0) slot.scoped = undefined
    if (slot.unscoped === undefined && slot.scoped === undefined) this.dropSlot(index, level, slot)
  }

  private dropSlot(index: FamilyIndex, level: Level, slot: Slot): void {
    const key = slotKey(index.family, slot.w0, slot.w1, slot.w2, slot.w3)
    let head = level.slots.get(key)
    if (head === slot) {
      if (slot.next) level.slots.set(key, slot.next)
      else level.slots.delete(key)
    } else {
      while (head && head.next !== slot) head = head.next
      if (head) head.next = slot.next
    }
    level.count--
    if (level.count > 0) return
    index.byLength.delete(level.length)
    index.order.splice(index.order.indexOf(level), 1)
  }

  private layerFor(prefix: Prefix, listener: string | undefined, create: boolean): Layer | undefined {
    const slot = this.slotFor(prefix, create)
    if (!slot) return undefined
    if (listener === undefined) {
      if (create) slot.unscoped ??= {}
      return slot.unscoped
    }
    let layer = slot.scoped?.get(listener)
    if (!layer && create) {
      layer = {}
      ;(slot.scoped ??= new Map()).set(listener, layer)
    }
    return layer
  }

  private slotFor(prefix: Prefix, create: boolean): Slot | undefined {
    const index = prefix.family === 4 ? this.v4 : this.v6
    const level = index.byLength.get(prefix.length) ?? (create ? this.addLevel(index, prefix.length) : undefined)
    if (!level) return undefined
    const [w0, w1, w2, w3] = prefixWords(prefix)
    const key = slotKey(index.family, w0, w1, w2, w3)
    let slot = level.slots.get(key)
    while (slot && (slot.w0 !== w0 || slot.w1 !== w1 || slot.w2 !== w2 || slot.w3 !== w3)) slot = slot.next
    if (slot || !create) return slot
    slot = {w0, w1, w2, w3, next: level.slots.get(key)}
    level.slots.set(key, slot)
    level.count++
    return slot
  }

  private addLevel(index: FamilyIndex, length: number): Level {
    const level: Level = {length, mask: maskWords(index.family, length), slots: new Map(), count: 0}
    index.byLength.set(length, level)
    index.order.push(level)
    index.order.sort((a, b) => b.length - a.length)
    return level
  }
}

function describe(rule: Rule): string {
  return rule.listener === undefined ? rule.source : `${rule.source} on listener ${rule.listener}`
}

function checkDuplicate(seen: Map<string, number>, spec: RuleSpec, key: string, index: number): void {
  const first = seen.get(key)
  if (first !== undefined) {
    const scope = spec.listener === undefined ? '' : ` and listener ${spec.listener}`
    throw new DivertError('CONFIG_INVALID', `rules[${first}] and rules[${index}] both have source ${spec.source}${scope}: keep one`, {
      details: {path: `rules[${index}]`},
    })
  }
  seen.set(key, index)
}
