/**
 * Worker thread side of loadConfig for large files (load.ts, parseInWorker): parses and validates
 * the text with the same parseConfig, then hands the Config back — everything but the rules in one
 * message, the rules in chunks the daemon asks for one at a time, so that copying 100,000 of them
 * into its heap never holds its event loop for long. The YAML document (hundreds of MB for 100,000
 * rules) lives and dies in this thread's heap, not the daemon's.
 *
 *   daemon ─ workerData {text, file} ─▶ parseConfig ─▶ {head} ─ 'next' ─▶ {rules: chunk} … {done}
 *                                            └─ error ─▶ {error: DivertError JSON}
 */
import {parentPort, workerData} from 'node:worker_threads'
import {parseConfig, type WorkerMessage} from './load.js'
import {DivertError, isDivertError} from '../errors.js'
import type {RuleSpec} from './types.js'

/** Rules per message: copying this many takes the daemon well under a millisecond or two. */
export const RULES_PER_MESSAGE = 2000


function run(port: NonNullable<typeof parentPort>, text: string, file: string): void {
  let rules: RuleSpec[]
  try {
    const config = parseConfig(text, file)
    rules = config.rules
    port.postMessage({type: 'head', config: {...config, rules: []}, rules: rules.length} satisfies WorkerMessage)
  } catch (error) {
    const e = isDivertError(error) ? error : new DivertError('INTERNAL', `internal error while parsing ${file}: ${(error as Error)?.message ?? String(error)}`)
    port.postMessage({type: 'error', error: e.toJSON()} satisfies WorkerMessage)
    return
  }
  let at = 0
  port.on('message', () => {
    if (at >= rules.length) {
      port.postMessage({type: 'done'} satisfies WorkerMessage)
      port.close()
      return
    }
    port.postMessage({type: 'rules', rules: rules.slice(at, at + RULES_PER_MESSAGE)} satisfies WorkerMessage)
    at += RULES_PER_MESSAGE
  })
}

if (parentPort) run(parentPort, (workerData as {text: string}).text, (workerData as {file: string}).file)
