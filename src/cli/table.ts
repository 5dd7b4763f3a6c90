/**
 * Tables for humans (cli-table3), fitted to the terminal: a table wider than `width` first loses
 * the columns its caller named as least important (only as many as needed for the rest to fit at a
 * comfortable width), then its widest columns wrap. Every cell is
 * escaped (escape.ts): cells hold notes, sources, paths and names that come from outside.
 *
 *   natural widths ─▶ drop columns (in the caller's order) ─▶ share the rest out ─▶ wrap cells
 */
import Table from 'cli-table3'
import {escapeControl} from './escape.js'

export interface TableOptions {
  /** Columns available (default unlimited: a pipe or file gets whole lines). */
  width?: number
  /** Heads of the columns that may go when the table does not fit, the first to go first. */
  drop?: string[]
}

/** cli-table3's default style: one space of padding each side, one border character between columns. */
const PADDING = 2
/** Narrowest a wrapped column gets: three characters of text. */
const MIN_COLUMN = 3 + PADDING
/** Narrowest a column is wrapped to before columns are dropped instead: an IPv4 address and port, nearly. */
const COMFORTABLE = 16 + PADDING
const plain = {head: [], border: []}

export function table(head: string[], rows: Array<Array<string | number>>, opts: TableOptions = {}): string {
  const width = opts.width ?? Number.POSITIVE_INFINITY
  const cells = [head, ...rows].map((r) => r.map((c) => escapeControl(String(c))))
  const keep = keptColumns(head, cells, width, opts.drop ?? [])
  const picked = cells.map((r) => keep.map((i) => r[i]))
  const natural = keep.map((i) => naturalWidth(cells, i))
  const fits = tableWidth(natural) <= width
  const colWidths = fits ? undefined : shareOut(natural, width - keep.length - 1)
  const t = new Table({head: picked[0], style: plain, wordWrap: true, ...(colWidths ? {colWidths} : {})})
  t.push(...picked.slice(1).map((r) => (colWidths ? r.map((c, j) => breakLongWords(c, colWidths[j] - PADDING)) : r)))
  return t.toString()
}

/**
 * Column indexes left after dropping, in the caller's order, until every column fits at least at a
 * comfortable width (or its natural one, when narrower): wrapping a long note beats losing a column.
 */
function keptColumns(head: string[], cells: string[][], width: number, drop: string[]): number[] {
  let keep = head.map((_, i) => i)
  for (const name of drop) {
    if (tableWidth(keep.map((i) => Math.min(COMFORTABLE, naturalWidth(cells, i)))) <= width) break
    keep = keep.filter((i) => head[i] !== name)
  }
  return keep
}

function naturalWidth(cells: string[][], column: number): number {
  return Math.max(...cells.map((r) => Math.max(...r[column].split('\n').map((l) => [...l].length)))) + PADDING
}

function tableWidth(columns: number[]): number {
  return columns.reduce((a, b) => a + b, 0) + columns.length + 1
}

/**
 * Splits `available` among the columns, narrowest first: a column that needs less than an equal share
 * keeps its natural width and leaves the rest to the wider ones (max-min fairness).
 */
function shareOut(natural: number[], available: number): number[] {
  const widths = [...natural]
  let left = available
  const order = natural.map((w, i) => ({w, i})).sort((a, b) => a.w - b.w)
  order.forEach(({w, i}, k) => {
    const share = Math.floor(left / (order.length - k))
    widths[i] = Math.max(MIN_COLUMN, Math.min(w, share))
    left -= widths[i]
  })
  return widths
}

/** Words longer than the column are split, so wrapping keeps every character instead of cutting the word off. */
function breakLongWords(cell: string, inner: number): string {
  if (inner < 1) return cell
  return cell.replace(/\S+/g, (word) => {
    const chars = [...word]
    if (chars.length <= inner) return word
    const parts: string[] = []
    for (let i = 0; i < chars.length; i += inner) parts.push(chars.slice(i, i + inner).join(''))
    return parts.join('\n')
  })
}
