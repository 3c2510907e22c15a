// The method registry: what the runner, the suite parser, `tunebench plan`
// and the reports know about a fine-tuning method, in one place. The runner
// never names a method: it asks the plugin to prepare the model, predict its
// memory, save what it produces and (for quantized methods) build the
// deployable models. A method package adds itself with registerMethod();
// full fine-tuning and LoRA are registered here.
import {
  ADAMW8BIT_BLOCK_SIZE, ADAMW8BIT_MIN_SIZE, BYTE_BOS, type CheckpointingMode, parseCheckpointing, type LlamaConfig, type LlamaModel, type OptimizerFactory, type OptimizerName, ByteTokenizer,
  Rng, Tensor, disposeIntN, disposeQuantized, generate, intnBytes, makeOptimizer, matmul, quant4Bytes, quantize4bit, quantizeIntN, saveHfModel,
} from '@tunebench/core';
import { type QaloraConfig, loadQaloraModel, prepareQalora, qaloraConfig, withMergedQalora, withRequantizedIntN } from '@tunebench/qa-lora';
import { prepareLora, saveAdapter } from '@tunebench/lora';
import { type QloraConfig, loadQloraModel, prepareQlora, qloraConfig, withMerged } from '@tunebench/qlora';
import { type Plan, type PlanMethod, planMemory } from './plan.js';
import type { DeployableRow } from './record.js';
import { brownData, loadBase } from './tasks/pretrain.js';
import { randomModel } from './device.js';

/** One method row of a suite: a registered method with its settings. */
export interface MethodSpec {
  /** a registered method: 'full', 'lora' (more come with their packages) */
  name: string;
  /** learning rate for this method (methods differ here; recorded and printed) */
  lr: number;
  /** label in tables, e.g. 'lora-r8'; unique within a suite */
  label: string;
  /** LoRA rank and alpha (LoRA-based methods) */
  r?: number;
  alpha?: number;
  /** method-specific settings (e.g. bits, group size), validated by the plugin */
  options?: Record<string, string | number | boolean>;
  /** activation checkpointing for this row (default: the suite's shared setting) */
  checkpointing?: CheckpointingMode;
  /** the rates the learning-rate search tries for this row (default: the suite's tuneLr factors times lr) */
  lrGrid?: number[];
}

/** A kernel microbenchmark a method adds at a suite's shapes (kernels.ts runs it). */
/** A method's own kernel row (e.g. QLoRA's NF4 GEMM): core's harness times it with the rest. */
import type { KernelCase } from '@tunebench/core';
export type { KernelCase };

/** What a method may use to build its deployable models after training. */
export interface DeployContext {
  /** the run's task metrics of a model (the same evaluation as the trained run) */
  evaluate(model: LlamaModel): Record<string, number>;
  /** a scratch directory, removed after the run */
  dir: string;
  /** the trained run's own metrics (evaluate(model) before anything was merged) */
  metrics?: Record<string, number>;
  /** every method row of the suite (e.g. QLoRA requantizes to the QA-LoRA rows' bit widths) */
  suiteMethods?: readonly MethodSpec[];
}

