// The method registry: what the runner, the suite parser, `tunebench plan`
// and the reports know about a fine-tuning method, in one place. The runner
// never names a method: it asks the plugin to prepare the model, predict its
// memory, save what it produces and (for quantized methods) build the
// deployable models. A method package adds itself with registerMethod();
// full fine-tuning and LoRA are registered here.
import { type LlamaConfig, type LlamaModel, saveHfModel } from '@tunebench/core';
import { prepareLora, saveAdapter } from '@tunebench/lora';
import { type Plan, planMemory } from './plan.js';
import type { DeployableRow } from './record.js';
import { loadBase } from './tasks/pretrain.js';

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
}

/** What a method may use to build its deployable models after training. */
export interface DeployContext {
  /** the run's task metrics of a model (the same evaluation as the trained run) */
  evaluate(model: LlamaModel): Record<string, number>;
  /** a scratch directory, removed after the run */
  dir: string;
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
  /** predicted peak memory of a training step */
  plan(cfg: LlamaConfig, spec: MethodSpec, batch: number, seq: number, gradAccumulation?: number): Plan;
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
  return list.split(',').map((m) => m.trim()).filter(Boolean).map((token) => {
    for (const p of registry.values()) {
      const spec = p.parse(token);
      if (spec) return spec;
    }
    throw new Error(`--methods: unknown method '${token}' (known: ${[...registry.values()].flatMap((p) => p.tokens).join(', ')})`);
  });
}

function positiveInteger(v: unknown): boolean {
  return Number.isInteger(v) && (v as number) > 0;
}

registerMethod({
  name: 'full',
  describe: 'full fine-tuning: every weight trains (AdamW on fp32 masters)',
  tokens: ['full'],
  parse: (t) => (t === 'full' ? { name: 'full', lr: 3e-4, label: 'full' } : null),
  validate: () => [],
  settings: () => ({}),
  prepare: (dir) => loadBase(dir, { trainable: true }),
  plan: (cfg, _spec, b, t, k) => planMemory(cfg, { name: 'full' }, b, t, k),
  save: (model, _spec, dir) => saveHfModel(model, dir, { dtype: 'bf16' }),
});

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
  validate: (s) => [
    ...(positiveInteger(s.r) ? [] : ['r must be a positive integer']),
    ...(s.alpha === undefined || (typeof s.alpha === 'number' && s.alpha > 0) ? [] : ['alpha must be a positive number']),
  ],
  settings: (s) => ({ r: s.r!, alpha: s.alpha ?? 2 * s.r! }),
  prepare: (dir, s, seed) => {
    const model = loadBase(dir, { trainable: false });
    try {
      prepareLora(model, { r: s.r, alpha: s.alpha ?? 2 * s.r!, seed });
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  },
  plan: (cfg, s, b, t, k) => planMemory(cfg, { name: 'lora', r: s.r }, b, t, k),
  save: (model, _spec, dir) => saveAdapter(model, dir),
});
