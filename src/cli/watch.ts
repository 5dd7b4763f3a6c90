/**
 * Redraws a text view in place every interval until Ctrl-C (like `watch`), for `sessions --watch`.
 * An error (daemon gone) is shown in the view and the loop keeps trying.
 */
export async function watch(render: () => Promise<string>, intervalMs: number, out: NodeJS.WriteStream = process.stdout): Promise<void> {
  let stopped = false
  const stop = (): void => {
    stopped = true
  }
  process.once('SIGINT', stop)
  try {
    while (!stopped) {
      let text: string
      try {
        text = await render()
      } catch (error) {
        text = `error: ${(error as Error).message}`
      }
      // ESC[H moves home, ESC[2J clears: one frame replaces the last without scrolling.
      out.write(`\u001B[H\u001B[2J${new Date().toLocaleTimeString()}  (Ctrl-C to stop)\n${text}\n`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, intervalMs)
        process.once('SIGINT', () => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  } finally {
    process.off('SIGINT', stop)
  }
}