export interface MethodPlugin {
  name: string;
  /** one line for --help */
  describe: string;
  /** --methods tokens this method accepts, for error messages, e.g. 'lora<r>' */
  tokens: string[];
  /** a --methods token like 'lora8' as a spec, or null when it is not this method's */
  parse(token: string): MethodSpec | null;
  /** problems with a spec from a suite file (empty: fine) */
  validate(spec: MethodSpec): string[];
  /** settings this method adds to a run's record (r, alpha, bits, ...) */
  settings(spec: MethodSpec): Record<string, string | number | boolean>;
  /** the base model from a Hugging Face directory, ready to train with this method */
  prepare(baseDir: string, spec: MethodSpec, seed: number): LlamaModel;
  /** speed and memory rows: a model with random weights at a config's shapes
   * (device.ts randomModel), ready to train with this method, on the host */
  shapeModel?(config: LlamaConfig, spec: MethodSpec, seed: number): LlamaModel;
  /** settings a speed row records beyond settings() (e.g. a quantizer it replaces) */
  shapeSettings?(spec: MethodSpec): Record<string, string | number | boolean>;
  /** what the planner needs: frozen bytes per projection, adapter rank, optimizer bytes per tensor */
  planMethod(spec: MethodSpec): PlanMethod;
  /** the optimizer of a run (default: fp32 AdamW) */
  optimizer?(spec: MethodSpec, weightDecay: number): OptimizerFactory;
  /** LoRA rank of the adapters, for the fused-LoRA kernel rows (none: no adapters) */
  adapterRank?(spec: MethodSpec): number | undefined;
  /** kernel rows of this method at a suite's shapes (x [N, in] times weight [out, in]) */
  kernelCases?(spec: MethodSpec, shape: { N: number; inF: number; outF: number; seed: number }): KernelCase[];
  /** why a peer cannot redo this method's runs (null or absent: it can) */
  peerUnsupported?(peer: 'tfjs' | 'pytorch', spec: MethodSpec): string | null;
  /** writes what the method produces (adapter files or the whole model) into an empty directory */
  save(model: LlamaModel, spec: MethodSpec, dir: string): void;
  /** deployable models built from the trained one (QLoRA, QA-LoRA): rows for the record */
  deployables?(model: LlamaModel, spec: MethodSpec, ctx: DeployContext): DeployableRow[];
}

const registry = new Map<string, MethodPlugin>();

export function registerMethod(p: MethodPlugin): void {
  if (registry.has(p.name)) throw new Error(`method '${p.name}' is registered already`);
  registry.set(p.name, p);
}

export function methodPlugin(name: string): MethodPlugin {
  const p = registry.get(name);
  if (!p) throw new Error(`unknown method '${name}' (registered: ${[...registry.keys()].join(', ')})`);
  return p;
}

export function methodNames(): string[] {
  return [...registry.keys()];
}

/** Parses --methods like "full,lora8,lora64" into specs (learning rates from each method's default). */
export function parseMethods(list: string): MethodSpec[] {
  return list.split(',').map((m) => m.trim()).filter(Boolean).map((whole) => {
    // a row that differs only in activation checkpointing: 'lora8@block', 'full@every:2'
    const at = whole.indexOf('@');
    const token = at < 0 ? whole : whole.slice(0, at);
    let checkpointing: CheckpointingMode | undefined;
    if (at >= 0) {
      try { checkpointing = parseCheckpointing(whole.slice(at + 1)); } catch (e) { throw new Error(`--methods: '${whole}': ${(e as Error).message}`); }
    }
    for (const p of registry.values()) {
      const spec = p.parse(token);
      if (spec) return checkpointing ? { ...spec, checkpointing, label: `${spec.label}@${checkpointing}` } : spec;
    }
    throw new Error(`--methods: unknown method '${token}' (known: ${[...registry.values()].flatMap((p) => p.tokens).join(', ')}; add @block or @every:<k> for activation checkpointing)`);
  });
}

function positiveInteger(v: unknown): boolean {
  return Number.isInteger(v) && (v as number) > 0;
}

/** The methods of the built-in cpu and gpu suites, each with its learning rate. */
export const DEFAULT_METHODS: MethodSpec[] = [
  { name: 'full', lr: 3e-4, label: 'full' },
  { name: 'lora', r: 8, alpha: 16, lr: 2e-3, label: 'lora-r8' },
  { name: 'lora', r: 64, alpha: 128, lr: 2e-3, label: 'lora-r64' },
  { name: 'qlora', r: 8, alpha: 16, lr: 2e-3, label: 'qlora-r8' },
  { name: 'qlora', r: 64, alpha: 128, lr: 2e-3, label: 'qlora-r64' },
  // QA-LoRA's adapters see the input averaged over each group of 32 columns, so
  // an update moves the output less than LoRA's at the same rate: 1e-2 (at
  // 2e-3 INT4 did not clear the spam majority share on the cpu suite's base,
  // docs/benchmarks/2026-12-06-cpu-regime.md)
  { name: 'qa-lora', r: 8, alpha: 16, lr: 1e-2, label: 'qalora4-r8', options: { bits: 4, groupSize: 32, quantizer: 'gptq' } },
  { name: 'qa-lora', r: 8, alpha: 16, lr: 1e-2, label: 'qalora3-r8', options: { bits: 3, groupSize: 32, quantizer: 'gptq' } },
  { name: 'qa-lora', r: 8, alpha: 16, lr: 1e-2, label: 'qalora2-r8', options: { bits: 2, groupSize: 32, quantizer: 'gptq' } },
];

