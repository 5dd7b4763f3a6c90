import {Args, Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {explainText} from '../src/cli/render.js'
import type {ExplainResult} from '../src/admin/protocol.js'

export default class Explain extends DivertCommand {
  static summary = 'Show which rule, backend and server a new session from IP would get now, and why; in gateway mode also whether that source is intercepted.'
  static examples = ['<%= config.bin %> explain 192.168.100.1', '<%= config.bin %> explain 2001:db8::7 --listener vpn --json', '<%= config.bin %> explain 192.0.2.10 --listener gw --json | jq .[0].intercepted']
  static args = {ip: Args.string({description: 'client IP address', required: true})}
  static flags = {listener: Flags.string({description: 'only this listener (default: every listener)'})}

  async run(): Promise<ExplainResult[]> {
    const {args, flags} = await this.parse(Explain)
    const results = await this.adminClient(flags.admin).explain(args.ip, flags.listener)
    this.log(explainText(results))
    return results
  }
}
