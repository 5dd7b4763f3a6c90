/**
 * DivertCommand: the one base of every command. It owns `--admin` (and the token for a TCP admin
 * listener), `--json` (oclif's JSON flag), the admin client's lifetime, and how errors become a
 * one-line message on stderr (or a JSON error object) with the error's own exit status.
 */
import {Command, Flags} from '@oclif/core'
import {AdminClient} from '../admin/client.js'
import {resolveAdminTarget} from '../admin/paths.js'
import {DivertError, isDivertError} from '../errors.js'
import {escapeControl} from './escape.js'

export abstract class DivertCommand extends Command {
  static enableJsonFlag = true

  static baseFlags = {
    admin: Flags.string({
      description: 'admin API: a unix socket path, or http://HOST:PORT with the token in DIVERT_ADMIN_TOKEN [default: $DIVERT_ADMIN, else a per-user socket]',
      helpGroup: 'GLOBAL',
    }),
  }

  private client?: AdminClient

  /** The admin client for `--admin` / DIVERT_ADMIN / the per-user default. */
  protected adminClient(admin: string | undefined): AdminClient {
    this.client ??= new AdminClient(resolveAdminTarget(admin), process.env.DIVERT_ADMIN_TOKEN)
    return this.client
  }

  protected async finally(err: Error | undefined): Promise<void> {
    await this.client?.close().catch(() => undefined)
    return super.finally(err)
  }

  /**
   * `--json` output. oclif colours JSON through a tokenizer even when no JSON theme is set (colouring
   * is then the identity), which took 19 s for 100,000 rules: without a theme, print the same text
   * (JSON.stringify, two-space indent) directly.
   */
  protected logJson(json: unknown): void {
    if (this.config.theme?.json) return super.logJson(json)
    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`)
  }

  protected async catch(err: Error & {code?: string; oclif?: {exit?: number}}): Promise<void> {
    // this.exit() inside run() is control flow, not a failure to report.
    if (err.code === 'EEXIT') throw err
    const e = this.asDivertError(err)
    if (this.jsonEnabled()) this.logJson(e.toJSON())
    else process.stderr.write(`divert: ${escapeControl(e.message)}${e.code === 'DIVERT_ERR_INTERNAL' && process.env.DEBUG ? `\n${err.stack}` : ''}\n`)
    return this.exit(e.exitCode)
  }

  /**
   * Every failure leaves as a DivertError, so `--json` always prints `{error, code, status}`: oclif's
   * own errors (a missing argument, a bad flag value) would otherwise be serialised whole — parser
   * state and all — and exit 1 instead of the usage status 2.
   */
  private asDivertError(err: Error & {oclif?: {exit?: number}}): DivertError {
    if (isDivertError(err)) return err
    if (err.oclif) {
      const lines = err.message.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('See more help'))
      const text = lines.reduce((all, l) => (all === '' ? l : `${all}${/[:;.]$/.test(all) ? ' ' : ': '}${l}`), '')
      return new DivertError('CLI_USAGE', `${text} (see \`divert ${this.id ?? ''} --help\`)`.replace(/ {2,}/g, ' '), {cause: err})
    }
    return new DivertError('INTERNAL', `internal error: ${err.message}`, {cause: err})
  }
}