/** The ci suite's rates on the tiny base (docs/benchmarks/2026-12-06-ci-regime.md): at
 * 600 steps every row beats the spam majority share and lowers the held-out
 * perplexity. LoRA r64 (alpha 128) moves its weights about 8x as far per step
 * as r8 (alpha 16) at the same rate, so it takes a smaller one; QA-LoRA's
 * pooled adapters see only hidden/32 = 2 inputs per layer and take a larger. */
const CI_LRS: Record<string, number> = { full: 1e-3, 'lora-r8': 7e-3, 'lora-r64': 2e-3, 'qlora-r8': 7e-3, 'qalora4-r8': 2e-2 };

/** The ci suite's: one QLoRA rank and one QA-LoRA width are enough to guard them. */
export const CI_METHODS: MethodSpec[] = DEFAULT_METHODS.filter((m) => CI_LRS[m.label] !== undefined).map((m) => ({ ...m, lr: CI_LRS[m.label] }));

/** The gpu suite's accuracy rows: one rank (16) per adapter method, as the speed rows. */
export const GPU_METHODS: MethodSpec[] = [
  { name: 'full', lr: 3e-4, label: 'full' },
  { name: 'lora', r: 16, alpha: 32, lr: 2e-3, label: 'lora-r16' },
  { name: 'qlora', r: 16, alpha: 32, lr: 2e-3, label: 'qlora-r16' },
  { name: 'qa-lora', r: 16, alpha: 32, lr: 2e-3, label: 'qalora4-r16', options: { bits: 4, groupSize: 32, quantizer: 'gptq' } },
];

/** A model with random weights, frozen, with `apply` run on it (disposed if that throws). */
function frozenRandom(config: LlamaConfig, seed: number, apply: (m: LlamaModel) => void): LlamaModel {
  const model = randomModel(config, { trainable: false, seed });
  try { apply(model); } catch (e) { model.dispose(); throw e; }
  return model;
}

/** Predicted peak memory of a training step with method `spec`. */
export function planFor(cfg: LlamaConfig, spec: MethodSpec, batch: number, seq: number, gradAccumulation = 1,
                        checkpointing: CheckpointingMode = 'off'): Plan {
  return planMemory(cfg, methodPlugin(spec.name).planMethod(spec), batch, seq, gradAccumulation, checkpointing);
}

/** Optimizer state bytes of a tensor of n elements. */
export function optimizerStateBytes(kind: OptimizerName): (n: number) => number {
  if (kind === 'adamw') return (n) => 8 * n;
  // 8-bit blockwise: two u8 codes per element and two fp32 absmax per block;
  // tensors under the minimum size keep fp32 state (core train/adamw8bit.ts)
  return (n) => (n < ADAMW8BIT_MIN_SIZE ? 8 * n : 2 * n + 8 * Math.ceil(n / ADAMW8BIT_BLOCK_SIZE));
}

function optionOf(spec: MethodSpec, key: string): string | number | boolean | undefined {
  return spec.options?.[key];
}

function optimizerOption(spec: MethodSpec): OptimizerName {
  const o = optionOf(spec, 'optimizer') ?? 'adamw';
  return o as OptimizerName;
}

function validateOptimizer(spec: MethodSpec): string[] {
  const o = optionOf(spec, 'optimizer');
  return o === undefined || o === 'adamw' || o === 'adamw8bit' ? [] : [`options.optimizer must be 'adamw' or 'adamw8bit', got ${JSON.stringify(o)}`];
}

/** Decode speed of a model: greedy tokens after a short prompt, one sequence, KV cache (best of 2). */
export function decodeTokensPerSecond(model: LlamaModel, newTokens = 32): number {
  const tok = new ByteTokenizer();
  const prompt = [BYTE_BOS, ...tok.encode('Subject: meeting tomorrow')];
  const n = Math.min(newTokens, model.config.maxPositionEmbeddings - prompt.length);
  let best = 0;
  for (let i = 0; i < 2; i++) best = Math.max(best, generate(model, prompt, { maxNewTokens: n }).decodeTokensPerSecond);
  return best;
}

