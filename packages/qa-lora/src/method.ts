// The QA-LoRA method: the frozen base's projections quantized to group-wise
// INT-N (core's quantizeIntN: RTN or GPTQ), pooled LoRA adapters on top
// (poolSize = groupSize, @tunebench/lora). IntNLinear is the FrozenBase; the
// kernels dequantize it while packing, so no dense copy exists in training.
//
// GPTQ's calibration inputs: each projection's input X [n, in] is captured
// from ONE forward pass of the dense (unquantized) base over the calibration
// rows, and every projection is then quantized against its own X. GPTQ's
// reference implementation goes layer by layer, feeding each block the
// outputs of the already-quantized blocks before it; we take the inputs of
// the dense model instead: one pass instead of one per block, and every
// projection is quantized independently of the others' rounding. The price
// is that the dense base is whole in memory while GPTQ runs (RTN quantizes
// each projection as it is read, never holding the dense base).
import {
  type IntNQuantizer, IntNLinear, type LinearFactory, type LinearLayer, type LlamaModel, type OptimizerFactory, type Parameter,
  DenseLinear, type Device, Tensor, loadHfModel, makeOptimizer, quantizeIntN,
} from '@tunebench/core';
import { LoraLinear, type PrepareResult, countParameters, loraLayers, resolveTargets, wrap } from '@tunebench/lora';
import { type QaloraConfig, adapterConfig, qaloraConfig } from './config.js';
import { type GptqSpec, isGptqDir, loadGptqModel } from './gptq.js';

/** Token rows to calibrate GPTQ with: each row is run through the dense base as a batch of one. */
export type CalibrationRows = readonly (Int32Array | readonly number[])[];

export interface QaloraLoadOptions {
  /** token rows for GPTQ (required with quantizer 'gptq'; refused with 'rtn') */
  calibration?: CalibrationRows;
  /** name of the adapter (default 'default') */
  adapterName?: string;
}

export interface QaloraPrepareResult extends PrepareResult {
  /** exact bytes of the INT-N base weights (codes + scales + offsets) */
  quantizedBytes: number;
  bits: number;
  groupSize: number;
  quantizer: IntNQuantizer;
  /** GPTQ: the number of calibration inputs each projection saw (tokens) */
  calibrationTokens?: number;
  /** quantizer notes (extra damping, all-zero inputs), by projection */
  notes?: Record<string, string>;
  /** set when the base came quantized from a GPTQ checkpoint (its own codes, scales and zero points) */
  checkpoint?: {
    kind: 'gptq';
    spec: GptqSpec;
    /** where the run departs from what was asked, or from the file as written (say so in the run's log) */
    notes: string[];
  };
}

/** One frozen weight [out, in] (f32 or bf16, left as it is) as an IntNLinear: RTN, or GPTQ with X [n, in]. */
export function intnLinear(name: string, weight: Tensor, c: Pick<QaloraConfig, 'bits' | 'groupSize' | 'quantizer' | 'damp'>, calibration?: Tensor): IntNLinear {
  try {
    const q = c.quantizer === 'gptq'
      ? quantizeIntN(weight, { bits: c.bits, groupSize: c.groupSize, quantizer: 'gptq', calibration, damp: c.damp })
      : quantizeIntN(weight, { bits: c.bits, groupSize: c.groupSize, quantizer: 'rtn' });
    return new IntNLinear(name, q);
  } catch (e) {
    throw new Error(`QA-LoRA: cannot quantize ${name} to INT${c.bits} g${c.groupSize} (${c.quantizer}): ${(e as Error).message}`);
  }
}

/** The same, freeing the dense weight (the loading factory's contract). */
export function quantizeLinearIntN(name: string, weight: Tensor, c: Pick<QaloraConfig, 'bits' | 'groupSize' | 'quantizer' | 'damp'>, calibration?: Tensor): IntNLinear {
  try {
    return intnLinear(name, weight, c, calibration);
  } finally {
    weight.dispose();
  }
}

/** A LinearFactory that quantizes every projection to INT-N with RTN as it is read. */
export function rtnFactory(config: Partial<QaloraConfig>): LinearFactory {
  const c = qaloraConfig({ ...config, quantizer: 'rtn' });
  return (name, weight) => quantizeLinearIntN(name, weight, c);
}

