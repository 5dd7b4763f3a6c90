/**
 * RuleService: the one owner of rule changes — the rule table, the store that keeps runtime rules,
 * the recordings rules hold open, and expiry. Every change runs on one queue (a promise chain): the
 * restore at boot, add, rm, rm --all, expiry and a reload's rules, one at a time, each checked
 * against the config in force when it runs. A change is saved before it is in force: the new runtime
 * set is worked out, the table put back at once (no await in between, so no session sees it), the
 * set saved, and only then the change made — so what is stored is exactly what callers were told.
 *
 *
 * With a shared store (issue 14, src/fleet/redis-store.ts) the other instances' changes come in
 * through merge(), on the same queue, so a local change and a remote one never interleave.
 *
 *   divert add/rm ─┐
 *   expiry timer  ─┼─▶ queue ─▶ check ─▶ store.save ─▶ RuleTable ─▶ onChange (taps follow)
 *   reload, boot  ─┤
 *   fleet (merge) ─┘
 */
import {isAbsolute, dirname, resolve} from 'node:path'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import {realClock, type Clock, type Timer} from '../clock.js'
import type {Config, RuleSpec} from '../config/types.js'
import type {Backend} from '../backends/backend.js'
import type {RecordingSet} from '../capture/recorder.js'
import {RuleTable, type Rule} from './table.js'
import {formatConflicts, ruleConflicts} from './spec.js'
import {RuleIdTaken, type RuleChange, type RuleStore, type StoredRule} from './state.js'

export interface RuleServiceOptions {
  table: RuleTable
  recordings: RecordingSet
  logger: Logger
  /** The config and backends in force; a reload changes them (inside the queue). */
  config: () => Config
  backends: () => Map<string, Backend>
  /**
   * Told after every change that is in force, before recordings let go (live sessions' taps follow,
   * gateway mode's intercepted sources follow); the change completes when its promise settles.
   */
  onChange?: () => void | Promise<void>
  /** The daemon's clock, the table's too: the expiry timer fires when the table says a rule expired. */
  clock?: Clock
  /** This instance's fleet name, for the audit lines (known once the config is read). */
  instance?: () => string
}

/** Another instance's change, or the whole shared set (a resync), as merge() applies it. */
export type RemoteChange = {all: StoredRule[]} | {put: StoredRule[]; remove: Array<Pick<StoredRule, 'id'>>}

/** A store's rules were added this many times with a taken id before the service gives up. */
const ID_ATTEMPTS = 5

/** Fields a replacing `add` did not set and took from the rule it replaced. */
export interface KeptFields {
  expiresAt?: number
  note?: string
  recordMaxBytes?: number
}

export interface AddOutcome {
  rule: Rule
  replaced?: Rule
  kept: KeptFields
}

export class RuleService {
  store?: RuleStore
  private queue: Promise<unknown> = Promise.resolve()
  private expiryTimer?: Timer
  private stopped = false
  private readonly clock: Clock

  constructor(private readonly o: RuleServiceOptions) {
    this.clock = o.clock ?? realClock
  }

  get table(): RuleTable {
    return this.o.table
  }

  /** Runs `job` once every change queued before it is done (failed or not); later ones wait for it. */
  exclusive<T>(job: () => Promise<T>): Promise<T> {
    const run = this.queue.then(job)
    this.queue = run.catch(() => undefined)
    return run
  }

  /** Boot: the store's rules that still fit the config go in; the others are named and skipped. */
  restore(store: RuleStore | undefined): Promise<void> {
    return this.exclusive(async () => {
      this.store = store
      if (!store) return
      const loaded = await store.load()
      if (loaded.movedAside) {
        this.o.logger.error({code: 'DIVERT_ERR_STATE_CORRUPT', state: store.path, movedTo: loaded.movedAside, problem: loaded.problem}, `state file ${store.path} is corrupt (${loaded.problem}): moved aside to ${loaded.movedAside}; starting with no runtime rules — restore them from that file`)
      }
      for (const [i, r] of loaded.rules.entries()) this.restoreOne(store, r, i)
      const expired = this.table.expire()
      for (const r of expired) this.audit(r, `rule ${r.id} for ${r.source} expired while the daemon was down`)
      if (loaded.rules.length > 0) this.o.logger.info({state: store.path, rules: loaded.rules.length - expired.length}, 'runtime rules restored')
      this.scheduleExpiry()
    })
  }