registerMethod({
  name: 'full',
  describe: 'full fine-tuning: every weight trains (AdamW on fp32 masters; options.optimizer adamw8bit for 8-bit state)',
  tokens: ['full', 'full-8bit'],
  parse: (t) => (t === 'full' ? { name: 'full', lr: 3e-4, label: 'full' }
    : t === 'full-8bit' ? { name: 'full', lr: 3e-4, label: 'full-8bit', options: { optimizer: 'adamw8bit' } } : null),
  validate: (s) => validateOptimizer(s),
  settings: (s): Record<string, string> => (optimizerOption(s) === 'adamw' ? {} : { optimizer: optimizerOption(s) }),
  prepare: (dir) => loadBase(dir, { trainable: true }),
  shapeModel: (cfg, _s, seed) => randomModel(cfg, { trainable: true, seed }),
  planMethod: (s) => ({ trainsBase: true, optimizerBytes: optimizerStateBytes(optimizerOption(s)) }),
  optimizer: (s, weightDecay) => makeOptimizer(optimizerOption(s), { weightDecay }),
  save: (model, _spec, dir) => saveHfModel(model, dir, { dtype: 'bf16' }),
});

const LORA_OPTIONS = ['optimizer', 'trainEmbeddings'];

function loraTrainsEmbeddings(s: MethodSpec): boolean {
  return optionOf(s, 'trainEmbeddings') === true;
}

