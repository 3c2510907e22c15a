// `pretrain`: the default base model, trained from scratch on the Brown
// corpus's base genres with the byte tokenizer, and cached on disk keyed by
// everything that determines it (model config, data, seed, steps, settings,
// and the device, or on the CPU the kernel thread count).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ByteTokenizer, type Device, LlamaModel, type LlamaConfig, type TokenRows, type Tokenizer, epochBatches, evaluateLoss, loadHfModel, native, packTexts, preset,
  saveHfModel,
} from '@tunebench/core';
import { type BrownSplit, brownSplit, loadBrown } from './brown.js';
import { finetune, progressPrinter } from './finetune.js';
import { moveModel } from '../device.js';

export interface PretrainOptions {
  /** model preset (default tiny) */
  preset?: string;
  steps?: number;
  batchSize?: number;
  seqLen?: number;
  lr?: number;
  seed?: number;
  /** where bases are cached (default $TUNEBENCH_CACHE or <repo>/.tunebench-cache/base) */
  cacheDir?: string;
  /** print progress to stderr (default true) */
  progress?: boolean;
  /** where to train (default cpu); the base is saved from the CPU either way */
  device?: Device;
}

export interface PretrainResult {
  dir: string;
  config: LlamaConfig;
  key: string;
  cached: boolean;
  /** token-weighted loss on the base genres' validation documents */
  validationLoss: number;
  /** training time (0 when cached) */
  ms: number;
  tokensPerSecond: number;
}

/** Defaults per preset: the tiny base trains in about a minute on 2 cores. */
export const PRETRAIN_DEFAULTS: Record<string, Required<Pick<PretrainOptions, 'steps' | 'batchSize' | 'seqLen' | 'lr'>>> = {
  tiny: { steps: 300, batchSize: 8, seqLen: 128, lr: 3e-3 },
  small: { steps: 600, batchSize: 8, seqLen: 256, lr: 1e-3 },
  // the gpu suite's base: ~25M parameters, 1000 steps of 16 x 512 tokens
  // (~8M tokens, ~1.2 PFLOP of training: about a minute at a sustained
  // 20 TFLOP/s; an estimate, not a measurement)
  medium: { steps: 1000, batchSize: 16, seqLen: 512, lr: 1e-3 },
};

export function defaultCacheDir(): string {
  if (process.env.TUNEBENCH_CACHE) return resolve(process.env.TUNEBENCH_CACHE, 'base');
  const here = dirname(fileURLToPath(import.meta.url));  // packages/bench/{src,dist}/tasks
  return resolve(here, '..', '..', '..', '..', '.tunebench-cache', 'base');
}

export interface BrownData {
  split: BrownSplit;
  tokenizer: Tokenizer;
  train: TokenRows;
  validation: TokenRows;
}

/** The Brown corpus split and packed for a tokenizer (default: the byte tokenizer, as the presets are pretrained). */
export function brownData(seqLen: number, seed = 0, tokenizer: Tokenizer = new ByteTokenizer()): BrownData {
  const split = brownSplit(loadBrown(), { seed });
  return {
    split,
    tokenizer,
    train: packTexts(tokenizer, split.train.map((d) => d.text), seqLen, 'brown:train'),
    validation: packTexts(tokenizer, split.validation.map((d) => d.text), seqLen, 'brown:validation'),
  };
}

export function pretrainBase(o: PretrainOptions = {}): PretrainResult {
  const name = o.preset ?? 'tiny';
  const d = PRETRAIN_DEFAULTS[name] ?? PRETRAIN_DEFAULTS.small;
  const steps = o.steps ?? d.steps, batchSize = o.batchSize ?? d.batchSize, seqLen = o.seqLen ?? d.seqLen, lr = o.lr ?? d.lr;
  const seed = o.seed ?? 0;
  const device = o.device ?? 'cpu';
  const config = preset(name);
  const data = brownData(seqLen, seed);
  // on the CPU the kernel threads split some sums differently, so 1 and 2
  // threads train bases that differ in the last bits (tiny, 30 steps: the
  // validation loss 3.1797857357 against 3.1797857366): the count is part of the key
  const threads = native.getThreads();
  const key = createHash('sha256').update(JSON.stringify({
    v: 1, config, data: [data.train.fingerprint(), data.validation.fingerprint()], seed, steps, batchSize, seqLen, lr,
    // a base trained on the GPU is a different base (other rounding)
    ...(device === 'cpu' ? { threads } : { device }),
  })).digest('hex').slice(0, 16);
  const root = o.cacheDir ?? defaultCacheDir();
  const dir = join(root, `${name}-${key}`);
  const meta = join(dir, 'tunebench-pretrain.json');
  if (existsSync(meta)) {
    const m = JSON.parse(readFileSync(meta, 'utf8')) as { validationLoss: number; tokensPerSecond: number };
    return { dir, config, key, cached: true, validationLoss: m.validationLoss, ms: 0, tokensPerSecond: m.tokensPerSecond };
  }
  const model = LlamaModel.init(config, { seed });
  try {
    moveModel(model, device);
    const onStep = o.progress === false ? undefined : progressPrinter(`pretrain ${name}${device === 'cpu' ? '' : ` on ${device}`}`, steps, 50);
    const run = finetune(model, data.train, { steps, batchSize, lr, seed, schedule: 'cosine', weightDecay: 0.01, onStep, device });
    const validationLoss = evaluateLoss(model, epochBatches(data.validation, batchSize)).loss;
    moveModel(model, 'cpu');
    // write into a temporary directory, then rename: a crash never leaves a half-written base
    mkdirSync(root, { recursive: true });
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    saveHfModel(model, tmp, { dtype: 'f32' });
    writeFileSync(join(tmp, 'tunebench-pretrain.json'), JSON.stringify({ preset: name, steps, batchSize, seqLen, lr, seed, ...(device === 'cpu' ? { threads } : { device }), validationLoss, ms: run.ms, tokensPerSecond: run.tokensPerSecond }, null, 2));
    // several processes (shards sharing a cache) may have pretrained the same base at once:
    // the first rename wins; the others drop theirs and use it (same key: the same base)
    if (!publish(tmp, dir, meta)) {
      rmSync(tmp, { recursive: true, force: true });
      const m = JSON.parse(readFileSync(meta, 'utf8')) as { validationLoss: number; tokensPerSecond: number };
      return { dir, config, key, cached: true, validationLoss: m.validationLoss, ms: 0, tokensPerSecond: m.tokensPerSecond };
    }
    return { dir, config, key, cached: false, validationLoss, ms: run.ms, tokensPerSecond: run.tokensPerSecond };
  } finally {
    model.dispose();
  }
}

/** Moves a finished base from `tmp` to `dir`; false when another process got there first (its `meta` exists). */
function publish(tmp: string, dir: string, meta: string): boolean {
  if (existsSync(meta)) return false;
  try {
    renameSync(tmp, dir);
    return true;
  } catch (e) {
    if (existsSync(meta)) return false;
    // a folder without its metadata (left by an older version): replace it
    if ((e as { code?: string }).code !== 'ENOTEMPTY' && (e as { code?: string }).code !== 'EEXIST') throw e;
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    return true;
  }
}

/** Loads a pretrained base: trainable f32 (full fine-tuning) or frozen (adapter methods). */
export function loadBase(dir: string, opts: { trainable: boolean; frozenDtype?: 'f32' | 'bf16' }): LlamaModel {
  return loadHfModel(dir, { trainable: opts.trainable, frozenDtype: opts.frozenDtype ?? 'bf16' });
}
