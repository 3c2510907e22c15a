// The merged QA-LoRA model on disk: a Hugging Face-style directory.
//
//   config.json        the LlamaConfig (configToHf) plus
//                      quantization_config = { quant_method: 'tunebench_intn',
//                        bits, group_size, quantizer, code_layout, modules }
//   model.safetensors  per INT-N projection <module>.weight.{codes,scales,offsets}:
//                        codes   U8  [ceil(out·in·bits/8)]  the row-major bit stream,
//                                     LSB first (core's quant/intn.ts layout)
//                        scales  F32 [out, in/group_size]
//                        offsets F32 [out, in/group_size]   (adapter deltas folded in)
//                      w[o, i] = scales[o, i/L] · code + offsets[o, i/L];
//                      every other tensor (embeddings, norms, dense projections) as is.
//
// Codes are stored exactly as the kernels read them, so loading copies bytes
// and the loaded model computes bit for bit what the saved one did.
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  HF_CONFIG_FILE, HF_WEIGHTS_FILE, INTN_BITS, INTN_GROUP_SIZES, IntNLinear, type IntNBits, type IntNGroupSize, type LinearLayer,
  LlamaModel, type QuantizedIntN, type Tensor, configFromHf, configToHf, intnBytes, modelTensorShapes, readSafetensors, writeJsonAtomic,
  writeSafetensors,
} from '@tunebench/core';

export const QALORA_QUANT_METHOD = 'tunebench_intn';
export const QALORA_CODE_LAYOUT = 'row-major bit stream, LSB first';

/** Writes a model whose projections are IntNLinear (e.g. after mergeQalora) as an INT-N directory. */
export function saveQaloraModel(model: LlamaModel, dir: string): { files: string[]; bytes: number } {
  const root = resolve(dir);
  const tensors = new Map<string, Tensor>();
  let spec: { bits: IntNBits; groupSize: IntNGroupSize; quantizer: string } | null = null;
  const modules: string[] = [];
  for (const p of model.parameters()) {
    if (p.grad) throw new Error(`saveQaloraModel: ${p.name} is trainable; merge the adapters first (mergeQalora)`);
    const q = p.quantized;
    if (!q) { tensors.set(p.name, p.value); continue; }
    if (q.kind !== 'intn') throw new Error(`saveQaloraModel: ${p.name} is a ${q.kind} weight; this layout holds INT-N weights only`);
    if (spec && (q.bits !== spec.bits || q.groupSize !== spec.groupSize)) {
      throw new Error(`saveQaloraModel: ${p.name} is INT${q.bits} g${q.groupSize}, other projections are INT${spec.bits} g${spec.groupSize} (one quantization_config per model)`);
    }
    spec = { bits: q.bits, groupSize: q.groupSize, quantizer: q.quantizer };
    modules.push(p.name.slice(0, -'.weight'.length));
    tensors.set(`${p.name}.codes`, q.codes);
    tensors.set(`${p.name}.scales`, q.scales);
    tensors.set(`${p.name}.offsets`, q.offsets);
  }
  if (spec === null) throw new Error('saveQaloraModel: the model has no INT-N projections');
  mkdirSync(root, { recursive: true });
  const config = configToHf(model.config);
  config.quantization_config = {
    quant_method: QALORA_QUANT_METHOD, bits: spec.bits, group_size: spec.groupSize, quantizer: spec.quantizer,
    code_layout: QALORA_CODE_LAYOUT, modules,
  };
  const weights = join(root, HF_WEIGHTS_FILE);
  writeSafetensors(weights, tensors, { metadata: { format: 'pt' } });
  writeJsonAtomic(join(root, HF_CONFIG_FILE), config);
  let bytes = 0;
  for (const t of tensors.values()) bytes += t.bytes;
  return { files: [weights, join(root, HF_CONFIG_FILE)], bytes };
}

