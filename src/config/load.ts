/**
 * Loading the config file (README "Config reference"): YAML text to a normalised Config, or one DivertError that
 * lists every problem as `FILE:LINE:COL: path: what is wrong; expected what`.
 *
 *   file → readFile → parseDocument (LineCounter) → toJS → configSchema + crossCheck → normalise → Config
 *   (a large file: the same parseConfig in a worker thread, parse-worker.ts)
 */
import {existsSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {Worker} from 'node:worker_threads'
import {dirname, resolve} from 'node:path'
import {isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Alias, type Document, type Pair, type YAMLError, type YAMLMap} from 'yaml'
import {DivertError} from '../errors.js'
import {configSchema, crossCheck, formatPath, issuesToProblems, knownNames, type ConfigPath, type RawConfig, type SchemaProblem} from './schema.js'
import {DEFAULTS, type BackendConfig, type Config, type ListenerConfig, type RuleSpec, type TransparentConfig} from './types.js'

const MAX_PROBLEMS = 20

/** What parse-worker.ts posts back: the config without its rules, the rules in chunks, or the error. */
export type WorkerMessage =
  | {type: 'head'; config: Record<string, unknown>; rules: number}
  | {type: 'rules'; rules: RuleSpec[]}
  | {type: 'done'}
  | {type: 'error'; error: ReturnType<DivertError['toJSON']>}

/** One entry of `details.problems` on CONFIG_SYNTAX and CONFIG_INVALID errors. */
export interface ConfigProblem {
  /** Path in the document, e.g. `backends.staging.servers[0].address`; '' for the whole file. */
  path: string
  line: number
  column: number
  message: string
}

/**
 * Files at least this long are parsed in a worker thread. yaml's parser takes about 50 µs of CPU per
 * line (10 s for 100,000 rules) and builds a document of hundreds of MB: in the daemon's thread that
 * froze every proxied session for the whole reload and left the heap grown for good. Below this
 * (about 200 rules) parsing takes a few ms, less than starting a worker.
 */
export const WORKER_MIN_CHARS = 16 * 1024

/** Reads and parses `file`; an unreadable file is CONFIG_READ with the OS reason. */
export async function loadConfig(file: string): Promise<Config> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    throw new DivertError('CONFIG_READ', `cannot read config file ${file}: ${osReason(error)}; check the path given with -c`, {cause: error})
  }
  const worker = new URL('./parse-worker.js', import.meta.url)
  // From the TypeScript sources (bin/dev.js) there is no parse-worker.js: parse here, as small files are.
  if (text.length < WORKER_MIN_CHARS || !existsSync(worker)) return parseConfig(text, file)
  return parseInWorker(worker, text, file)
}

/**
 * parseConfig in a worker thread (parse-worker.ts): the same Config, or the same DivertError (its
 * JSON, rebuilt). The rules come over in chunks, each asked for after a turn of the event loop.
 */
function parseInWorker(script: URL, text: string, file: string): Promise<Config> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(script, {workerData: {text, file}})
    let config: Config | undefined
    let settled = false
    const settle = (error?: unknown): void => {
      if (settled) return
      settled = true
      void worker.terminate()
      if (error === undefined) resolve(config!)
      else reject(error)
    }
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'error') return settle(DivertError.fromJSON(m.error))
      if (m.type === 'done') return settle()
      if (m.type === 'head') config = m.config as unknown as Config
      else config!.rules.push(...m.rules)
      setImmediate(() => worker.postMessage('next'))
    })
    worker.once('error', (error) => settle(new DivertError('INTERNAL', `parsing ${file} failed in its worker thread: ${error.message}`, {cause: error})))
    worker.once('exit', (code) => settle(new DivertError('INTERNAL', `the worker thread parsing ${file} exited (status ${code}) before it answered`)))
  })
}

/** Pure: `file` names the source in messages and anchors relative paths (state, record, admin files). */
export function parseConfig(text: string, file: string): Config {
  const lines = new LineCounter()
  // logLevel 'error': yaml would warn on stderr (process.emitWarning) about a collection used as a key;
  // such a key is reported below as an unknown key, at its line, like any other.
  const doc = parseDocument(text, {lineCounter: lines, prettyErrors: false, uniqueKeys: true, logLevel: 'error'})
  if (doc.errors.length > 0) throw syntaxError(file, yamlProblems(doc, lines))
  const data = toPlain(doc, file, lines)
  if (data === null || data === undefined) {
    throw invalidError(file, [{path: '', line: 1, column: 1, message: 'the file is empty; expected a mapping with listeners and backends'}])
  }
  const parsed = configSchema(knownNames(data)).safeParse(data)
  const problems = parsed.success ? crossCheck(parsed.data) : issuesToProblems(parsed.error.issues)
  if (problems.length > 0 || !parsed.success) {
    const index = new DocIndex(doc)
    throw invalidError(file, problems.map((p) => place(index, lines, p)))
  }
  return normalise(parsed.data, file)
}

