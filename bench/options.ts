/**
 * Bench command line: `node bench/run.mjs [--install] [--quick] [--runs N] [--only a,b] [--idle N]
 * [--out FILE] [--keep-temp]` → BenchOptions, and the durations each mode implies (Profile).
 */
import {DivertError} from '../src/errors.js'

export const TEST_IDS = ['tcp-bulk', 'tcp-connect', 'keepalive', 'udp-rate', 'udp-flows', 'idle-tcp', 'idle-udp', 'rules', 'taps', 'reload'] as const
export type TestId = (typeof TEST_IDS)[number]

/** The CLI start-up test's name for --only; it runs apart from the proxy tests (bench/cli.ts). */
export const CLI_TEST = 'cli'

/** The fleet test's name for --only (bench/fleet.ts): two instances and a redis-server, no proxy tools. */
export const FLEET_TEST = 'fleet'
/** The gateway-mode test's name for --only; it runs apart too, in namespaces of its own (bench/gateway.ts). */
export const GATEWAY_TEST = 'gateway'

/** Group names accepted by --only, for convenience. */
const ALIASES: Record<string, TestId[]> = {
  tcp: ['tcp-bulk', 'tcp-connect', 'keepalive'],
  http: ['tcp-connect', 'keepalive'],
  udp: ['udp-rate', 'udp-flows'],
  memory: ['idle-tcp', 'idle-udp'],
  idle: ['idle-tcp', 'idle-udp'],
}

export const DIVERT_LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const
export type DivertLogLevel = (typeof DIVERT_LOG_LEVELS)[number]

export interface BenchOptions {
  install: boolean
  /** The CLI start-up test (bench/cli.ts): divert calls vs a bare node start; needs no proxy tools. */
  cli: boolean
  /** The fleet test (bench/fleet.ts): rule changes between two instances through redis-server. */
  fleet: boolean
  /** The gateway-mode test (bench/gateway.ts): needs root, ip, nft and iperf3; skipped with the reason otherwise. */
  gateway: boolean
  quick: boolean
  runs: number
  only: TestId[]
  out: string
  idleCount: number
  keepTemp: boolean
  /** divert's --log-level: info (its default, one line per session) or a quieter level like the peers' no-access-log setup. */
  divertLogLevel: DivertLogLevel
  help: boolean
}

export const USAGE = `usage: npm run bench -- [options]      (or: node bench/run.mjs [options] after npm run build)
  --install        install missing tools with apt-get (otherwise: list them and exit 1)
  --quick          1 run, short durations: a smoke test of the harness
  --runs N         runs per test and target (default 3; --quick: 1)
  --only LIST      comma-separated tests: ${TEST_IDS.join(', ')}, ${CLI_TEST}, ${FLEET_TEST}, ${GATEWAY_TEST}
                   or groups: ${Object.keys(ALIASES).join(', ')}
  --idle N         idle TCP connections / UDP flows for the memory tests (default 10000)
  --out FILE       JSON results file (default bench/results/latest.json)
  --keep-temp      keep the temp dir with generated configs and logs
  --divert-log-level LEVEL
                   divert's --log-level (default info: one log line per session, as a user runs it;
                   warn matches the peers, which run without access logs)
  -h, --help       this text`

function resolveOnly(list: string): {only: TestId[]; cli: boolean; fleet: boolean; gateway: boolean} {
  const out = new Set<TestId>()
  let cli = false
  let fleet = false
  let gateway = false
  for (const raw of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (raw === CLI_TEST) cli = true
    else if (raw === FLEET_TEST) fleet = true
    else if (raw === GATEWAY_TEST) gateway = true
    else if ((TEST_IDS as readonly string[]).includes(raw)) out.add(raw as TestId)
    else if (ALIASES[raw]) ALIASES[raw].forEach((t) => out.add(t))
    else throw new DivertError('CLI_USAGE', `--only: unknown test "${raw}"; known tests: ${TEST_IDS.join(', ')}, ${CLI_TEST}, ${FLEET_TEST}, ${GATEWAY_TEST}; groups: ${Object.keys(ALIASES).join(', ')}`)
  }
  if (out.size === 0 && !cli && !fleet && !gateway) throw new DivertError('CLI_USAGE', '--only needs at least one test name, e.g. --only tcp-bulk,udp-rate')
  return {only: TEST_IDS.filter((t) => out.has(t)), cli, fleet, gateway}
}

