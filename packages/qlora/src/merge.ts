// Merging a trained QLoRA adapter, the two ways people deploy it:
//   'bf16': W' = deq(Q) + s·B·A stored dense in bf16 (exact up to bf16 rounding)
//   'nf4' (or 'fp4'): W' requantized to 4 bits with the base's settings (lossy:
//          the adapter's delta is rounded with everything else)
// Either way the adapter layers are gone afterwards.
import { DenseLinear, type LlamaModel, Quant4Linear, Tensor, addInPlace, disposeQuantized, hostValues, quantize4bit } from '@tunebench/core';
import { LoraLinear, loraLayers } from '@tunebench/lora';

export type MergeTarget = 'bf16' | 'requantize';

export interface MergeResult {
  layers: number;
  /** bytes of the merged projection weights */
  bytes: number;
}

/** Merges the active adapter of every LoRA layer over a quantized base. */
export function mergeQlora(model: LlamaModel, to: MergeTarget = 'bf16'): MergeResult {
  const layers = loraLayers(model);
  if (layers.length === 0) throw new Error('mergeQlora: the model has no adapters');
  let bytes = 0;
  for (const l of layers) {
    const merged = mergeLayer(l, to);
    model.replaceLinear(l.name, merged);
    bytes += merged instanceof Quant4Linear ? merged.weightBytes : merged.weight.value.bytes;
    l.dispose();  // frees the adapters and the old quantized base
  }
  return { layers: layers.length, bytes };
}

function mergeLayer(l: LoraLinear, to: MergeTarget): DenseLinear | Quant4Linear {
  if (l.active === null) throw new Error(`${l.name}: no active adapter to merge`);
  const dense = l.base.toDense();
  try {
    const delta = l.deltaWeight(l.active);
    addInPlace(dense, delta);
    delta.dispose();
    if (to === 'bf16') {
      const w = Tensor.from(hostValues(dense) as Float32Array, dense.shape, { dtype: 'bf16', category: 'frozen', device: dense.device });
      return new DenseLinear(l.name, w, null);
    }
    if (!(l.base instanceof Quant4Linear)) throw new Error(`${l.name}: requantizing needs a quantized base`);
    const b = l.base.quantized;
    const q = quantize4bit(dense, { format: b.format, blockSize: b.blockSize, doubleQuant: b.dq !== undefined });
    try {
      return new Quant4Linear(l.name, q);
    } catch (e) {
      disposeQuantized(q);
      throw e;
    }
  } finally {
    dense.dispose();
  }
}

/** Runs `fn` on the model with every adapter layer swapped for its merged
 * form (bf16 or requantized), then puts the adapter layers back and frees the
 * merged ones: the trained model is left as it was, so several deployable
 * forms can be built from one run. */
export function withMerged<T>(model: LlamaModel, to: MergeTarget, fn: (merged: MergeResult) => T): T {
  const layers = loraLayers(model);
  if (layers.length === 0) throw new Error('withMerged: the model has no adapters');
  const swapped: { lora: LoraLinear; merged: DenseLinear | Quant4Linear }[] = [];
  try {
    let bytes = 0;
    for (const l of layers) {
      const merged = mergeLayer(l, to);
      swapped.push({ lora: l, merged });
      model.replaceLinear(l.name, merged);
      bytes += merged instanceof Quant4Linear ? merged.weightBytes : merged.weight.value.bytes;
    }
    return fn({ layers: layers.length, bytes });
  } finally {
    for (const { lora, merged } of swapped) {
      model.replaceLinear(lora.name, lora);
      merged.dispose();
    }
  }
}
