/**
 * DaemonMetrics: the daemon's Prometheus registry (prom-client), one per Daemon — tests run several
 * daemons in one process, so the global default registry is never used. Counts the owners already
 * keep (registry totals, servers, rules, mirror and recording drops) are read in each metric's
 * `collect()` at scrape time, so the data path pays nothing for them; the two histograms are observed
 * once per session, through the session registry's hooks.
 *
 *   owners (registry, backends, rules, recordings) ─collect() at scrape─▶ prom-client Registry ─▶ GET /metrics
 *   SessionRegistry ─onConnect/onClose─▶ histograms
 */
import {Counter, Gauge, Histogram, Registry, collectDefaultMetrics} from 'prom-client'

/** What the metrics read from the daemon at scrape time. */
export interface MetricsSource {
  startedAt: number
  counters(): Array<{listener: string; backend: string; active: number; sessions: number; closedBy: Record<string, number>; bytesIn: number; bytesOut: number; liveBytesIn: number; liveBytesOut: number}>
  refused(): Iterable<[string, number]>
  rules(): Array<{id: string; source: string; origin: string; hits: number}>
  servers(): Array<{backend: string; key: string; up: boolean; active: number; total: number}>
  mirrorDropped(): Iterable<[string, number]>
  recordingDropped(): Iterable<[string, number]>
  /** The kernel fast path: sessions spliced now and since start (zeros when it is off). */
  fastPath?(): {active: number; spliced: number}
}

/** The labels a session is observed with. */
export interface SessionLabels {
  listener: string
  backend: string
  protocol: string
}

/** Seconds: a loopback connect is well under a millisecond; a remote one that takes 10 s has failed in practice. */
const CONNECT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
/** Seconds: from a DNS-style UDP exchange to a day-long VPN tunnel. */
const SESSION_BUCKETS = [0.01, 0.1, 1, 10, 60, 300, 900, 3600, 14_400, 86_400]

export class DaemonMetrics {
  readonly registry = new Registry()
  private readonly connectDuration: Histogram<'listener' | 'backend'>
  private readonly sessionDuration: Histogram<'listener' | 'backend' | 'protocol'>

