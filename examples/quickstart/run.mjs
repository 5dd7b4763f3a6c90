#!/usr/bin/env node
// `npm start`: the quickstart. Starts the three echo backends and `divert start -c divert.yaml` in
// the foreground; Ctrl-C stops both. Everything listens on loopback only.
import {spawn} from 'node:child_process'
import {fileURLToPath} from 'node:url'
import {startBackends} from './backends.mjs'

const here = (p) => fileURLToPath(new URL(p, import.meta.url))
const stopBackends = await startBackends()
console.log(`
divert quickstart — try, in another terminal (the client binds a loopback source, like a device):
  node examples/quickstart/client.mjs --from 127.0.0.2      # prod-1 or prod-2 answers (weighted 2:1)
  npx divert add 127.0.0.2 --to staging                     # divert just that "device" to staging
  node examples/quickstart/client.mjs --from 127.0.0.2      # staging answers, naming the real client (PROXY v2)
  node examples/quickstart/client.mjs --from 127.0.0.3      # everyone else still reaches prod
  npx divert list; npx divert sessions; npx divert explain 127.0.0.2
  npx divert rm 127.0.0.2                                   # back to production
  node examples/quickstart/client.mjs --from 127.0.0.2 --udp   # UDP through the same daemon
`)
const daemon = spawn(process.execPath, [here('../../bin/run.js'), 'start', '-c', here('./divert.yaml'), ...process.argv.slice(2)], {stdio: 'inherit'})
const stop = () => daemon.kill('SIGTERM')
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
daemon.on('exit', (code) => {
  stopBackends()
  process.exit(code ?? 0)
})
