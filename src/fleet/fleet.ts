/**
 * Fleet: what an instance that keeps its rules in Redis (`state: redis://…`, issue 14) runs besides
 * the rule service — the shared store, its registration among the live instances, and the view that
 * asks them all. The daemon opens it before restoring rules and starts the heartbeat once its admin
 * listener is bound (the URL it registers).
 *
 *   Daemon ─▶ Fleet ─┬─ RedisRuleStore (RuleStore of the RuleService)
 *                    ├─ FleetMembers (heartbeat, list)
 *                    └─ FleetView (sessions|status|kill --fleet)
 */
import {randomBytes} from 'node:crypto'
import type {Logger} from 'pino'
import {RedisRuleStore, type RuleSync} from './redis-store.js'
import {FleetMembers} from './members.js'
import {FleetView} from './view.js'
import {VERSION} from '../version.js'

export interface FleetOptions {
  url: string
  name: string
  logger: Logger
  sync: RuleSync
}

export class Fleet {
  readonly store: RedisRuleStore
  readonly members: FleetMembers
  view: FleetView
  private adminUrl: string | null = null
  private readonly startedAt = new Date().toISOString()
  private readonly nonce = randomBytes(6).toString('hex')

  constructor(private readonly o: FleetOptions) {
    this.store = new RedisRuleStore({url: o.url, instance: o.name, logger: o.logger})
    this.store.attach(o.sync)
    this.members = new FleetMembers({
      redis: this.store.redis, logger: o.logger, store: this.store.path,
      self: () => ({name: o.name, adminUrl: this.adminUrl, pid: process.pid, version: VERSION, startedAt: this.startedAt, nonce: this.nonce}),
    })
    this.view = new FleetView({members: this.members, self: o.name})
  }

  get name(): string {
    return this.o.name
  }

  /** Registers this instance (its admin URL and the token to ask the others with) and keeps it alive. */
  start(admin: {url: string | null; token?: string}): void {
    this.adminUrl = admin.url
    this.view = new FleetView({members: this.members, self: this.o.name, selfUrl: admin.url, token: admin.token})
    if (!admin.url) this.o.logger.warn({fleet: true}, 'this instance registers no admin URL, so `--fleet` commands on other instances list it as unreachable: set admin.listen and admin.token_file (and fleet.admin_url when admin.listen binds a wildcard address)')
    this.members.start()
  }

  async close(): Promise<void> {
    await this.members.stop().catch(() => undefined)
    await this.store.close()
  }
}
