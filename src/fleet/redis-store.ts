/**
 * RedisRuleStore: the fleet's runtime rules in Redis (issue 14), behind the RuleStore interface the
 * state file implements. Every change is one Lua script, atomic in Redis (EVAL, "Atomicity of
 * scripts"): it applies the change, bumps `divert:version` and PUBLISHes the change with that
 * version, so the versions on the channel form one total order. An instance applies a change whose
 * version is the next one; a gap (pub/sub is at-most-once: messages sent while a subscriber is
 * disconnected are lost), a reconnect, or a version that stays ahead of it makes it resync in full
 * (HGETALL + GET in one MULTI). No update is lost, and every instance ends with Redis's set.
 *
 * Rules are keyed by what they match (source and listener scope), so two instances adding a rule for
 * the same source at once leave one rule, the later; a removal names the rule id and removes only
 * while Redis still holds that id (idempotent: expiry on every instance, a replaced rule). The data
 * path never waits on Redis: the rule table stays local and synchronous; while Redis is unreachable
 * traffic keeps the rules it has and save() fails at once with STATE_UNAVAILABLE (no offline queue),
 * so no change is made on one instance only.
 *
 *   divert add ─▶ RuleService ─save()─▶ EVAL change ─▶ HSET/HDEL + INCR + PUBLISH
 *   PUBLISH ─▶ every instance's subscriber ─▶ RuleService queue ─▶ version check ─▶ merge | resync
 */
import {randomBytes} from 'node:crypto'
import {Redis, type RedisOptions} from 'ioredis'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import {parseStoredRule} from '../rules/spec.js'
import {RuleIdTaken, type LoadResult, type RuleChange, type RuleStore, type StoredRule} from '../rules/state.js'
import type {RemoteChange} from '../rules/service.js'
import {maskUrl} from './url.js'

export const KEYS = {rules: 'divert:rules', ids: 'divert:ids', version: 'divert:version', channel: 'divert:changes', instance: 'divert:instance:'} as const

/** What the store needs of the RuleService: its queue, merge() to run inside it, its runtime set. */
export interface RuleSync {
  exclusive<T>(job: () => Promise<T>): Promise<T>
  merge(change: RemoteChange, from: string): Promise<void>
  runtimeRules(): StoredRule[]
}

export interface RedisStoreOptions {
  url: string
  /** This instance's fleet name (messages, the audit's `instance`). */
  instance: string
  logger: Logger
  /** How long a command may take before save() fails (a partitioned network sends no reset). */
  commandTimeoutMs?: number
  /** How often the store compares its version with Redis's (catches a lost last message). */
  checkEveryMs?: number
}

/** What `divert status` shows about the store. */
export interface RedisStoreView {
  kind: 'redis'
  url: string
  connected: boolean
  /** The version of the shared set this instance has applied. */
  version: number
  /** When the connection last came up or went down (ISO 8601). */
  since: string
  error: string | null
}

interface ChangeMessage {
  v: number
  put: StoredRule[]
  remove: string[]
  by: string
  instance: string
  nonce: string
  /** The store was re-seeded (it had lost its data): everyone resyncs in full. */
  resync: boolean
}

/**
 * KEYS: rules, ids, version; ARGV: channel, the change as JSON. All ids are checked before anything
 * is written, so a refused change writes nothing. Returns {version, ''}, {0, ''} for a change that
 * changed nothing (nothing published), or {-1, id} for an id another rule holds.
 */
const CHANGE_LUA = `
local c = cjson.decode(ARGV[2])
for _, p in ipairs(c.put) do
  local holder = redis.call('HGET', KEYS[2], p.id)
  if holder and holder ~= p.field then return {-1, p.id} end
end
local put, removed = {}, {}
for _, p in ipairs(c.put) do
  local old = redis.call('HGET', KEYS[1], p.field)
  if old then redis.call('HDEL', KEYS[2], cjson.decode(old).id) end
  redis.call('HSET', KEYS[1], p.field, p.rule)
  redis.call('HSET', KEYS[2], p.id, p.field)
  table.insert(put, p.rule)
end
for _, id in ipairs(c.remove) do
  local field = redis.call('HGET', KEYS[2], id)
  if field then
    redis.call('HDEL', KEYS[1], field)
    redis.call('HDEL', KEYS[2], id)
    table.insert(removed, id)
  end
end
if #put == 0 and #removed == 0 then return {0, ''} end
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[1], cjson.encode({v = v, put = put, remove = removed, by = c.by, instance = c.instance, nonce = c.nonce}))
return {v, ''}
`

