import {Args, Flags} from '@oclif/core'
import {DivertCommand} from '../src/cli/base.js'
import {progressBar} from '../src/cli/progress.js'
import {renderReplay} from '../src/cli/render-replay.js'
import {formatBytes} from '../src/cli/render.js'
import {terminalWidth} from '../src/cli/terminal.js'
import {escapeControl} from '../src/cli/escape.js'
import {parseDuration} from '../src/config/duration.js'
import {parseAddress} from '../src/addr/address.js'
import {parseSpeed, replayOutcome, runReplay, type ReplayReport} from '../src/capture/replay.js'

export default class Replay extends DivertCommand {
  static summary = 'Replay the client side of a pcap capture (divert\'s own or tcpdump\'s) against a server, optionally comparing its answers.'
  static description = `Each recorded TCP connection is replayed over a new connection to --to, each UDP flow over its own socket,
at the recorded pacing scaled by --speed (or as fast as the target takes it with --fast). --compare sets the
target's answers beside the recorded server's and reports, per flow, identical or the first differing byte.
Reads classic pcap (microsecond or nanosecond; Ethernet, Linux cooked SLL/SLL2, raw IP, BSD loopback).
Exit status 1 when, with --compare, a flow answered differently; 4 (DIVERT_ERR_REPLAY_FAILED) when a flow
failed, or when the target took none of them (then one line says why, and no table).`

  static examples = [
    '<%= config.bin %> replay dev.pcap --to 127.0.0.1:7201',
    '<%= config.bin %> replay dev.pcap --to 127.0.0.1:7201 --compare --fast',
    '<%= config.bin %> replay capture.pcap --to [::1]:8080 --source 192.168.100.0/24 --speed 4 --loop 3',
  ]

  static enableJsonFlag = true
  static args = {file: Args.string({description: 'pcap file (convert pcapng first: editcap -F pcap in.pcapng out.pcap)', required: true})}
  static flags = {
    to: Flags.string({description: 'target HOST:PORT (IP literal; IPv6 as [addr]:port)', required: true}),
    source: Flags.string({description: 'only flows whose client is in this IP/CIDR'}),
    speed: Flags.string({description: 'pacing multiplier: 2 replays twice as fast as recorded', default: '1'}),
    fast: Flags.boolean({description: 'no pacing: send as fast as the target accepts', exclusive: ['speed']}),
    loop: Flags.integer({description: 'replay the selection this many times', default: 1, min: 1}),
    compare: Flags.boolean({description: 'compare the target\'s answers with the recorded server\'s'}),
    wait: Flags.string({description: 'how long to wait for answers after a flow\'s last byte; a recorded FIN waits for the recorded answer, or this long of silence', default: '2s'}),
  }

  async run(): Promise<ReplayReport> {
    const {args, flags} = await this.parse(Replay)
    const bar = progressBar('replay |{bar}| {value}/{total} flows | sent {sent} | received {received}', !this.jsonEnabled() && Boolean(process.stderr.isTTY))
    const abort = new AbortController()
    const onSigint = (): void => abort.abort()
    process.once('SIGINT', onSigint)
    const report = await runReplay({
      file: args.file, to: parseAddress(flags.to, '--to'), source: flags.source, speed: parseSpeed(flags.speed), fast: flags.fast,
      loop: flags.loop, compare: flags.compare, waitMs: parseDuration(flags.wait, '--wait'), signal: abort.signal,
      onProgress: (p) => bar.update(p.flowsDone, p.flowsTotal, {sent: formatBytes(p.bytesSent), received: formatBytes(p.bytesReceived)}),
    }).finally(() => {
      bar.stop()
      process.off('SIGINT', onSigint)
    })
    for (const w of report.warnings) process.stderr.write(`divert: warning: ${escapeControl(w)}\n`)
    const outcome = replayOutcome(report)
    if (outcome.error) throw outcome.error
    this.log(renderReplay(report, terminalWidth()))
    process.exitCode = outcome.exitCode
    return report
  }
}
