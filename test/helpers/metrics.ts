/** Prometheus text exposition (GET /metrics) as the tests read it. */

/** Parses Prometheus text into `name{labels}` → value; comments and blank lines are skipped. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    out.set(line.slice(0, i), Number(line.slice(i + 1)))
  }
  return out
}
