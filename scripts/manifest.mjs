#!/usr/bin/env node
// Writes oclif.manifest.json after `tsc`, the way `oclif manifest` does. With a manifest, oclif
// imports only the command being run: a CLI call starts in about half the time, and the daemon
// (`divert start`) does not carry every other command's modules in its heap.
import {writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {Plugin} from '@oclif/core'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const plugin = new Plugin({errorOnManifestCreate: true, ignoreManifest: true, isRoot: true, respectNoCacheDefault: true, root, type: 'core'})
await plugin.load()
writeFileSync(join(root, 'oclif.manifest.json'), JSON.stringify(plugin.manifest, null, 2) + '\n')
