/**
 * Loading the config file (DESIGN.md §4): YAML text to a normalised Config, or one DivertError that
 * lists every problem as `FILE:LINE:COL: path: what is wrong; expected what`.
 *
 *   file → readFile → parseDocument (LineCounter) → toJS → configSchema + crossCheck → normalise → Config
 */
import {readFile} from 'node:fs/promises'
import {dirname, resolve} from 'node:path'
import {isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Document, type YAMLError} from 'yaml'
import {DivertError} from '../errors.js'
import {configSchema, crossCheck, formatPath, issuesToProblems, knownNames, type ConfigPath, type RawConfig, type SchemaProblem} from './schema.js'
import {DEFAULTS, type BackendConfig, type Config, type ListenerConfig, type RuleSpec} from './types.js'

const MAX_PROBLEMS = 20

/** One entry of `details.problems` on CONFIG_SYNTAX and CONFIG_INVALID errors. */
export interface ConfigProblem {
  /** Path in the document, e.g. `backends.staging.servers[0].address`; '' for the whole file. */
  path: string
  line: number
  column: number
  message: string
}

/** Reads and parses `file`; an unreadable file is CONFIG_READ with the OS reason. */
export async function loadConfig(file: string): Promise<Config> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    throw new DivertError('CONFIG_READ', `cannot read config file ${file}: ${osReason(error)}; check the path given with -c`, {cause: error})
  }
  return parseConfig(text, file)
}

/** Pure: `file` names the source in messages and anchors relative paths (state, record, admin files). */
export function parseConfig(text: string, file: string): Config {
  const lines = new LineCounter()
  const doc = parseDocument(text, {lineCounter: lines, prettyErrors: false, uniqueKeys: true})
  if (doc.errors.length > 0) throw syntaxError(file, doc.errors.map((e) => yamlProblem(doc, e, lines)))
  const data = toPlain(doc, file, lines)
  if (data === null || data === undefined) {
    throw invalidError(file, [{path: '', line: 1, column: 1, message: 'the file is empty; expected a mapping with listeners and backends'}])
  }
  const parsed = configSchema(knownNames(data)).safeParse(data)
  const problems = parsed.success ? crossCheck(parsed.data) : issuesToProblems(parsed.error.issues)
  if (problems.length > 0 || !parsed.success) throw invalidError(file, problems.map((p) => place(doc, lines, p)))
  return normalise(parsed.data, file)
}

function yamlProblem(doc: Document, e: YAMLError, lines: LineCounter): ConfigProblem {
  const {line, col} = lines.linePos(e.pos[0])
  const key = e.code === 'DUPLICATE_KEY' ? keyAt(doc, e.pos[0]) : undefined
  // YAML 1.2 §3.2.1.1: keys of a mapping are unique; yaml's message does not say which one repeats.
  return {path: '', line, column: col, message: key === undefined ? e.message : `${e.message} (key ${JSON.stringify(key)} appears twice)`}
}

function keyAt(doc: Document, offset: number): string | undefined {
  let key: string | undefined
  visit(doc, {
    Pair(_, pair) {
      if (!isScalar(pair.key) || pair.key.range?.[0] !== offset) return undefined
      key = String(pair.key.value)
      return visit.BREAK
    },
  })
  return key
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

function badAliasOffset(doc: Document): number {
  let offset: number | undefined
  visit(doc, {
    Alias(_, node) {
      offset ??= node.range?.[0]
      if (node.resolve(doc) !== undefined) return undefined
      offset = node.range?.[0]
      return visit.BREAK
    },
  })
  return offset ?? 0
}

/** Where a problem is: the node at its path, else the nearest ancestor that exists. */
function place(doc: Document, lines: LineCounter, p: SchemaProblem): ConfigProblem {
  const {line, col} = lines.linePos(offsetOf(doc, p.path, p.atKey === true))
  return {path: formatPath(p.path), line, column: col, message: p.message}
}

function offsetOf(doc: Document, path: ConfigPath, atKey: boolean): number {
  let node: unknown = doc.contents
  let offset = startOf(node) ?? 0
  for (const [i, seg] of path.entries()) {
    if (isAlias(node)) node = node.resolve(doc)
    let next: unknown
    if (isMap(node)) {
      const pair = node.items.find((it) => isScalar(it.key) && String(it.key.value) === String(seg))
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

function problemLine(file: string, p: ConfigProblem): string {
  return `${file}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ''}${p.message}`
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
    state: fromDir(raw.state),
    listeners: raw.listeners.map(listenerOf),
    backends: new Map(Object.entries(raw.backends).map(([name, b]) => [name, backendOf(name, b)])),
    rules: (raw.rules ?? []).map((r) => ruleOf(r, fromDir)),
    captureMaxBytes: raw.capture?.max_size ?? DEFAULTS.captureMaxBytes,
    mirrorBufferBytes: raw.capture?.mirror_buffer ?? DEFAULTS.mirrorBufferBytes,
    maxConnections: raw.limits?.max_connections ?? 0,
  })
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
    perSource: {maxConnections: l.per_source?.max_connections ?? 0, ratePerSec: l.per_source?.rate ?? 0},
  }
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
  })
}

/** Drops keys whose value is undefined, so optional fields are absent rather than present-and-empty. */
function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}
