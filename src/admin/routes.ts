/**
 * The admin API's routes (README "Admin API"): each validates its input and makes one call on Control,
 * the daemon's facade over its owners (a POST /rules body is the rule schema's to check, in Control). Wrong paths get 404, wrong methods 405 with `Allow`, wrong
 * fields 400 — all as DivertErrors.
 */
import {DivertError} from '../errors.js'
import {parseCidr} from '../addr/cidr.js'
import type {SessionFilter} from '../session/registry.js'
import type {SessionQuery} from './client.js'
import type {
  AddRuleResult, BackendView, ExplainResult, FleetKillResult, FleetSessionsResult, FleetStatusResult, KillResult, ReloadResult, RemoveRulesResult,
  RuleView, SessionView, StatusView,
} from './protocol.js'

export interface Control {
  status(): StatusView
  rules(): RuleView[]
  /** `body` as sent: Control parses it with the rule schema (rules/spec.ts parseAddRule). */
  addRule(body: unknown, who: string): Promise<AddRuleResult>
  removeRule(key: string, listener: string | undefined, who: string): Promise<RemoveRulesResult>
  removeAllRules(who: string): Promise<RemoveRulesResult>
  explain(ip: string, listener?: string): ExplainResult[]
  sessions(filter: SessionFilter): SessionView[]
  session(id: string): SessionView
  killSessions(filter: SessionFilter, who: string): KillResult
  killSession(id: string, who: string): KillResult
  backends(): BackendView[]
  metrics(): Promise<string>
  reload(who: string): Promise<ReloadResult>
  fleetStatus(who: string): Promise<FleetStatusResult>
  fleetSessions(filter: SessionFilter, query: SessionQuery, who: string): Promise<FleetSessionsResult>
  fleetKill(filter: SessionFilter, query: SessionQuery, who: string): Promise<FleetKillResult>
}

export interface RequestContext {
  method: string
  url: URL
  body: unknown
  who: string
}

type Handler = (c: Control, ctx: RequestContext, params: string[]) => unknown

const ROUTES: Array<{path: RegExp; methods: Record<string, Handler>}> = [
  {path: /^\/status$/, methods: {GET: (c) => c.status()}},
  {path: /^\/rules$/, methods: {
    GET: (c) => c.rules(),
    POST: (c, ctx) => c.addRule(ctx.body, ctx.who),
    DELETE: (c, ctx) => {
      if (ctx.url.searchParams.get('all') !== 'true') throw bad('DELETE /rules needs ?all=true (or use DELETE /rules/:id-or-source)')
      return c.removeAllRules(ctx.who)
    },
  }},
  {path: /^\/rules\/([^/]+)$/, methods: {
    DELETE: (c, ctx, [key]) => c.removeRule(key, ctx.url.searchParams.get('listener') ?? undefined, ctx.who),
  }},
  {path: /^\/explain$/, methods: {
    GET: (c, ctx) => c.explain(required(ctx.url, 'ip'), ctx.url.searchParams.get('listener') ?? undefined),
  }},
  {path: /^\/sessions$/, methods: {
    GET: (c, ctx) => c.sessions(sessionFilter(ctx.url)),
    DELETE: (c, ctx) => {
      const filter = sessionFilter(ctx.url)
      if (!filter.source && !filter.backend && !filter.listener) throw bad('DELETE /sessions needs a filter: ?source=CIDR, ?backend=NAME or ?listener=NAME')
      return c.killSessions(filter, ctx.who)
    },
  }},
  {path: /^\/sessions\/([^/]+)$/, methods: {
    GET: (c, _ctx, [id]) => c.session(id),
    DELETE: (c, ctx, [id]) => c.killSession(id, ctx.who),
  }},
  // Issue 14: the same questions to every live instance of the fleet.
  {path: /^\/fleet\/status$/, methods: {GET: (c, ctx) => c.fleetStatus(ctx.who)}},
  {path: /^\/fleet\/sessions$/, methods: {
    GET: (c, ctx) => c.fleetSessions(sessionFilter(ctx.url), sessionQuery(ctx.url), ctx.who),
    DELETE: (c, ctx) => {
      const filter = sessionFilter(ctx.url)
      if (!filter.source && !filter.backend && !filter.listener) throw bad('DELETE /fleet/sessions needs a filter: ?source=CIDR, ?backend=NAME or ?listener=NAME')
      return c.fleetKill(filter, sessionQuery(ctx.url), ctx.who)
    },
  }},
  {path: /^\/backends$/, methods: {GET: (c) => c.backends()}},
  {path: /^\/metrics$/, methods: {GET: (c) => c.metrics()}},
  {path: /^\/reload$/, methods: {POST: (c, ctx) => c.reload(ctx.who)}},
]

export async function routeRequest(control: Control, ctx: RequestContext): Promise<unknown> {
  for (const route of ROUTES) {
    const m = route.path.exec(ctx.url.pathname)
    if (!m) continue
    const handler = route.methods[ctx.method]
    if (!handler) {
      const allow = Object.keys(route.methods).join(', ')
      throw new DivertError('ADMIN_METHOD', `${ctx.method} is not allowed on ${ctx.url.pathname} (allowed: ${allow})`, {details: {allow}})
    }
    const params = m.slice(1).map((p) => safeDecode(p))
    return handler(control, ctx, params)
  }
  throw new DivertError('ADMIN_NOT_FOUND', `no admin route ${ctx.url.pathname} (routes: /status /rules /explain /sessions /backends /metrics /reload /fleet/status /fleet/sessions)`)
}

function sessionFilter(url: URL): SessionFilter {
  const q = url.searchParams
  const filter: SessionFilter = {}
  const source = q.get('source')
  if (source) filter.source = parseCidr(source)
  const backend = q.get('backend')
  if (backend) filter.backend = backend
  const listener = q.get('listener')
  if (listener) filter.listener = listener
  const protocol = q.get('protocol')
  if (protocol === 'tcp' || protocol === 'udp') filter.protocol = protocol
  else if (protocol) throw bad('protocol must be tcp or udp')
  return filter
}

/** The filter as the other instances are asked for it (checked here first, by sessionFilter). */
function sessionQuery(url: URL): SessionQuery {
  const q: SessionQuery = {}
  for (const k of ['source', 'backend', 'listener'] as const) {
    const v = url.searchParams.get(k)
    if (v) q[k] = v
  }
  return q
}

function required(url: URL, name: string): string {
  const v = url.searchParams.get(name)
  if (!v) throw bad(`query parameter "${name}" is required`)
  return v
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    throw bad(`path segment "${s}" is not valid percent-encoding`)
  }
}

function bad(message: string): DivertError {
  return new DivertError('ADMIN_BAD_REQUEST', message)
}
