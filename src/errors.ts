/**
 * DivertError: every error divert reports on purpose carries a stable code `DIVERT_ERR_<AREA>_<WHAT>`,
 * an HTTP status (for the admin API) and a process exit code (for the CLI). The admin API sends
 * `{error, code, status}` and the CLI's client turns it back into the same DivertError.
 *
 * The README lists every code of this catalogue; test/unit/errors.test.ts keeps the two in step.
 */

export const ERROR_CATALOG = {
  CONFIG_READ: {status: 400, exit: 2, summary: 'the config file cannot be read'},
  CONFIG_SYNTAX: {status: 400, exit: 2, summary: 'the config file is not valid YAML (line and column given)'},
  CONFIG_INVALID: {status: 400, exit: 2, summary: 'a config value is wrong (path in the file and what is expected given)'},
  INVALID_ADDRESS: {status: 400, exit: 2, summary: 'an IP address, CIDR or host:port is malformed'},
  INVALID_DURATION: {status: 400, exit: 2, summary: 'a duration is malformed (expected e.g. 300ms, 10s, 5m, 2h)'},
  INVALID_SIZE: {status: 400, exit: 2, summary: 'a size is malformed or zero (expected e.g. 512, 64KiB, 1MiB, 100MB)'},
  CLI_USAGE: {status: 400, exit: 2, summary: 'a command-line argument or flag is missing, unknown or wrong (see the command\'s --help)'},
  RULE_INVALID: {status: 400, exit: 2, summary: 'a rule is wrong in itself (no action, a field of the wrong kind) or does not fit the config (PROXY v1 to a UDP listener)'},
  RULE_ID_TAKEN: {status: 409, exit: 3, summary: 'a stored rule\'s id is already used by another rule'},
  BACKEND_UNKNOWN: {status: 404, exit: 2, summary: 'a rule or command names a backend that the config does not define'},
  LISTENER_UNKNOWN: {status: 404, exit: 2, summary: 'a rule or command names a listener that the config does not define'},
  RULE_NOT_FOUND: {status: 404, exit: 3, summary: 'no rule has that source or id'},
  RULE_FROM_CONFIG: {status: 409, exit: 3, summary: 'a rule from the config file cannot be removed at runtime'},
  SESSION_NOT_FOUND: {status: 404, exit: 3, summary: 'no live session has that id'},
  LISTEN_FAILED: {status: 500, exit: 4, summary: 'a listener (or the admin socket) could not be bound: port in use, permission'},
  STATE_CORRUPT: {status: 500, exit: 4, summary: 'the state file cannot be read (the daemon does not start), or is not valid: then it is moved aside, logged with this code, and the daemon starts without it'},
  STATE_WRITE: {status: 500, exit: 4, summary: 'runtime rules could not be written to the state file'},
  STATE_UNAVAILABLE: {status: 503, exit: 4, summary: 'the shared rule store (Redis) is unreachable: the rule change was not made on any instance'},
  ADMIN_UNREACHABLE: {status: 503, exit: 5, summary: 'no divert daemon answers at the admin socket'},
  ADMIN_PERMISSION: {status: 403, exit: 5, summary: 'the admin socket exists but this user may not open it'},
  ADMIN_UNAUTHORIZED: {status: 401, exit: 5, summary: 'the TCP admin listener needs a valid bearer token'},
  ADMIN_BAD_REQUEST: {status: 400, exit: 2, summary: 'the admin request is malformed (body not JSON, wrong field types)'},
  ADMIN_BODY_TOO_LARGE: {status: 413, exit: 2, summary: 'the admin request body exceeds the size limit'},
  ADMIN_NOT_FOUND: {status: 404, exit: 2, summary: 'no admin API route at that path'},
  ADMIN_METHOD: {status: 405, exit: 2, summary: 'the admin API route does not accept that method'},
  ADMIN_PROTOCOL: {status: 502, exit: 5, summary: 'the admin API answered something the CLI does not understand'},
  PROXY_HEADER_INVALID: {status: 400, exit: 2, summary: 'a PROXY protocol header is malformed, or cannot be built from these addresses and ports'},
  PCAP_READ: {status: 400, exit: 2, summary: 'a capture file cannot be opened (missing, not a regular file, permissions)'},
  PCAP_FORMAT: {status: 400, exit: 2, summary: 'a capture file is not classic pcap (e.g. pcapng), or has an unsupported link type'},
  PCAP_CORRUPT: {status: 400, exit: 2, summary: 'a capture file is truncated or corrupt'},
  RECORD_FAILED: {status: 400, exit: 4, summary: 'a recording could not be opened (missing directory, permissions, not a file) or written'},
  REPLAY_BAD_OPTION: {status: 400, exit: 2, summary: 'a replay option is out of range (--speed, --loop, the wait or a timeout)'},
  REPLAY_NO_FLOWS: {status: 400, exit: 2, summary: 'the capture holds no TCP or UDP flow to replay, or none from --source'},
  REPLAY_FAILED: {status: 500, exit: 4, summary: 'replay could not connect to or talk with the target'},
  TRANSPARENT_UNAVAILABLE: {status: 500, exit: 4, summary: 'gateway mode cannot install its nftables table or policy route: no root/CAP_NET_ADMIN, no nft or ip, or a command failed'},
  CAPABILITY_MISSING: {status: 500, exit: 4, summary: 'the config asks for what this process may not do (source: client or mark without CAP_NET_ADMIN)'},
  INTERNAL: {status: 500, exit: 1, summary: 'an unexpected internal error (a bug: please report it)'},
} as const

export type ErrorName = keyof typeof ERROR_CATALOG
export type ErrorCode = `DIVERT_ERR_${ErrorName}`

export interface DivertErrorOptions {
  cause?: unknown
  /** Machine-readable extras (path in the config file, known backends, …), sent by the admin API. */
  details?: Record<string, unknown>
}

export class DivertError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly exitCode: number
  readonly details?: Record<string, unknown>

  constructor(name: ErrorName, message: string, options: DivertErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : {cause: options.cause})
    this.name = 'DivertError'
    this.code = `DIVERT_ERR_${name}`
    this.status = ERROR_CATALOG[name].status
    this.exitCode = ERROR_CATALOG[name].exit
    if (options.details) this.details = options.details
  }

  toJSON(): {error: string; code: ErrorCode; status: number; details?: Record<string, unknown>} {
    return {error: this.message, code: this.code, status: this.status, ...(this.details ? {details: this.details} : {})}
  }

  /** Rebuilds the error from an admin API body; unknown codes become ADMIN_PROTOCOL. */
  static fromJSON(body: unknown): DivertError {
    const b = body as {error?: unknown; code?: unknown; details?: unknown}
    const name = typeof b?.code === 'string' ? b.code.replace(/^DIVERT_ERR_/, '') : ''
    const message = typeof b?.error === 'string' ? b.error : 'the daemon answered with an error and no message'
    const details = b?.details && typeof b.details === 'object' ? (b.details as Record<string, unknown>) : undefined
    if (name in ERROR_CATALOG) return new DivertError(name as ErrorName, message, {details})
    return new DivertError('ADMIN_PROTOCOL', `${message} (unknown code ${String(b?.code)})`)
  }
}

export function isDivertError(e: unknown): e is DivertError {
  return e instanceof DivertError
}

export function errorCodes(): ErrorCode[] {
  return (Object.keys(ERROR_CATALOG) as ErrorName[]).map((n) => `DIVERT_ERR_${n}` as ErrorCode)
}
