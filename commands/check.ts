import {Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {checkConfig, describeCheck, type CheckResult} from '../src/config/check.js'

export default class Check extends DivertCommand {
  static summary = 'Validate a config file and its rules without starting anything (like nginx -t or haproxy -c).'
  static description = 'Loads the config as `divert start` does (every cross-check, the config rules, and the runtime rules of the state file it names) but binds, opens, moves and writes nothing, so it is safe next to a running daemon and before `divert reload`.\nExits 0 with a one-line summary, or 2 with FILE:LINE:COLUMN for each problem.'

  static examples = [
    '<%= config.bin %> check -c divert.yaml',
    '<%= config.bin %> check -c divert.yaml && divert reload',
    '<%= config.bin %> check -c examples/quickstart/divert.yaml --json',
  ]

  static flags = {
    config: Flags.string({char: 'c', description: 'config file (YAML or JSON)', required: true}),
  }

  async run(): Promise<CheckResult> {
    const {flags} = await this.parse(Check)
    const result = await checkConfig(flags.config)
    this.log(describeCheck(result))
    return result
  }
}
