// Task figures: pretrain the tiny and small bases (cached), then fine-tune
// the small base on `spam` and `adapt` with full fine-tuning and LoRA (r 8,
// r 64, all-linear), and print metrics, memory, speed and trivial baselines.
// The `pnpm bench` runner (its own issue) will supersede this script.
//
//   node --import tsx bench/task_figures.ts [--spam-steps N] [--adapt-steps N] [--methods full,lora8,lora64]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type LlamaModel, epochBatches, evaluateLoss, intOption, memory, parseCli } from '@tunebench/core';
import { countParameters, prepareLora } from '@tunebench/lora';
import { adaptData, brownData, evaluateAdapt, evaluateSpam, finetune, loadBase, pretrainBase, progressPrinter, spamData } from '../src/index.js';

const HELP = `Task figures: bases, then spam and adapt with full fine-tuning and LoRA.

Usage: node --import tsx bench/task_figures.ts [options]
  --spam-steps N   optimizer steps on spam (default 200)
  --adapt-steps N  optimizer steps on adapt (default 100)
  --methods LIST   comma-separated: full, lora8, lora64 (default all three)
  -h, --help       this text`;
const opt = parseCli({
  'spam-steps': { type: 'string', default: '200' },
  'adapt-steps': { type: 'string', default: '100' },
  methods: { type: 'string', default: 'full,lora8,lora64' },
  help: { type: 'boolean', short: 'h', default: false },
}, HELP);
const spamSteps = intOption('spam-steps', opt['spam-steps'], 200), adaptSteps = intOption('adapt-steps', opt['adapt-steps'], 100);
const methods = opt.methods.split(',').map((m) => m.trim());
for (const m of methods) if (!/^(full|lora\d+)$/.test(m)) { console.error(`--methods: unknown method '${m}' (full, lora8, lora64, lora<r>)`); process.exit(2); }
const SEQ = 256, BATCH = 8;

type Row = Record<string, string | number>;
const rows: Row[] = [];
const t = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

// bases
for (const p of ['tiny', 'small']) {
  const r = pretrainBase({ preset: p });
  console.log(`base ${p}: validation loss ${r.validationLoss.toFixed(4)} (ppl ${Math.exp(r.validationLoss).toFixed(2)}), ${r.cached ? 'cached' : `trained in ${t(r.ms)} at ${Math.round(r.tokensPerSecond)} tok/s`} — ${r.dir}`);
  rows.push({ kind: 'base', preset: p, validationLoss: r.validationLoss, ms: r.ms, cached: String(r.cached) });
}
const small = pretrainBase({ preset: 'small' });
const brown = brownData(SEQ);
const tok = brown.tokenizer;
const spam = spamData(tok, { seqLen: SEQ });
const adapt = adaptData(brown, SEQ);
console.log(`spam: ${spam.counts.train} train / ${spam.counts.test} test messages; majority-class accuracy ${spam.majorityBaseline.toFixed(4)}`);

function model(method: string): { m: LlamaModel; trainable: number; lr: number } {
  if (method === 'full') {
    const m = loadBase(small.dir, { trainable: true });
    return { m, trainable: countParameters(m.parameters()).trainableParameters, lr: 3e-4 };
  }
  const r = Number(method.replace('lora', ''));
  const m = loadBase(small.dir, { trainable: false });
  const res = prepareLora(m, { r, alpha: 2 * r, targets: 'all-linear' });
  return { m, trainable: res.trainableParameters, lr: 2e-3 };
}

// untouched base on the adapt task: the trivial baseline for perplexity
{
  const m = loadBase(small.dir, { trainable: false });
  const a = evaluateAdapt(m, adapt, BATCH);
  console.log(`adapt baseline (small base, no fine-tuning): held-out '${adapt.genres.join(',')}' ppl ${a.adaptPerplexity.toFixed(3)}, base-genre loss ${a.baseLoss.toFixed(4)}`);
  rows.push({ kind: 'baseline', task: 'adapt', method: 'none', adaptPerplexity: a.adaptPerplexity, baseLoss: a.baseLoss });
  const s = evaluateSpam(m, spam, 32);
  console.log(`spam baseline (small base, no fine-tuning): accuracy ${s.accuracy.toFixed(4)}, macro F1 ${s.macroF1.toFixed(4)}`);
  rows.push({ kind: 'baseline', task: 'spam', method: 'none', accuracy: s.accuracy, macroF1: s.macroF1, majority: spam.majorityBaseline });
  m.dispose();
}

for (const method of methods) {
  for (const task of ['spam', 'adapt'] as const) {
    memory.emptyCache();
    const before = memory.snapshot().cpu;
    memory.resetPeak();
    const { m, trainable, lr } = model(method);
    const baseLossBefore = task === 'adapt' ? evaluateLoss(m, epochBatches(adapt.baseValidation, BATCH)).loss : NaN;
    const steps = task === 'spam' ? spamSteps : adaptSteps;
    const run = finetune(m, task === 'spam' ? spam.train : adapt.train, {
      steps, batchSize: BATCH, lr, seed: 0, onStep: progressPrinter(`${task} ${method}`, steps, 50),
    });
    const peak = memory.snapshot().cpu;
    const e0 = performance.now();
    const metrics: Row = task === 'spam' ? (() => { const e = evaluateSpam(m, spam, 32); return { accuracy: e.accuracy, macroF1: e.macroF1, accuracyPerToken: e.accuracyPerToken, examples: e.examples }; })() : (() => {
      const a = evaluateAdapt(m, adapt, BATCH);
      return { adaptLoss: a.adaptLoss, adaptPerplexity: a.adaptPerplexity, forgetting: a.baseLoss - baseLossBefore };
    })();
    const evalMs = performance.now() - e0;
    const row: Row = {
      kind: 'run', task, method, lr, steps, trainableParameters: trainable, trainMs: run.ms, evalMs,
      tokensPerSecond: run.tokensPerSecond, finalTrainLoss: run.finalLoss,
      peakTotalMiB: (peak.peakTotal - before.liveTotal) / 2 ** 20,
      ...Object.fromEntries(Object.entries(peak.peak).map(([c, v]) => [`peak_${c}_MiB`, v / 2 ** 20])),
      ...metrics,
    };
    delete row.confusion;
    rows.push(row);
    console.log(`${task} ${method}: ${Object.entries(metrics).filter(([k]) => k !== 'confusion').map(([k, v]) => `${k} ${typeof v === 'number' ? v.toFixed(4) : v}`).join(', ')}; trainable ${trainable}; ${Math.round(run.tokensPerSecond)} tok/s; train ${t(run.ms)}, eval ${t(evalMs)}; peak ${(peak.peakTotal / 2 ** 20).toFixed(1)} MiB`);
    m.dispose();
  }
}

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, '..', '..', '..', 'reports', 'tasks', 'task_figures.json');
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), seq: SEQ, batch: BATCH, rows }, null, 2) + '\n');
console.log(`wrote ${out}`);

