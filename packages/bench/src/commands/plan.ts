// `tunebench plan`: the planner's predicted peak memory by category, without running anything.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CATEGORIES, type CheckpointingMode, type LlamaConfig, PRESETS, configFromHf, intOption, isPreset, parseCheckpointing, parseCli, preset } from '@tunebench/core';
import { type MethodSpec, planFor } from '../methods.js';
import { parseMethods } from '../suite.js';

export const PLAN_HELP = `tunebench plan — predict peak memory by category for a training step, without running it.

Usage: pnpm bench -- plan --model PRESET_OR_HF_DIR [--method M | --methods LIST] [--batch B] [--seq T] [--accum K]
                          [--checkpointing off|block|every:<k>] [--fit GIB[,GIB...]]

  --model          a preset (${Object.keys(PRESETS).join(', ')}) or a Hugging Face LlamaForCausalLM directory
  --method         full (default), full-8bit, lora<r>, qlora<r>[-8bit] or qalora<bits>[-r<r>], e.g. qlora8 (all-linear targets)
  --methods        several methods side by side, e.g. full,lora16,qlora16
  --batch          rows per micro-batch (default 8)
  --seq            tokens per row (default 256)
  --accum          micro-batches per optimizer step (default 1)
  --checkpointing  activation checkpointing: off (default), block (every block recomputed in
                   backward, only its input kept) or every:<k> (blocks 0, k, 2k, ...); 'all'
                   puts the three modes side by side
  --fit            instead of one batch: the largest batch of --seq tokens whose step fits in
                   each of these many GiB, per method and checkpointing mode

Examples:
  pnpm bench -- plan --model tinyllama-1.1b --method lora16 --batch 4 --seq 1024
  pnpm bench -- plan --model llama-2-7b --methods full,lora16,qlora16 --seq 2048 --checkpointing all --fit 24,48,80`;

/** The largest batch (rows of seq tokens) whose predicted step total fits in `bytes` (0: not even one row). */
function largestBatch(config: LlamaConfig, m: MethodSpec, seq: number, accum: number, mode: CheckpointingMode, bytes: number): number {
  const fits = (b: number) => planFor(config, m, b, seq, accum, mode).total <= bytes;
  if (!fits(1)) return 0;
  let lo = 1, hi = 2;
  while (fits(hi) && hi < 1 << 20) { lo = hi; hi *= 2; }
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (fits(mid)) lo = mid; else hi = mid; }
  return lo;
}


/** \`tunebench plan\`: prints the table; exits. */
export function planCommand(argv: string[]): never {
  const p = parseCli({
    model: { type: 'string' }, method: { type: 'string' }, methods: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' },
    accum: { type: 'string' }, checkpointing: { type: 'string' }, fit: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false },
  }, PLAN_HELP, argv);
  const planFail = (msg: string): never => { console.error(`tunebench plan: ${msg}\nRun with --help for the options.`); process.exit(2); };
  if (!p.model) planFail('--model is required');
  if (p.method && p.methods) planFail('give --method or --methods, not both');
  let config!: LlamaConfig;
  try {
    if (isPreset(p.model!)) config = preset(p.model!);
    else if (existsSync(join(p.model!, 'config.json'))) config = configFromHf(JSON.parse(readFileSync(join(p.model!, 'config.json'), 'utf8')), join(p.model!, 'config.json'));
    else throw new Error(`--model: '${p.model}' is neither a preset (${Object.keys(PRESETS).join(', ')}) nor a directory with config.json`);
  } catch (e) {
    planFail((e as Error).message);
  }
  let methods!: MethodSpec[];
  let modes!: CheckpointingMode[];
  let budgets: number[] = [];
  try {
    methods = parseMethods(p.methods ?? p.method ?? 'full');
    modes = p.checkpointing === 'all' ? ['off', 'block', 'every:2'] : [parseCheckpointing(p.checkpointing ?? 'off')];
    if (p.fit !== undefined) {
      budgets = p.fit.split(',').map((x) => Number(x.trim()));
      if (budgets.length === 0 || budgets.some((g) => !(Number.isFinite(g) && g > 0 && g <= 1e6))) throw new Error(`--fit must list memory sizes in GiB, e.g. 24,48,80; got '${p.fit}'`);
    }
  } catch (e) {
    planFail((e as Error).message);
  }
  const B = intOption('batch', p.batch, 8), T = intOption('seq', p.seq, 256), K = intOption('accum', p.accum, 1);
  const mib = (x: number) => (x / 2 ** 20).toFixed(1);
  const table = (head: string[], rows: string[][]) => {
    const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    for (const r of [head, ...rows]) console.log(r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  '));
  };
  const columns = methods.flatMap((m) => modes.map((mode) => ({ m, mode, name: modes.length > 1 ? `${m.label} ${mode}` : m.label })));
  if (budgets.length) {
    console.log(`largest batch of ${T} tokens per row whose training step fits (predicted peak), ${p.model}${K > 1 ? `, ${K} micro-batches` : ''}:`);
    table(['memory', ...columns.map((c) => c.name)], budgets.map((g) => [`${g} GiB`, ...columns.map((c) => {
      const b = largestBatch(config, c.m, T, K, c.mode, g * 2 ** 30);
      return b === 0 ? 'does not fit' : `${b} x ${T}`;
    })]));
    process.exit(0);
  }
  const plans = columns.map((c) => planFor(config, c.m, B, T, K, c.mode));
  console.log(`predicted peak memory of one training step: ${p.model}, ${p.methods ?? p.method ?? 'full'}, batch ${B} x seq ${T}${K > 1 ? `, ${K} micro-batches` : ''} (MiB)`);
  table(['category', ...columns.map((c) => c.name)], [...CATEGORIES, 'total' as const].map((k) => [k, ...plans.map((pl) => mib(pl[k]))]));
  process.exit(0);
}
