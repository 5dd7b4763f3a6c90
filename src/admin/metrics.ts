/**
 * Renders the daemon's counters in the Prometheus text exposition format (version 0.0.4):
 * `# HELP`/`# TYPE` per family, label values escaped (backslash, quote, newline).
 */

export interface MetricSample {
  labels?: Record<string, string>
  value: number
}

export interface MetricFamily {
  name: string
  help: string
  type: 'counter' | 'gauge'
  samples: MetricSample[]
}

export function renderMetrics(families: MetricFamily[]): string {
  const out: string[] = []
  for (const f of families) {
    out.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`)
    for (const s of f.samples) out.push(`${f.name}${labels(s.labels)} ${Number.isFinite(s.value) ? s.value : 0}`)
  }
  return out.join('\n') + '\n'
}

function labels(l?: Record<string, string>): string {
  if (!l || Object.keys(l).length === 0) return ''
  const parts = Object.entries(l).map(([k, v]) => `${k}="${String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`)
  return `{${parts.join(',')}}`
}
