/**
 * Pure renderers for `divert replay`: ReplayReport → the table, differences and summary a human
 * reads, and a one-line progress text. No I/O; the command prints what these return. Flow errors,
 * byte previews and the target come from outside: every line is escaped (escape.ts).
 */
import type {ReplayFlowResult, ReplayProgress, ReplayReport} from '../capture/replay.js'
import {escapeControl} from './escape.js'
import {formatBytes, table} from './render.js'

export function replayTable(report: ReplayReport, width = Number.POSITIVE_INFINITY): string {
  const many = report.loops > 1
  return table(['flow', 'proto', 'client', 'sent', 'received', 'recorded answer', 'result'], report.flows.map((f) => [
    many ? `${f.id} #${f.loop}` : f.id, f.protocol, f.client, formatBytes(f.bytesSent), formatBytes(f.bytesReceived), formatBytes(f.recordedServerBytes), flowResult(f),
  ]), {width, drop: ['recorded answer', 'proto', 'received', 'sent']})
}

export function flowResult(f: ReplayFlowResult): string {
  const parts: string[] = []
  if (f.error !== undefined) parts.push(`error: ${f.error}`)
  if (f.compare) parts.push(f.compare.identical ? 'identical' : `differs at byte ${f.compare.offset}`)
  if (f.gaps.length > 0) parts.push(`${f.gaps.length} gap${f.gaps.length === 1 ? '' : 's'} in the recording (${formatBytes(f.gaps.reduce((n, g) => n + g.length, 0))} missing)`)
  return parts.length > 0 ? parts.join('; ') : 'ok'
}

/** For each flow whose answer differs: where, and both sides around that byte. */
export function replayDifferences(report: ReplayReport): string {
  return report.flows
    .filter((f) => f.compare && !f.compare.identical)
    .map((f) => {
      const c = f.compare!
      const name = report.loops > 1 ? `${f.id} (pass ${f.loop})` : f.id
      return [
        `${name} differs at byte ${c.offset} (recorded answer ${c.lengthExpected} bytes, target sent ${c.lengthActual}):`,
        `  expected ${c.expected ?? ''}`,
        `  actual   ${c.actual ?? ''}`,
      ].map(escapeControl).join('\n')
    })
    .join('\n')
}

export function replaySummary(report: ReplayReport): string {
  const t = report.totals
  const passes = report.loops > 1 ? ` in ${report.loops} passes` : ''
  const pacing = report.fast ? 'as fast as possible' : report.speed === 1 ? 'at recorded speed' : `at ${report.speed}× recorded speed`
  const lines = [
    `replayed ${report.capture.selected} of ${report.capture.flows} flows${passes} to ${report.to} ${pacing}: sent ${formatBytes(t.bytesSent)}, received ${formatBytes(t.bytesReceived)}` +
      (t.errors > 0 ? `; ${t.errors} flow${t.errors === 1 ? '' : 's'} failed` : '') + unsentText(report),
  ]
  if (t.identical !== undefined) lines.push(`compare: ${t.identical} identical, ${t.different ?? 0} different`)
  const skipped = report.skipped.reduce((n, s) => n + s.count, 0)
  if (skipped > 0) lines.push(`skipped ${skipped} packets of ${report.capture.records}: ${report.skipped.map((s) => `${s.count} ${s.reason}`).join(', ')}`)
  if (report.aborted) lines.push('interrupted: flows still running were closed, later ones not started')
  return lines.map(escapeControl).join('\n')
}

/** UDP datagrams the socket refused (EMSGSIZE, …): not in "sent". */
function unsentText(report: ReplayReport): string {
  const n = report.flows.reduce((sum, f) => sum + (f.datagramsFailed ?? 0), 0)
  return n > 0 ? `; ${n} datagram${n === 1 ? '' : 's'} could not be sent` : ''
}

export function renderReplay(report: ReplayReport, width = Number.POSITIVE_INFINITY): string {
  const diff = replayDifferences(report)
  return [replayTable(report, width), ...(diff ? ['', diff] : []), '', replaySummary(report)].join('\n')
}

export function progressText(p: ReplayProgress): string {
  return `${p.flowsDone}/${p.flowsTotal} flows, sent ${formatBytes(p.bytesSent)}, received ${formatBytes(p.bytesReceived)}`
}
