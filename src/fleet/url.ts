/**
 * A Redis URL as divert shows it: without its password. Apart from the store so that `divert check`
 * (bundled into the CLI) can name the store without loading ioredis.
 */

/** redis://user:secret@host/0 → redis://user:***@host/0: a password never reaches a log or `divert status`. */
export function maskUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return url
  }
}
