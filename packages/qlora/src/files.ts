// A QLoRA base on disk in the layout transformers writes for bitsandbytes
// 4-bit models, so it can be taken to the Python stack (and one written there
// read here). For each quantized projection <m>:
//   <m>.weight                                   U8 [ceil(numel/2), 1] packed codes
//   <m>.weight.absmax                            F32 [blocks], or U8 [blocks] when double-quantized
//   <m>.weight.quant_map                         F32 [16] the 4-bit code table
//   <m>.weight.nested_absmax                     F32 [ceil(blocks/256)] (double quantization)
//   <m>.weight.nested_quant_map                  F32 [256] the signed dynamic map (double quantization)
//   <m>.weight.quant_state.bitsandbytes__<fmt>   U8: the UTF-8 bytes of a JSON object
//        { quant_type, blocksize, dtype, shape, [nested_blocksize, nested_dtype, nested_offset] }
// (bitsandbytes' QuantState.as_dict(packed=True)); other tensors as usual, and
// config.json with a `quantization_config` for bitsandbytes.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  HF_CONFIG_FILE, HF_WEIGHTS_FILE, type LinearLayer, LlamaModel, Quant4Linear, type Quantized4bit, Tensor, configFromHf, configToHf,
  dynamicMap8, quant4Bytes, quant4Table, readSafetensors, writeJsonAtomic, writeSafetensors,
} from '@tunebench/core';
import { readFileSync } from 'node:fs';

const QS_PREFIX = 'quant_state.bitsandbytes__';

/** Writes a model whose projections are Quant4Linear (others dense) as a bitsandbytes 4-bit directory. */
export function saveQuantizedModel(model: LlamaModel, dir: string, opts: { computeDtype?: 'bfloat16' | 'float32' } = {}): { files: string[]; bytes: number } {
  const root = resolve(dir);
  mkdirSync(root, { recursive: true });
  const tensors = new Map<string, Tensor>();
  const owned: Tensor[] = [];
  let format: string | null = null, doubleQuant: boolean | null = null, blockSize = 64;
  const dtypeName = opts.computeDtype ?? 'bfloat16';
  try {
    for (const p of model.parameters()) {
      if (p.grad) throw new Error(`saveQuantizedModel: ${p.name} is trainable; merge or drop the adapters first`);
      const q = p.quantized;
      if (!q) { tensors.set(p.name, p.value); continue; }
      if (q.kind !== 'quant4') throw new Error(`saveQuantizedModel: ${p.name} is a ${q.bits}-bit INT-N weight; the bitsandbytes layout holds 4-bit (NF4/FP4) weights only`);
      if (format !== null && (q.format !== format || (q.dq !== undefined) !== doubleQuant || q.blockSize !== blockSize)) {
        throw new Error(`saveQuantizedModel: ${p.name} is quantized differently from the other projections (one quantization_config per model)`);
      }
      format = q.format; doubleQuant = q.dq !== undefined; blockSize = q.blockSize;
      tensors.set(p.name, q.packed.reshape([q.packed.numel, 1]));
      const own = (t: Tensor) => { owned.push(t); return t; };
      tensors.set(`${p.name}.quant_map`, own(Tensor.from(quant4Table(q.format), [16], { category: 'workspace' })));
      const state: Record<string, unknown> = { quant_type: q.format, blocksize: q.blockSize, dtype: dtypeName, shape: q.shape };
      if (q.dq) {
        tensors.set(`${p.name}.absmax`, q.dq.codes);
        tensors.set(`${p.name}.nested_absmax`, q.dq.scales);
        tensors.set(`${p.name}.nested_quant_map`, own(Tensor.from(dynamicMap8(true), [256], { category: 'workspace' })));
        Object.assign(state, { nested_blocksize: q.dq.blockSize, nested_dtype: 'float32', nested_offset: q.dq.offset });
      } else {
        tensors.set(`${p.name}.absmax`, q.absmax!);
      }
      const json = new TextEncoder().encode(JSON.stringify(state));
      tensors.set(`${p.name}.${QS_PREFIX}${q.format}`, own(Tensor.from(json, [json.length], { dtype: 'u8', category: 'workspace' })));
    }
    if (format === null) throw new Error('saveQuantizedModel: the model has no quantized projections');
    const config = configToHf(model.config);
    config.torch_dtype = dtypeName;
    config.quantization_config = {
      quant_method: 'bitsandbytes', load_in_4bit: true, load_in_8bit: false, bnb_4bit_quant_type: format,
      bnb_4bit_use_double_quant: doubleQuant, bnb_4bit_compute_dtype: dtypeName, bnb_4bit_quant_storage: 'uint8',
      llm_int8_skip_modules: ['lm_head'],
    };
    const weights = join(root, HF_WEIGHTS_FILE);
    writeSafetensors(weights, tensors, { metadata: { format: 'pt' } });
    writeJsonAtomic(join(root, HF_CONFIG_FILE), config);
    let bytes = 0;
    for (const t of tensors.values()) bytes += t.bytes;
    return { files: [weights, join(root, HF_CONFIG_FILE)], bytes };
  } finally {
    for (const t of owned) t.dispose();
  }
}