  private restoreOne(store: RuleStore, r: StoredRule, index: number): void {
    try {
      this.checkNames(r)
      this.table.add(r, 'runtime')
    } catch (error) {
      this.o.logger.error({state: store.path, rule: r}, `state file ${store.path}: rules[${index}] (${r.id} for ${r.source}) not applied: ${(error as Error).message} (re-add it with divert add)`)
    }
  }

  /**
   * Adds or replaces the runtime rule for (source, listener). A replacement keeps the old rule's
   * expiry, note and recording size limit unless the new call sets them (actions are the new call's).
   */
  add(spec: RuleSpec, who = 'unknown'): Promise<AddOutcome> {
    return this.exclusive(async () => {
      const config = this.o.config()
      const record = spec.record === undefined ? undefined : absolute(spec.record, dirname(config.file))
      const found = this.table.find(spec.source, spec.listener)
      const old = found?.origin === 'runtime' ? found : undefined
      const kept = old ? keptFields(old, spec, this.clock.now()) : {}
      const merged: RuleSpec = {...spec, record, ...kept}
      this.checkNames(merged)
      if (record) await this.o.recordings.acquire(record, {maxBytes: merged.recordMaxBytes ?? config.captureMaxBytes, logger: this.o.logger})
      let staged: {rule: Rule; replaced?: Rule}
      try {
        staged = await this.stage(merged, who)
      } catch (error) {
        if (record) await this.o.recordings.release(record)
        throw error
      }
      const {rule, replaced} = this.table.add(RuleTable.spec(staged.rule), 'runtime')
      await this.changed(replaced ? [replaced] : [])
      return {rule, ...(replaced ? {replaced} : {}), kept}
    })
  }

  /** Removes one runtime rule by id or source (and listener scope). */
  remove(key: string, listener?: string, who = 'unknown'): Promise<Rule[]> {
    return this.exclusive(async () => {
      if (listener) checkListener(this.o.config(), listener)
      let removed: Rule[] = []
      const stored = this.preview(() => (removed = [this.table.remove(key, {listener})]), () => this.putBack(removed))
      return this.commitRemoval(stored, removed, who)
    })
  }

  removeAll(who = 'unknown'): Promise<Rule[]> {
    return this.exclusive(async () => {
      let removed: Rule[] = []
      const stored = this.preview(() => (removed = this.table.removeAll('runtime')), () => this.putBack(removed))
      return this.commitRemoval(stored, removed, who)
    })
  }

  /**
   * Inside exclusive() (the shared store calls it there, after its version check): makes this
   * instance's runtime rules follow another instance's change, or the whole shared set on a resync.
   * Idempotent — a rule already in force with the same id stays as it is, hits and all. A rule this
   * instance cannot apply (a backend, listener or recording it lacks) is named in the log and skipped,
   * as at restore: config rules differ per instance.
   */
  async merge(change: RemoteChange, from: string): Promise<void> {
    const wanted = 'all' in change ? change.all : change.put
    const keep = new Set(wanted.map((r) => r.id))
    const leaving = 'all' in change ? this.table.rulesOf('runtime').filter((r) => !keep.has(r.id)) : change.remove.map((r) => this.table.get(r.id)).filter((r) => r?.origin === 'runtime')
    const gone = leaving.map((r) => this.table.remove(r!.id))
    let added = false
    for (const r of wanted) {
      const outcome = await this.mergeOne(r, from)
      added ||= outcome !== undefined
      if (outcome?.replaced) gone.push(outcome.replaced)
    }
    // This instance's own change comes back on the channel too: then nothing changed here.
    if (added || gone.length > 0) await this.changed(gone)
  }

