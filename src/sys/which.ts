/**
 * Finding an executable the way a root shell would: PATH, then the sbin directories that a non-login
 * root PATH may lack (Debian installs `ip` and `nft` there).
 */
import {accessSync, constants} from 'node:fs'
import {delimiter, join} from 'node:path'

/** The full path of `name`, or undefined when no directory has it executable. */
export function findCommand(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/local/sbin', '/usr/sbin', '/sbin']
  for (const dir of dirs) {
    try {
      accessSync(join(dir, name), constants.X_OK)
      return join(dir, name)
    } catch {
      // not in this directory
    }
  }
  return undefined
}
