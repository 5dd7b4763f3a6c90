import {DivertCommand} from '../src/cli/base.js'
import {reloadText} from '../src/cli/render.js'
import type {ReloadResult} from '../src/admin/protocol.js'

export default class Reload extends DivertCommand {
  static summary = 'Re-read the config file: listeners, backends and config rules change; live sessions and runtime rules stay.'
  static description = 'An invalid config is rejected with the same errors as at start, and the running config stays. Same as sending SIGHUP to the daemon.'
  static examples = ['<%= config.bin %> reload', '<%= config.bin %> reload --json']

  async run(): Promise<ReloadResult> {
    const {flags} = await this.parse(Reload)
    const result = await this.adminClient(flags.admin).reload()
    this.log(reloadText(result))
    return result
  }
}