function yamlProblems(doc: Document, lines: LineCounter): ConfigProblem[] {
  const keys = doc.errors.some((e) => e.code === 'DUPLICATE_KEY') ? keysByOffset(doc) : new Map<number, string>()
  return doc.errors.map((e) => yamlProblem(e, lines, keys))
}

function yamlProblem(e: YAMLError, lines: LineCounter, keys: Map<number, string>): ConfigProblem {
  const {line, col} = lines.linePos(e.pos[0])
  const key = e.code === 'DUPLICATE_KEY' ? keys.get(e.pos[0]) : undefined
  // YAML 1.2 §3.2.1.1: keys of a mapping are unique; yaml's message does not say which one repeats.
  return {path: '', line, column: col, message: key === undefined ? e.message : `${e.message} (key ${JSON.stringify(key)} appears twice)`}
}

/** Scalar keys by where they start, in one pass: a walk per duplicate made 5,000 of them take 5 s. */
function keysByOffset(doc: Document): Map<number, string> {
  const keys = new Map<number, string>()
  visit(doc, {
    Pair(_, pair) {
      if (isScalar(pair.key) && pair.key.range) keys.set(pair.key.range[0], String(pair.key.value))
    },
  })
  return keys
}

/** Aliases resolve only here, so an unknown anchor or an alias bomb surfaces as a syntax error. */
function toPlain(doc: Document, file: string, lines: LineCounter): unknown {
  try {
    return doc.toJS({maxAliasCount: 100})
  } catch (error) {
    const {line, col} = lines.linePos(badAliasOffset(doc))
    throw syntaxError(file, [{path: '', line, column: col, message: (error as Error).message}], error)
  }
}

/**
 * The first alias with no anchor of its name before it (what Alias.resolve looks for), else the first
 * alias: the error was then the alias count. One pass, because resolving each alias walks the whole
 * document again: a 40 KB file of 10,000 aliases took 18 s to reject that way.
 */
function badAliasOffset(doc: Document): number {
  const anchors = new Set<string>()
  let first: number | undefined
  let bad: number | undefined
  visit(doc, {
    Node(_, node) {
      if (!isAlias(node)) {
        if (node.anchor) anchors.add(node.anchor)
        return undefined
      }
      first ??= node.range?.[0]
      if (anchors.has(node.source)) return undefined
      bad = node.range?.[0]
      return visit.BREAK
    },
  })
  return bad ?? first ?? 0
}

/**
 * Lookups for placing every problem of one document: searching a mapping's keys, or resolving an
 * alias (a walk of the whole document), once per problem made 20,000 unknown keys take 15 s.
 */
class DocIndex {
  private readonly keys = new Map<YAMLMap, Map<string, Pair>>()
  private readonly targets = new Map<Alias, unknown>()

  constructor(readonly doc: Document) {}

  resolve(alias: Alias): unknown {
    if (!this.targets.has(alias)) this.targets.set(alias, alias.resolve(this.doc))
    return this.targets.get(alias)
  }

  /** The first pair with this scalar key, as a linear search would find it. */
  pair(map: YAMLMap, key: string): Pair | undefined {
    let byKey = this.keys.get(map)
    if (!byKey) {
      byKey = new Map()
      for (const it of map.items) {
        if (!isScalar(it.key)) continue
        const k = String(it.key.value)
        if (!byKey.has(k)) byKey.set(k, it)
      }
      this.keys.set(map, byKey)
    }
    return byKey.get(key)
  }
}

/** Where a problem is: the node at its path, else the nearest ancestor that exists. */
function place(index: DocIndex, lines: LineCounter, p: SchemaProblem): ConfigProblem {
  const {line, col} = lines.linePos(offsetOf(index, p.path, p.atKey === true))
  return {path: formatPath(p.path), line, column: col, message: p.message}
}

function offsetOf(index: DocIndex, path: ConfigPath, atKey: boolean): number {
  let node: unknown = index.doc.contents
  let offset = startOf(node) ?? 0
  for (const [i, seg] of path.entries()) {
    if (isAlias(node)) node = index.resolve(node)
    let next: unknown
    if (isMap(node)) {
      const pair = index.pair(node, String(seg))
      if (!pair) break
      if (atKey && i === path.length - 1) return startOf(pair.key) ?? offset
      next = pair.value ?? pair.key
    } else if (isSeq(node) && typeof seg === 'number') {
      next = node.items[seg]
    }
    const start = startOf(next)
    if (start === undefined) break
    offset = start
    node = next
  }
  return offset
}

function startOf(node: unknown): number | undefined {
  const range = (node as {range?: [number, number, number] | null} | null | undefined)?.range
  return range ? range[0] : undefined
}

/** One line per problem: control characters a key or value brought into the message are escaped. */
function problemLine(file: string, p: ConfigProblem): string {
  return `${file}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ''}${escapeControls(p.message)}`
}

function escapeControls(text: string): string {
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => JSON.stringify(c).slice(1, -1))
}