function sameValues(a: Float32Array, b: Float32Array, tol = 0): boolean {
  return a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

/** Reads a bitsandbytes 4-bit directory (ours or one transformers wrote) as a frozen model with Quant4Linear projections. */
export function loadQuantizedModel(dir: string): LlamaModel {
  const root = resolve(dir);
  const configPath = join(root, HF_CONFIG_FILE);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${configPath}: cannot read the config: ${(e as Error).message}`);
  }
  const qc = raw.quantization_config as Record<string, unknown> | undefined;
  if (!qc || qc.quant_method !== 'bitsandbytes' || qc.load_in_4bit !== true) {
    throw new Error(`${configPath}: not a bitsandbytes 4-bit model (quantization_config.quant_method 'bitsandbytes' with load_in_4bit true is required)`);
  }
  const { quantization_config: _q, ...plain } = raw;
  const config = configFromHf(plain, configPath);
  const file = join(root, HF_WEIGHTS_FILE);
  const { tensors } = readSafetensors(file, { category: 'frozen' });
  const linears = new Map<string, LinearLayer>();
  const problems: string[] = [];
  const take = (n: string) => { const t = tensors.get(n); tensors.delete(n); return t; };
  try {
    const stateNames = [...tensors.keys()].filter((n) => n.includes(`.weight.${QS_PREFIX}`));
    for (const sn of stateNames) {
      const wname = sn.slice(0, sn.indexOf(`.${QS_PREFIX}`));
      const module = wname.slice(0, -'.weight'.length);
      const stateT = take(sn)!;
      let state: Record<string, unknown>;
      try {
        state = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(stateT.data() as Uint8Array)) as Record<string, unknown>;
      } catch (e) {
        problems.push(`${sn}: not a JSON quant state (${(e as Error).message})`);
        stateT.dispose();
        continue;
      }
      stateT.dispose();
      const format = state.quant_type, blockSize = state.blocksize, shape = state.shape;
      if (format !== 'nf4' && format !== 'fp4') { problems.push(`${sn}: quant_type ${JSON.stringify(format)} is not nf4 or fp4`); continue; }
      if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d > 0)) { problems.push(`${sn}: shape must be [out, in]`); continue; }
      if (typeof blockSize !== 'number') { problems.push(`${sn}: blocksize missing`); continue; }
      const numel = shape[0] * shape[1], blocks = Math.ceil(numel / blockSize);
      const packed = take(wname), absmax = take(`${wname}.absmax`), qmap = take(`${wname}.quant_map`);
      const nested = take(`${wname}.nested_absmax`), nestedMap = take(`${wname}.nested_quant_map`);
      const parts = [packed, absmax, qmap, nested, nestedMap];
      const drop = () => { for (const t of parts) t?.dispose(); };
      const bad = (msg: string) => { problems.push(`${wname}: ${msg}`); drop(); };
      if (!packed || packed.dtype !== 'u8' || packed.numel !== Math.ceil(numel / 2)) { bad(`packed codes must be U8 with ${Math.ceil(numel / 2)} values`); continue; }
      if (!qmap || qmap.dtype !== 'f32' || !sameValues(qmap.data() as Float32Array, quant4Table(format))) { bad(`quant_map must be the standard ${format} table (custom maps are not supported)`); continue; }
      const isNested = state.nested_offset !== undefined;
      if (!absmax || absmax.numel !== blocks || absmax.dtype !== (isNested ? 'u8' : 'f32')) { bad(`absmax must be ${isNested ? 'U8' : 'F32'} [${blocks}]`); continue; }
      let q: Quantized4bit;
      const common = { kind: 'quant4' as const, format: format as 'nf4' | 'fp4', shape: [shape[0], shape[1]] as [number, number], numel, blockSize, packed: packed.reshape([packed.numel]) };
      if (isNested) {
        const nb = state.nested_blocksize, off = state.nested_offset;
        if (typeof nb !== 'number' || nb !== 256 || typeof off !== 'number' || !Number.isFinite(off)) { bad('nested_blocksize must be 256 and nested_offset a finite number'); continue; }
        if (!nested || nested.dtype !== 'f32' || nested.numel !== Math.ceil(blocks / 256)) { bad(`nested_absmax must be F32 [${Math.ceil(blocks / 256)}]`); continue; }
        if (!nestedMap || nestedMap.dtype !== 'f32' || !sameValues(nestedMap.data() as Float32Array, dynamicMap8(true), 1e-7)) { bad('nested_quant_map must be the signed dynamic map'); continue; }
        nestedMap.dispose();
        q = { ...common, dq: { codes: absmax, scales: nested, offset: off, blockSize: 256 }, bytes: quant4Bytes(numel, blockSize, true) };
      } else {
        nested?.dispose(); nestedMap?.dispose();
        q = { ...common, absmax, bytes: quant4Bytes(numel, blockSize, false) };
      }
      qmap.dispose();
      linears.set(module, new Quant4Linear(module, q));
    }
    if (problems.length) throw new Error(`${file}: ${problems.join('; ')}`);
    if (linears.size === 0) throw new Error(`${file}: no 4-bit quantized weights (no '*.weight.${QS_PREFIX}*' tensors)`);
    return LlamaModel.fromTensors(config, tensors, { trainable: false, linears });
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    for (const l of linears.values()) l.dispose();
    throw e;
  }
}
