/**
 * RuleService: the one owner of rule changes — the rule table, the store that keeps runtime rules,
 * the recordings rules hold open, and expiry. Every change runs on one queue (a promise chain): the
 * restore at boot, add, rm, rm --all, expiry and a reload's rules, one at a time, each checked
 * against the config in force when it runs. A change is saved before it is in force: the new runtime
 * set is worked out, the table put back at once (no await in between, so no session sees it), the
 * set saved, and only then the change made — so what is stored is exactly what callers were told.
 *
 *   divert add/rm ─┐
 *   expiry timer  ─┼─▶ queue ─▶ check ─▶ store.save ─▶ RuleTable ─▶ onChange (taps follow)
 *   reload, boot  ─┘
 */
import {isAbsolute, dirname, resolve} from 'node:path'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import type {Config, RuleSpec} from '../config/types.js'
import type {Backend} from '../backends/backend.js'
import type {RecordingSet} from '../capture/recorder.js'
import {RuleTable, type Rule} from './table.js'
import {checkRuleSpec} from './spec.js'
import type {RuleStore, StoredRule} from './state.js'

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
  now?: () => number
}

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
  private expiryTimer?: NodeJS.Timeout
  private stopped = false
  private readonly now: () => number

  constructor(private readonly o: RuleServiceOptions) {
    this.now = o.now ?? Date.now
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
        this.o.logger.error({state: store.path, movedTo: loaded.movedAside, problem: loaded.problem}, `state file ${store.path} is corrupt (${loaded.problem}): moved aside to ${loaded.movedAside}; starting with no runtime rules — restore them from that file`)
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
  add(spec: RuleSpec): Promise<AddOutcome> {
    return this.exclusive(async () => {
      const config = this.o.config()
      const record = spec.record === undefined ? undefined : absolute(spec.record, dirname(config.file))
      const found = this.table.find(spec.source, spec.listener)
      const old = found?.origin === 'runtime' ? found : undefined
      const kept = old ? keptFields(old, spec, this.now()) : {}
      const merged: RuleSpec = {...spec, record, ...kept}
      checkRuleSpec(merged)
      this.checkNames(merged)
      if (record) await this.o.recordings.acquire(record, {maxBytes: merged.recordMaxBytes ?? config.captureMaxBytes, logger: this.o.logger})
      let staged: {rule: Rule; replaced?: Rule}
      try {
        const stored = this.preview(() => (staged = this.table.add(merged, 'runtime')), () => this.undoAdd(staged))
        await this.save(stored)
      } catch (error) {
        if (record) await this.o.recordings.release(record)
        throw error
      }
      const {rule, replaced} = this.table.add(RuleTable.spec(staged!.rule), 'runtime')
      await this.changed(replaced ? [replaced] : [])
      return {rule, ...(replaced ? {replaced} : {}), kept}
    })
  }

  /** Removes one runtime rule by id or source (and listener scope). */
  remove(key: string, listener?: string): Promise<Rule[]> {
    return this.exclusive(async () => {
      if (listener) checkListener(this.o.config(), listener)
      let removed: Rule[] = []
      const stored = this.preview(() => (removed = [this.table.remove(key, {listener})]), () => this.putBack(removed))
      return this.commitRemoval(stored, removed)
    })
  }

  removeAll(): Promise<Rule[]> {
    return this.exclusive(async () => {
      let removed: Rule[] = []
      const stored = this.preview(() => (removed = this.table.removeAll('runtime')), () => this.putBack(removed))
      return this.commitRemoval(stored, removed)
    })
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

  /** One timer for the next rule expiry; re-armed whenever rules change. */
  scheduleExpiry(): void {
    clearTimeout(this.expiryTimer)
    const next = this.table.nextExpiry()
    if (next === undefined || this.stopped) return
    const delay = Math.min(Math.max(0, next - this.now()), 2 ** 31 - 1)
    this.expiryTimer = setTimeout(() => {
      this.exclusive(() => this.expire()).catch((error) => this.o.logger.error({err: error}, 'rule expiry failed'))
    }, delay)
  }

  /** No more expiry; changes already queued still run. */
  stop(): void {
    this.stopped = true
    clearTimeout(this.expiryTimer)
  }

  /** Every rule that names a recording holds one reference on it (boot: config and restored rules). */
  async openRecordings(rules: Rule[]): Promise<void> {
    const maxBytes = this.o.config().captureMaxBytes
    for (const r of rules) if (r.record) await this.o.recordings.acquire(r.record, {maxBytes: r.recordMaxBytes ?? maxBytes, logger: this.o.logger})
  }

  async closeRecordings(rules: Rule[]): Promise<void> {
    for (const r of rules) if (r.record) await this.o.recordings.release(r.record)
  }

  /** Expired rules no longer match (RuleTable.lookup checks the time); this removes them and saves. */
  private async expire(): Promise<void> {
    const expired = this.table.expire()
    for (const r of expired) this.audit(r, `rule ${r.id} for ${r.source} expired`)
    if (expired.length > 0) {
      await this.save(this.runtimeSpecs()).catch((error) => this.o.logger.error({err: error}, 'could not save state after expiry'))
      await this.changed(expired)
    }
    this.scheduleExpiry()
  }

  private async commitRemoval(stored: StoredRule[], removed: Rule[]): Promise<Rule[]> {
    await this.save(stored)
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

  private undoAdd(staged: {rule: Rule; replaced?: Rule}): void {
    this.table.remove(staged.rule.id)
    if (staged.replaced) this.putBack([staged.replaced])
  }

  /** Puts rules back as they were: same id, creation time and hit count. */
  private putBack(rules: Rule[]): void {
    for (const r of rules) this.table.add(RuleTable.spec(r), 'runtime').rule.hits = r.hits
  }

  private async save(rules: StoredRule[]): Promise<void> {
    await this.store?.save(rules)
  }

  private runtimeSpecs(): StoredRule[] {
    return this.table.snapshot().filter((r) => r.origin === 'runtime').map((r) => RuleTable.spec(r))
  }

  /** The backends and listener a rule names exist in the config in force. */
  private checkNames(spec: RuleSpec): void {
    for (const b of [spec.to, spec.mirror]) if (b) checkBackend(this.o.backends(), b)
    if (spec.listener) checkListener(this.o.config(), spec.listener)
  }

  private audit(r: Rule, msg: string): void {
    this.o.logger.info({audit: true, action: 'rule.expired', by: 'expiry', rule: RuleTable.view(r)}, msg)
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
