/** Whether a process id names a live process (kill(2) with signal 0). */

/** EPERM: the process exists but belongs to someone else — alive. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}