/**
 * KEYS: rules, ids, version; ARGV: channel, {rules, version, instance, nonce}. Redis came back with
 * an older version than an instance has applied (restarted without persistence, or restored from an
 * old dump): the instance with the newest set puts it back. Only a set newer than what Redis holds
 * is written, so of several instances seeding at once the newest wins; everyone then resyncs.
 */
const SEED_LUA = `
local c = cjson.decode(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
if cur >= c.version then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
for _, p in ipairs(c.rules) do
  redis.call('HSET', KEYS[1], p.field, p.rule)
  redis.call('HSET', KEYS[2], p.id, p.field)
end
redis.call('SET', KEYS[3], c.version)
redis.call('PUBLISH', ARGV[1], cjson.encode({v = c.version, put = {}, remove = {}, by = 'reseed', instance = c.instance, nonce = c.nonce, resync = true}))
return c.version
`

type SeedCommand = (k1: string, k2: string, k3: string, channel: string, seed: string) => Promise<number>
type ChangeCommand = (k1: string, k2: string, k3: string, channel: string, change: string) => Promise<[number, string]>

export class RedisRuleStore implements RuleStore {
  /** The URL without its password, for messages, logs and status. */
  readonly path: string
  /** Commands (and the fleet's registry); fails at once while disconnected. */
  readonly redis: Redis
  private readonly sub: Redis
  private sync?: RuleSync
  private applied = 0
  /** Set when this instance may lack changes (boot without Redis, lost connection): resync when up. */
  private stale = true
  private up = false
  private since = Date.now()
  private lastError: string | null = null
  /** Set on a version check that found Redis ahead: resync if the next finds the same. */
  private behindAt?: number
  private checker?: NodeJS.Timeout
  private closed = false
  /** load() is over: from then on a reconnect resyncs. */
  private loaded = false
  private resyncing = false
  /** Tells this process's own messages apart (two instances could share a name by mistake). */
  private readonly nonce = randomBytes(6).toString('hex')

  constructor(private readonly o: RedisStoreOptions) {
    this.path = maskUrl(o.url)
    const base: RedisOptions = {
      lazyConnect: true, connectTimeout: 3000, keepAlive: 10_000, maxRetriesPerRequest: 0,
      // ioredis reconnects forever with this delay: 100 ms, 200 ms, … at most 2 s.
      retryStrategy: (times) => Math.min(times * 100, 2000),
    }
    this.redis = new Redis(o.url, {...base, enableOfflineQueue: false, commandTimeout: o.commandTimeoutMs ?? 2000})
    this.redis.defineCommand('divertChange', {numberOfKeys: 3, lua: CHANGE_LUA})
    this.redis.defineCommand('divertSeed', {numberOfKeys: 3, lua: SEED_LUA})
    this.sub = new Redis(o.url, base)
    for (const c of [this.redis, this.sub]) {
      c.on('error', (error: Error) => (this.lastError = error.message))
      c.on('ready', () => this.onUp())
      c.on('close', () => this.onDown())
    }
    this.sub.on('message', (channel: string, text: string) => this.onMessage(channel, text))
  }

  /** The rule service that applies the other instances' changes; set before load(). */
  attach(sync: RuleSync): void {
    this.sync = sync
  }

  get connected(): boolean {
    return this.redis.status === 'ready' && this.sub.status === 'ready'
  }

  view(): RedisStoreView {
    return {kind: 'redis', url: this.path, connected: this.connected, version: this.applied, since: new Date(this.since).toISOString(), error: this.connected ? null : this.lastError}
  }

  /**
   * Boot: subscribe, then read the set (a change published in between is applied after, by version).
   * Redis down: start with no runtime rules, logged; they load when it is back.
   */
  async load(): Promise<LoadResult> {
    void this.redis.connect().catch(() => undefined)
    void this.sub.connect().catch(() => undefined)
    this.checker = setInterval(() => this.check(), this.o.checkEveryMs ?? 2000).unref()
    try {
      await Promise.all([ready(this.redis, 5000), ready(this.sub, 5000)])
      await this.sub.subscribe(KEYS.channel)
      const {rules, version} = await this.snapshot()
      this.applied = version
      this.stale = false
      return {rules}
    } catch (error) {
      this.o.logger.error({store: this.path, err: error}, `shared rule store ${this.path} is unreachable at start (${(error as Error).message}): starting with no runtime rules; they are loaded when it is back (reconnecting)`)
      return {rules: []}
    } finally {
      this.loaded = true
    }
  }

