import {DivertCommand} from '../src/cli/base.js'
import {statusText} from '../src/cli/render.js'
import {terminalWidth} from '../src/cli/terminal.js'
import type {StatusView} from '../src/admin/protocol.js'

export default class Status extends DivertCommand {
  static summary = 'Show listeners, backends with per-server health, session and byte totals, and uptime; in gateway mode what divert installed and the intercepted ports and sources.'
  static examples = ['<%= config.bin %> status', '<%= config.bin %> status --json', '<%= config.bin %> status --json | jq .transparent.listeners']

  async run(): Promise<StatusView> {
    const {flags} = await this.parse(Status)
    const status = await this.adminClient(flags.admin).status()
    this.log(statusText(status, terminalWidth()))
    return status
  }
}
