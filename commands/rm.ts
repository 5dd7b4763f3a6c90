import {Args, Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {removeText} from '../src/cli/render.js'
import {DivertError} from '../src/errors.js'
import type {RemoveRulesResult} from '../src/admin/protocol.js'

export default class Rm extends DivertCommand {
  static summary = 'Remove a runtime rule (by source or rule id), or all runtime rules: clients go back to their default backend.'
  static description = 'Live sessions keep the backend they were given; `divert kill --source SOURCE` moves them now. Rules from the config file cannot be removed at runtime: edit the file and run `divert reload`.'
  static examples = [
    '<%= config.bin %> rm 192.168.100.1',
    '<%= config.bin %> rm r3f9a2c',
    '<%= config.bin %> rm 10.0.0.0/8 --listener vpn',
    '<%= config.bin %> rm --all',
  ]

  static args = {rule: Args.string({description: 'source IP/CIDR or rule id (see `divert list`)'})}
  static flags = {
    all: Flags.boolean({description: 'remove every runtime rule'}),
    listener: Flags.string({description: 'the listener scope of the rule to remove'}),
  }

  async run(): Promise<RemoveRulesResult> {
    const {args, flags} = await this.parse(Rm)
    if (!args.rule === !flags.all) throw new DivertError('CLI_USAGE', 'give either a SOURCE or RULE-ID, or --all')
    const client = this.adminClient(flags.admin)
    const result = flags.all ? await client.removeAllRules() : await client.removeRule(args.rule!, flags.listener)
    this.log(removeText(result))
    return result
  }
}