  /** One shared rule in force here (undefined: it already was, or cannot be); with the runtime rule it replaced. */
  private async mergeOne(r: StoredRule, from: string): Promise<{replaced?: Rule} | undefined> {
    if (this.table.get(r.id)?.origin === 'runtime') return undefined
    let acquired = false
    try {
      this.checkNames(r)
      if (r.record) await this.o.recordings.acquire(r.record, {maxBytes: r.recordMaxBytes ?? this.o.config().captureMaxBytes, logger: this.o.logger})
      acquired = Boolean(r.record)
      return {replaced: this.table.add(r, 'runtime').replaced}
    } catch (error) {
      if (acquired) await this.o.recordings.release(r.record!)
      this.o.logger.error({rule: r, from}, `rule ${String(r.id)} for ${String(r.source)} from ${from} not applied on this instance: ${(error as Error).message}`)
      return undefined
    }
  }

  /** Runs a config reload in the queue: no rule change interleaves with it. */
  reload<T>(apply: () => Promise<T>): Promise<T> {
    return this.exclusive(async () => {
      const result = await apply()
      this.scheduleExpiry()
      await this.o.onChange?.()
      return result
    })
  }

  /**
   * One timer for the next rule expiry; re-armed whenever rules change. An expiry further away than
   * a timer can wait (clock.ts MAX_DELAY_MS) wakes this early: expire() finds nothing and re-arms.
   */
  scheduleExpiry(): void {
    this.clock.clearTimeout(this.expiryTimer)
    const next = this.table.nextExpiry()
    if (next === undefined || this.stopped) return
    this.expiryTimer = this.clock.setTimeout(() => {
      this.exclusive(() => this.expire()).catch((error) => this.o.logger.error({err: error}, 'rule expiry failed'))
    }, next - this.clock.now())
  }

  /** No more expiry; changes already queued still run. */
  stop(): void {
    this.stopped = true
    this.clock.clearTimeout(this.expiryTimer)
  }

  /** Every rule that names a recording holds one reference on it (boot: config and restored rules). */
  async openRecordings(rules: Rule[]): Promise<void> {
    const maxBytes = this.o.config().captureMaxBytes
    for (const r of rules) if (r.record) await this.o.recordings.acquire(r.record, {maxBytes: r.recordMaxBytes ?? maxBytes, logger: this.o.logger})
  }

  async closeRecordings(rules: Rule[]): Promise<void> {
    for (const r of rules) if (r.record) await this.o.recordings.release(r.record)
  }

  /**
   * Expired rules no longer match (RuleTable.lookup checks the time); this removes them and saves.
   * In a fleet every instance does this at the rule's expiresAt (no single point of failure); the
   * shared store removes a rule only while it holds that id, so the second removal changes nothing.
   */
  private async expire(): Promise<void> {
    const expired = this.table.expire()
    for (const r of expired) this.audit(r, `rule ${r.id} for ${r.source} expired`)
    if (expired.length > 0) {
      const change = {put: [], remove: expired.map((r) => RuleTable.spec(r)), by: 'expiry'}
      await this.save(this.runtimeSpecs(), change).catch((error) => this.o.logger.error({err: error}, 'could not save state after expiry'))
      await this.changed(expired)
    }
    this.scheduleExpiry()
  }

  private async commitRemoval(stored: StoredRule[], removed: Rule[], who: string): Promise<Rule[]> {
    await this.save(stored, {put: [], remove: removed.map((r) => RuleTable.spec(r)), by: who})
    for (const r of removed) this.table.remove(r.id)
    await this.changed(removed)
    return removed
  }

  /** After a change is in force: taps follow, the rules that went let go of their recordings. */
  private async changed(gone: Rule[]): Promise<void> {
    this.scheduleExpiry()
    await this.o.onChange?.()
    await this.closeRecordings(gone)
  }

