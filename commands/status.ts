import {Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {fleetStatusText, statusText} from '../src/cli/render.js'
import {terminalWidth} from '../src/cli/terminal.js'
import type {FleetStatusResult, StatusView} from '../src/admin/protocol.js'

export default class Status extends DivertCommand {
  static summary = 'Show listeners, backends with per-server health, session and byte totals, the rule store, uptime, and the kernel fast path (active with its session counts, unavailable and why, or off); in gateway mode what divert installed and the intercepted ports and sources.'
  static examples = [
    '<%= config.bin %> status',
    '<%= config.bin %> status --json',
    '<%= config.bin %> status --json | jq .transparent.listeners',
    '<%= config.bin %> status --json | jq .fastPath   # {"mode":"auto","state":"active","active":3,"spliced":120}',
    '<%= config.bin %> status --fleet   # one line per instance sharing the rule store; unreachable ones too',
  ]

  static flags = {
    fleet: Flags.boolean({description: 'ask every live instance that shares this one\'s rule store (state: redis://…)'}),
  }

  async run(): Promise<StatusView | FleetStatusResult> {
    const {flags} = await this.parse(Status)
    const client = this.adminClient(flags.admin)
    if (flags.fleet) {
      const fleet = await client.fleetStatus()
      this.log(fleetStatusText(fleet, terminalWidth()))
      return fleet
    }
    const status = await client.status()
    this.log(statusText(status, terminalWidth()))
    return status
  }
}
