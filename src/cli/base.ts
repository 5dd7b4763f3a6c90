/**
 * DivertCommand: the one base of every command. It owns `--admin` (and the token for a TCP admin
 * listener), `--json` (oclif's JSON flag), the admin client's lifetime, and how errors become a
 * one-line message on stderr (or a JSON error object) with the error's own exit status.
 */
import {Command, Flags} from '@oclif/core'
import {AdminClient} from '../admin/client.js'
import {resolveAdminTarget} from '../admin/paths.js'
import {isDivertError} from '../errors.js'

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

  protected async catch(err: Error & {exitCode?: number; oclif?: {exit?: number}}): Promise<void> {
    if (!isDivertError(err)) {
      if (err.oclif) return super.catch(err)
      process.stderr.write(`divert: internal error: ${err.message}${process.env.DEBUG ? `\n${err.stack}` : ''}\n`)
      return this.exit(1)
    }
    if (this.jsonEnabled()) this.logJson(err.toJSON())
    else process.stderr.write(`divert: ${err.message}\n`)
    return this.exit(err.exitCode)
  }
}
