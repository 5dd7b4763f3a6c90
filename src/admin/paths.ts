/**
 * Where the admin API lives when nobody says: one rule for the daemon and the CLI (README "Admin API") —
 * `--admin`, else env DIVERT_ADMIN, else a per-user path in a directory only that user can enter.
 */
import {mkdirSync, chmodSync} from 'node:fs'
import {tmpdir, userInfo} from 'node:os'
import {dirname, join} from 'node:path'

export function defaultAdminSocket(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'divert', 'admin.sock')
  return join(tmpdir(), `divert-${userInfo().uid}`, 'admin.sock')
}

export function resolveAdminTarget(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return flag || env.DIVERT_ADMIN || defaultAdminSocket(env)
}

/** Creates the socket's directory owner-only when it is divert's own default one. */
export function prepareSocketDir(socketPath: string, env: NodeJS.ProcessEnv = process.env): void {
  const dir = dirname(socketPath)
  const own = dir === dirname(defaultAdminSocket(env))
  mkdirSync(dir, {recursive: true, mode: own ? 0o700 : 0o755})
  if (own) chmodSync(dir, 0o700)
}

export function isTcpTarget(target: string): boolean {
  return /^https?:\/\//.test(target)
}
