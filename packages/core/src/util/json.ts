// JSON from files we do not control, read defensively: a bounded nesting
// depth (JSON.parse and the code that walks its result recurse, and a value
// nested 100,000 deep ends in "Maximum call stack size exceeded" with no file
// named), and, where a format forbids them, no duplicate keys (JSON.parse
// keeps the last one silently).

export const JSON_MAX_DEPTH = 64;

/** Throws unless every value of `text` is nested at most `maxDepth` deep (a
 * linear scan, strings and escapes skipped). */
export function checkJsonDepth(text: string, where: string, maxDepth = JSON_MAX_DEPTH): void {
  let depth = 0, inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++;             // backslash: skip the escaped character
      else if (c === 34) inString = false;
      continue;
    }
    if (c === 34) inString = true;
    else if (c === 123 || c === 91) {  // { [
      if (++depth > maxDepth) throw new Error(`${where}: JSON nested deeper than ${maxDepth} levels (at character ${i}); refusing it`);
    } else if (c === 125 || c === 93) depth--;
  }
}

/** JSON.parse with the depth bound; errors name `where`. */
export function parseJson(text: string, where: string, maxDepth = JSON_MAX_DEPTH): unknown {
  checkJsonDepth(text, where, maxDepth);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
  }
}

/** A strict parser for small documents (safetensors headers): the depth bound,
 * and an object with the same key twice is an error naming the key. */
export function parseJsonStrict(text: string, where: string, maxDepth = JSON_MAX_DEPTH): unknown {
  checkJsonDepth(text, where, maxDepth);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
  }
  // JSON.parse has kept the last of any repeated key; find repeats by
  // scanning the keys of each object in the text
  const dup = firstDuplicateKey(text);
  if (dup !== null) throw new Error(`${where}: the key ${JSON.stringify(dup)} appears twice in one object (the reference implementation refuses this)`);
  return value;
}

/** The first key that an object of valid JSON `text` repeats, or null. */
function firstDuplicateKey(text: string): string | null {
  // a stack of key sets, one per open object (null for arrays)
  const stack: (Set<string> | null)[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      // read the string, then see whether it is a key (followed by ':')
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const raw = text.slice(i, j + 1);
      let k = j + 1;
      while (k < n && (text[k] === ' ' || text[k] === '\n' || text[k] === '\r' || text[k] === '\t')) k++;
      const top = stack[stack.length - 1];
      if (text[k] === ':' && top) {
        const key = JSON.parse(raw) as string;
        if (top.has(key)) return key;
        top.add(key);
      }
      i = j + 1;
      continue;
    }
    if (c === '{') stack.push(new Set());
    else if (c === '[') stack.push(null);
    else if (c === '}' || c === ']') stack.pop();
    i++;
  }
  return null;
}
