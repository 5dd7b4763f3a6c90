#!/usr/bin/env node
// `npm start`: the quickstart. Starts the echo backends and `divert start -c divert.yaml` in the
// foreground; Ctrl-C stops both. Everything listens on loopback only. Arguments go to `divert start`
// (e.g. `-- --admin ./admin.sock`); `-c FILE` runs another config, whose servers the echo backends
// then follow.
//
// Signals: the daemon runs in its own process group, so the terminal's Ctrl-C (SIGINT to the whole
// foreground group) reaches only this script, which sends the daemon exactly one SIGTERM: the daemon
// drains once, removes its admin socket and exits, and this script exits with it. A second Ctrl-C
// sends a second SIGTERM, which the daemon takes as "exit now without waiting for the drain".
import {spawn} from 'node:child_process'
import {fileURLToPath} from 'node:url'
import {PortTakenError, checkListenerPorts, defaultConfig, startBackends} from './backends.mjs'

const here = (p) => fileURLToPath(new URL(p, import.meta.url))
const args = process.argv.slice(2)
const c = args.findIndex((a) => a === '-c' || a === '--config')
const config = c >= 0 && args[c + 1] ? args[c + 1] : defaultConfig
const startArgs = c >= 0 ? args : ['-c', config, ...args]

let stopBackends
try {
  await checkListenerPorts(config)
  stopBackends = await startBackends(config)
} catch (error) {
  if (!(error instanceof PortTakenError)) throw error
  console.error(error.message)
  process.exit(1)
}
console.log(`
divert quickstart — try, in another terminal (the client binds a loopback source, like a device;
\`divert\` is on PATH after \`npm link\`, otherwise use \`node bin/run.js\` from this folder):
  node examples/quickstart/client.mjs --from 127.0.0.2      # prod-1 or prod-2 answers (weighted 2:1)
  divert add 127.0.0.2 --to staging                         # divert just that "device" to staging
  node examples/quickstart/client.mjs --from 127.0.0.2      # staging answers, naming the real client (PROXY v2)
  node examples/quickstart/client.mjs --from 127.0.0.3      # everyone else still reaches prod
  divert list; divert sessions; divert explain 127.0.0.2
  divert rm 127.0.0.2                                       # back to production
  node examples/quickstart/client.mjs --from 127.0.0.2 --udp   # UDP through the same daemon
`)
const daemon = spawn(process.execPath, [here('../../bin/run.js'), 'start', ...startArgs], {stdio: ['ignore', 'inherit', 'inherit'], detached: true})
const stop = () => {
  if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGTERM')
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, stop)
// When this script exits for any other reason, the daemon (in its own process group) goes too
// (only a SIGKILL of this script would leave it running: stop it then with `kill PID`).
process.on('exit', stop)
daemon.on('exit', (code, signal) => {
  stopBackends()
  process.exit(code ?? (signal ? 1 : 0))
})
