#!/usr/bin/env node
// Entry point of `npm run soak` (which builds first): runs the compiled soak in dist/test/soak/.
// The soak itself is TypeScript (test/soak/*.ts). It is not part of `npm test`: it holds thousands of
// loopback sessions for minutes. Usage: npm run soak -- [--tcp N] [--udp M] [--minutes 3] (--help).
import {existsSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

const entry = fileURLToPath(new URL('../dist/test/soak/soak.js', import.meta.url))
if (!existsSync(entry)) {
  process.stderr.write(`soak: ${entry} is missing: run \`npm run build\` first (npm run soak does it for you)\n`)
  process.exit(1)
}
const {main} = await import(entry)
try {
  process.exitCode = await main(process.argv.slice(2))
} catch (error) {
  process.stderr.write(`soak: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exitCode = 2
}