/** Records a projection's inputs while delegating to it (GPTQ calibration). */
class CapturingLinear implements LinearLayer {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly inputs: Float32Array[] = [];
  rows = 0;
  constructor(readonly inner: LinearLayer) {
    this.name = inner.name;
    this.inFeatures = inner.inFeatures;
    this.outFeatures = inner.outFeatures;
  }
  // x [N, in] -> y [N, out]; keeps a copy of x
  forward(x: Tensor): Tensor {
    this.inputs.push(x.toFloat32());
    this.rows += x.shape[0];
    return this.inner.forward(x);
  }
  backward(): Tensor { throw new Error(`${this.name}: calibration capture runs inference only`); }
  parameters(): Parameter[] { return this.inner.parameters(); }
  clearSaved(): void { this.inner.clearSaved(); }
  to(device: Device): void { this.inner.to(device); }
  dispose(): void { this.inner.dispose(); }
  /** X [rows, in] of everything seen */
  take(): Tensor {
    const X = Tensor.zeros([this.rows, this.inFeatures], { category: 'workspace' });
    const d = X.data() as Float32Array;
    let o = 0;
    for (const a of this.inputs) { d.set(a, o); o += a.length; }
    this.inputs.length = 0;
    return X;
  }
}

function checkCalibration(model: LlamaModel, rows: CalibrationRows): void {
  if (!Array.isArray(rows) || rows.length === 0) throw new Error('QA-LoRA: calibration must be a non-empty list of token rows');
  const V = model.config.vocabSize, P = model.config.maxPositionEmbeddings;
  rows.forEach((r, i) => {
    if (r.length < 1 || r.length > P) throw new Error(`QA-LoRA: calibration row ${i} has ${r.length} tokens; 1..${P} are allowed`);
    for (const t of r) if (!Number.isInteger(t) || t < 0 || t >= V) throw new Error(`QA-LoRA: calibration row ${i} holds token ${t}, outside 0..${V - 1}`);
  });
}

/**
 * Every named projection's inputs X [n, in] (f32, n = calibration tokens) on
 * the calibration rows, from one inference pass of the model as it is.
 */
export function captureInputs(model: LlamaModel, rows: CalibrationRows, names: readonly string[] = [...model.linears().keys()]): { inputs: Map<string, Tensor>; tokens: number } {
  checkCalibration(model, rows);
  const layers = model.linears();
  const capture = new Map<string, CapturingLinear>();
  for (const name of names) {
    const l = layers.get(name);
    if (!l) throw new Error(`captureInputs: no projection named '${name}'`);
    const cl = new CapturingLinear(l);
    capture.set(name, cl);
    model.replaceLinear(name, cl);
  }
  let tokens = 0;
  try {
    for (const r of rows) {
      const ids = Tensor.from(Int32Array.from(r), [1, r.length], { dtype: 'i32' });
      try { model.hidden(ids).dispose(); } finally { ids.dispose(); }
      tokens += r.length;
    }
  } finally {
    for (const [name, cl] of capture) model.replaceLinear(name, cl.inner);
  }
  return { inputs: new Map([...capture].map(([n, cl]) => [n, cl.take()])), tokens };
}

/**
 * GPTQ over a model whose projections are dense: captures every projection's
 * input on the calibration rows from the dense model (see the file comment),
 * then replaces each dense projection by its INT-N GPTQ quantization.
 */
export function quantizeModelGptq(model: LlamaModel, c: QaloraConfig, rows: CalibrationRows): { tokens: number; notes: Record<string, string> } {
  const dense = [...model.linears()].filter(([, l]) => l instanceof DenseLinear) as [string, DenseLinear][];
  if (dense.length === 0) throw new Error('QA-LoRA: GPTQ needs dense projections to quantize; this model has none');
  for (const [name, l] of dense) {
    if (l.inFeatures % c.groupSize !== 0) throw new Error(`QA-LoRA: ${name} has ${l.inFeatures} input features, not divisible by groupSize ${c.groupSize}`);
  }
  const { inputs, tokens } = captureInputs(model, rows, dense.map(([n]) => n));
  // quantize every projection before swapping any, so a failure leaves the dense model as it was
  const notes: Record<string, string> = {};
  const made = new Map<string, IntNLinear>();
  try {
    for (const [name, l] of dense) {
      const layer = intnLinear(name, l.weight.value, c, inputs.get(name));
      made.set(name, layer);
      if (layer.quantized.note) notes[name] = layer.quantized.note;
    }
  } catch (e) {
    for (const l of made.values()) l.dispose();
    throw e;
  } finally {
    for (const X of inputs.values()) X.dispose();
  }
  for (const [name, l] of dense) {
    model.replaceLinear(name, made.get(name)!);
    l.dispose();
  }
  return { tokens, notes };
}