function report(file: string, problems: ConfigProblem[]): {message: string; shown: ConfigProblem[]} {
  const sorted = [...problems].sort((a, b) => a.line - b.line || a.column - b.column)
  const shown = sorted.slice(0, MAX_PROBLEMS)
  const more = sorted.length - shown.length
  const text = shown.map((p) => problemLine(file, p))
  if (more > 0) text.push(`${file}: ${more} more problem${more === 1 ? '' : 's'} not shown; fix these first`)
  return {message: text.join('\n'), shown}
}

function syntaxError(file: string, problems: ConfigProblem[], cause?: unknown): DivertError {
  const {message, shown} = report(file, problems)
  return new DivertError('CONFIG_SYNTAX', message, {cause, details: {problems: shown}})
}

function invalidError(file: string, problems: ConfigProblem[]): DivertError {
  const {message, shown} = report(file, problems)
  return new DivertError('CONFIG_INVALID', message, {details: {problems: shown}})
}

const OS_REASONS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'it is a directory',
  ENOTDIR: 'a parent of it is not a directory',
}

function osReason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException)?.code
  if (code === undefined) return String((error as Error)?.message ?? error)
  return `${OS_REASONS[code] ?? (error as Error).message} (${code})`
}

function normalise(raw: RawConfig, file: string): Config {
  const abs = resolve(file)
  const fromDir = (p: string | null | undefined): string | undefined => (p == null ? undefined : resolve(dirname(abs), p))
  return compact({
    file: abs,
    admin: compact({socket: fromDir(raw.admin?.socket), listen: raw.admin?.listen, tokenFile: fromDir(raw.admin?.token_file)}),
    state: isRedisUrl(raw.state) ? undefined : fromDir(raw.state),
    redis: isRedisUrl(raw.state) ? raw.state! : undefined,
    fleet: raw.fleet ? compact({name: raw.fleet.name, adminUrl: raw.fleet.admin_url}) : undefined,
    listeners: raw.listeners.map(listenerOf),
    backends: new Map(Object.entries(raw.backends).map(([name, b]) => [name, backendOf(name, b)])),
    rules: (raw.rules ?? []).map((r) => ruleOf(r, fromDir)),
    captureMaxBytes: raw.capture?.max_size ?? DEFAULTS.captureMaxBytes,
    mirrorBufferBytes: raw.capture?.mirror_buffer ?? DEFAULTS.mirrorBufferBytes,
    maxConnections: raw.limits?.max_connections ?? 0,
    fastPath: raw.fast_path ?? undefined,
    transparent: transparentOf(raw.transparent),
  })
}

function isRedisUrl(state: string | null | undefined): boolean {
  return state != null && /^rediss?:\/\//i.test(state)
}

function listenerOf(l: RawConfig['listeners'][number]): ListenerConfig {
  return {
    name: l.name,
    protocol: l.protocol,
    bind: l.bind,
    backend: l.backend,
    udp: {
      idleTimeoutMs: l.udp?.idle_timeout ?? DEFAULTS.udpIdleTimeoutMs,
      key: l.udp?.key ?? DEFAULTS.udpKey,
      maxFlows: l.udp?.max_flows ?? DEFAULTS.udpMaxFlows,
      recvBufferSize: l.udp?.recv_buffer ?? DEFAULTS.udpRecvBufferSize,
    },
    maxConnections: l.max_connections,
    clientTimeoutMs: l.timeouts?.client ?? 0,
    keepaliveMs: l.keepalive ?? DEFAULTS.keepaliveMs,
    perSource: {maxConnections: l.per_source?.max_connections ?? 0, ratePerSec: l.per_source?.rate ?? 0},
    ...(l.transparent ? {transparent: true} : {}),
    ...(l.intercept ? {intercept: {ports: l.intercept.ports ?? [l.bind.port]}} : {}),
  }
}

function transparentOf(t: RawConfig['transparent']): TransparentConfig | undefined {
  const d = DEFAULTS.transparent
  if (!t) return undefined
  return {manage: t.manage ?? d.manage, table: t.table ?? d.table, mark: t.mark ?? d.mark, routeTable: t.route_table ?? d.routeTable, ...(t.source ? {source: t.source} : {})}
}

function ruleOf(r: NonNullable<RawConfig['rules']>[number], fromDir: (p?: string | null) => string | undefined): RuleSpec {
  const {expires, record, ...rest} = r
  return compact({...rest, record: fromDir(record), expiresAt: expires})
}

function backendOf(name: string, b: RawConfig['backends'][string]): BackendConfig {
  const h = b.health
  return compact({
    name,
    balance: b.balance,
    servers: b.servers.map((s) => ({address: s.address, weight: s.weight})),
    health: h && {check: h.check, intervalMs: h.interval, timeoutMs: h.timeout, rise: h.rise, fall: h.fall},
    proxyProtocol: b.proxy_protocol,
    fallback: b.fallback,
    connectTimeoutMs: b.timeouts?.connect ?? DEFAULTS.connectTimeoutMs,
    serverTimeoutMs: b.timeouts?.server ?? 0,
    keepaliveMs: b.keepalive ?? DEFAULTS.keepaliveMs,
    source: b.source,
    mark: b.mark,
  })
}

/** Drops keys whose value is undefined, so optional fields are absent rather than present-and-empty. */
function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}
