// A merged INT4 g32 model to GGUF: each IntNLinear handed to core's
// exportGguf as group-wise INT4 (groupwise option), written as Q4_1 blocks
// with the same codes, d = fp16(scale), m = fp16(offset).
import { IntNLinear, type GroupwiseInt4, type LlamaModel, type QuantizedIntN, hostValues } from '@tunebench/core';

/** The codes of an INT-N weight, one per element (u8 [out·in]); the stream is LSB first. */
export function unpackIntNCodes(q: QuantizedIntN): Uint8Array {
  const bytes = hostValues(q.codes) as Uint8Array, N = q.bits, mask = (1 << N) - 1;
  const out = new Uint8Array(q.numel);
  for (let e = 0; e < q.numel; e++) {
    const bit = e * N, b = bit >> 3, s = bit & 7;
    // a 3-bit code may cross into the next byte
    const word = bytes[b] | ((b + 1 < bytes.length ? bytes[b + 1] : 0) << 8);
    out[e] = (word >> s) & mask;
  }
  return out;
}

/** exportGguf's `groupwise` option for a merged INT4 g32 model: every IntNLinear
 * by its Hugging Face weight name; anything else (or other N, L) is refused. */
export function groupwiseOf(model: LlamaModel): (hfName: string) => GroupwiseInt4 | undefined {
  const byName = new Map<string, QuantizedIntN>();
  for (const [name, l] of model.linears()) {
    if (!(l instanceof IntNLinear)) continue;
    const q = l.quantized;
    if (q.bits !== 4 || q.groupSize !== 32) {
      throw new Error(`groupwiseOf: ${name} is INT${q.bits} g${q.groupSize}; GGUF's Q4_1 holds INT4 with groups of 32 exactly (other widths would need requantizing)`);
    }
    byName.set(`${name}.weight`, q);
  }
  if (byName.size === 0) throw new Error('groupwiseOf: the model has no INT-N projections (merge the adapters first: mergeQalora)');
  return (hf) => {
    const q = byName.get(hf);
    if (!q) return undefined;
    return { bits: 4, groupSize: 32, codes: unpackIntNCodes(q), scales: (hostValues(q.scales) as Float32Array).slice(), offsets: (hostValues(q.offsets) as Float32Array).slice() };
  };
}
