/**
 * What the terminal allows: how wide human output may be, and whether it may be coloured. Read from
 * the environment in one place, so the pure renderers take plain numbers and booleans.
 */

/**
 * Columns human output may use: `COLUMNS` when it is set to a positive number (an explicit choice,
 * also for a pipe), else the width of a terminal on stdout, else unlimited (a pipe or file keeps
 * whole lines for grep and friends).
 */
export function terminalWidth(env: NodeJS.ProcessEnv = process.env, stdout: {isTTY?: boolean; columns?: number} = process.stdout): number {
  const fromEnv = Number(env.COLUMNS)
  if (Number.isInteger(fromEnv) && fromEnv > 0) return fromEnv
  if (stdout.isTTY && stdout.columns && stdout.columns > 0) return stdout.columns
  return Number.POSITIVE_INFINITY
}

/** Colour only on a terminal and never when `NO_COLOR` is set to anything non-empty (https://no-color.org). */
export function colorAllowed(isTTY: boolean | undefined, env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(isTTY) && !env.NO_COLOR
}