  /** What the store must hold once `change` is made: made, read, undone — synchronously. */
  private preview(change: () => void, undo: () => void): StoredRule[] {
    change()
    try {
      return this.runtimeSpecs()
    } finally {
      undo()
    }
  }

  /**
   * Saves the new rule before it is in force. A shared store that finds its id held by another
   * instance's rule refuses it: the rule is staged again with a fresh id (ids are fleet-wide).
   */
  private async stage(spec: RuleSpec, who: string): Promise<{rule: Rule; replaced?: Rule}> {
    for (let attempt = 1; ; attempt++) {
      let staged!: {rule: Rule; replaced?: Rule}
      const stored = this.preview(() => (staged = this.table.add(spec, 'runtime')), () => this.undoAdd(staged))
      try {
        await this.save(stored, {put: [RuleTable.spec(staged.rule)], remove: [], by: who})
        return staged
      } catch (error) {
        if (!(error instanceof RuleIdTaken) || attempt >= ID_ATTEMPTS) throw error
      }
    }
  }

  private undoAdd(staged: {rule: Rule; replaced?: Rule}): void {
    this.table.remove(staged.rule.id)
    if (staged.replaced) this.putBack([staged.replaced])
  }

  /** Puts rules back as they were: same id, creation time and hit count. */
  private putBack(rules: Rule[]): void {
    for (const r of rules) this.table.add(RuleTable.spec(r), 'runtime').rule.hits = r.hits
  }

  private async save(rules: StoredRule[], change: RuleChange): Promise<void> {
    await this.store?.save(rules, change)
  }

  /** The runtime rules as a store keeps them. */
  runtimeRules(): StoredRule[] {
    return this.runtimeSpecs()
  }

  private runtimeSpecs(): StoredRule[] {
    return this.table.snapshot().filter((r) => r.origin === 'runtime').map((r) => RuleTable.spec(r))
  }

  /** The rule fits the config in force (ruleConflicts): its names exist, no PROXY v1 to a UDP listener. */
  private checkNames(spec: RuleSpec): void {
    const [c] = ruleConflicts(spec, this.o.config())
    if (c?.kind === 'backend') checkBackend(this.o.backends(), c.name)
    if (c?.kind === 'listener') checkListener(this.o.config(), c.name)
    if (c) throw new DivertError('RULE_INVALID', formatConflicts([c]))
  }

  private audit(r: Rule, msg: string): void {
    this.o.logger.info({audit: true, action: 'rule.expired', by: 'expiry', ...(this.o.instance ? {instance: this.o.instance()} : {}), rule: RuleTable.view(r)}, msg)
  }
}

/** What a replacing add takes over from the old rule: only what it does not set, and only what still applies. */
function keptFields(old: Rule, spec: RuleSpec, now: number): KeptFields {
  const kept: KeptFields = {}
  if (spec.expiresAt === undefined && old.expiresAt !== undefined && old.expiresAt > now) kept.expiresAt = old.expiresAt
  if (spec.note === undefined && old.note !== undefined) kept.note = old.note
  if (spec.record !== undefined && spec.recordMaxBytes === undefined && old.recordMaxBytes !== undefined) kept.recordMaxBytes = old.recordMaxBytes
  return kept
}

export function checkBackend(backends: Map<string, Backend>, name: string): void {
  if (!backends.has(name)) {
    throw new DivertError('BACKEND_UNKNOWN', `unknown backend "${name}" (known: ${[...backends.keys()].join(', ')})`, {details: {known: [...backends.keys()]}})
  }
}

export function checkListener(config: Config, name: string): {name: string; backend: string} {
  const l = config.listeners.find((x) => x.name === name)
  if (!l) {
    const known = config.listeners.map((x) => x.name)
    throw new DivertError('LISTENER_UNKNOWN', `unknown listener "${name}" (known: ${known.join(', ')})`, {details: {known}})
  }
  return l
}

function absolute(p: string, base: string): string {
  return isAbsolute(p) ? p : resolve(base, p)
}
