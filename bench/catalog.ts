/**
 * What the bench measures: for each test, the contenders it runs, its metrics, which ratios it
 * reports and the goals from the issue ("Targets (ratios to HAProxy in the same run unless said)").
 * Pure data: the workloads that fill these metrics live in suites.ts.
 */
import type {Profile, TestId} from './options.js'
import {RELOAD_RTT_BUDGET_MS} from './reload.js'

export type Contender = 'direct' | 'haproxy' | 'nginx' | 'divert' | 'divert-fast' | 'divert-100k' | 'divert-mirror' | 'divert-record'

export interface MetricDef {
  id: string
  label: string
  unit: string
  /** Which direction is good; 'info' metrics get ratios but no judgement. */
  better: 'higher' | 'lower' | 'info'
  /**
   * A derived metric: this contender's value of that metric less direct's in the same run (machine
   * CPU above direct's is what the proxy costs the machine, kernel work on its behalf included).
   */
  overDirect?: string
}

export interface Goal {
  metric: string
  subject: Contender
  /** With a peer: the goal is on median(subject/peer per run). Without: on every run's own value. */
  peer?: Contender
  op: '>=' | '<=' | '=='
  value: number
  text: string
}

export interface TestDef {
  id: TestId
  title: string
  how: string
  contenders: Contender[]
  comparisons: Array<[Contender, Contender]>
  metrics: MetricDef[]
  goals: Goal[]
}

const VS_PEERS: Array<[Contender, Contender]> = [['divert', 'haproxy'], ['divert', 'nginx'], ['divert', 'direct']]
/** The TCP tests also run divert with `fast_path: auto` (issue 15): the kernel splices untapped sessions. */
const TCP_CONTENDERS: Contender[] = ['direct', 'haproxy', 'nginx', 'divert', 'divert-fast']
const VS_PEERS_FAST: Array<[Contender, Contender]> = [...VS_PEERS, ['divert-fast', 'haproxy'], ['divert-fast', 'divert']]
const VS_NGINX: Array<[Contender, Contender]> = [['divert', 'nginx'], ['divert', 'direct']]

const m = (id: string, label: string, unit: string, better: MetricDef['better']): MetricDef => ({id, label, unit, better})
/** Machine CPU per unit above direct's in the same run: the proxy's whole cost, in its process or not. */
const overDirect = (of: string, label: string, unit: string): MetricDef => ({id: `${of}.overDirect`, label, unit, better: 'lower', overDirect: of})

function ratioGoal(metric: string, peer: Contender, op: '>=' | '<=', value: number, subject: Contender = 'divert'): Goal {
  return {metric, subject, peer, op, value, text: `${op === '>=' ? '≥' : '≤'} ${value}× ${peer}`}
}

export function udpStepMetrics(rates: number[]): MetricDef[] {
  return rates.flatMap((r) => [
    m(`udp.delivered@${r}`, `delivered at ${r.toLocaleString('en-US')}/s offered`, 'dgram/s', 'higher'),
    m(`udp.loss@${r}`, `loss at ${r.toLocaleString('en-US')}/s offered`, '%', 'lower'),
  ])
}

