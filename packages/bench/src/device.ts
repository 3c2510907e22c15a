// The bench's side of the device: moving a prepared model to the run's
// device, the memory a run may still use there, and models with random
// weights at published shapes (speed and memory rows; no accuracy).
import { freemem } from 'node:os';
import { type Device, type LlamaConfig, LlamaModel, Tensor, memory, modelTensorShapes } from '@tunebench/core';

/** LlamaModel as the bench uses it: `to(device)` moves every weight,
 * adapter, gradient and quantized buffer to the device (core's model).
 * Typed as optional here so that the bench says clearly when the core it
 * runs on cannot move models yet. */
type Movable = { to?: (device: Device) => unknown; device?: Device };

/** Moves a model (and everything it owns) to `device`; nothing to do for a
 * model already there. */
export function moveModel(model: LlamaModel, device: Device): void {
  const m = model as unknown as Movable;
  const at = m.device ?? model.parameters()[0]?.value.device ?? 'cpu';
  if (at === device) return;
  if (typeof m.to !== 'function') throw new Error(`this build cannot move models to ${device} yet (LlamaModel.to is missing)`);
  m.to(device);
}

/** Bytes a run may still allocate on `device`: on CUDA the driver's free
 * bytes plus what the caching pool holds unused (after emptyCache that is
 * nearly nothing); on the CPU the system's free memory (os.freemem). */
export function availableBytes(device: Device): number {
  if (device === 'cpu') return freemem();
  const s = memory.snapshot().cuda;
  const pooled = Math.max(0, (s.reservedBytes ?? 0) - s.liveTotal);
  return (s.deviceFreeBytes ?? 0) + pooled;
}

/** A model with random weights at a config's shapes, for speed and memory
 * rows only: matrices ~ N(0, 0.02^2) drawn once into a pool of 2^22 values
 * that every tensor copies from at pseudo-random offsets (initialising a 7B
 * model element by element would take minutes; the values only have to be
 * finite and of the right size), norm weights 1. Deterministic for a seed.
 * Trainable: f32 weights with gradients (full fine-tuning); else frozen bf16
 * (the adapter methods' base). */
export function randomModel(config: LlamaConfig, o: { trainable: boolean; seed?: number; scale?: (name: string, shape: readonly number[]) => number }): LlamaModel {
  const POOL = 1 << 22;
  let state = (o.seed ?? 0) * 2654435761 + 12345 >>> 0;
  const next = () => { state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0; return state / 4294967296; };
  const pool = new Float32Array(POOL);
  for (let i = 0; i < POOL; i += 2) {
    // Box-Muller: two normals per pair of uniforms
    const u = Math.max(next(), 1e-12), v = next(), r = Math.sqrt(-2 * Math.log(u)) * 0.02;
    pool[i] = r * Math.cos(2 * Math.PI * v);
    pool[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  const dtype = o.trainable ? 'f32' : 'bf16', category = o.trainable ? 'trainable' : 'frozen';
  const tensors = new Map<string, Tensor>();
  try {
    for (const [name, shape] of modelTensorShapes(config)) {
      const n = shape.reduce((a, b) => a * b, 1);
      const vals = new Float32Array(n);
      if (shape.length === 1) vals.fill(name.endsWith('.bias') ? 0 : 1);  // norms 1, biases 0
      else {
        for (let at = 0; at < n;) {
          const from = Math.floor(next() * (POOL / 2));
          const k = Math.min(n - at, POOL - from);
          vals.set(pool.subarray(from, from + k), at);
          at += k;
        }
      }
      // o.scale: a tensor's values times this factor (its std 0.02 x factor)
      const f = shape.length === 1 ? 1 : o.scale?.(name, shape) ?? 1;
      if (f !== 1) for (let i = 0; i < n; i++) vals[i] *= f;
      tensors.set(name, Tensor.from(vals, shape, { dtype, category }));
    }
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  }
  return LlamaModel.fromTensors(config, tensors, { trainable: o.trainable });
}
