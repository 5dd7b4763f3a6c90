/**
 * StateStore: runtime rules on disk, so `divert add` survives a restart (HAProxy's runtime `add acl`
 * changes are lost on reload). Writes are atomic: temp file in the same directory, fsync, rename,
 * fsync of the directory (so the rename itself is durable, see rename(2) and fsync(2) notes on
 * directories). A crash leaves either the old or the new file, never a torn one. Saves are
 * serialised and coalesced: callers await the save that includes their change.
 *
 * The temp file gets a random name and is opened O_CREAT|O_EXCL|O_NOFOLLOW: the state directory may
 * be writable by others (e.g. /tmp), and a predictable name there lets anyone plant a symlink that
 * the write would follow onto its target (CWE-377/CWE-59; open(2) on O_EXCL: "symbolic links are
 * not followed").
 *
 *   RuleService ─save()─▶ .STATE.tmp-PID-RANDOM ─fsync─rename─▶ STATE
 */
import {constants as fsConstants, promises as fs} from 'node:fs'
import {randomBytes} from 'node:crypto'
import {basename, dirname, join} from 'node:path'
import {DivertError} from '../errors.js'
import type {RuleSpec} from '../config/types.js'
import {parseStoredRules} from './spec.js'
import {isAlive} from '../sys/pid.js'

export interface StoredRule extends RuleSpec {
  id: string
  createdAt: number
}

interface StateFile {
  version: 1
  rules: StoredRule[]
}

export interface LoadResult {
  rules: StoredRule[]
  /** Set when the file was corrupt: where it was moved. */
  movedAside?: string
  problem?: string
}

/** One change to the runtime set, for a store that keeps changes rather than whole sets (Redis). */
export interface RuleChange {
  /** Rules added, or replacing the rule for the same source and listener scope. */
  put: StoredRule[]
  /** Rules removed (by id: a store removes a rule only if it still holds that id). */
  remove: StoredRule[]
  /** Who asked (the audit's `by`), for the other instances' logs. */
  by: string
}

/** Where runtime rules are kept: the state file, or the fleet's Redis (src/fleet/redis-store.ts). */
export interface RuleStore {
  /** A human name for messages (the file path, the URL). */
  readonly path: string
  load(): Promise<LoadResult>
  /**
   * Persists the full runtime set (`rules`) or, for a shared store, `change`; resolves once it is
   * durably stored, rejects with STATE_WRITE (or STATE_UNAVAILABLE, or RuleIdTaken).
   */
  save(rules: StoredRule[], change?: RuleChange): Promise<void>
}

/** A shared store refuses a rule id another instance's rule holds: the service draws another id. */
export class RuleIdTaken extends Error {}

/** O_EXCL makes open(2) fail on any existing name, a dangling symlink included; O_NOFOLLOW is belt and braces. */
const TEMP_FLAGS = fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW | fsConstants.O_WRONLY

export class StateStore implements RuleStore {
  private pending?: Promise<void>
  private queued?: {rules: StoredRule[]; waiters: Array<{resolve: () => void; reject: (e: unknown) => void}>}

  constructor(readonly path: string) {}

  /** Reads the state file. Missing → no rules. Corrupt → moved aside (never dropped) and reported. */
  async load(): Promise<LoadResult> {
    await this.removeStaleTemps()
    const {rules, problem} = await this.read()
    if (problem === undefined) return {rules}
    const aside = `${this.path}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`
    await fs.rename(this.path, aside)
    return {rules: [], movedAside: aside, problem}
  }

  /**
   * Reads the state file and changes nothing (`divert check`): a corrupt one is reported, not moved.
   * Its rules go through the rule schema (rules/spec.ts parseStoredRules), as config rules and POST /rules do.
   */
  async read(): Promise<{rules: StoredRule[]; problem?: string}> {
    let text: string
    try {
      text = await fs.readFile(this.path, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {rules: []}
      throw new DivertError('STATE_CORRUPT', `cannot read state file ${this.path}: ${(error as Error).message}`, {cause: error})
    }
    return validate(text)
  }

  /** Temp files are `.STATE.tmp-PID-RANDOM`, next to the state file so that rename(2) stays within one filesystem. */
  private get tempPrefix(): string {
    return `.${basename(this.path)}.tmp-`
  }

  /**
   * A daemon killed (-9, power loss) between open and rename leaves its temp file behind; the state
   * file itself is whole either way. Remove temp files whose process is gone, never a live one's.
   */
  private async removeStaleTemps(): Promise<void> {
    const names = await fs.readdir(dirname(this.path)).catch(() => [] as string[])
    for (const name of names) {
      if (!name.startsWith(this.tempPrefix)) continue
      // `PID-RANDOM`, or a bare `PID` as older versions wrote it.
      const pid = Number(name.slice(this.tempPrefix.length).split('-')[0])
      if (!Number.isInteger(pid) || pid <= 0 || (pid !== process.pid && isAlive(pid))) continue
      await fs.unlink(join(dirname(this.path), name)).catch(() => undefined)
    }
  }

  /** Persists `rules` (the full runtime set); resolves once they are durably on disk. */
  save(rules: StoredRule[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.queued) {
        this.queued.rules = rules
        this.queued.waiters.push({resolve, reject})
        return
      }
      this.queued = {rules, waiters: [{resolve, reject}]}
      void this.drain()
    })
  }

  private async drain(): Promise<void> {
    if (this.pending) await this.pending.catch(() => undefined)
    const job = this.queued
    if (!job) return
    this.queued = undefined
    this.pending = this.write(job.rules)
    try {
      await this.pending
      for (const w of job.waiters) w.resolve()
    } catch (error) {
      const e = new DivertError('STATE_WRITE', `cannot write state file ${this.path}: ${(error as Error).message}`, {cause: error})
      for (const w of job.waiters) w.reject(e)
    } finally {
      this.pending = undefined
      if (this.queued) void this.drain()
    }
  }

  private async write(rules: StoredRule[]): Promise<void> {
    const dir = dirname(this.path)
    const tmp = join(dir, `${this.tempPrefix}${process.pid}-${randomBytes(8).toString('hex')}`)
    const body = JSON.stringify({version: 1, rules} satisfies StateFile, null, 2) + '\n'
    const fh = await fs.open(tmp, TEMP_FLAGS, 0o600)
    try {
      try {
        await fh.writeFile(body)
        await fh.sync()
      } finally {
        await fh.close()
      }
      await fs.rename(tmp, this.path)
    } catch (error) {
      // A full disk leaves a partial temp file: remove it so it does not hold the space it lacked.
      await fs.unlink(tmp).catch(() => undefined)
      throw error
    }
    const dh = await fs.open(dir, 'r')
    try {
      await dh.sync()
    } finally {
      await dh.close()
    }
  }
}


/** The file's rules, or what is wrong with it: not JSON, not `{"version": 1, "rules": [...]}`, or a rule the rule schema refuses. */
function validate(text: string): {rules: StoredRule[]; problem?: string} {
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch (error) {
    return {rules: [], problem: `not JSON (${(error as Error).message})`}
  }
  const d = data as Partial<StateFile>
  if (!d || typeof d !== 'object' || d.version !== 1 || !Array.isArray(d.rules)) return {rules: [], problem: 'expected {"version": 1, "rules": [...]}'}
  return parseStoredRules(d.rules, Date.now())
}