export function catalog(p: Profile): TestDef[] {
  return [
    {
      id: 'tcp-bulk', title: 'TCP bulk throughput (iperf3)', how: `iperf3 -t ${p.iperfSec}, 1 and 4 streams`,
      contenders: TCP_CONTENDERS, comparisons: VS_PEERS_FAST,
      metrics: [m('bulk1.gbps', '1 stream', 'Gbit/s', 'higher'), m('bulk1.cpuMsPerGB', '1 stream: proxy CPU', 'ms/GB', 'lower'),
        m('bulk4.gbps', '4 streams', 'Gbit/s', 'higher'), m('bulk4.cpuMsPerGB', '4 streams: proxy CPU', 'ms/GB', 'lower'),
        m('bulk1.machineMsPerGB', '1 stream: machine CPU', 'ms/GB', 'lower'), overDirect('bulk1.machineMsPerGB', '1 stream: machine CPU above direct', 'ms/GB'),
        m('bulk4.machineMsPerGB', '4 streams: machine CPU', 'ms/GB', 'lower'), overDirect('bulk4.machineMsPerGB', '4 streams: machine CPU above direct', 'ms/GB'),
        m('bulk1.faultsPerMB', '1 stream: proxy minor page faults', 'per MB', 'lower')],
      goals: [ratioGoal('bulk1.gbps', 'haproxy', '>=', 1.0), ratioGoal('bulk4.gbps', 'haproxy', '>=', 1.0)],
    },
    {
      id: 'tcp-connect', title: 'New TCP connections (wrk, Connection: close)', how: `wrk -t1 -c${p.wrkConnections} -d${p.wrkSec}s, 256-byte file from nginx`,
      contenders: TCP_CONTENDERS, comparisons: VS_PEERS_FAST,
      metrics: [m('conn.rate', 'new connections', 'conn/s', 'higher'), m('conn.p50', 'latency p50', 'ms', 'lower'),
        m('conn.p99', 'latency p99', 'ms', 'lower'), m('conn.cpuUs', 'proxy CPU per connection', 'µs', 'lower'),
        m('conn.machineUs', 'machine CPU per connection', 'µs', 'lower'), overDirect('conn.machineUs', 'machine CPU per connection above direct', 'µs'),
        m('conn.errors', 'socket errors', 'count', 'lower')],
      goals: [ratioGoal('conn.rate', 'haproxy', '>=', 0.8)],
    },
    {
      id: 'keepalive', title: 'Keep-alive HTTP requests (wrk)', how: `wrk -t1 -c1 and -c${p.wrkConnections}, -d${p.wrkSec}s each`,
      contenders: TCP_CONTENDERS, comparisons: VS_PEERS_FAST,
      metrics: [m('ka1.p50', '1 conn: latency p50', 'ms', 'lower'), m('ka1.p99', '1 conn: latency p99', 'ms', 'lower'),
        m('ka1.cpuUs', '1 conn: proxy CPU per request', 'µs', 'lower'), m('ka1.machineUs', '1 conn: machine CPU per request', 'µs', 'lower'),
        overDirect('ka1.machineUs', '1 conn: machine CPU per request above direct', 'µs'),
        m('ka32.rps', `${p.wrkConnections} conns: requests`, 'req/s', 'higher'),
        m('ka32.p99', `${p.wrkConnections} conns: latency p99`, 'ms', 'lower'), m('ka32.cpuUs', `${p.wrkConnections} conns: proxy CPU per request`, 'µs', 'lower'),
        m('ka32.machineUs', `${p.wrkConnections} conns: machine CPU per request`, 'µs', 'lower'),
        overDirect('ka32.machineUs', `${p.wrkConnections} conns: machine CPU per request above direct`, 'µs')],
      goals: [ratioGoal('ka1.p50', 'haproxy', '<=', 1.2), ratioGoal('ka1.p99', 'haproxy', '<=', 2), ratioGoal('ka32.rps', 'haproxy', '>=', 0.9)],
    },
    {
      id: 'udp-rate', title: 'UDP datagrams at rising offered rates (HAProxy has no UDP proxy)',
      how: `${p.udpClients} established client flows, ${p.udpStepMs} ms per rate, 64-byte datagrams echoed`,
      contenders: ['direct', 'nginx', 'divert'], comparisons: VS_NGINX,
      metrics: [m('udp.max', 'delivered, best step', 'dgram/s', 'higher'), m('udp.wrong', 'replies to the wrong client', 'count', 'lower'),
        m('udp.cpuUs', `proxy CPU per datagram at ${p.udpCpuRate.toLocaleString('en-US')}/s`, 'µs', 'lower'),
        m('udp.rttP50', `round trip p50 at ${p.udpCpuRate.toLocaleString('en-US')}/s`, 'ms', 'lower'), ...udpStepMetrics(p.udpRates)],
      goals: [ratioGoal('udp.max', 'nginx', '>=', 1.0), {metric: 'udp.wrong', subject: 'divert', op: '==', value: 0, text: '= 0 every run'},
        ratioGoal('udp.cpuUs', 'nginx', '<=', 1.0)],
    },
    {
      id: 'udp-flows', title: 'New UDP flows', how: `${p.flowsConcurrency} clients at once, each flow a new source port and one round trip; ${p.flowsMax.toLocaleString('en-US')} flows (at most ${p.flowsMs} ms)`,
      contenders: ['direct', 'nginx', 'divert'], comparisons: VS_NGINX,
      metrics: [m('flows.rate', 'new flows answered', 'flows/s', 'higher'), m('flows.lost', 'flows unanswered after 1 s', 'count', 'lower'),
        m('flows.wrong', 'replies to the wrong client', 'count', 'lower'), m('flows.cpuUs', 'proxy CPU per flow', 'µs', 'lower')],
      goals: [{metric: 'flows.wrong', subject: 'divert', op: '==', value: 0, text: '= 0 every run'}],
    },
    {
      id: 'idle-tcp', title: 'Memory with idle TCP connections', how: 'N idle client connections (each with its upstream connection) from 127.0.0.2–20',
      contenders: ['haproxy', 'nginx', 'divert'], comparisons: [['divert', 'haproxy'], ['divert', 'nginx']],
      metrics: [m('idleTcp.rss', 'RSS with N idle', 'MB', 'lower'), m('idleTcp.base', 'RSS at start', 'MB', 'lower'),
        m('idleTcp.perConn', 'RSS per connection', 'KB', 'lower'), m('idleTcp.fds', 'file descriptors with N idle', 'count', 'lower'),
        m('idleTcp.held', 'connections held (N)', 'count', 'info'), m('idleTcp.dropped', 'closed by the proxy while idle', 'count', 'lower')],
      goals: [ratioGoal('idleTcp.rss', 'haproxy', '<=', 2)],
    },
    {
      id: 'idle-udp', title: 'Memory with UDP flows', how: 'N client flows, each answered once, then idle',
      contenders: ['nginx', 'divert'], comparisons: [['divert', 'nginx']],
      metrics: [m('idleUdp.rss', 'RSS with N flows', 'MB', 'lower'), m('idleUdp.base', 'RSS at start', 'MB', 'lower'),
        m('idleUdp.perFlow', 'RSS per flow', 'KB', 'lower'), m('idleUdp.fds', 'file descriptors with N flows', 'count', 'lower'),
        m('idleUdp.held', 'flows answered (N)', 'count', 'info')],
      goals: [],
    },
    {
      id: 'rules', title: `Rule count: 10 rules (divert) vs ${p.rulesLarge.toLocaleString('en-US')} (divert-100k)`,
      how: 'rule-table lookup micro-benchmark (bench/rules.ts), and new connections/s as in tcp-connect',
      contenders: ['divert', 'divert-100k'], comparisons: [['divert-100k', 'divert']],
      metrics: [m('rules.lookupNs', 'rule lookup', 'ns', 'lower'), m('rules.connRate', 'new connections', 'conn/s', 'higher'),
        m('rules.cpuUs', 'proxy CPU per connection', 'µs', 'lower')],
      goals: [ratioGoal('rules.connRate', 'divert', '>=', 0.9, 'divert-100k')],
    },
    {
      id: 'taps', title: 'Cost of a mirror and of a recorder on every session', how: `keep-alive wrk -c${p.wrkConnections} with a rule for 127.0.0.1 that mirrors or records`,
      contenders: ['divert', 'divert-mirror', 'divert-record'], comparisons: [['divert-mirror', 'divert'], ['divert-record', 'divert']],
      metrics: [m('taps.rps', 'requests', 'req/s', 'higher'), m('taps.p99', 'latency p99', 'ms', 'lower'), m('taps.cpuUs', 'proxy CPU per request', 'µs', 'lower'),
        m('taps.pcapMB', 'recording written', 'MB', 'info')],
      goals: [],
    },
    {
      id: 'reload', title: `Reload of ${p.rulesLarge.toLocaleString('en-US')} rules under a keep-alive request stream`,
      how: `divert-100k: start time and RSS; then every rule's backend changed and \`divert reload\` while requests run back to back on one keep-alive connection`,
      contenders: ['divert-100k'], comparisons: [],
      metrics: [m('reload.worstRtt', 'worst request round trip during the reload', 'ms', 'lower'), m('reload.ms', 'reload time', 'ms', 'lower'),
        m('reload.requests', 'requests served during the reload', 'count', 'info'), m('reload.startMs', 'start to ready', 'ms', 'lower'),
        m('reload.rssStart', 'RSS after start', 'MB', 'lower'), m('reload.rssAfter', 'RSS after the reload', 'MB', 'lower')],
      goals: [{metric: 'reload.worstRtt', subject: 'divert-100k', op: '<=', value: RELOAD_RTT_BUDGET_MS, text: `≤ ${RELOAD_RTT_BUDGET_MS} ms every run`}],
    },
  ]
}
