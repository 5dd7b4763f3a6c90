import {Args, Flags} from '@oclif/core'
import {resolve} from 'node:path'
import {DivertCommand} from '../src/cli/base.js'
import {addRuleText} from '../src/cli/render.js'
import type {AddRuleResult} from '../src/admin/protocol.js'

export default class Add extends DivertCommand {
  static summary = 'Add or replace the rule for a source IP or CIDR: divert it, mirror it, record it.'
  static description = `The rule applies to the next new session from SOURCE at once. A source that already has a rule
(same source, same --listener scope) gets it replaced. Live sessions stay where they are unless --existing kill.
A rule is checked as the config file checks its rules: a rule scoped to a udp listener cannot send to a backend
with proxy_protocol: v1 (TCP-only). Empty values count as not given.`

  static examples = [
    '<%= config.bin %> add 192.168.100.1 --to staging',
    '<%= config.bin %> add 192.168.100.0/30 --to staging --for 30m --note "ticket 4711"',
    '<%= config.bin %> add 2001:db8::/64 --mirror staging --record ./captures/v6.pcap --max-size 50MB',
    '<%= config.bin %> add 192.168.100.1 --to staging --existing kill   # move its live sessions now',
  ]

  static args = {source: Args.string({description: 'client IP address or CIDR (IPv4 or IPv6)', required: true})}

  static flags = {
    to: Flags.string({description: 'divert matching clients to this backend'}),
    mirror: Flags.string({description: 'copy matching clients\' traffic to a server of this backend'}),
    record: Flags.string({description: 'record matching sessions to this pcap file (owner-only)'}),
    'max-size': Flags.string({description: 'with --record: stop recording cleanly at this file size (e.g. 10MB, 64MiB) [default: capture.max_size]', dependsOn: ['record']}),
    listener: Flags.string({description: 'only on this listener (default: every listener)'}),
    for: Flags.string({description: 'remove the rule by itself after this long (e.g. 30m, 2h)'}),
    note: Flags.string({description: 'free text shown by `divert list`'}),
    existing: Flags.string({description: 'live sessions of SOURCE: keep them where they are, or kill them so they reconnect into the new route', options: ['keep', 'kill'], default: 'keep'}),
  }

  async run(): Promise<AddRuleResult> {
    const {args, flags} = await this.parse(Add)
    const result = await this.adminClient(flags.admin).addRule({
      source: args.source, to: flags.to, mirror: flags.mirror, record: flags.record ? resolve(flags.record) : undefined, maxSize: flags['max-size'],
      listener: flags.listener, for: flags.for, note: flags.note, existing: flags.existing as 'keep' | 'kill',
    })
    this.log(addRuleText(result))
    return result
  }
}
