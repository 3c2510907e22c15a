// rope: rotary position embedding, Hugging Face rotate-half convention
// (LlamaRotaryEmbedding + apply_rotary_pos_emb), fp32 compute, on the CPU or
// CUDA (the tensors' device; the CUDA kernel takes head dims up to 1024).
//   x [B, T, H, D] f32 (D even, h = D/2), positions [B*T] or [B, T] i32 (the
//   position of each token, so a KV-cache decode can start at an offset)
//   inv_freq[i] = 1 / theta^(2i/D) (float32, as HF), angle = pos * inv_freq[i]
//     or `invFreq`, a table of h entries (the scaled variants, nn/rope_scaling.ts)
//   cos, sin of the angle, each times `attentionScale` (YaRN; default 1)
//   forward:  out[i] = x[i]*cos - x[i+h]*sin;  out[i+h] = x[i+h]*cos + x[i]*sin
//   backward: dout [B, T, H, D] -> dx [B, T, H, D], the transposed rotation, WRITTEN
// In place: pass `out: x` (or `dx: dout`) to rotate without a copy, e.g. q and k
// right after their projection. Any other overlap is not allowed.
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import type { Tensor } from '../tensor.js';
import { checkShape, checkTensorOn, fmtShape, outTensor, sameDevice } from './check.js';

type RopeFn = (x: NativeTensorHandle, positions: NativeTensorHandle, out: NativeTensorHandle,
               B: number, T: number, H: number, D: number, theta: number, mode?: number,
               invFreq?: Float32Array, attentionScale?: number) => void;

let fwd: RopeFn | undefined, bwd: RopeFn | undefined;
let invFreqFn: ((D: number, theta: number) => Float32Array) | undefined;

export interface RopeOptions {
  /** rope_theta (the base); default 10000, must be > 0 */
  theta?: number;
  /** the inverse frequencies themselves, D/2 finite float32 values, in place
   * of 1/theta^(2i/D) (theta is then unused); from ropeFrequencies (nn/rope_scaling.ts) */
  invFreq?: Float32Array;
  /** multiplies cos and sin, so q·k of two rotated vectors scales by its
   * square (YaRN's attention factor); default 1, must be > 0 */
  attentionScale?: number;
  /** where to write the result ([B, T, H, D] f32); may be the input itself (in place) */
  out?: Tensor;
  /** memory category of a newly allocated result (default activation) */
  category?: Category;
  /** @internal cos/sin strategy: 'table' (one entry per distinct position) or
   * 'token' (one row per token); default picks by the position range (tests, benchmarks) */
  mode?: 'auto' | 'table' | 'token';
}

const MODES = { auto: 0, table: 1, token: 2 } as const;

function prepare(op: string, inName: string, x: Tensor, positions: Tensor, opts: RopeOptions, outName: string) {
  checkTensorOn(op, inName, x, ['f32'], 4);
  const [B, T, H, D] = x.shape;
  if (D % 2 !== 0 || D === 0) {
    throw new RangeError(`${op}: head dim D (last axis of '${inName}' ${fmtShape(x.shape)}) must be even and positive, got ${D}`);
  }
  checkTensorOn(op, 'positions', positions, ['i32']);
  const device = sameDevice(op, { [inName]: x, positions });
  if (positions.shape.length === 1) checkShape(op, 'positions', positions, [B * T]);
  else if (positions.shape.length === 2) checkShape(op, 'positions', positions, [B, T]);
  else throw new RangeError(`${op}: 'positions' must have shape [B*T] = [${B * T}] or [B, T] = [${B}, ${T}], got ${fmtShape(positions.shape)}`);
  const theta = opts.theta ?? 10000;
  if (typeof theta !== 'number' || !Number.isFinite(theta) || theta <= 0) {
    throw new RangeError(`${op}: 'theta' must be a positive finite number, got ${theta}`);
  }
  const h = D / 2;
  if (opts.invFreq !== undefined) {
    const f = opts.invFreq;
    if (!(f instanceof Float32Array) || f.length !== h) {
      throw new RangeError(`${op}: 'invFreq' must be a Float32Array of D/2 = ${h} entries, got ${f instanceof Float32Array ? `${f.length} entries` : typeof f}`);
    }
    for (let i = 0; i < h; i++) if (!Number.isFinite(f[i])) throw new RangeError(`${op}: 'invFreq' entry ${i} is ${f[i]}, not finite`);
  }
  const attentionScale = opts.attentionScale ?? 1;
  if (typeof attentionScale !== 'number' || !Number.isFinite(attentionScale) || attentionScale <= 0) {
    throw new RangeError(`${op}: 'attentionScale' must be a positive finite number, got ${attentionScale}`);
  }
  const m = opts.mode ?? 'auto';
  const mode = Object.hasOwn(MODES, m) ? MODES[m] : undefined;
  if (mode === undefined) throw new RangeError(`${op}: 'mode' must be auto, table or token, got ${String(opts.mode)}`);
  const out = outTensor(op, outName, opts.out, [B, T, H, D], { category: opts.category, device });
  return { B, T, H, D, theta, mode, out, invFreq: opts.invFreq, attentionScale };
}

/** 1/theta^(2i/D) for i < D/2, float32, exactly as the rope kernels compute it
 * when given only theta (the base table every scaled variant starts from). */
export function ropeInvFreq(D: number, theta = 10000): Float32Array {
  if (!Number.isInteger(D) || D < 2 || D % 2 !== 0) throw new RangeError(`ropeInvFreq: head dim D must be an even positive integer, got ${D}`);
  if (typeof theta !== 'number' || !Number.isFinite(theta) || theta <= 0) throw new RangeError(`ropeInvFreq: 'theta' must be a positive finite number, got ${theta}`);
  invFreqFn ??= nativeFn<(D: number, theta: number) => Float32Array>('rope_inv_freq');
  return invFreqFn(D, theta);
}

/** x [B, T, H, D] f32, positions [B*T] i32 -> rotated [B, T, H, D] f32 (opts.out may be x) */
export function rope(x: Tensor, positions: Tensor, opts: RopeOptions = {}): Tensor {
  const { B, T, H, D, theta, mode, out, invFreq, attentionScale } = prepare('rope', 'x', x, positions, opts, 'out');
  fwd ??= nativeFn<RopeFn>('rope_forward');
  fwd(x.handle, positions.handle, out.handle, B, T, H, D, theta, mode, invFreq, attentionScale);
  return out;
}

/** dout [B, T, H, D] f32, positions [B*T] i32 -> dx [B, T, H, D] f32, written (opts.out may be dout) */
export function ropeBackward(dout: Tensor, positions: Tensor, opts: RopeOptions = {}): Tensor {
  const { B, T, H, D, theta, mode, out, invFreq, attentionScale } = prepare('ropeBackward', 'dout', dout, positions, opts, 'out');
  bwd ??= nativeFn<RopeFn>('rope_backward');
  bwd(dout.handle, positions.handle, out.handle, B, T, H, D, theta, mode, invFreq, attentionScale);
  return out;
}
