/**
 * Router: turns (listener, client address) into a decision for one new session — the rule that
 * matched, the backend and server it goes to, and the taps it asks for — applying the fallback
 * policy when every server of a diverted-to backend is down (README "Design").
 *
 *   client address ─▶ RuleTable.lookup ─▶ backend.pick (balance, health) ─▶ Decision | Refusal
 *
 * Used by the TCP and UDP proxies for new sessions and by `divert explain` (which does not count hits).
 */
import {originalServer, type Backend, type Server} from '../backends/backend.js'
import {ORIGINAL_BACKEND} from '../config/types.js'
import type {Address} from '../addr/address.js'
import type {Rule, RuleTable} from './table.js'

export interface Decision {
  rule?: Rule
  backend: Backend
  server: Server
  mirror?: Backend
  record?: string
  /** Set when the rule's backend had no server up and the listener's default took the session. */
  fallbackFrom?: string
  /** Each step of the decision in words; only with `explain` (divert explain), not per session. */
  reasons?: string[]
}

export interface Refusal {
  rule?: Rule
  refused: string
  reasons?: string[]
  /** Backend `original` was asked for without a destination (explain, or a listener that is not transparent). */
  needsDestination?: boolean
}

export interface RouteListener {
  name: string
  backend: string
}

export interface RouterState {
  rules: RuleTable
  backends: Map<string, Backend>
}

export class Router {
  /** Swapped whole on reload, so a decision never sees half of an old and half of a new config. */
  state: RouterState

  constructor(state: RouterState) {
    this.state = state
  }

  /**
   * `destination`: where the client's packets were addressed, known on a transparent listener; the
   * built-in backend `original` sends the session there.
   */
  decide(listener: RouteListener, address: string, opts: {countHit?: boolean; explain?: boolean; destination?: Address} = {}): Decision | Refusal {
    const {rules, backends} = this.state
    const rule = rules.lookup(address, listener.name)
    if (rule && opts.countHit !== false) rule.hits++
    // `reasons?.push(…)` skips building the string too when nobody asked for an explanation.
    const reasons: string[] | undefined = opts.explain ? [] : undefined
    const taps = {mirror: rule?.mirror ? backends.get(rule.mirror) : undefined, record: rule?.record}
    if (rule) reasons?.push(`rule ${rule.id} (${rule.source}${rule.listener ? ` on ${rule.listener}` : ''}) matches ${address}`)
    else reasons?.push(`no rule matches ${address} on listener ${listener.name}`)

    const target = rule?.to ?? listener.backend
    const backend = backends.get(target)
    if (!backend) return {rule, refused: `backend ${target} does not exist`, reasons}
    reasons?.push(rule?.to ? `rule diverts to backend ${target}` : `listener ${listener.name} default backend is ${target}`)
    if (target === ORIGINAL_BACKEND) return this.original(backend, rule, taps, reasons, opts.destination)
    const server = backend.pick(address)
    if (server) {
      reasons?.push(`${backend.config.balance} picks server ${server.key}`)
      return {rule, backend, server, ...taps, reasons}
    }

    reasons?.push(`no server of backend ${target} is up`)
    if (target === listener.backend) return {rule, refused: `no server of default backend ${target} is up`, reasons}
    if (backend.config.fallback === 'reject') return {rule, refused: `no server of backend ${target} is up and it says fallback: reject`, reasons}
    const fallback = backends.get(listener.backend)
    if (fallback && listener.backend === ORIGINAL_BACKEND) {
      const d = this.original(fallback, rule, taps, reasons, opts.destination)
      return isRefusal(d) ? d : {...d, fallbackFrom: target}
    }
    const fbServer = fallback?.pick(address)
    if (!fallback || !fbServer) {
      return {rule, refused: `no server of backend ${target} nor of default backend ${listener.backend} is up`, reasons}
    }
    reasons?.push(`fallback: default → backend ${fallback.name}, ${fallback.config.balance} picks server ${fbServer.key}`)
    return {rule, backend: fallback, server: fbServer, ...taps, fallbackFrom: target, reasons}
  }

  private original(backend: Backend, rule: Rule | undefined, taps: Pick<Decision, 'mirror' | 'record'>, reasons: string[] | undefined, destination?: Address): Decision | Refusal {
    if (!destination) {
      reasons?.push('backend original passes each session to the destination its client dialled')
      return {rule, refused: 'backend original needs the destination the client dialled, which only a transparent listener knows', reasons, needsDestination: true}
    }
    const server = originalServer(destination)
    reasons?.push(`the client dialled ${server.key}`)
    return {rule, backend, server, ...taps, reasons}
  }
}

export function isRefusal(d: Decision | Refusal): d is Refusal {
  return (d as Refusal).refused !== undefined
}
