// Merging trained QA-LoRA adapters into their INT-N base, exactly.
//
// The base: W[o, i] = scale[o, g] · q[o, i] + offset[o, g], g = floor(i / L).
// The pooled adapter adds s · B · A · P(x), P(x)[g] = (in/L) · mean of group g of x,
// i.e. a weight delta constant over each group (lora's pooledDelta):
//   delta[o, g] = s · (in / L) / L · (B · A)[o, g] = s · in / L² · (B · A)[o, g]
// so the merged weight is the same codes and scales with
//   offset'[o, g] = offset[o, g] + delta[o, g]
// (one f32 rounding per offset). Nothing is requantized: the merged model is
// an INT-N model of the same size that computes what the adapted one did.
import { IntNLinear, type LlamaModel, type QuantizedIntN, Tensor, addToOffsets } from '@tunebench/core';
import { type LoraLinear, loraLayers, pooledDelta } from '@tunebench/lora';

export interface QaloraMergeResult {
  layers: number;
  /** exact bytes of the merged projection weights (codes + scales + offsets) */
  bytes: number;
  /** largest |delta| folded into any offset */
  maxOffsetChange: number;
}

/** The base of an adapted layer as INT-N, checked to take its active pooled adapter. */
function foldable(l: LoraLinear): { base: IntNLinear; delta: Float32Array } {
  if (!(l.base instanceof IntNLinear)) throw new Error(`mergeQalora: ${l.name}'s base is ${l.base.constructor.name}, not an INT-N projection`);
  if (l.active === null) throw new Error(`mergeQalora: ${l.name} has no active adapter to merge`);
  const a = l.adapter(l.active), L = l.base.quantized.groupSize;
  if (a.poolSize !== L) {
    throw new Error(`mergeQalora: ${l.name}'s adapter '${l.active}' pools over ${a.poolSize ?? 'no'} group(s) of inputs, the base's groups are ${L} wide; only an adapter pooled over the quantization groups folds into the offsets`);
  }
  return { base: l.base, delta: pooledDelta(l, l.active) };
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const v of a) m = Math.max(m, Math.abs(v));
  return m;
}

/**
 * Folds the active adapter of every adapted layer into its base's offsets
 * (codes and scales unchanged) and puts the plain IntNLinear back in the
 * model: no adapter branch is left. Every layer is checked before any is changed.
 */
export function mergeQalora(model: LlamaModel): QaloraMergeResult {
  const layers = loraLayers(model);
  if (layers.length === 0) throw new Error('mergeQalora: the model has no adapters');
  const plan = layers.map((l) => ({ l, ...foldable(l) }));
  let bytes = 0, maxOffsetChange = 0;
  for (const { l, base, delta } of plan) {
    addToOffsets(base.quantized, delta);
    maxOffsetChange = Math.max(maxOffsetChange, maxAbs(delta));
    for (const name of [...l.adapters.keys()]) l.deleteAdapter(name);
    model.replaceLinear(l.name, base);  // the LoraLinear is dropped without disposing: the base lives on
    bytes += base.weightBytes;
  }
  return { layers: plan.length, bytes, maxOffsetChange };
}

function cloneTensor(t: Tensor): Tensor {
  if (t.device !== 'cpu') return t.to(t.device, { category: 'frozen' });
  return Tensor.from((t.data() as Uint8Array | Float32Array).slice(), t.shape, { dtype: t.dtype, category: 'frozen' });
}

/** A copy of an INT-N weight (own tensors). */
export function cloneIntN(q: QuantizedIntN): QuantizedIntN {
  const codes = cloneTensor(q.codes), scales = cloneTensor(q.scales), offsets = cloneTensor(q.offsets);
  return { ...q, codes, scales, offsets, shape: [q.shape[0], q.shape[1]] };
}

/** Runs `fn` on the model with every adapted layer swapped for its merged
 * INT-N form (a copy of the base with the delta folded in), then puts the
 * adapted layers back and frees the copies: the trained model is left as it
 * was (bench deployables). */
export function withMergedQalora<T>(model: LlamaModel, fn: (merged: QaloraMergeResult) => T): T {
  const layers = loraLayers(model);
  if (layers.length === 0) throw new Error('withMergedQalora: the model has no adapters');
  const plan = layers.map((l) => ({ l, ...foldable(l) }));
  const swapped: { lora: LoraLinear; merged: IntNLinear }[] = [];
  try {
    let bytes = 0, maxOffsetChange = 0;
    for (const { l, base, delta } of plan) {
      const merged = new IntNLinear(l.name, cloneIntN(base.quantized));
      swapped.push({ lora: l, merged });
      addToOffsets(merged.quantized, delta);
      maxOffsetChange = Math.max(maxOffsetChange, maxAbs(delta));
      model.replaceLinear(l.name, merged);
      bytes += merged.weightBytes;
    }
    return fn({ layers: plan.length, bytes, maxOffsetChange });
  } finally {
    for (const { lora, merged } of swapped) {
      model.replaceLinear(lora.name, lora);
      merged.dispose();
    }
  }
}