  async save(_rules: StoredRule[], change?: RuleChange): Promise<void> {
    if (!change) throw new DivertError('INTERNAL', 'a shared rule store saves changes, not whole sets')
    if (this.redis.status !== 'ready') throw this.unavailable()
    const body = JSON.stringify({
      put: change.put.map(entryOf), remove: change.remove.map((r) => r.id),
      by: change.by, instance: this.o.instance, nonce: this.nonce,
    })
    let out: [number, string]
    try {
      out = await (this.redis as unknown as {divertChange: ChangeCommand}).divertChange(KEYS.rules, KEYS.ids, KEYS.version, KEYS.channel, body)
    } catch (error) {
      if ((error as Error).name === 'ReplyError') throw new DivertError('STATE_WRITE', `the shared rule store ${this.path} refused the change: ${(error as Error).message}`, {cause: error})
      throw this.unavailable(error as Error)
    }
    const [version, id] = out
    if (version === -1) throw new RuleIdTaken(`rule id ${id} is held by another rule in ${this.path}`)
    // Only the next version is ours to take: a higher one means other changes came first, and their
    // messages (queued behind this change) must still be applied; ours then comes again, idempotent.
    if (version === this.applied + 1) this.applied = version
  }

  async close(): Promise<void> {
    this.closed = true
    clearInterval(this.checker)
    // QUIT waits in the offline queue of a connection that is down: only a live one is asked to quit.
    await Promise.all([this.redis, this.sub].map((c) => (c.status === 'ready' ? c.quit().then(() => undefined, () => c.disconnect()) : c.disconnect())))
  }

  private unavailable(cause?: Error): DivertError {
    const why = this.redis.status === 'ready' ? cause?.message : `not connected${this.lastError ? `: ${this.lastError}` : `: ${this.redis.status}`}`
    return new DivertError('STATE_UNAVAILABLE', `the shared rule store ${this.path} is unreachable (${why}): nothing was changed on any instance; traffic keeps the rules it has — try again once it is back (\`divert status\` shows the store)`, {cause})
  }

  private onUp(): void {
    if (!this.connected || this.up) return
    this.up = true
    this.since = Date.now()
    if (this.stale && this.loaded) this.resync('reconnected')
  }

  private onDown(): void {
    if (this.closed) return
    this.stale = true
    if (!this.up) return
    this.up = false
    this.since = Date.now()
    this.o.logger.warn({store: this.path, ...(this.lastError ? {error: this.lastError} : {})}, `shared rule store ${this.path} disconnected${this.lastError ? ` (${this.lastError})` : ''}: traffic keeps the rules it has; divert add/rm fail until it is back; reconnecting`)
  }

  private onMessage(channel: string, text: string): void {
    if (channel !== KEYS.channel || !this.sync) return
    const msg = parseMessage(text)
    if (!msg) return void this.o.logger.warn({store: this.path, message: text.slice(0, 200)}, 'ignored a malformed message on the rule channel')
    this.sync.exclusive(() => this.apply(msg)).catch((error) => this.o.logger.error({err: error, store: this.path}, 'applying a rule change from the fleet failed'))
  }

  /** In the rule service's queue: the next version is merged; an older one is already in; a gap resyncs. */
  private async apply(msg: ChangeMessage): Promise<void> {
    if (msg.resync) return this.resyncNow(`the store was re-seeded by ${msg.instance}`)
    if (msg.v <= this.applied) return
    if (msg.v !== this.applied + 1) return this.resyncNow(`version gap: had ${this.applied}, got ${msg.v}`)
    const from = `${msg.instance} (${msg.by})`
    await this.sync!.merge({put: msg.put, remove: msg.remove.map((id) => ({id}))}, from)
    this.applied = msg.v
    if (msg.nonce === this.nonce) return
    this.o.logger.info({fleet: true, from: msg.instance, by: msg.by, version: msg.v, put: msg.put.map((r) => r.id), removed: msg.remove},
      `rule change from ${msg.instance} by ${msg.by} applied (version ${msg.v})`)
  }

  /** Runs a full resync in the rule service's queue; a failure leaves the store stale (retried). */
  private resync(why: string): void {
    if (!this.sync || this.resyncing) return
    this.resyncing = true
    this.sync.exclusive(() => this.resyncNow(why))
      .catch((error) => this.o.logger.warn({err: error, store: this.path}, `resync with ${this.path} failed: ${(error as Error).message}; retrying when it is back`))
      .finally(() => (this.resyncing = false))
  }

  private async resyncNow(why: string): Promise<void> {
    await this.sub.subscribe(KEYS.channel)
    let {rules, version} = await this.snapshot()
    if (version < this.applied) {
      await this.seed(version)
      ;({rules, version} = await this.snapshot())
    }
    await this.sync!.merge({all: rules}, `${this.path} (resync)`)
    const was = this.applied
    this.applied = version
    this.stale = false
    this.behindAt = undefined
    this.o.logger.info({store: this.path, version, was, rules: rules.length, why}, `resynced with ${this.path}: version ${version}, ${rules.length} runtime rules (${why})`)
  }