  constructor(src: MetricsSource) {
    const registers = [this.registry]
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[], collect: (g: Gauge<L>) => void): void => {
      new Gauge({name, help, labelNames, registers, collect(this: Gauge<L>) { this.reset(); collect(this) }})
    }
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[], collect: (c: Counter<L>) => void): void => {
      new Counter({name, help, labelNames, registers, collect(this: Counter<L>) { this.reset(); collect(this) }})
    }
    gauge('divert_up', 'Always 1 when the daemon answers (Prometheus "up" convention).', [], (g) => g.set(1))
    gauge('divert_start_time_seconds', 'Start time of the daemon since the Unix epoch, in seconds.', [], (g) => g.set(src.startedAt / 1000))
    this.sessionMetrics(src, gauge, counter)
    gauge('divert_fastpath_sessions', 'TCP sessions whose bytes the kernel moves now (fast_path: auto).', [], (g) => g.set(src.fastPath?.().active ?? 0))
    counter('divert_fastpath_sessions_total', 'TCP sessions handed to the kernel fast path since start.', [], (c) => c.inc(src.fastPath?.().spliced ?? 0))
    gauge('divert_rules', 'Rules in the table, by origin.', ['origin'], (g) => {
      const rules = src.rules()
      for (const origin of ['config', 'runtime']) g.set({origin}, rules.filter((r) => r.origin === origin).length)
    })
    counter('divert_rule_hits_total', 'New sessions each rule matched.', ['rule', 'source'], (c) => {
      for (const r of src.rules()) c.inc({rule: r.id, source: r.source}, r.hits)
    })
    gauge('divert_server_up', 'Server health: 1 up, 0 down.', ['backend', 'server'], (g) => {
      for (const s of src.servers()) g.set({backend: s.backend, server: s.key}, s.up ? 1 : 0)
    })
    gauge('divert_server_sessions_active', 'Live sessions per server (mirror copies included).', ['backend', 'server'], (g) => {
      for (const s of src.servers()) g.set({backend: s.backend, server: s.key}, s.active)
    })
    counter('divert_server_sessions_total', 'Sessions given to each server (mirror copies included).', ['backend', 'server'], (c) => {
      for (const s of src.servers()) c.inc({backend: s.backend, server: s.key}, s.total)
    })
    counter('divert_mirror_dropped_bytes_total', 'Bytes a mirror did not copy (buffer full, mirror server down or slow).', ['backend'], (c) => {
      for (const [backend, n] of src.mirrorDropped()) c.inc({backend}, n)
    })
    counter('divert_recording_dropped_total', 'Packets a recording did not write (disk behind or failed).', ['file'], (c) => {
      for (const [file, n] of src.recordingDropped()) c.inc({file}, n)
    })
    this.connectDuration = new Histogram({
      name: 'divert_connect_duration_seconds', help: 'From accept (TCP) or first datagram (UDP) to the upstream socket connected.',
      labelNames: ['listener', 'backend'], buckets: CONNECT_BUCKETS, registers,
    })
    this.sessionDuration = new Histogram({
      name: 'divert_session_duration_seconds', help: 'Session lifetime, observed when it ends.',
      labelNames: ['listener', 'backend', 'protocol'], buckets: SESSION_BUCKETS, registers,
    })
    // Standard names (process_*, nodejs_*), no prefix: the dashboards and alerts written for any Node
    // service apply as they are; `job`/`instance` tell the services apart. Includes event-loop lag.
    collectDefaultMetrics({register: this.registry})
  }

  private sessionMetrics(src: MetricsSource, gauge: GaugeMaker, counter: CounterMaker): void {
    const lb = (c: {listener: string; backend: string}): {listener: string; backend: string} => ({listener: c.listener, backend: c.backend})
    gauge('divert_sessions_active', 'Live sessions (TCP connections and UDP flows).', ['listener', 'backend'], (g) => {
      for (const c of src.counters()) g.set(lb(c), c.active)
    })
    counter('divert_sessions_total', 'Sessions started.', ['listener', 'backend'], (m) => {
      for (const c of src.counters()) m.inc(lb(c), c.sessions)
    })
    counter('divert_sessions_closed_total', 'Sessions ended, by cause.', ['listener', 'backend', 'cause'], (m) => {
      for (const c of src.counters()) for (const [cause, n] of Object.entries(c.closedBy)) m.inc({...lb(c), cause}, n)
    })
    counter('divert_sessions_refused_total', 'New sessions refused (no server up, limits).', ['listener'], (m) => {
      for (const [listener, n] of src.refused()) m.inc({listener}, n)
    })
    counter('divert_bytes_in_total', 'Bytes received from clients.', ['listener', 'backend'], (m) => {
      for (const c of src.counters()) m.inc(lb(c), c.bytesIn + c.liveBytesIn)
    })
    counter('divert_bytes_out_total', 'Bytes sent to clients.', ['listener', 'backend'], (m) => {
      for (const c of src.counters()) m.inc(lb(c), c.bytesOut + c.liveBytesOut)
    })
  }

  /** Once per session, when its upstream socket is connected. */
  connected(s: SessionLabels, ms: number): void {
    this.connectDuration.observe({listener: s.listener, backend: s.backend}, ms / 1000)
  }

  /** Once per session, when it ends. */
  closed(s: SessionLabels, ms: number): void {
    this.sessionDuration.observe({listener: s.listener, backend: s.backend, protocol: s.protocol}, ms / 1000)
  }

  render(): Promise<string> {
    return this.registry.metrics()
  }
}

type GaugeMaker = <L extends string>(name: string, help: string, labelNames: readonly L[], collect: (g: Gauge<L>) => void) => void
type CounterMaker = <L extends string>(name: string, help: string, labelNames: readonly L[], collect: (c: Counter<L>) => void) => void
