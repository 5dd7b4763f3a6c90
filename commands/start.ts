import {Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {parseDuration} from '../src/config/duration.js'
import {parseSize} from '../src/config/size.js'
import {DivertError} from '../src/errors.js'
import {runForeground} from '../src/run-daemon.js'

export default class Start extends DivertCommand {
  static summary = 'Run the divert daemon in the foreground: listeners, backends, rules and the admin API.'
  static description = `Binds every listener of the config file and logs one "divert ready" line when all are bound.
SIGINT/SIGTERM stop accepting new sessions, let live ones finish for --drain, then close the rest and exit 0.
SIGHUP re-reads the config file (like \`divert reload\`). Logs are pretty on a terminal, JSON lines otherwise.`

  static examples = [
    '<%= config.bin %> start -c divert.yaml',
    '<%= config.bin %> start -c examples/quickstart/divert.yaml --log-format json',
    '<%= config.bin %> start -c divert.yaml --drain 30s --admin /run/divert/admin.sock',
  ]

  static enableJsonFlag = false

  static flags = {
    config: Flags.string({char: 'c', description: 'config file (YAML or JSON)', required: true}),
    'log-format': Flags.string({description: 'log format [default: pretty on a terminal, json otherwise]', options: ['pretty', 'json']}),
    'log-level': Flags.string({description: 'minimum log level', options: ['debug', 'info', 'warn', 'error'], default: 'info'}),
    drain: Flags.string({description: 'how long live sessions may finish after SIGINT/SIGTERM', default: '10s'}),
    'log-buffer': Flags.string({description: 'JSON log bytes that may wait for a slow reader; lines past it are dropped and counted', default: '4MiB'}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Start)
    await runForeground({
      configFile: flags.config, admin: flags.admin, logFormat: flags['log-format'] as 'pretty' | 'json' | undefined,
      logLevel: flags['log-level'], drainMs: parseDuration(flags.drain, '--drain'), logBufferBytes: logBuffer(flags['log-buffer']),
    })
  }
}

function logBuffer(text: string): number {
  const bytes = parseSize(text, '--log-buffer')
  if (bytes < 1024) throw new DivertError('INVALID_SIZE', `--log-buffer: ${text} is too small to hold a log line: give at least 1KiB (default 4MiB)`)
  return bytes
}