function positiveInt(flag: string, value: string | undefined): number {
  const n = Number(value)
  if (value === undefined || !Number.isInteger(n) || n < 1) {
    throw new DivertError('CLI_USAGE', `${flag} needs a positive whole number, got ${value === undefined ? 'nothing' : `"${value}"`}`)
  }
  return n
}

function logLevel(flag: string, value: string): DivertLogLevel {
  if ((DIVERT_LOG_LEVELS as readonly string[]).includes(value)) return value as DivertLogLevel
  throw new DivertError('CLI_USAGE', `${flag} needs one of ${DIVERT_LOG_LEVELS.join(', ')}, got "${value}"`)
}

function needValue(flag: string, value: string | undefined): string {
  if (value === undefined || value.startsWith('--')) throw new DivertError('CLI_USAGE', `${flag} needs a value`)
  return value
}

export function parseOptions(argv: string[], defaultOut: string): BenchOptions {
  const o: BenchOptions = {install: false, cli: true, fleet: true, gateway: true, quick: false, runs: 0, only: [...TEST_IDS], out: defaultOut, idleCount: 10_000, keepTemp: false, divertLogLevel: 'info', help: false}
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].includes('=') ? [argv[i].slice(0, argv[i].indexOf('=')), argv[i].slice(argv[i].indexOf('=') + 1)] : [argv[i], undefined]
    const value = (): string => needValue(flag, inline ?? argv[++i])
    if (flag === '--install') o.install = true
    else if (flag === '--quick') o.quick = true
    else if (flag === '--keep-temp') o.keepTemp = true
    else if (flag === '-h' || flag === '--help') o.help = true
    else if (flag === '--runs') o.runs = positiveInt(flag, value())
    else if (flag === '--idle') o.idleCount = positiveInt(flag, value())
    else if (flag === '--only') Object.assign(o, resolveOnly(value()))
    else if (flag === '--out') o.out = value()
    else if (flag === '--divert-log-level') o.divertLogLevel = logLevel(flag, value())
    else throw new DivertError('CLI_USAGE', `unknown option "${argv[i]}"; see --help`)
  }
  if (o.runs === 0) o.runs = o.quick ? 1 : 3
  return o
}

/** Durations and sizes of every workload; --quick shortens them all. */
export interface Profile {
  runs: number
  warmupSec: number
  wrkSec: number
  wrkConnections: number
  iperfSec: number
  udpClients: number
  udpRates: number[]
  udpStepMs: number
  /** The offered rate at which CPU per datagram is compared: below every proxy's saturation. */
  udpCpuRate: number
  flowsMs: number
  flowsConcurrency: number
  flowsMax: number
  idleCount: number
  rulesLarge: number
}

export function profileFor(o: BenchOptions): Profile {
  const quick = o.quick
  return {
    runs: o.runs,
    warmupSec: 1, // wrk takes whole seconds only
    wrkSec: quick ? 2 : 3,
    wrkConnections: 32,
    iperfSec: quick ? 2 : 3,
    udpClients: 512,
    udpRates: quick ? [10_000, 80_000] : [10_000, 20_000, 40_000, 80_000, 160_000],
    udpStepMs: quick ? 1000 : 1500,
    udpCpuRate: 10_000,
    flowsMs: quick ? 1500 : 3000,
    flowsConcurrency: 512,
    // Below nginx's session capacity ((worker_connections) / 2, each UDP session takes two slots and
    // lives 60 s) and divert's max_flows, so the test measures the rate, not a capacity limit.
    flowsMax: 9_000,
    idleCount: o.idleCount,
    rulesLarge: 100_000,
  }
}