  /** Puts this instance's runtime set back into a store that went back in time (see SEED_LUA). */
  private async seed(found: number): Promise<void> {
    const rules = this.sync!.runtimeRules()
    const body = JSON.stringify({rules: rules.map(entryOf), version: this.applied + 1, instance: this.o.instance, nonce: this.nonce})
    const wrote = await (this.redis as unknown as {divertSeed: SeedCommand}).divertSeed(KEYS.rules, KEYS.ids, KEYS.version, KEYS.channel, body)
    if (wrote > 0) this.o.logger.warn({store: this.path, found, had: this.applied, rules: rules.length}, `shared rule store ${this.path} came back at version ${found}, older than this instance's ${this.applied} (restarted without persistence?): put back this instance's ${rules.length} runtime rules as version ${wrote}`)
  }

  /**
   * Every checkEveryMs: a version that stays ahead of ours for two checks in a row (the last
   * message was lost) resyncs, as does a store marked stale once it is connected again.
   */
  private check(): void {
    if (!this.sync || !this.connected || !this.loaded) return
    if (this.stale) return this.resync('reconnected')
    this.redis.get(KEYS.version).then((v) => {
      const version = Number(v ?? 0)
      if (version < this.applied) return this.resync(`the store is at version ${version}, behind this instance's ${this.applied}`)
      if (version === this.applied) return void (this.behindAt = undefined)
      if (this.behindAt === this.applied) return this.resync(`version ${version} ahead of ${this.applied}`)
      this.behindAt = this.applied
    }, () => undefined)
  }

  /** The shared set and its version, read atomically (MULTI/EXEC); entries that are not rules are named and skipped. */
  private async snapshot(): Promise<{rules: StoredRule[]; version: number}> {
    const out = await this.redis.multi().hgetall(KEYS.rules).get(KEYS.version).exec()
    if (!out) throw new Error('transaction aborted')
    const [[e1, hash], [e2, version]] = out as Array<[Error | null, unknown]>
    if (e1 || e2) throw (e1 ?? e2)!
    const rules: StoredRule[] = []
    for (const [field, text] of Object.entries(hash as Record<string, string>)) {
      const rule = parseRule(text)
      if (rule) rules.push(rule)
      else this.o.logger.error({store: this.path, field}, `shared rule store ${this.path}: entry "${field}" is not a rule; skipped`)
    }
    return {rules, version: Number(version ?? 0)}
  }
}

/** What a rule matches: one rule per (canonical source, listener scope), as in the rule table. */
function fieldOf(r: StoredRule): string {
  return `${r.source} ${r.listener ?? '*'}`
}

function entryOf(r: StoredRule): {field: string; id: string; rule: string} {
  return {field: fieldOf(r), id: r.id, rule: JSON.stringify(r)}
}

function parseRule(text: unknown): StoredRule | undefined {
  try {
    return parseStoredRule(JSON.parse(String(text))) as StoredRule | undefined
  } catch {
    return undefined
  }
}

/** A change message as published; cjson encodes an empty array as `{}`. */
function parseMessage(text: string): ChangeMessage | undefined {
  try {
    const m = JSON.parse(text) as Record<string, unknown>
    const list = (x: unknown): unknown[] => (Array.isArray(x) ? x : [])
    const put = list(m.put).map(parseRule)
    if (!Number.isSafeInteger(m.v) || put.some((r) => r === undefined)) return undefined
    return {v: m.v as number, put: put as StoredRule[], remove: list(m.remove).map(String), by: String(m.by ?? 'unknown'), instance: String(m.instance ?? '?'), nonce: String(m.nonce ?? ''), resync: m.resync === true}
  } catch {
    return undefined
  }
}

/** Resolves once `c` is ready, rejects after `ms` with the last connection error. */
function ready(c: Redis, ms: number): Promise<void> {
  if (c.status === 'ready') return Promise.resolve()
  return new Promise((resolve, reject) => {
    let last: Error | undefined
    const onError = (e: Error): void => void (last = e)
    const done = (error?: Error): void => {
      clearTimeout(timer)
      c.off('ready', onReady)
      c.off('error', onError)
      if (error) reject(error)
      else resolve()
    }
    const onReady = (): void => done()
    const timer = setTimeout(() => done(last ?? new Error(`no connection within ${ms}ms`)), ms)
    c.on('ready', onReady)
    c.on('error', onError)
  })
}
