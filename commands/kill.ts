import {Args, Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {DivertError} from '../src/errors.js'
import {fleetKillText} from '../src/cli/render.js'
import type {FleetKillResult, KillResult} from '../src/admin/protocol.js'

export default class Kill extends DivertCommand {
  static summary = 'Close live sessions, by id or by client source: TCP connections are closed, UDP flows dropped.'
  static description = 'A killed client that reconnects (or a UDP client\'s next datagram) opens a new session under the current rules.'
  static examples = ['<%= config.bin %> kill t42', '<%= config.bin %> kill --source 192.168.100.1', '<%= config.bin %> kill --source 10.0.0.0/8 --backend staging', '<%= config.bin %> kill --fleet --source 192.168.100.7   # on every instance']
  static args = {id: Args.string({description: 'session id (see `divert sessions`)'})}
  static flags = {
    source: Flags.string({description: 'close every session from this IP/CIDR'}),
    backend: Flags.string({description: 'with --source: only sessions on this backend'}),
    listener: Flags.string({description: 'with --source: only sessions on this listener'}),
    fleet: Flags.boolean({description: 'with --source: on every live instance that shares this one\'s rule store (state: redis://…)'}),
  }

  async run(): Promise<KillResult | FleetKillResult> {
    const {args, flags} = await this.parse(Kill)
    if (!args.id === !flags.source) throw new DivertError('CLI_USAGE', 'give either a SESSION-ID or --source CIDR')
    if (flags.fleet && args.id) throw new DivertError('CLI_USAGE', '--fleet closes sessions by --source CIDR: session ids are per instance')
    const client = this.adminClient(flags.admin)
    if (flags.fleet) {
      const fleet = await client.fleetKill({source: flags.source, backend: flags.backend, listener: flags.listener})
      this.log(fleetKillText(fleet))
      return fleet
    }
    const result = args.id ? await client.killSession(args.id) : await client.killSessions({source: flags.source, backend: flags.backend, listener: flags.listener})
    this.log(`closed ${result.killed} session${result.killed === 1 ? '' : 's'}`)
    return result
  }
}
