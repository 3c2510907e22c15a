// The LoRA method: put adapters on a model's targeted Linear layers.
import { isFrozenBase, LINEAR_NAMES, parameterNumel, Tensor, type LlamaModel, type Parameter } from '@tunebench/core';
import { type LoraConfig, loraConfig } from './config.js';
import { LoraLinear, checkPoolSize } from './layer.js';

export interface PrepareResult {
  /** module names that received an adapter */
  targets: string[];
  trainableParameters: number;
  totalParameters: number;
  /** names of the embedding parameters that train (trainEmbeddings), else empty */
  embeddings?: string[];
}

/** Models whose embedding (and LM head) prepareLora made trainable. */
const embeddingModels = new WeakSet<LlamaModel>();

/** The embedding parameters LoRA trains on this model (trainEmbeddings): the
 * token embedding, plus the LM head when it is not tied; empty otherwise. */
export function trainedEmbeddings(model: LlamaModel): Parameter[] {
  if (!embeddingModels.has(model)) return [];
  return [model.embed, ...(model.lmHead ? [model.lmHead] : [])];
}

/** Module names selected by `targets` (full names like model.layers.0.self_attn.q_proj). */
export function resolveTargets(model: LlamaModel, targets: LoraConfig['targets']): string[] {
  const names = [...model.linears().keys()];
  if (targets === 'all-linear') return names;
  if (targets instanceof RegExp) {
    const hit = names.filter((n) => targets.test(n));
    if (hit.length === 0) throw new Error(`LoRA targets: the pattern ${targets} matches no linear module; the model's linear modules are ${LINEAR_NAMES.join(', ')} in each of model.layers.0..${model.blocks.length - 1}`);
    return hit;
  }
  const unknown = targets.filter((t) => !LINEAR_NAMES.includes(t as never) && !names.includes(t));
  if (unknown.length) {
    throw new Error(`LoRA targets: unknown module(s) ${unknown.map((u) => `'${u}'`).join(', ')}; the model's linear modules are ${LINEAR_NAMES.join(', ')} (lm_head is never a target)`);
  }
  return names.filter((n) => targets.some((t) => n === t || n.endsWith(`.${t}`)));
}

/** Replaces the targeted layers of a frozen model with LoRA layers holding
 * one adapter named `adapterName`. */
export function prepareLora(model: LlamaModel, opts: Partial<LoraConfig> = {}, adapterName = 'default'): PrepareResult {
  const config = loraConfig(opts);
  const adapterParams = new Set<Parameter>(loraLayers(model).flatMap((l) => [...l.adapters.values()].flatMap((a) => [a.A, a.B])));
  for (const p of trainedEmbeddings(model)) adapterParams.add(p);
  const trainableBefore = model.parameters().filter((p) => p.grad !== null && !adapterParams.has(p));
  if (trainableBefore.length > 0) {
    throw new Error(`LoRA: the base model must be frozen (build it with trainable: false); ${trainableBefore.length} parameters are trainable, e.g. ${trainableBefore[0].name}`);
  }
  const targets = resolveTargets(model, config.targets);
  const layers = model.linears();
  // every target checked before any is wrapped: all or nothing
  for (const name of targets) checkPoolSize(`LoRA: ${name}`, layers.get(name)!.inFeatures, config.poolSize ?? null);
  for (const name of targets) {
    const layer = layers.get(name)!;
    const lora = layer instanceof LoraLinear ? layer : wrap(layer, config.seed);
    lora.addAdapter(adapterName, config);
    if (lora !== layer) model.replaceLinear(name, lora);
  }
  if (config.trainEmbeddings) trainEmbeddings(model);
  return { targets, ...countParameters(model.parameters()), embeddings: trainedEmbeddings(model).map((p) => p.name) };
}

/** Makes the token embedding (and an untied LM head) of a frozen model
 * trainable: a new f32 copy (category trainable; the base often holds bf16)
 * with an f32 gradient, which the model's backward fills as in full
 * fine-tuning. A tied head stays tied: both uses write the one gradient. */
export function trainEmbeddings(model: LlamaModel): void {
  const params = [model.embed, ...(model.lmHead ? [model.lmHead] : [])];
  for (const p of params) {
    if (p.quantized) throw new Error(`LoRA trainEmbeddings: ${p.name} is quantized; only a dense (f32 or bf16) embedding can train`);
  }
  for (const p of params) {
    if (p.grad) continue;
    const f32 = Tensor.from(p.value.toFloat32(), p.value.shape, { category: 'trainable', device: p.value.device });
    p.value.dispose();
    p.value = f32;
    p.grad = Tensor.zeros(f32.shape, { category: 'grad', device: f32.device });
  }
  embeddingModels.add(model);
}

/** A LoRA layer over a frozen base layer: dense (f32/bf16) or quantized. */
export function wrap(layer: unknown, seed: number): LoraLinear {
  if (!isFrozenBase(layer)) throw new Error(`LoRA: cannot adapt ${(layer as { name?: string }).name ?? 'this layer'}: it is not a frozen base layer (dense or quantized)`);
  return new LoraLinear(layer, seed);
}

export function countParameters(params: readonly Parameter[]): { trainableParameters: number; totalParameters: number } {
  let trainable = 0, total = 0;
  for (const p of params) {
    const n = parameterNumel(p);
    total += n;
    if (p.grad) trainable += n;
  }
  return { trainableParameters: trainable, totalParameters: total };
}

/** Every LoRA layer of the model. */
export function loraLayers(model: LlamaModel): LoraLinear[] {
  return [...model.linears().values()].filter((l): l is LoraLinear => l instanceof LoraLinear);
}

/** Make `name` the active adapter everywhere. */
export function setActiveAdapter(model: LlamaModel, name: string | null): void {
  for (const l of loraLayers(model)) {
    if (name !== null) l.adapter(name);
    l.active = name;
  }
}

/** Merge the active adapter into the base weights and put the plain dense
 * layers back: the model has no adapter layers afterwards. */
export function mergeAndUnload(model: LlamaModel): void {
  for (const l of loraLayers(model)) model.replaceLinear(l.name, l.mergeAndUnload());
}
