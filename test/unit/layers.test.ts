/**
 * The import graph of src/, read from the import lines of the .ts sources: no cycles, the bottom
 * layer (addr, sys) self-contained, and nothing below net/ reaching up into it.
 *
 *   commands → run-daemon → daemon/control → admin, capture → net → session, backends → config → rules → addr, sys
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {readdirSync, readFileSync} from 'node:fs'
import {dirname, join, relative, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const SRC = join(ROOT, 'src')

/** `import … from '…'`, `export … from '…'`, `import '…'` and `import('…')`, over several lines too. */
const IMPORT = /(?:^|\n)\s*(?:import|export)\s+(?:type\s+)?(?:[^'";]*?\sfrom\s+)?['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g

function sources(dir: string): string[] {
  return readdirSync(dir, {withFileTypes: true}).flatMap((e) => {
    const p = join(dir, e.name)
    if (e.isDirectory()) return sources(p)
    return e.name.endsWith('.ts') ? [p] : []
  })
}

/** src-relative path → the src-relative paths it imports (only imports inside src/). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  for (const file of sources(SRC)) {
    const text = readFileSync(file, 'utf8')
    const deps = new Set<string>()
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2]
      if (!spec.startsWith('.')) continue
      const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts')
      if (target.startsWith(SRC + '/')) deps.add(relative(SRC, target))
    }
    graph.set(relative(SRC, file), [...deps])
  }
  return graph
}

/** Every cycle found by a depth-first walk, each as the file path that closes it. */
function cycles(graph: Map<string, string[]>): string[][] {
  const found: string[][] = []
  const state = new Map<string, 'open' | 'done'>()
  const stack: string[] = []
  const visit = (f: string): void => {
    state.set(f, 'open')
    stack.push(f)
    for (const d of graph.get(f) ?? []) {
      if (state.get(d) === 'open') found.push([...stack.slice(stack.indexOf(d)), d])
      else if (!state.has(d)) visit(d)
    }
    stack.pop()
    state.set(f, 'done')
  }
  for (const f of graph.keys()) if (!state.has(f)) visit(f)
  return found
}

const graph = importGraph()
const layer = (f: string): string => (f.includes('/') ? f.slice(0, f.indexOf('/')) : f)

test('issue 12: the import graph is read (sanity: known edges are seen)', () => {
  assert.ok(graph.size > 50, `read ${graph.size} files under ${SRC}`)
  assert.ok(graph.get('net/tcp-proxy.ts')?.includes('addr/address.ts'), 'net/tcp-proxy.ts imports addr/address.ts')
  assert.ok(graph.get('daemon.ts')?.includes('net/tcp-proxy.ts'), 'daemon.ts imports net/tcp-proxy.ts')
})

test('issue 12: src/ has no import cycles', () => {
  assert.deepEqual(cycles(graph).map((c) => c.join(' → ')), [])
})

test('issue 12: src/addr and src/sys import nothing else from src/ but the error catalogue', () => {
  // errors.ts is the ground every layer reports through: it imports nothing itself.
  assert.deepEqual(graph.get('errors.ts'), [])
  const bad = [...graph].filter(([f]) => ['addr', 'sys'].includes(layer(f)))
    .flatMap(([f, deps]) => deps.filter((d) => layer(d) !== layer(f) && d !== 'errors.ts').map((d) => `${f} → ${d}`))
  assert.deepEqual(bad, [])
})

test('issue 12: nothing below net/ imports from src/net/', () => {
  // Below net: the address vocabulary, system calls, config, rules, sessions and backends (net
  // imports them). capture/ sits above net: its mirror and replay open sockets through net/sockets.ts.
  const below = new Set(['addr', 'sys', 'config', 'rules', 'session', 'backends', 'errors.ts', 'alloc.ts', 'slices.ts', 'version.ts', 'fdlimit.ts', 'log-writer.ts'])
  const bad = [...graph].filter(([f]) => below.has(layer(f)))
    .flatMap(([f, deps]) => deps.filter((d) => layer(d) === 'net').map((d) => `${f} → ${d}`))
  assert.deepEqual(bad, [])
})
