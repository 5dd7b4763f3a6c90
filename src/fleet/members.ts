/**
 * FleetMembers: who is in the fleet (issue 14). Every instance keeps one Redis key
 * `divert:instance:NAME` alive — its name, the admin URL the others reach it at, pid, version — set
 * with a TTL (SET … PX) every heartbeat, so an instance that stops or is cut off drops out by itself
 * within the TTL, with nobody to clean up after it. list() reads the live ones (SCAN + MGET).
 *
 *   every heartbeat: SET divert:instance:NAME {…} PX ttl      list(): SCAN divert:instance:* ─▶ MGET
 */
import type {Redis} from 'ioredis'
import type {Logger} from 'pino'
import {DivertError} from '../errors.js'
import {KEYS} from './redis-store.js'

export interface InstanceRecord {
  name: string
  /** `http://host:port` of its TCP admin listener, or null when it has none to offer. */
  adminUrl: string | null
  pid: number
  version: string
  startedAt: string
  /** Tells two processes that were given the same name apart. */
  nonce: string
  heartbeatAt: string
}

export interface FleetMembersOptions {
  redis: Redis
  /** The record to register, read at each heartbeat (the admin URL is known once it is bound). */
  self: () => Omit<InstanceRecord, 'heartbeatAt'>
  logger: Logger
  /** Where messages name the store. */
  store: string
  heartbeatMs?: number
  ttlMs?: number
}

/** A record can only be so large: a key that holds more is not ours. */
const MAX_RECORD = 4096

export class FleetMembers {
  private timer?: NodeJS.Timeout
  private warnedClash = false
  /** Heartbeats in a row that found another process's record under our name. */
  private clashes = 0

  constructor(private readonly o: FleetMembersOptions) {}

  get heartbeatMs(): number {
    return this.o.heartbeatMs ?? 2000
  }

  get ttlMs(): number {
    return this.o.ttlMs ?? 3 * this.heartbeatMs
  }

  start(): void {
    this.beat()
    this.timer = setInterval(() => this.beat(), this.heartbeatMs).unref()
  }

  /** Stops the heartbeat and removes this instance's key (if it is still this process's). */
  async stop(): Promise<void> {
    clearInterval(this.timer)
    const key = KEYS.instance + this.o.self().name
    const mine = await this.read([key]).catch(() => [])
    if (mine[0]?.nonce === this.o.self().nonce) await this.o.redis.del(key).catch(() => undefined)
  }

  /** The instances whose heartbeat is alive, by name. Throws STATE_UNAVAILABLE without Redis. */
  async list(): Promise<InstanceRecord[]> {
    const keys: string[] = []
    try {
      let cursor = '0'
      do {
        const [next, batch] = await this.o.redis.scan(cursor, 'MATCH', `${KEYS.instance}*`, 'COUNT', 100)
        keys.push(...batch)
        cursor = next
      } while (cursor !== '0' && keys.length < 10_000)
      return (await this.read([...new Set(keys)])).sort((a, b) => a.name.localeCompare(b.name))
    } catch (error) {
      const why = this.o.redis.status === 'ready' ? (error as Error).message : `not connected: ${this.o.redis.status}`
      throw new DivertError('STATE_UNAVAILABLE', `cannot list the fleet: the shared rule store ${this.o.store} is unreachable (${why})`, {cause: error})
    }
  }

  private async read(keys: string[]): Promise<InstanceRecord[]> {
    if (keys.length === 0) return []
    const values = await this.o.redis.mget(...keys)
    return values.flatMap((v) => {
      const r = v && v.length <= MAX_RECORD ? parseRecord(v) : undefined
      return r ? [r] : []
    })
  }

  private beat(): void {
    const self = this.o.self()
    const key = KEYS.instance + self.name
    const record: InstanceRecord = {...self, heartbeatAt: new Date().toISOString()}
    // SET … GET returns what was there: two heartbeats in a row that find another process's record
    // mean two live instances share a name (one find alone is the record of this name's last run).
    this.o.redis.set(key, JSON.stringify(record), 'PX', this.ttlMs, 'GET').then((old) => {
      const prev = old ? parseRecord(old) : undefined
      this.clashes = prev && prev.nonce !== self.nonce ? this.clashes + 1 : 0
      if (prev && this.clashes >= 2 && !this.warnedClash) {
        this.warnedClash = true
        this.o.logger.error({fleet: true, name: self.name, other: prev}, `another instance (pid ${prev.pid}, ${prev.adminUrl ?? 'no admin URL'}) registers the fleet name "${self.name}" too: give each instance its own fleet.name`)
      }
    }, () => undefined)
  }
}

function parseRecord(text: string): InstanceRecord | undefined {
  try {
    const r = JSON.parse(text) as InstanceRecord
    if (typeof r?.name !== 'string' || (r.adminUrl !== null && typeof r.adminUrl !== 'string')) return undefined
    return r
  } catch {
    return undefined
  }
}
