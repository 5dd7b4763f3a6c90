import {Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {fleetSessionsText, sessionsTable} from '../src/cli/render.js'
import {terminalWidth} from '../src/cli/terminal.js'
import {watch} from '../src/cli/watch.js'
import type {FleetSessionsResult, SessionView} from '../src/admin/protocol.js'

export default class Sessions extends DivertCommand {
  static summary = 'List live TCP connections and UDP flows: client, listener, backend, server, rule, bytes, age, idle; in gateway mode also the destination the client dialled; with the kernel fast path a path column (kernel or divert) says whose bytes the kernel moves now (`kernel` in --json).'
  static examples = [
    '<%= config.bin %> sessions',
    '<%= config.bin %> sessions --source 192.168.100.0/24 --backend staging',
    '<%= config.bin %> sessions --watch',
    '<%= config.bin %> sessions --json',
    '<%= config.bin %> sessions --json | jq \'.[] | select(.kernel) | .id\'   # the sessions the kernel fast path moves now',
    '<%= config.bin %> sessions --fleet --source 192.168.100.7   # every instance sharing the rule store',
    '<%= config.bin %> sessions --fleet --json',
  ]

  static flags = {
    source: Flags.string({description: 'only clients in this IP/CIDR'}),
    backend: Flags.string({description: 'only sessions on this backend'}),
    listener: Flags.string({description: 'only sessions on this listener'}),
    watch: Flags.boolean({char: 'w', description: 'refresh every --interval until Ctrl-C (in place on a terminal; one snapshot after another into a pipe)'}),
    interval: Flags.integer({description: 'seconds between refreshes with --watch', default: 1, min: 1}),
    fleet: Flags.boolean({description: 'ask every live instance that shares this one\'s rule store (state: redis://…); adds an instance column, lists unreachable instances'}),
  }

  async run(): Promise<SessionView[] | FleetSessionsResult> {
    const {flags} = await this.parse(Sessions)
    const client = this.adminClient(flags.admin)
    const query = {source: flags.source, backend: flags.backend, listener: flags.listener}
    const render = flags.fleet
      ? () => client.fleetSessions(query).then((r) => ({data: r, text: fleetSessionsText(r, terminalWidth())}))
      : () => client.sessions(query).then((s) => ({data: s, text: sessionsTable(s, terminalWidth())}))
    if (flags.watch && !this.jsonEnabled()) {
      await watch(() => render().then((r) => r.text), flags.interval * 1000)
      return []
    }
    const {data, text} = await render()
    this.log(text)
    return data
  }
}
