// Decode beside llama.cpp at a decode shape, without a suite: for each
// weight form, our generate() and node-llama-cpp's prebuilt CPU build on the
// same GGUF-exported weights (src/decode_rows.ts), the same prompt ids and
// threads, greedy; prints one row per form.
//
//   pnpm --filter @tunebench/bench bench:decode-rows
//   pnpm --filter @tunebench/bench bench:decode-rows -- --shape tiny --weights bf16,int4 --threads 2
import { loadavg } from 'node:os';
import { type DecodeActivations, intOption, native, parseCli } from '@tunebench/core';
import { DECODE_NEW_TOKENS, DECODE_PROMPT_TOKENS, DECODE_REPEATS, DEFAULT_DECODE_SHAPE, benchDecodeActivations, decodeRows } from '../src/decode_rows.js';
import type { DeployWeights } from '../src/record.js';

const HELP = `Decode tokens/s beside llama.cpp on the same weights (CPU).

Usage: pnpm --filter @tunebench/bench bench:decode-rows [-- options]

Options:
  --shape NAME     model preset, random weights (default ${DEFAULT_DECODE_SHAPE})
  --weights LIST   bf16 (-> F16, Q8_0), int4 (g32 -> Q4_1), int8 (g32 on
                   Q8_0's grid -> Q8_0), nf4 (b64, double quantization: ours
                   alone), int2, int3 (g32: ours alone)
                   (default bf16,int4,int8,nf4)
  --threads N      threads on both sides (default 1)
  --tokens N       greedy tokens (default ${DECODE_NEW_TOKENS}); the prompt is ${DECODE_PROMPT_TOKENS} ids
  --act A          what our quantized projections multiply: i8 (x rounded to
                   int8 per group, as llama.cpp's Q8 activations), i16 (to
                   int16 per group) or f32 (x as it is); default: the fastest
                   this build has (i8 with AVX-512 VNNI)
  --repeats N      timed runs per side, interleaved, the best kept (default ${DECODE_REPEATS});
                   each ratio is best over best, with the lowest and highest
                   of the rounds' own ratios (run i over run i) in brackets
  -h, --help       this text`;

const opt = parseCli({
  shape: { type: 'string', default: DEFAULT_DECODE_SHAPE },
  weights: { type: 'string', default: 'bf16,int4,int8,nf4' },
  threads: { type: 'string', default: '1' },
  tokens: { type: 'string', default: String(DECODE_NEW_TOKENS) },
  repeats: { type: 'string', default: String(DECODE_REPEATS) },
  act: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const, HELP);

const threads = intOption('threads', opt.threads, 1), newTokens = intOption('tokens', opt.tokens, DECODE_NEW_TOKENS);
const repeats = intOption('repeats', opt.repeats, DECODE_REPEATS);
if (opt.act !== undefined && opt.act !== 'i16' && opt.act !== 'f32' && opt.act !== 'i8') throw new Error(`--act: unknown '${opt.act}' (i8, i16 or f32)`);
const act = benchDecodeActivations(opt.act as DecodeActivations | undefined);
const FORMS: Record<string, DeployWeights> = {
  bf16: { kind: 'bf16' },
  int4: { kind: 'intn', bits: 4, groupSize: 32 },
  int8: { kind: 'intn', bits: 8, groupSize: 32 },
  int3: { kind: 'intn', bits: 3, groupSize: 32 },
  int2: { kind: 'intn', bits: 2, groupSize: 32 },
  nf4: { kind: '4bit', format: 'nf4', blockSize: 64 },
};
const names = opt.weights.split(',').map((s) => s.trim()).filter(Boolean);
for (const n of names) if (!FORMS[n]) throw new Error(`--weights: unknown '${n}' (${Object.keys(FORMS).join(', ')})`);
native.setThreads(threads);

console.log(`decode beside llama.cpp: shape ${opt.shape} (random weights), ${threads} thread(s), ${DECODE_PROMPT_TOKENS}-id prompt, ${newTokens} greedy tokens, best of ${repeats}`);
console.log(`load average before: ${loadavg().map((v) => v.toFixed(2)).join(' ')}`);
const f = (v: number | undefined, d = 1): string => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
const ratio = (v: number | undefined, r?: [number, number]): string => (r ? `${f(v, 2)} (${f(r[0], 2)}-${f(r[1], 2)})` : f(v, 2));
const header = ['weights', 'llama.cpp', 'exact', 'ours prefill', 'cpp prefill', 'ratio', 'ours decode', 'cpp decode', 'ratio', 'agree (free)', 'agree (forced)', 'status'];
const rows: string[][] = [];
for (const n of names) {
  const t0 = performance.now();
  for (const r of await decodeRows(FORMS[n], { shape: opt.shape, threads, newTokens, repeats, activations: act })) {
    rows.push([
      r.weights, r.format ?? '-', r.format ? String(r.exact) : '-',
      f(r.ours?.prefillTokensPerSecond), f(r.llamaCpp?.prefillTokensPerSecond), ratio(r.ratioPrefill, r.ratioPrefillRange),
      f(r.ours?.decodeTokensPerSecond), f(r.llamaCpp?.decodeTokensPerSecond), ratio(r.ratioDecode, r.ratioDecodeRange),
      r.tokensAgree === undefined ? '-' : `${r.tokensAgree}/${r.newTokens} (first diff ${r.firstDivergence})`,
      r.teacherForcedAgree === undefined ? '-' : `${r.teacherForcedAgree}/${r.newTokens}`,
      r.status + (r.statusText ? `: ${r.statusText}` : ''),
    ]);
    console.log(rows[rows.length - 1].join('\t'));
  }
  console.log(`  (${n}: ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (i === header.length - 1 ? 0 : r[i].length))));
console.log('');
console.log(header.map((h, i) => (i < 3 || i === header.length - 1 ? h.padEnd(widths[i]) : h.padStart(widths[i]))).join('  '));
for (const r of rows) console.log(r.map((v, i) => (i < 3 || i === header.length - 1 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  '));
console.log(`load average after: ${loadavg().map((v) => v.toFixed(2)).join(' ')}; our quantized projections' activations: decodeActivations '${act}'`);