function applyAdapters(model: LlamaModel, c: QaloraConfig, adapterName: string): PrepareResult {
  const lc = adapterConfig(c);
  const targets = resolveTargets(model, lc.targets);
  const layers = model.linears();
  for (const name of targets) {
    const layer = layers.get(name)!;
    const base = layer instanceof LoraLinear ? layer.base : layer;
    if (!(base instanceof IntNLinear)) throw new Error(`QA-LoRA: ${name} is not an INT-N projection (got ${base.constructor.name}); quantize the base first`);
    if (base.quantized.groupSize !== c.groupSize) {
      throw new Error(`QA-LoRA: ${name} is quantized with groups of ${base.quantized.groupSize}, the adapters would pool over ${c.groupSize}; they must match to merge`);
    }
  }
  for (const name of targets) {
    const layer = layers.get(name)!;
    const lora = layer instanceof LoraLinear ? layer : wrap(layer, lc.seed);
    lora.addAdapter(adapterName, lc);
    if (lora !== layer) model.replaceLinear(name, lora);
  }
  return { targets, ...countParameters(model.parameters()) };
}

function result(model: LlamaModel, c: QaloraConfig, prep: PrepareResult, gptq?: { tokens: number; notes: Record<string, string> }): QaloraPrepareResult {
  return {
    ...prep, quantizedBytes: quantizedBytes(model), bits: c.bits, groupSize: c.groupSize, quantizer: c.quantizer,
    ...(gptq ? { calibrationTokens: gptq.tokens, ...(Object.keys(gptq.notes).length ? { notes: gptq.notes } : {}) } : {}),
  };
}

function checkQuantizerInputs(c: QaloraConfig, opts: QaloraLoadOptions): void {
  if (c.quantizer === 'gptq' && opts.calibration === undefined) {
    throw new Error("QA-LoRA: quantizer 'gptq' needs calibration token rows (options.calibration); use quantizer 'rtn' to quantize without them");
  }
  if (c.quantizer === 'rtn' && opts.calibration !== undefined) throw new Error("QA-LoRA: calibration rows are only used by quantizer 'gptq'");
}

/** Loads a LlamaForCausalLM directory as a QA-LoRA model: an INT-N base
 * (RTN: quantized as each projection is read; GPTQ: loaded dense, calibrated,
 * then quantized) with pooled adapters on the targets. As for QLoRA, the
 * frozen weights are read as bf16 (loadHfModel's frozen default), so the
 * quantizer sees the bf16 base the LoRA rows train on. A GPTQ checkpoint
 * (quantization_config.quant_method "gptq") is not quantized again: its own
 * codes are the base (loadQaloraGptq below; embeddings and norms in f32). */
