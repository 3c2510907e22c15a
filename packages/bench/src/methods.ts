// The method registry: what the runner, the suite parser, `tunebench plan`
// and the reports know about a fine-tuning method, in one place. The runner
// never names a method: it asks the plugin to prepare the model, predict its
// memory, save what it produces and (for quantized methods) build the
// deployable models. A method package adds itself with registerMethod();
// the built-in ones (full, lora, qlora, qa-lora) are registered here, at the
// end of this module, in that order. Their plugins live in methods/<name>.ts
// (shared helpers in methods/helpers.ts) and import only types from here.
import { type CheckpointingMode, type DecodeActivations, parseCheckpointing, type LlamaConfig, type LlamaModel, type OptimizerFactory, type Tokenizer } from '@tunebench/core';
import { type Plan, type PlanMethod, planMemory } from './plan.js';
import type { DeployableRow } from './record.js';
import { fullMethod } from './methods/full.js';
import { loraMethod } from './methods/lora.js';
import { qloraMethod } from './methods/qlora.js';
import { qaloraMethod } from './methods/qa-lora.js';

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
  /** what the deployables' decode tokens/s multiplies (generate's decodeActivations; default: benchDecodeActivations(), the fastest built) */
  decodeActivations?: DecodeActivations;
  /** the tasks' tokenizer on this base (tokenizer.ts), for calibration text (default: the byte tokenizer) */
  tokenizer?: Tokenizer;
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
  /** settings this method adds to a run's record (r, alpha, bits, ...); with the run's
   * base directory, those it will actually use on that base (e.g. a GPTQ checkpoint's
   * own bits and groups in place of the row's) */
  settings(spec: MethodSpec, baseDir?: string): Record<string, string | number | boolean>;
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

/** The ci suite's rates on its 'mini' base (hidden 128; docs/benchmarks/2026-12-06-ci-regime.md
 * and 2026-12-06-ci-mini.md): at 600 steps every row beats the spam majority
 * share and lowers the held-out perplexity. LoRA r64 (alpha 128) moves its
 * weights about 8x as far per step as r8 (alpha 16) at the same rate, so it
 * takes a smaller one. QA-LoRA's adapters see the input averaged per group:
 * at hidden 128, groups of 32 leave them 4 inputs per layer, too few to move
 * the held-out perplexity (-1.1%, inside the untrained interval); groups of 16
 * give 8, as groups of 32 do on the cpu suite's hidden 256. */
const CI_LRS: Record<string, number> = { full: 1e-3, 'lora-r8': 7e-3, 'lora-r64': 2e-3, 'qlora-r8': 7e-3, 'qalora4-r8': 1e-2 };
const CI_OPTIONS: Record<string, MethodSpec['options']> = { 'qalora4-r8': { bits: 4, groupSize: 16, quantizer: 'gptq' } };

/** The ci suite's: one QLoRA rank and one QA-LoRA width are enough to guard them. */
export const CI_METHODS: MethodSpec[] = DEFAULT_METHODS.filter((m) => CI_LRS[m.label] !== undefined)
  .map((m) => ({ ...m, lr: CI_LRS[m.label], ...(CI_OPTIONS[m.label] ? { options: CI_OPTIONS[m.label] } : {}) }));

/** The gpu suite's accuracy rows: one rank (16) per adapter method, as the speed rows. */
export const GPU_METHODS: MethodSpec[] = [
  { name: 'full', lr: 3e-4, label: 'full' },
  { name: 'lora', r: 16, alpha: 32, lr: 2e-3, label: 'lora-r16' },
  { name: 'qlora', r: 16, alpha: 32, lr: 2e-3, label: 'qlora-r16' },
  { name: 'qa-lora', r: 16, alpha: 32, lr: 2e-3, label: 'qalora4-r16', options: { bits: 4, groupSize: 32, quantizer: 'gptq' } },
];

/** Predicted peak memory of a training step with method `spec`. */
export function planFor(cfg: LlamaConfig, spec: MethodSpec, batch: number, seq: number, gradAccumulation = 1,
                        checkpointing: CheckpointingMode = 'off'): Plan {
  return planMemory(cfg, methodPlugin(spec.name).planMethod(spec), batch, seq, gradAccumulation, checkpointing);
}

export { optimizerStateBytes, decodeTokensPerSecond } from './methods/helpers.js';

// The built-in methods, in their order before the plugins moved to methods/
// (parseMethods tries them in this order).
registerMethod(fullMethod);
registerMethod(loraMethod);
registerMethod(qloraMethod);
registerMethod(qaloraMethod);
