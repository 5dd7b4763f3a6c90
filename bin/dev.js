#!/usr/bin/env -S node --loader ts-node/esm --no-warnings=ExperimentalWarning
// Development launcher: runs the TypeScript sources of commands/ through ts-node (tsx 4.23
// breaks oclif's dev-mode loader).
import {rmSync} from 'node:fs'
import {execute} from '@oclif/core'

// oclif trusts oclif.manifest.json (written by `npm run build` from dist/) for every command's flags
// and help; in development the sources may be newer, so drop it and let oclif read the commands
// themselves. `npm run build` writes it again.
rmSync(new URL('../oclif.manifest.json', import.meta.url), {force: true})
await execute({development: true, dir: import.meta.url})
