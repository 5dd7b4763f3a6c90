/**
 * divert's version, from the package.json of the checkout or install this module belongs to: the
 * nearest one above it, so it holds for dist/src/version.js (npm run build) and src/version.ts
 * (bin/dev.js through ts-node) alike.
 */
import {readFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {name?: string; version?: string}
      if (pkg.name === 'divert' && typeof pkg.version === 'string') return pkg.version
    } catch {
      // no package.json here: keep walking up
    }
    const up = dirname(dir)
    if (up === dir) return '0.0.0-unknown'
    dir = up
  }
}

export const VERSION: string = packageVersion()
