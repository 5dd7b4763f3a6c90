/**
 * AdminClient: the CLI's side of the admin API, over undici — a unix socket path, or an
 * `http://host:port` TCP admin listener with a bearer token. Transport failures become the
 * DivertErrors a user can act on (no daemon there, permission denied); error bodies are turned
 * back into the daemon's own DivertError.
 *
 *   divert <command> ─▶ AdminClient ─undici─▶ daemon AdminServer
 */
import type {Client} from 'undici'
import {hostname, userInfo} from 'node:os'
import {DivertError} from '../errors.js'
import {isTcpTarget} from './paths.js'
import type {
  AddRuleRequest, AddRuleResult, BackendView, ExplainResult, FleetKillResult, FleetSessionsResult, FleetStatusResult, KillResult, ReloadResult, RemoveRulesResult,
  RuleView, SessionView, StatusView,
} from './protocol.js'

export interface SessionQuery {
  source?: string
  backend?: string
  listener?: string
}

export class AdminClient {
  private client?: Promise<Client>
  private readonly headers: Record<string, string>

  /**
   * `opts.client` names the caller in the daemon's audit lines (default: user@host pid N); a daemon
   * asking another instance for a fleet-wide command names itself and who asked it.
   * `opts.timeoutMs` bounds connect and answer (default 5 s and 30 s).
   */
  constructor(readonly target: string, token?: string, private readonly opts: {client?: string; timeoutMs?: number} = {}) {
    this.headers = {'x-divert-client': opts.client ?? clientName()}
    if (token) this.headers.authorization = `Bearer ${token}`
  }

  async close(): Promise<void> {
    if (this.client) await (await this.client).close()
  }

  status(): Promise<StatusView> { return this.request('GET', '/status') }
  rules(): Promise<RuleView[]> { return this.request('GET', '/rules') }
  addRule(req: AddRuleRequest): Promise<AddRuleResult> { return this.request('POST', '/rules', req) }
  removeRule(key: string, listener?: string): Promise<RemoveRulesResult> {
    return this.request('DELETE', `/rules/${encodeURIComponent(key)}${query({listener})}`)
  }

  removeAllRules(): Promise<RemoveRulesResult> { return this.request('DELETE', '/rules?all=true') }
  explain(ip: string, listener?: string): Promise<ExplainResult[]> { return this.request('GET', `/explain${query({ip, listener})}`) }
  sessions(q: SessionQuery = {}): Promise<SessionView[]> { return this.request('GET', `/sessions${query({...q})}`) }
  killSession(id: string): Promise<KillResult> { return this.request('DELETE', `/sessions/${encodeURIComponent(id)}`) }
  killSessions(q: SessionQuery): Promise<KillResult> { return this.request('DELETE', `/sessions${query({...q})}`) }
  backends(): Promise<BackendView[]> { return this.request('GET', '/backends') }
  metrics(): Promise<string> { return this.request('GET', '/metrics') }
  reload(): Promise<ReloadResult> { return this.request('POST', '/reload') }
  fleetStatus(): Promise<FleetStatusResult> { return this.request('GET', '/fleet/status') }
  fleetSessions(q: SessionQuery = {}): Promise<FleetSessionsResult> { return this.request('GET', `/fleet/sessions${query({...q})}`) }
  fleetKill(q: SessionQuery): Promise<FleetKillResult> { return this.request('DELETE', `/fleet/sessions${query({...q})}`) }

  async request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
    let res
    try {
      res = await (await this.connection()).request({
        method, path, headers: {...this.headers, ...(body === undefined ? {} : {'content-type': 'application/json'})},
        body: body === undefined ? undefined : JSON.stringify(body),
      })
    } catch (error) {
      throw this.transportError(error as NodeJS.ErrnoException)
    }
    const text = await res.body.text()
    const isJson = String(res.headers['content-type'] ?? '').startsWith('application/json')
    let data: unknown = text
    if (isJson) {
      try {
        data = JSON.parse(text)
      } catch {
        throw new DivertError('ADMIN_PROTOCOL', `the admin API at ${this.target} sent malformed JSON (HTTP ${res.statusCode})`)
      }
    }
    if (res.statusCode >= 400) {
      if (isJson) throw DivertError.fromJSON(data)
      throw new DivertError('ADMIN_PROTOCOL', `the admin API at ${this.target} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`)
    }
    return data as T
  }

  /**
   * undici (and the http, http2, tls and crypto modules it loads) is imported on the first request,
   * not with the command: `divert --help`, `--version` and `check` never need it.
   */
  private connection(): Promise<Client> {
    const t = this.opts.timeoutMs
    const opts = {connectTimeout: t ?? 5_000, headersTimeout: t ?? 30_000, bodyTimeout: t ?? 30_000}
    this.client ??= import('undici').then(({Client}) => (isTcpTarget(this.target)
      ? new Client(this.target, opts)
      : new Client('http://divert', {...opts, socketPath: this.target})))
    return this.client
  }

  private transportError(error: NodeJS.ErrnoException): DivertError {
    const code = error.code ?? (error.cause as NodeJS.ErrnoException | undefined)?.code
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      return new DivertError('ADMIN_UNREACHABLE', `the divert daemon at ${this.target} did not answer within ${(this.opts.timeoutMs ?? 30_000) / 1000}s: it may be overloaded or stuck`, {cause: error})
    }
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'UND_ERR_CONNECT_TIMEOUT') {
      return new DivertError('ADMIN_UNREACHABLE', `no divert daemon at ${this.target} — start one with \`divert start -c FILE\` (or point --admin / DIVERT_ADMIN at its socket)`, {cause: error})
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return new DivertError('ADMIN_PERMISSION', `permission denied on ${this.target}: the admin socket is owner-only — run as the user that started the daemon`, {cause: error})
    }
    return new DivertError('ADMIN_UNREACHABLE', `cannot reach the divert daemon at ${this.target}: ${error.message}`, {cause: error})
  }
}

function query(params: Record<string, string | undefined>): string {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, v)
  const s = q.toString()
  return s ? `?${s}` : ''
}

function clientName(): string {
  let user = 'unknown'
  try {
    user = userInfo().username
  } catch {
    // no passwd entry (containers): keep "unknown"
  }
  return `${user}@${hostname()} pid ${process.pid}`
}
