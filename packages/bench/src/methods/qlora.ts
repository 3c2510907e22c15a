// The 'qlora' method plugin: a frozen 4-bit (NF4/FP4) base with LoRA
// adapters, its kernel rows, and its deployable models (merged bf16, merged
// and requantized, and requantized to the suite's QA-LoRA INT-N widths)
// (registered by methods.ts).
import { Rng, Tensor, disposeQuantized, makeOptimizer, matmul, quant4Bytes, quantize4bit } from '@tunebench/core';
import { type QaloraConfig, withRequantizedIntN } from '@tunebench/qa-lora';
import { saveAdapter } from '@tunebench/lora';
import { type QloraConfig, loadQloraModel, prepareQlora, qloraConfig, withMerged } from '@tunebench/qlora';
import type { MethodPlugin, MethodSpec } from '../methods.js';
import type { DeployableRow } from '../record.js';
import { decodeSpeed, frozenRandom, optimizerStateBytes, positiveInteger } from './helpers.js';
import { calibrationRows, qaloraSettings } from './qa-lora.js';

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

export const qloraMethod: MethodPlugin = {
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
      rows.push({ kind: 'merged bf16', bits: 16, bytes: m.bytes, metrics: ctx.evaluate(model), ...decodeSpeed(model, ctx.decodeActivations), weights: { kind: 'bf16' } });
    });
    withMerged(model, 'requantize', (m) => {
      const numel = [...model.linears().values()].reduce((a, l) => a + l.inFeatures * l.outFeatures, 0);
      rows.push({
        kind: `merged + requantized ${base.format}`, bits: (8 * m.bytes) / numel, bytes: m.bytes, metrics: ctx.evaluate(model),
        ...decodeSpeed(model, ctx.decodeActivations), weights: { kind: '4bit', format: c.format, blockSize: c.blockSize },
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
            withRequantizedIntN(model, { bits, groupSize, quantizer, ...(quantizer === 'gptq' ? { calibration: calibrationRows(ctx.tokenizer) } : {}) }, (m) => {
              rows.push({
                kind: `merged + requantized INT${bits} g${groupSize} ${quantizer.toUpperCase()}`, bits: (8 * m.bytes) / numel, bytes: m.bytes,
                metrics: ctx.evaluate(model), ...decodeSpeed(model, ctx.decodeActivations), weights: { kind: 'intn', bits, groupSize },
              });
            });
          }
        }
      });
    }
    return rows;
  },
};