export function loadQaloraModel(dir: string, config: Partial<QaloraConfig> = {}, opts: QaloraLoadOptions = {}): { model: LlamaModel; result: QaloraPrepareResult } {
  const c = qaloraConfig(config);
  if (isGptqDir(dir)) return loadQaloraGptq(dir, c, opts);
  checkQuantizerInputs(c, opts);
  const model = c.quantizer === 'rtn'
    ? loadHfModel(dir, { trainable: false, linear: (name, w) => quantizeLinearIntN(name, w, c) })
    // the dense projections come through the factory as 'workspace' tensors: they
    // are temporaries of the quantization, so the frozen peak stays the INT-N base
    : loadHfModel(dir, { trainable: false, linear: (name, w) => new DenseLinear(name, w, null) });
  try {
    const gptq = c.quantizer === 'gptq' ? quantizeModelGptq(model, c, opts.calibration!) : undefined;
    return { model, result: result(model, c, applyAdapters(model, c, opts.adapterName ?? 'default'), gptq) };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/**
 * QA-LoRA on a GPTQ checkpoint (gptq.ts): the checkpoint's own codes, scales
 * and zero points are the INT-N base, nothing is quantized again. Bits must
 * match what the config asks (a different width would mean requantizing);
 * the group width is the checkpoint's (the adapters pool over it), and a
 * different groupSize asked for is noted, as are calibration rows (unused)
 * and projections the checkpoint left unquantized (RTN at its bits and groups).
 */
function loadQaloraGptq(dir: string, c: QaloraConfig, opts: QaloraLoadOptions): { model: LlamaModel; result: QaloraPrepareResult } {
  const g = loadGptqModel(dir);
  const { model, spec } = g;
  try {
    if (spec.bits !== c.bits) {
      throw new Error(`QA-LoRA: ${dir} is a GPTQ checkpoint of ${spec.bits}-bit codes (quantization_config.bits ${spec.bits}); INT${c.bits} was asked for. ` +
        `Train on its own codes with bits ${spec.bits} (--methods qalora${spec.bits}), or start from the unquantized model to quantize it to ${c.bits} bits`);
    }
    const notes = [...g.notes];
    if (g.groupSize !== c.groupSize) {
      notes.push(`groupSize ${c.groupSize} was asked for; the checkpoint's groups (group_size ${spec.groupSize}) give INT-N groups of ${g.groupSize} columns, so the adapters pool over ${g.groupSize}`);
    }
    if (opts.calibration !== undefined) notes.push('calibration rows not used: the codes come from the GPTQ checkpoint');
    if (c.quantizer === 'rtn') notes.push("quantizer 'rtn' was asked for; the checkpoint's GPTQ codes are used");
    const cc: QaloraConfig = { ...c, groupSize: g.groupSize, quantizer: 'gptq' };
    // projections the checkpoint stores dense: RTN to its bits and groups, so every target is INT-N
    for (const [name, l] of [...model.linears()]) {
      if (!(l instanceof DenseLinear)) continue;
      model.replaceLinear(name, intnLinear(name, l.weight.value, { ...cc, quantizer: 'rtn' }));
      l.dispose();
      notes.push(`${name}: unquantized in the checkpoint, quantized with RTN to INT${cc.bits} g${cc.groupSize}`);
    }
    const prep = applyAdapters(model, cc, opts.adapterName ?? 'default');
    return { model, result: { ...result(model, cc, prep), checkpoint: { kind: 'gptq', spec, notes } } };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** QA-LoRA on a frozen model in memory: its dense projections are quantized
 * (the dense weights freed), then pooled adapters are added. */
export function prepareQalora(model: LlamaModel, config: Partial<QaloraConfig> = {}, opts: QaloraLoadOptions = {}): QaloraPrepareResult {
  const c = qaloraConfig(config);
  const adapters = new Set(loraLayers(model).flatMap((l) => l.parameters()));
  const trainableBase = model.parameters().filter((p) => p.grad !== null && !adapters.has(p));
  if (trainableBase.length) throw new Error(`QA-LoRA: the base model must be frozen (build it with trainable: false); ${trainableBase[0].name} is trainable`);
  checkQuantizerInputs(c, opts);
  let gptq: { tokens: number; notes: Record<string, string> } | undefined;
  if (c.quantizer === 'gptq') {
    gptq = quantizeModelGptq(model, c, opts.calibration!);
  } else {
    for (const [name, layer] of model.linears()) {
      if (!(layer instanceof DenseLinear)) continue;
      if (layer.inFeatures % c.groupSize !== 0) throw new Error(`QA-LoRA: ${name} has ${layer.inFeatures} input features, not divisible by groupSize ${c.groupSize}`);
    }
    for (const [name, layer] of model.linears()) {
      if (!(layer instanceof DenseLinear)) continue;
      model.replaceLinear(name, quantizeLinearIntN(name, layer.weight.value, c));
    }
  }
  return result(model, c, applyAdapters(model, c, opts.adapterName ?? 'default'), gptq);
}

/** Exact bytes of every quantized base weight of the model. */
export function quantizedBytes(model: LlamaModel): number {
  let b = 0;
  for (const p of model.parameters()) if (p.quantized) b += p.quantized.bytes;
  return b;
}

/** The optimizer a QA-LoRA config asks for, as a Trainer factory. */
export function qaloraOptimizer(config: Partial<QaloraConfig> = {}): OptimizerFactory {
  return makeOptimizer(qaloraConfig(config).optimizer);
}

/**
 * Runs `fn` with every dense projection of the model replaced by its INT-N
 * quantization (RTN, or GPTQ on inputs captured from the dense model over
 * the calibration rows), then puts the dense layers back and frees the
 * quantized ones. For deployables such as a QLoRA adapter merged to bf16 and
 * then requantized to INT-N, set beside QA-LoRA's exact INT-N merge.
 */
export function withRequantizedIntN<T>(model: LlamaModel, c: Pick<QaloraConfig, 'bits' | 'groupSize' | 'quantizer'> & { damp?: number; calibration?: CalibrationRows },
                                       fn: (r: { layers: number; bytes: number }) => T): T {
  const cfg = qaloraConfig({ bits: c.bits, groupSize: c.groupSize, quantizer: c.quantizer, ...(c.damp !== undefined ? { damp: c.damp } : {}) });
  checkQuantizerInputs(cfg, { calibration: c.calibration });
  const dense = [...model.linears()].filter(([, l]) => l instanceof DenseLinear) as [string, DenseLinear][];
  if (dense.length === 0) throw new Error('withRequantizedIntN: the model has no dense projections (merge the adapters to bf16 first)');
  const inputs = cfg.quantizer === 'gptq' ? captureInputs(model, c.calibration!, dense.map(([n]) => n)).inputs : null;
  const made: [string, DenseLinear, IntNLinear][] = [];
  try {
    for (const [name, l] of dense) made.push([name, l, intnLinear(name, l.weight.value, cfg, inputs?.get(name))]);
  } catch (e) {
    for (const [, , q] of made) q.dispose();
    throw e;
  } finally {
    if (inputs) for (const X of inputs.values()) X.dispose();
  }
  try {
    let bytes = 0;
    for (const [name, , q] of made) { model.replaceLinear(name, q); bytes += q.weightBytes; }
    return fn({ layers: made.length, bytes });
  } finally {
    for (const [name, l, q] of made) { model.replaceLinear(name, l); q.dispose(); }
  }
}
