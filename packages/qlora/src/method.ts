// The QLoRA method: quantize the frozen base's linear layers to NF4/FP4
// (while loading, so the dense base is never whole in memory) and put LoRA
// adapters on top. The adapter is @tunebench/lora's LoraLinear over a
// Quant4Linear base: the fused LoRA kernels dequantize the base while packing.
import {
  type LinearFactory, type LinearLayer, type LlamaModel, type Optimizer, type OptimizerFactory, type Parameter,
  DenseLinear, Quant4Linear, Tensor, copyInto, loadHfModel, makeOptimizer, moveQuantized, quantize4bit,
} from '@tunebench/core';
import { LoraLinear, type PrepareResult, countParameters, loraLayers, resolveTargets, wrap } from '@tunebench/lora';
import { type QloraConfig, adapterConfig, qloraConfig } from './config.js';
import { loftq } from './loftq.js';

/** Quantizes one frozen weight [out, in] into a Quant4Linear; frees the dense weight. */
export function quantizeLinear(name: string, weight: Tensor, c: Pick<QloraConfig, 'format' | 'blockSize' | 'doubleQuant'>): Quant4Linear {
  try {
    const q = quantize4bit(weight, { format: c.format, blockSize: c.blockSize, doubleQuant: c.doubleQuant });
    return new Quant4Linear(name, q);
  } catch (e) {
    throw new Error(`QLoRA: cannot quantize ${name}: ${(e as Error).message}`);
  } finally {
    weight.dispose();
  }
}

/** Whether a module name is selected by LoRA targets (the rule of resolveTargets). */
function isTarget(name: string, targets: QloraConfig['targets']): boolean {
  if (targets === 'all-linear') return true;
  if (targets instanceof RegExp) return targets.test(name);
  return targets.some((t) => name === t || name.endsWith(`.${t}`));
}

interface LoftqInit { A: Float32Array; B: Float32Array; errorBefore: number; errorAfter: number }

/** t = values (f32, same count) on t's device. */
function setValues(t: Tensor, values: Float32Array): void {
  if (t.device === 'cpu') { (t.data() as Float32Array).set(values); return; }
  const h = Tensor.from(values, t.shape, { category: 'workspace' });
  try { copyInto(t, h); } finally { h.dispose(); }
}

/** A factory for LlamaModel.fromTensors / loadHfModel that quantizes each
 * projection as it is read. With init 'loftq', targeted projections are
 * quantized by LoftQ and their adapter initial values kept in `loftqInit`. */
export function quantizingFactory(config: Partial<QloraConfig>, loftqInit?: Map<string, LoftqInit>): LinearFactory {
  const c = qloraConfig(config);
  const scale = c.rslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
  return (name, weight) => {
    if (c.init !== 'loftq' || !isTarget(name, c.targets)) return quantizeLinear(name, weight, c);
    try {
      // LoftQ runs on the CPU (from a host copy of a weight elsewhere); the result goes to the weight's device
      const res = loftq(weight, { format: c.format, blockSize: c.blockSize, doubleQuant: c.doubleQuant, r: c.r, scale, iters: c.loftqIters, seed: c.seed });
      loftqInit?.set(name, { A: res.A, B: res.B, errorBefore: res.errorBefore, errorAfter: res.errorAfter });
      return new Quant4Linear(name, moveQuantized(res.quantized, weight.device) as typeof res.quantized);
    } finally {
      weight.dispose();
    }
  };
}

export interface QloraPrepareResult extends PrepareResult {
  /** exact bytes of the quantized base weights (codes + constants) */
  quantizedBytes: number;
  /** with LoftQ: summed ||W - deq(Q)||_F and ||W - deq(Q) - s·B·A||_F over the adapted layers */
  loftq?: { errorBefore: number; errorAfter: number };
}

function applyAdapters(model: LlamaModel, c: QloraConfig, adapterName: string, loftqInit: Map<string, LoftqInit> | null): QloraPrepareResult {
  const lc = adapterConfig(c);
  const targets = resolveTargets(model, lc.targets);
  const layers = model.linears();
  let before = 0, after = 0;
  for (const name of targets) {
    const layer = layers.get(name)!;
    const lora = layer instanceof LoraLinear ? layer : wrap(layer, lc.seed);
    const a = lora.addAdapter(adapterName, lc);
    if (lora !== layer) model.replaceLinear(name, lora);
    const init = loftqInit?.get(name);
    if (init) {
      setValues(a.A.value, init.A);
      setValues(a.B.value, init.B);
      before += init.errorBefore ** 2;
      after += init.errorAfter ** 2;
    }
  }
  return {
    targets, ...countParameters(model.parameters()), quantizedBytes: quantizedBytes(model),
    ...(loftqInit ? { loftq: { errorBefore: Math.sqrt(before), errorAfter: Math.sqrt(after) } } : {}),
  };
}

/** Loads a LlamaForCausalLM directory as a QLoRA model: each projection
 * quantized as it is read, adapters on the targets. */
export function loadQloraModel(dir: string, config: Partial<QloraConfig> = {}, adapterName = 'default'): { model: LlamaModel; result: QloraPrepareResult } {
  const c = qloraConfig(config);
  const loftqInit = c.init === 'loftq' ? new Map<string, LoftqInit>() : null;
  const model = loadHfModel(dir, { trainable: false, linear: quantizingFactory(c, loftqInit ?? undefined) });
  try {
    return { model, result: applyAdapters(model, c, adapterName, loftqInit) };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** QLoRA on a model already in memory: its frozen dense projections are
 * quantized in place (the dense weights freed), then adapters are added. */
export function prepareQlora(model: LlamaModel, config: Partial<QloraConfig> = {}, adapterName = 'default'): QloraPrepareResult {
  const c = qloraConfig(config);
  const trainableBase = model.parameters().filter((p) => p.grad !== null && !loraLayers(model).some((l) => l.parameters().includes(p)));
  if (trainableBase.length) throw new Error(`QLoRA: the base model must be frozen (build it with trainable: false); ${trainableBase[0].name} is trainable`);
  const loftqInit = c.init === 'loftq' ? new Map<string, LoftqInit>() : null;
  if (loftqInit && ![...model.linears().values()].some((l) => l instanceof DenseLinear)) {
    throw new Error("QLoRA: init 'loftq' needs the dense weights, and this model's projections are quantized already; load the base with loadQloraModel (or quantizingFactory) and init 'loftq' instead");
  }
  const factory = quantizingFactory(c, loftqInit ?? undefined);
  for (const [name, layer] of model.linears()) {
    if (!(layer instanceof DenseLinear)) continue;
    model.replaceLinear(name, factory(name, layer.weight.value));
  }
  return applyAdapters(model, c, adapterName, loftqInit);
}

/** Exact bytes of every quantized base weight of the model. */
export function quantizedBytes(model: LlamaModel): number {
  let b = 0;
  for (const p of model.parameters()) if (p.quantized) b += p.quantized.bytes;
  return b;
}

/** The optimizer a QLoRA config asks for, as a Trainer factory. */
export function qloraOptimizer(config: Partial<QloraConfig> = {}): OptimizerFactory {
  return makeOptimizer(qloraConfig(config).optimizer);
}

export type { LinearLayer, Optimizer, Parameter };
