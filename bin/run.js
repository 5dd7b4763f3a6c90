#!/usr/bin/env node
// `divert start`: SIGHUP's default action ends the process, and loading oclif and the daemon takes
// ~0.6 s before run-daemon.ts installs its reload handler. Hold a SIGHUP that comes earlier (the
// handler below, found through a global symbol); run-daemon.ts takes it over and reloads once ready.
// oclif is imported after this line on purpose: a static import would load before any statement.
if (process.argv[2] === 'start') {
  const held = () => {
    held.asked = true
  }
  held.asked = false
  globalThis[Symbol.for('divert.heldSighup')] = held
  process.on('SIGHUP', held)
}

const {execute} = await import('@oclif/core')
await execute({dir: import.meta.url})
