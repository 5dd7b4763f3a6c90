/**
 * FleetView: one question to every live instance (issue 14) — `divert sessions|status|kill --fleet`.
 * This instance answers itself in process; every other instance is asked over its TCP admin listener
 * (the URL it registered, with this daemon's own admin token: the fleet shares one token), all at
 * once, each bounded by a timeout. An instance that cannot be asked is listed with the reason, never
 * left out.
 *
 *   CLI ─▶ this daemon ─┬─▶ itself (in process)
 *                       └─▶ FleetMembers.list() ─▶ AdminClient ─HTTP+token─▶ other instances
 */
import {AdminClient} from '../admin/client.js'
import type {DivertError} from '../errors.js'
import type {FleetInstanceView} from '../admin/protocol.js'
import type {FleetMembers, InstanceRecord} from './members.js'

export interface FleetViewOptions {
  members: FleetMembers
  /** This instance's name: its answer comes from `local`, not over HTTP. */
  self: string
  selfUrl?: string | null
  /** The admin token this daemon's own TCP listener takes, sent to the others. */
  token?: string
  timeoutMs?: number
}

export type FleetAnswer<T> = FleetInstanceView & {result: T | null}

export class FleetView {
  constructor(private readonly o: FleetViewOptions) {}

  /** Asks every live instance; `who` (the caller) is passed on, so the others' audit lines name them. */
  async ask<T>(who: string, local: () => T | Promise<T>, remote: (c: AdminClient) => Promise<T>): Promise<Array<FleetAnswer<T>>> {
    const others = (await this.o.members.list()).filter((m) => m.name !== this.o.self)
    const mine = this.answer({instance: this.o.self, adminUrl: this.o.selfUrl ?? null}, local)
    return Promise.all([mine, ...others.map((m) => this.askOne(m, who, remote))])
  }

  private askOne<T>(m: InstanceRecord, who: string, remote: (c: AdminClient) => Promise<T>): Promise<FleetAnswer<T>> {
    const at = {instance: m.name, adminUrl: m.adminUrl}
    if (!m.adminUrl) return Promise.resolve({...at, reachable: false, error: 'it registers no admin URL: give it admin.listen with admin.token_file (and fleet.admin_url if it binds a wildcard address)', result: null})
    if (!this.o.token) return Promise.resolve({...at, reachable: false, error: 'this instance has no admin token to ask it with: set admin.listen and admin.token_file here too', result: null})
    const client = new AdminClient(m.adminUrl, this.o.token, {client: `divert fleet ${this.o.self} for ${who}`, timeoutMs: this.o.timeoutMs ?? 3000})
    return this.answer(at, () => remote(client)).finally(() => client.close().catch(() => undefined))
  }

  private async answer<T>(at: Pick<FleetInstanceView, 'instance' | 'adminUrl'>, run: () => T | Promise<T>): Promise<FleetAnswer<T>> {
    try {
      return {...at, reachable: true, error: null, result: await run()}
    } catch (error) {
      return {...at, reachable: false, error: why(error as DivertError), result: null}
    }
  }
}

/** The client's advice to start a daemon fits a local socket, not another instance: say what happened. */
function why(error: DivertError): string {
  if (error.code !== 'DIVERT_ERR_ADMIN_UNREACHABLE') return error.message
  const cause = error.cause as NodeJS.ErrnoException | undefined
  const code = cause?.code ?? (cause?.cause as NodeJS.ErrnoException | undefined)?.code
  return /did not answer/.test(error.message) ? error.message : `no answer (${code ?? cause?.message ?? 'unreachable'}): the instance is down, or its admin listener cannot be reached from here`
}
