// The 'qa-lora' method plugin: a frozen group-wise INT-N base (GPTQ on Brown
// calibration rows, or RTN) with pooled LoRA adapters that merge exactly into
// the INT-N offsets, its kernel rows and its merged deployable model
// (registered by methods.ts). qaloraSettings and calibrationRows are shared
// with the qlora plugin's INT-N requantized rows.
import { IntNLinear, Rng, Tensor, type Tokenizer, disposeIntN, intnBytes, makeOptimizer, matmul, quantizeIntN } from '@tunebench/core';
import { type GptqInfo, type QaloraConfig, inspectGptqModel, isGptqDir, loadQaloraModel, prepareQalora, qaloraConfig, withMergedQalora } from '@tunebench/qa-lora';
import { saveAdapter } from '@tunebench/lora';
import type { MethodPlugin, MethodSpec } from '../methods.js';
import { brownData } from '../tasks/pretrain.js';
import { taskTokenizer } from '../tokenizer.js';
import { decodeSpeed, frozenRandom, optimizerStateBytes, positiveInteger } from './helpers.js';

/** The QA-LoRA settings of a spec: r/alpha from the spec, the rest from its options over the QA-LoRA defaults. */
export function qaloraSettings(s: MethodSpec, seed = 0): QaloraConfig {
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

// GPTQ's calibration in the bench: rows of a generic text (Brown corpus,
// training split), not the task's: prepare() is given the base only, and a
// generic corpus is what GPTQ is usually calibrated on. Tokenized as the tasks
// are on that base (tokenizer.ts: its own tokenizer file, else bytes).
const CALIBRATION = { rows: 16, seqLen: 128, source: 'brown:train' } as const;
const calibrationCache = new Map<string, Int32Array[]>();
export function calibrationRows(tok: Tokenizer = taskTokenizer()): Int32Array[] {
  let rows = calibrationCache.get(tok.name);
  if (!rows) {
    const train = brownData(CALIBRATION.seqLen, 0, tok).train, T = CALIBRATION.seqLen;
    const n = Math.min(CALIBRATION.rows, train.ids.length / T);
    rows = Array.from({ length: n }, (_, r) => train.ids.slice(r * T, (r + 1) * T));
    calibrationCache.set(tok.name, rows);
  }
  return rows;
}

function maxMetricDiff(a: Record<string, number>, b: Record<string, number>): number {
  let d = 0;
  for (const k of Object.keys(a)) if (k in b) d = Math.max(d, Math.abs(a[k] - b[k]));
  return d;
}

export const qaloraMethod: MethodPlugin = {
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
  settings: (s, baseDir): Record<string, string | number | boolean> => {
    const c = qaloraSettings(s);
    if (baseDir !== undefined && isGptqDir(baseDir)) {
      // a GPTQ base: prepare() trains on the checkpoint's own codes, at its bits and groups (what loadQaloraModel holds them as)
      let g: GptqInfo;
      try {
        g = inspectGptqModel(baseDir);
      } catch {
        // prepare() reads the same files and fails with the same error inside the run, where the record keeps it
        return { r: c.r, alpha: c.alpha, quantizer: 'gptq', optimizer: c.optimizer, quantization: "the GPTQ checkpoint's bits and groups could not be read (the run's error says why)" };
      }
      const G = g.spec.groupSize;
      const from = `bits ${g.spec.bits} and group_size ${G} from the GPTQ checkpoint's quantization_config` +
        (G === g.groupSize ? '' : ` (held as INT-N groups of ${g.groupSize} columns)`);
      const asked = c.groupSize !== g.groupSize || c.quantizer !== 'gptq' ? `; the method row's groupSize ${c.groupSize}${c.quantizer !== 'gptq' ? ` and quantizer ${c.quantizer}` : ''} not used` : '';
      return {
        r: c.r, alpha: c.alpha, bits: g.spec.bits, groupSize: g.groupSize, quantizer: 'gptq', optimizer: c.optimizer,
        quantization: `${from}: its own codes, scales and zero points, no calibration${asked}`,
      };
    }
    return {
      r: c.r, alpha: c.alpha, bits: c.bits, groupSize: c.groupSize, quantizer: c.quantizer, optimizer: c.optimizer,
      ...(c.quantizer === 'gptq' ? { calibration: `${CALIBRATION.source} ${calibrationRows(taskTokenizer(baseDir)).length}x${CALIBRATION.seqLen} tokens`, gptqDamp: c.damp } : {}),
    };
  },
  prepare: (dir, s, seed) => {
    const c = qaloraSettings(s, seed);
    if (isGptqDir(dir)) {
      // a GPTQ base: its own codes, no calibration; where the run departs from the row's settings it says so
      const { model, result } = loadQaloraModel(dir, c);
      for (const n of result.checkpoint?.notes ?? []) process.stderr.write(`${s.label}: ${n}\n`);
      return model;
    }
    return loadQaloraModel(dir, c, c.quantizer === 'gptq' ? { calibration: calibrationRows(taskTokenizer(dir)) } : {}).model;
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
      // the INT-N the model holds (a GPTQ base's own bits and groups, else the spec's)
      const q = [...model.linears().values()].find((l): l is IntNLinear => l instanceof IntNLinear)?.quantized;
      return [{
        kind: `QA-LoRA merged INT${c.bits}`, bits: (8 * m.bytes) / numel, bytes: m.bytes, metrics,
        ...decodeSpeed(model, ctx.decodeActivations), vsTrained: { maxAbsMetricDiff: maxMetricDiff(metrics, trained) },
        weights: { kind: 'intn', bits: q?.bits ?? c.bits, groupSize: q?.groupSize ?? c.groupSize },
      }];
    });
  },
};
