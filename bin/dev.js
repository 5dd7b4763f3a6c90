#!/usr/bin/env -S node --loader ts-node/esm --no-warnings=ExperimentalWarning
// Development launcher: runs the TypeScript sources of commands/ through ts-node (see STYLE.md's
// pitfalls: tsx 4.23 breaks oclif's dev-mode loader).
import {execute} from '@oclif/core'

await execute({development: true, dir: import.meta.url})
