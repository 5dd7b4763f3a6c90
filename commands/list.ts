import {DivertCommand} from '../src/cli/base.js'
import {rulesTable} from '../src/cli/render.js'
import {terminalWidth} from '../src/cli/terminal.js'
import type {RuleView} from '../src/admin/protocol.js'

export default class List extends DivertCommand {
  static summary = 'List rules: source, actions, listener, time left, hits, origin (config or runtime), note.'
  static examples = ['<%= config.bin %> list', '<%= config.bin %> list --json']

  async run(): Promise<RuleView[]> {
    const {flags} = await this.parse(List)
    const rules = await this.adminClient(flags.admin).rules()
    // With --json the table is not printed: do not build it either.
    if (!this.jsonEnabled()) this.log(rulesTable(rules, Date.now(), terminalWidth()))
    return rules
  }
}
