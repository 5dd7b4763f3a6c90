/**
 * One escaping rule for everything a human reads: strings that come from outside (rule notes,
 * sources, file paths, backend names, error messages) may hold terminal control sequences. Printed
 * raw, `ESC[2J` clears the operator's screen, `\r` overwrites the line before it, an OSC sequence
 * can retitle the window or plant a hyperlink, and a bidi override reorders what is shown
 * (CVE-2021-42574, "Trojan Source"). Each such character is shown as a visible escape instead.
 * JSON output needs none of this: JSON.stringify escapes C0 by itself, and a program reads it.
 */

// C0 controls, DEL, C1 controls (ECMA-48 §5: 0x80–0x9F act like ESC + a letter on many terminals),
// the Unicode line/paragraph separators and the bidi embedding/override/isolate characters.
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

const NAMED: Record<string, string> = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}

function visible(ch: string): string {
  const code = ch.charCodeAt(0)
  return NAMED[ch] ?? (code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`)
}

/** `text` with every control character shown as `\x1b`, `\r`, `\u202e`, …; everything else unchanged. */
export function escapeControl(text: string): string {
  return text.replace(CONTROL, visible)
}
