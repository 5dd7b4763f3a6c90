#!/usr/bin/env node
// Entry point of `npm run bench` (which builds first): runs the compiled harness in dist/bench/.
// The harness itself is TypeScript (bench/*.ts); see bench/README.md.
import {existsSync} from 'node:fs'
import {fileURLToPath} from 'node:url'
import {dirname, join} from 'node:path'

const repo = join(dirname(fileURLToPath(import.meta.url)), '..')
const entry = join(repo, 'dist/bench/main.js')
if (!existsSync(entry)) {
  process.stderr.write(`bench: ${entry} is missing: run \`npm run build\` first (npm run bench does it for you)\n`)
  process.exit(1)
}
const {main} = await import(entry)
process.exitCode = await main(process.argv.slice(2), repo)