registerMethod({
  name: 'lora',
  describe: 'LoRA on every linear layer: frozen bf16 base, trainable A (r x in) and B (out x r)',
  tokens: ['lora8', 'lora64', 'lora<r>'],
  parse: (t) => {
    const m = /^lora-?r?(\d+)$/.exec(t);
    if (!m) return null;
    const r = Number(m[1]);
    return { name: 'lora', r, alpha: 2 * r, lr: 2e-3, label: `lora-r${r}` };
  },
  validate: (s) => {
    const unknown = Object.keys(s.options ?? {}).filter((k) => !LORA_OPTIONS.includes(k));
    const te = optionOf(s, 'trainEmbeddings');
    return [
      ...(unknown.length ? [`options: unknown key(s) ${unknown.join(', ')} (known: ${LORA_OPTIONS.join(', ')})`] : []),
      ...(positiveInteger(s.r) ? [] : ['r must be a positive integer']),
      ...(s.alpha === undefined || (typeof s.alpha === 'number' && s.alpha > 0) ? [] : ['alpha must be a positive number']),
      ...validateOptimizer(s),
      ...(te === undefined || typeof te === 'boolean' ? [] : [`options.trainEmbeddings must be true or false, got ${JSON.stringify(te)}`]),
    ];
  },
  settings: (s) => ({
    r: s.r!, alpha: s.alpha ?? 2 * s.r!, ...(optimizerOption(s) === 'adamw' ? {} : { optimizer: optimizerOption(s) }),
    ...(loraTrainsEmbeddings(s) ? { trainEmbeddings: true } : {}),
  }),
  prepare: (dir, s, seed) => {
    const model = loadBase(dir, { trainable: false });
    try {
      prepareLora(model, { r: s.r, alpha: s.alpha ?? 2 * s.r!, seed, trainEmbeddings: loraTrainsEmbeddings(s) });
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  },
  shapeModel: (cfg, s, seed) => frozenRandom(cfg, seed, (m) => { prepareLora(m, { r: s.r, alpha: s.alpha ?? 2 * s.r!, seed, trainEmbeddings: loraTrainsEmbeddings(s) }); }),
  planMethod: (s) => ({ adapterRank: s.r, optimizerBytes: optimizerStateBytes(optimizerOption(s)), trainsEmbeddings: loraTrainsEmbeddings(s) }),
  optimizer: (s, weightDecay) => makeOptimizer(optimizerOption(s), { weightDecay }),
  adapterRank: (s) => s.r,
  peerUnsupported: (_peer, s) => (loraTrainsEmbeddings(s) ? 'the peers train adapters only (no trainEmbeddings)' : null),
  save: (model, _spec, dir) => saveAdapter(model, dir),
});

/** The QLoRA settings of a spec: r/alpha from the spec, the rest from its options over the QLoRA defaults. */
function qloraSettings(s: MethodSpec, seed = 0): QloraConfig {
  const o = s.options ?? {};
  return qloraConfig({
    r: s.r, alpha: s.alpha ?? 2 * (s.r ?? 8), seed,
    ...(o.format !== undefined ? { format: o.format as QloraConfig['format'] } : {}),
    ...(o.blockSize !== undefined ? { blockSize: o.blockSize as number } : {}),
    ...(o.doubleQuant !== undefined ? { doubleQuant: o.doubleQuant as boolean } : {}),
    ...(o.init !== undefined ? { init: o.init as QloraConfig['init'] } : {}),
    ...(o.optimizer !== undefined ? { optimizer: o.optimizer as QloraConfig['optimizer'] } : {}),
  });
}

const QLORA_OPTIONS = ['format', 'blockSize', 'doubleQuant', 'init', 'optimizer'];

registerMethod({
  name: 'qlora',
  describe: 'QLoRA: frozen NF4 base (blocks of 64, double-quantized absmax) + LoRA; options format nf4|fp4, blockSize, doubleQuant, init kaiming|loftq, optimizer adamw|adamw8bit',
  tokens: ['qlora8', 'qlora64', 'qlora<r>', 'qlora<r>-loftq', 'qlora<r>-8bit'],
  parse: (t) => {
    const m = /^qlora-?r?(\d+)(-loftq)?(-8bit)?$/.exec(t);
    if (!m) return null;
    const r = Number(m[1]);
    const options: Record<string, string> = {};
    if (m[2]) options.init = 'loftq';
    if (m[3]) options.optimizer = 'adamw8bit';
    return { name: 'qlora', r, alpha: 2 * r, lr: 2e-3, label: `qlora-r${r}${m[2] ?? ''}${m[3] ?? ''}`, ...(Object.keys(options).length ? { options } : {}) };
  },
  validate: (s) => {
    const unknown = Object.keys(s.options ?? {}).filter((k) => !QLORA_OPTIONS.includes(k));
    if (unknown.length) return [`options: unknown key(s) ${unknown.join(', ')} (known: ${QLORA_OPTIONS.join(', ')})`];
    if (!positiveInteger(s.r)) return ['r must be a positive integer'];
    try { qloraSettings(s); return []; } catch (e) { return [(e as Error).message]; }
  },
  settings: (s) => {
    const c = qloraSettings(s);
    // paged optimizer state is CUDA managed memory; the CPU backend has nothing to page
    return { r: c.r, alpha: c.alpha, format: c.format, blockSize: c.blockSize, doubleQuant: c.doubleQuant, init: c.init, optimizer: c.optimizer, pagedOptimizer: 'n/a (cpu)' };
  },
  prepare: (dir, s, seed) => loadQloraModel(dir, qloraSettings(s, seed)).model,
  shapeModel: (cfg, s, seed) => frozenRandom(cfg, seed, (m) => { prepareQlora(m, qloraSettings(s, seed)); }),
  planMethod: (s) => {
    const c = qloraSettings(s);
    return {
      adapterRank: c.r,
      // the allocator's bytes: the exact 4-bit bytes less the double quantization's
      // 4-byte offset, which lives in the weight's JS object, not in native memory
      frozenLinearBytes: (o, i) => quant4Bytes(o * i, c.blockSize, c.doubleQuant) - (c.doubleQuant ? 4 : 0),
      optimizerBytes: optimizerStateBytes(c.optimizer),
      // a double-quantized absmax is expanded to fp32 for each GEMM call
      linearExtraWorkspace: (o, i) => (c.doubleQuant ? 4 * Math.ceil((o * i) / c.blockSize) : 0),
    };
  },
  optimizer: (s, weightDecay) => makeOptimizer(qloraSettings(s).optimizer, { weightDecay }),
  adapterRank: (s) => s.r,
  kernelCases: (s, { N, inF, outF, seed }) => {
    // the 4-bit GEMM in both training directions, beside the dense bf16 one
    // for the input gradient (the forward's dense row is timed already)
    const c = qloraSettings(s);
    const rng = new Rng(seed + 17);
    const fill = (n: number, scale: number) => Float32Array.from({ length: n }, () => (2 * rng.next() - 1) * scale);
    const x = Tensor.from(fill(N * inF, 1), [N, inF]), dy = Tensor.from(fill(N * outF, 1), [N, outF]);
    const wv = fill(outF * inF, 0.05);
    const Wb = Tensor.from(wv, [outF, inF], { dtype: 'bf16', category: 'frozen' });
    const Wf = Tensor.from(wv, [outF, inF]);
    const q = quantize4bit(Wf, { format: c.format, blockSize: c.blockSize, doubleQuant: c.doubleQuant });
    Wf.dispose();
    const y = Tensor.zeros([N, outF]), dx = Tensor.zeros([N, inF]);
    const flop = 2 * N * inF * outF, act = 4 * (N * inF + N * outF);
    const tag = `${c.format}${c.doubleQuant ? '+dq' : ''} b${c.blockSize}`;
    let left = 3;
    const dispose = () => { if (--left === 0) { for (const t of [x, dy, Wb, y, dx]) t.dispose(); disposeQuantized(q); } };
    return [
      { name: `${c.format} gemm x.W^T ${N}x${outF}x${inF} (${tag})`, flop, bytes: act + q.bytes, run: () => { matmul(x, q, { transB: true, out: y }); }, dispose },
      { name: `${c.format} gemm dy.W ${N}x${inF}x${outF} (${tag})`, flop, bytes: act + q.bytes, run: () => { matmul(dy, q, { out: dx }); }, dispose },
      { name: `dense gemm dy.W ${N}x${inF}x${outF} bf16 W`, flop, bytes: act + 2 * outF * inF, run: () => { matmul(dy, Wb, { out: dx }); }, dispose },
    ];
  },
  peerUnsupported: (peer, s) => {
    if (peer === 'tfjs') return 'the TensorFlow.js peer has no 4-bit base';
    return qloraSettings(s).optimizer === 'adamw' ? null : 'the PyTorch peer has no 8-bit AdamW';
  },
  save: (model, _spec, dir) => saveAdapter(model, dir),
  deployables: (model, s, ctx) => {
    const c = qloraSettings(s);
    const rows: DeployableRow[] = [];
    const base = { format: c.format.toUpperCase() };
    withMerged(model, 'bf16', (m) => {
      rows.push({ kind: 'merged bf16', bits: 16, bytes: m.bytes, metrics: ctx.evaluate(model), decodeTokensPerSecond: decodeTokensPerSecond(model) });
    });
    withMerged(model, 'requantize', (m) => {
      const numel = [...model.linears().values()].reduce((a, l) => a + l.inFeatures * l.outFeatures, 0);
      rows.push({
        kind: `merged + requantized ${base.format}`, bits: (8 * m.bytes) / numel, bytes: m.bytes, metrics: ctx.evaluate(model),
        decodeTokensPerSecond: decodeTokensPerSecond(model),
      });
    });
    // beside QA-LoRA's exact INT-N merge: the QLoRA model merged to bf16 and
    // then requantized to each INT-N width (and group size) of the suite's
    // QA-LoRA rows, with RTN and with GPTQ (the same calibration rows)
    const intn = new Map<string, { bits: QaloraConfig['bits']; groupSize: QaloraConfig['groupSize'] }>();
    for (const q of ctx.suiteMethods ?? []) {
      if (q.name !== 'qa-lora') continue;
      try { const c = qaloraSettings(q); intn.set(`${c.bits}/${c.groupSize}`, { bits: c.bits, groupSize: c.groupSize }); } catch { /* validated with the suite */ }
    }
    if (intn.size) {
      withMerged(model, 'bf16', () => {
        const numel = [...model.linears().values()].reduce((a, l) => a + l.inFeatures * l.outFeatures, 0);
        for (const { bits, groupSize } of intn.values()) {
          for (const quantizer of ['rtn', 'gptq'] as const) {
            withRequantizedIntN(model, { bits, groupSize, quantizer, ...(quantizer === 'gptq' ? { calibration: calibrationRows() } : {}) }, (m) => {
              rows.push({
                kind: `merged + requantized INT${bits} g${groupSize} ${quantizer.toUpperCase()}`, bits: (8 * m.bytes) / numel, bytes: m.bytes,
                metrics: ctx.evaluate(model), decodeTokensPerSecond: decodeTokensPerSecond(model),
              });
            });
          }
        }
      });
    }
    return rows;
  },
});

/** The QA-LoRA settings of a spec: r/alpha from the spec, the rest from its options over the QA-LoRA defaults. */
function qaloraSettings(s: MethodSpec, seed = 0): QaloraConfig {
  const o = s.options ?? {};
  return qaloraConfig({
    r: s.r, alpha: s.alpha ?? 2 * (s.r ?? 8), seed,
    ...(o.bits !== undefined ? { bits: o.bits as QaloraConfig['bits'] } : {}),
    ...(o.groupSize !== undefined ? { groupSize: o.groupSize as QaloraConfig['groupSize'] } : {}),
    ...(o.quantizer !== undefined ? { quantizer: o.quantizer as QaloraConfig['quantizer'] } : {}),
    ...(o.optimizer !== undefined ? { optimizer: o.optimizer as QaloraConfig['optimizer'] } : {}),
  });
}

const QALORA_OPTIONS = ['bits', 'groupSize', 'quantizer', 'optimizer'];

// GPTQ's calibration in the bench: rows of the base's own pretraining text
// (Brown corpus, training split), not the task's: prepare() is given the base
// only, and a generic corpus is what GPTQ is usually calibrated on.
const CALIBRATION = { rows: 16, seqLen: 128, source: 'brown:train' } as const;
let calibrationCache: Int32Array[] | null = null;
function calibrationRows(): Int32Array[] {
  if (!calibrationCache) {
    const train = brownData(CALIBRATION.seqLen).train, T = CALIBRATION.seqLen;
    const n = Math.min(CALIBRATION.rows, train.ids.length / T);
    calibrationCache = Array.from({ length: n }, (_, r) => train.ids.slice(r * T, (r + 1) * T));
  }
  return calibrationCache;
}

function maxMetricDiff(a: Record<string, number>, b: Record<string, number>): number {
  let d = 0;
  for (const k of Object.keys(a)) if (k in b) d = Math.max(d, Math.abs(a[k] - b[k]));
  return d;
}

registerMethod({
  name: 'qa-lora',
  describe: 'QA-LoRA: frozen group-wise INT-N base (GPTQ on Brown calibration rows, or RTN) + pooled LoRA (A: r x in/L) that merges exactly into the INT-N offsets; options bits 2|3|4|8, groupSize 16|32|64|128, quantizer gptq|rtn, optimizer adamw|adamw8bit',
  tokens: ['qalora4', 'qalora3', 'qalora2', 'qalora<bits>[-r<r>][-rtn]'],
  parse: (t) => {
    const m = /^qalora([2348])(?:-r(\d+))?(-rtn)?$/.exec(t);
    if (!m) return null;
    const bits = Number(m[1]), r = m[2] ? Number(m[2]) : 8;
    return {
      name: 'qa-lora', r, alpha: 2 * r, lr: 2e-3, label: `qalora${bits}-r${r}${m[3] ?? ''}`,
      options: { bits, groupSize: 32, quantizer: m[3] ? 'rtn' : 'gptq' },
    };
  },
  validate: (s) => {
    const unknown = Object.keys(s.options ?? {}).filter((k) => !QALORA_OPTIONS.includes(k));
    if (unknown.length) return [`options: unknown key(s) ${unknown.join(', ')} (known: ${QALORA_OPTIONS.join(', ')})`];
    if (!positiveInteger(s.r)) return ['r must be a positive integer'];
    try { qaloraSettings(s); return []; } catch (e) { return [(e as Error).message]; }
  },
  settings: (s) => {
    const c = qaloraSettings(s);
    return {
      r: c.r, alpha: c.alpha, bits: c.bits, groupSize: c.groupSize, quantizer: c.quantizer, optimizer: c.optimizer,
      ...(c.quantizer === 'gptq' ? { calibration: `${CALIBRATION.source} ${calibrationRows().length}x${CALIBRATION.seqLen} tokens`, gptqDamp: c.damp } : {}),
    };
  },
  prepare: (dir, s, seed) => {
    const c = qaloraSettings(s, seed);
    return loadQaloraModel(dir, c, c.quantizer === 'gptq' ? { calibration: calibrationRows() } : {}).model;
  },
  // random weights: round-to-nearest (GPTQ calibrating a random model would only cost time; the INT-N base is the same size)
  shapeModel: (cfg, s, seed) => frozenRandom(cfg, seed, (m) => { prepareQalora(m, { ...qaloraSettings(s, seed), quantizer: 'rtn' }); }),
  shapeSettings: (s): Record<string, string> => (qaloraSettings(s).quantizer === 'rtn' ? {} : { quantizer: 'rtn (random weights: GPTQ left out)' }),
  planMethod: (s) => {
    const c = qaloraSettings(s);
    return {
      adapterRank: c.r,
      adapterPoolSize: c.groupSize,
      // codes + f32 scale and offset per group, exactly what the allocator holds
      frozenLinearBytes: (o, i) => intnBytes([o, i], c.bits, c.groupSize),
      optimizerBytes: optimizerStateBytes(c.optimizer),
    };
  },
  optimizer: (s, weightDecay) => makeOptimizer(qaloraSettings(s).optimizer, { weightDecay }),
  adapterRank: (s) => s.r,
  kernelCases: (s, { N, inF, outF, seed }) => {
    // the INT-N GEMM in both training directions, and the decode kernel (one row)
    const c = qaloraSettings(s);
    const rng = new Rng(seed + 29);
    const fill = (n: number, scale: number) => Float32Array.from({ length: n }, () => (2 * rng.next() - 1) * scale);
    const x = Tensor.from(fill(N * inF, 1), [N, inF]), dy = Tensor.from(fill(N * outF, 1), [N, outF]), x1 = Tensor.from(fill(inF, 1), [1, inF]);
    const Wf = Tensor.from(fill(outF * inF, 0.05), [outF, inF]);
    const q = quantizeIntN(Wf, { bits: c.bits, groupSize: c.groupSize });
    Wf.dispose();
    const y = Tensor.zeros([N, outF]), dx = Tensor.zeros([N, inF]), y1 = Tensor.zeros([1, outF]);
    const flop = 2 * N * inF * outF, act = 4 * (N * inF + N * outF);
    const tag = `int${c.bits} g${c.groupSize}`;
    let left = 3;
    const dispose = () => { if (--left === 0) { for (const t of [x, dy, x1, y, dx, y1]) t.dispose(); disposeIntN(q); } };
    return [
      { name: `${tag} gemm x.W^T ${N}x${outF}x${inF}`, flop, bytes: act + q.bytes, run: () => { matmul(x, q, { transB: true, out: y }); }, dispose },
      { name: `${tag} gemm dy.W ${N}x${inF}x${outF}`, flop, bytes: act + q.bytes, run: () => { matmul(dy, q, { out: dx }); }, dispose },
      { name: `${tag} decode x.W^T 1x${outF}x${inF}`, flop: 2 * inF * outF, bytes: 4 * (inF + outF) + q.bytes, run: () => { matmul(x1, q, { transB: true, out: y1 }); }, dispose },
    ];
  },
  peerUnsupported: (peer) => (peer === 'tfjs'
    ? 'the TensorFlow.js peer has no group-wise INT-N base or pooled (QA-LoRA) adapters'
    : 'the PyTorch peer has no group-wise INT-N base or pooled (QA-LoRA) adapters'),
  save: (model, _spec, dir) => saveAdapter(model, dir),
  deployables: (model, s, ctx) => {
    // the merged model: the same codes and scales, the adapters folded into
    // the offsets; exact, so its metrics must equal the trained run's
    const c = qaloraSettings(s);
    const trained = ctx.metrics ?? ctx.evaluate(model);
    return withMergedQalora(model, (m) => {
      const numel = [...model.linears().values()].reduce((a, l) => a + l.inFeatures * l.outFeatures, 0);
      const metrics = ctx.evaluate(model);
      return [{
        kind: `QA-LoRA merged INT${c.bits}`, bits: (8 * m.bytes) / numel, bytes: m.bytes, metrics,
        decodeTokensPerSecond: decodeTokensPerSecond(model), vsTrained: { maxAbsMetricDiff: maxMetricDiff(metrics, trained) },
      }];
    });
  },
});