/** Reads a directory written by saveQaloraModel as a frozen model with IntNLinear projections. */
export function loadQaloraMerged(dir: string): LlamaModel {
  const root = resolve(dir);
  const configPath = join(root, HF_CONFIG_FILE);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${configPath}: cannot read the config: ${(e as Error).message}`);
  }
  const qc = raw.quantization_config as Record<string, unknown> | undefined;
  if (!qc || qc.quant_method !== QALORA_QUANT_METHOD) throw new Error(`${configPath}: not an INT-N model (quantization_config.quant_method '${QALORA_QUANT_METHOD}' is required)`);
  const bits = qc.bits as IntNBits, groupSize = qc.group_size as IntNGroupSize;
  if (!INTN_BITS.includes(bits)) throw new Error(`${configPath}: quantization_config.bits must be one of ${INTN_BITS.join(', ')}, got ${JSON.stringify(qc.bits)}`);
  if (!INTN_GROUP_SIZES.includes(groupSize)) throw new Error(`${configPath}: quantization_config.group_size must be one of ${INTN_GROUP_SIZES.join(', ')}, got ${JSON.stringify(qc.group_size)}`);
  if (qc.code_layout !== QALORA_CODE_LAYOUT) throw new Error(`${configPath}: quantization_config.code_layout ${JSON.stringify(qc.code_layout)} is not '${QALORA_CODE_LAYOUT}'`);
  if (!Array.isArray(qc.modules) || !qc.modules.every((m) => typeof m === 'string')) throw new Error(`${configPath}: quantization_config.modules must list the INT-N projections`);
  const quantizer = qc.quantizer === 'gptq' ? 'gptq' : 'rtn';
  const { quantization_config: _q, ...plain } = raw;
  const config = configFromHf(plain, configPath);
  const shapes = modelTensorShapes(config);
  const file = join(root, HF_WEIGHTS_FILE);
  const { tensors } = readSafetensors(file, { category: 'frozen' });
  const linears = new Map<string, LinearLayer>();
  const problems: string[] = [];
  const take = (n: string) => { const t = tensors.get(n); tensors.delete(n); return t; };
  try {
    for (const module of qc.modules as string[]) {
      const wname = `${module}.weight`, shape = shapes.get(wname);
      const codes = take(`${wname}.codes`), scales = take(`${wname}.scales`), offsets = take(`${wname}.offsets`);
      const drop = () => { for (const t of [codes, scales, offsets]) t?.dispose(); };
      if (!shape || shape.length !== 2) { problems.push(`${module}: not a projection of this model`); drop(); continue; }
      const [out, inn] = shape;
      if (inn % groupSize !== 0) { problems.push(`${module}: ${inn} input features are not divisible by group_size ${groupSize}`); drop(); continue; }
      const nCodes = Math.ceil((out * inn * bits) / 8), groups = (out * inn) / groupSize;
      if (!codes || codes.dtype !== 'u8' || codes.numel !== nCodes) { problems.push(`${wname}.codes must be U8 [${nCodes}]`); drop(); continue; }
      if (!scales || scales.dtype !== 'f32' || scales.numel !== groups) { problems.push(`${wname}.scales must be F32 [${out}, ${inn / groupSize}]`); drop(); continue; }
      if (!offsets || offsets.dtype !== 'f32' || offsets.numel !== groups) { problems.push(`${wname}.offsets must be F32 [${out}, ${inn / groupSize}]`); drop(); continue; }
      const q: QuantizedIntN = {
        kind: 'intn', bits, groupSize, shape: [out, inn], numel: out * inn, quantizer, bytes: intnBytes([out, inn], bits, groupSize),
        codes: codes.reshape([nCodes]), scales: scales.reshape([out, inn / groupSize]), offsets: offsets.reshape([out, inn / groupSize]),
      };
      linears.set(module, new IntNLinear(module, q));
    }
    const stray = [...tensors.keys()].filter((n) => /\.weight\.(codes|scales|offsets)$/.test(n));
    if (stray.length) problems.push(`INT-N tensors of modules not listed in quantization_config.modules: ${stray.join(', ')}`);
    if (problems.length) throw new Error(`${file}: ${problems.join('; ')}`);
    return LlamaModel.fromTensors(config, tensors, { trainable: false, linears });
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    for (const l of linears.values()) l.dispose();
    throw e;
  }
}
