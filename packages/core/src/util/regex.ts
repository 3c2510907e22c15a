// Regular expressions that come from files (a PEFT adapter's target_modules,
// layers_pattern, rank_pattern keys): compiled with V8's linear-time engine,
// so a pattern like "(.*)*x" cannot backtrack for minutes. That engine takes
// no backreferences or lookarounds; such a pattern is refused with a message
// saying so, and a malformed one with its own message, both naming `where`.
import { setFlagsFromString } from 'node:v8';

let enabled = false;

/** new RegExp(source, flags + 'l'), or a clear Error. */
export function linearRegExp(source: string, where: string, flags = ''): RegExp {
  if (typeof source !== 'string') throw new Error(`${where}: a pattern must be a string, got ${JSON.stringify(source)}`);
  if (source.length > 10_000) throw new Error(`${where}: pattern of ${source.length} characters exceeds the limit of 10000`);
  if (!enabled) {
    setFlagsFromString('--enable-experimental-regexp-engine');
    enabled = true;
  }
  try {
    return new RegExp(source, `${flags}l`);
  } catch (e) {
    const msg = (e as Error).message;
    if (/linear time/.test(msg)) {
      throw new Error(`${where}: the pattern ${JSON.stringify(source)} needs backtracking (backreferences or lookarounds), which patterns read from files may not use`);
    }
    // V8's "Invalid regular expression: /<source>/<flags>: <reason>" repeats the
    // pattern (shown here already) and reads like a crash: keep the reason
    const reason = msg.replace(/^Invalid regular expression: \/.*\/[a-z]*: /s, '');
    throw new Error(`${where}: ${JSON.stringify(source)} is not a valid regular expression (${reason})`);
  }
}
