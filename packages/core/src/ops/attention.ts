// Causal multi-head attention with grouped-query heads (FlashAttention-2 style
// tiles: memory linear in T, no T x T buffer), on the CPU or CUDA (the
// tensors' device; the CUDA kernels take head dims up to 256).
//   q: [B, T, Hq, D], k and v: [B, T, Hkv, D], f32, Hq a multiple of Hkv.
//   Query head h reads kv head floor(h / (Hq / Hkv)) (HF repeat_kv order);
//   query t attends keys 0..t; scale defaults to 1/sqrt(D).
//   segments (optional) [B, T] i32: packed rows of several examples. Query t
//   attends key s iff s <= t and segments[b, s] == segments[b, t]. Segments
//   are contiguous runs with non-decreasing ids in each row (0 0 0 1 1 2 ...);
//   padding carries an id of its own. The kernel skips key tiles outside a
//   query tile's segments (see native/src/cpu/attention.cc for the convention
//   a device kernel shares).
//   window (optional, 0 = none): sliding-window attention (Mistral): query t
//   also needs t - s < window, i.e. it sees its last `window` positions,
//   itself included (transformers' sliding-window mask). The kernels fold it
//   into the segment bounds: start(t) = max(segment start, t - window + 1).
import type { Category } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import { Tensor } from '../tensor.js';
import type { Device } from '../dtype.js';
import { checkFinite, checkShape, checkTensorOn, fmtShape, outTensor, sameDevice } from './check.js';

type H = NativeTensorHandle;
type ForwardFn = (q: H, k: H, v: H, out: H, lse: H,
                  B: number, T: number, Hq: number, Hkv: number, D: number, scale: number, segments: H | null, window: number) => void;
type BackwardFn = (dout: H, q: H, k: H, v: H, out: H, lse: H, dq: H, dk: H, dv: H,
                   B: number, T: number, Hq: number, Hkv: number, D: number, scale: number, segments: H | null, window: number) => void;

// Looked up on first use, so importing the package works with an addon built
// without this op family.
let forwardFn: ForwardFn | null = null;
let backwardFn: BackwardFn | null = null;

export interface AttentionOptions {
  /** score scale; default 1 / sqrt(D) */
  scale?: number;
  /** [B, T] i32 segment ids (packed rows): attention stays inside a segment */
  segments?: Tensor;
  /** sliding window: a query sees its last `window` positions (itself
   * included); 0 or absent: every earlier position */
  window?: number;
  /** preallocated [B, T, Hq, D] output (overwritten) */
  out?: Tensor;
  /** preallocated [B, Hq, T] log-sum-exp output (overwritten) */
  lse?: Tensor;
  /** category of newly allocated outputs; default 'activation' */
  category?: Category;
}

export interface AttentionBackwardOptions {
  /** must equal the scale used in the forward pass; default 1 / sqrt(D) */
  scale?: number;
  /** the segment ids the forward pass used ([B, T] i32), if any */
  segments?: Tensor;
  /** the sliding window the forward pass used, if any */
  window?: number;
  /** preallocated gradients (overwritten, not accumulated) */
  dq?: Tensor;
  dk?: Tensor;
  dv?: Tensor;
  /** category of newly allocated gradients; default 'activation' */
  category?: Category;
}

interface Dims { B: number; T: number; Hq: number; Hkv: number; D: number; device: Device }

function checkQKV(op: string, q: unknown, k: unknown, v: unknown): Dims {
  const qt = checkTensorOn(op, 'q', q, ['f32'], 4);
  const kt = checkTensorOn(op, 'k', k, ['f32'], 4);
  const vt = checkTensorOn(op, 'v', v, ['f32'], 4);
  const device = sameDevice(op, { q: qt, k: kt, v: vt });
  const [B, T, Hq, D] = qt.shape;
  const Hkv = kt.shape[2];
  if (D === 0) throw new RangeError(`${op}: 'q' has shape ${fmtShape(qt.shape)}: head dim D must be positive`);
  if (Hq === 0) throw new RangeError(`${op}: 'q' has shape ${fmtShape(qt.shape)}: query heads Hq must be positive`);
  if (kt.shape[0] !== B || kt.shape[1] !== T || kt.shape[3] !== D) {
    throw new RangeError(`${op}: 'k' has shape ${fmtShape(kt.shape)}, expected [${B}, ${T}, Hkv, ${D}] (B, T and D of 'q' ${fmtShape(qt.shape)}; q is [B, T, Hq, D], k and v are [B, T, Hkv, D])`);
  }
  if (Hkv === 0) throw new RangeError(`${op}: 'k' has shape ${fmtShape(kt.shape)}: kv heads Hkv must be positive`);
  if (Hq % Hkv !== 0) {
    throw new RangeError(`${op}: query heads Hq = ${Hq} ('q' ${fmtShape(qt.shape)}) must be a multiple of kv heads Hkv = ${Hkv} ('k' ${fmtShape(kt.shape)})`);
  }
  checkShape(op, 'v', vt, kt.shape);
  return { B, T, Hq, Hkv, D, device };
}

/** Segment ids must be i32 [B, T], non-decreasing within each row (each
 * segment one contiguous run). Exported for callers that build batches.
 * Ids on a GPU are checked on a host copy (B * T ints; the copy waits for
 * the queued kernels). */
export function checkSegments(op: string, segments: unknown, B: number, T: number): Tensor {
  const st = checkTensorOn(op, 'segments', segments, ['i32'], 2);
  if (st.shape[0] !== B || st.shape[1] !== T) {
    throw new RangeError(`${op}: 'segments' has shape ${fmtShape(st.shape)}, expected [B, T] = [${B}, ${T}] (one segment id per token)`);
  }
  // the forward kernel compares positions as floats: exact below 2^24
  if (T >= 2 ** 24) throw new RangeError(`${op}: segments need T < 2^24, got T = ${T}`);
  const host = st.device === 'cpu' ? st : st.to('cpu');
  try {
    checkSortedRows(op, host.data() as Int32Array, B, T);
  } finally {
    if (host !== st) host.dispose();
  }
  return st;
}

function checkSortedRows(op: string, v: Int32Array, B: number, T: number): void {
  for (let b = 0; b < B; b++) {
    for (let t = b * T + 1; t < (b + 1) * T; t++) {
      if (v[t] < v[t - 1]) {
        throw new RangeError(`${op}: 'segments' must be non-decreasing within each row (segments are contiguous runs); row ${b} has id ${v[t]} at position ${t - b * T} after ${v[t - 1]} at position ${t - b * T - 1}`);
      }
    }
  }
}

/** A sliding window: 0 (none) or a positive integer below 2^30. */
function windowOf(op: string, window: number | undefined): number {
  if (window === undefined) return 0;
  if (typeof window !== 'number' || !Number.isInteger(window) || window < 0 || window >= 2 ** 30) {
    throw new RangeError(`${op}: window must be 0 (no sliding window) or a positive integer below 2^30, got ${String(window)}`);
  }
  return window;
}

function scaleOf(op: string, scale: number | undefined, D: number): number {
  if (scale === undefined) return 1 / Math.sqrt(D);
  checkFinite(op, 'scale', scale);
  return scale;
}

/** Outputs must not share memory with inputs or with each other: threads read
 * inputs while others write outputs. */
function checkDistinct(op: string, outputs: [string, Tensor][], inputs: [string, Tensor][]): void {
  const all = [...inputs, ...outputs];
  for (const [oname, o] of outputs) {
    for (const [iname, t] of all) {
      if (oname !== iname && o.handle === t.handle) throw new Error(`${op}: '${oname}' is the same tensor as '${iname}'; outputs must not alias other arguments`);
    }
  }
}

/** out = softmax(scale * q k^T + causal (and segment) mask) v per head; lse = the softmax
 * log-normaliser per query row, kept for attentionBackward. */
export function attentionForward(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): { out: Tensor; lse: Tensor } {
  // q: [B, T, Hq, D]  k, v: [B, T, Hkv, D]  ->  out: [B, T, Hq, D]  lse: [B, Hq, T]
  const op = 'attentionForward';
  const { B, T, Hq, Hkv, D, device } = checkQKV(op, q, k, v);
  const scale = scaleOf(op, opts.scale, D);
  const window = windowOf(op, opts.window);
  const segments = opts.segments === undefined ? null : checkSegments(op, opts.segments, B, T);
  if (segments) sameDevice(op, { q, segments });
  const category = opts.category ?? 'activation';
  const out = outTensor(op, 'out', opts.out, [B, T, Hq, D], { category, device });
  let lse: Tensor;
  try {
    lse = outTensor(op, 'lse', opts.lse, [B, Hq, T], { category, device });
    checkDistinct(op, [['out', out], ['lse', lse]], [['q', q], ['k', k], ['v', v]]);
  } catch (e) {
    if (opts.out === undefined) out.dispose();
    throw e;
  }
  forwardFn ??= nativeFn<ForwardFn>('attention_forward');
  forwardFn(q.handle, k.handle, v.handle, out.handle, lse.handle, B, T, Hq, Hkv, D, scale, segments?.handle ?? null, window);
  return { out, lse };
}

/** Gradients of attentionForward. dq, dk and dv are activation gradients:
 * written, not accumulated. With grouped heads, dk and dv of a kv head sum
 * the contributions of every query head in its group. */
export function attentionBackward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                  opts: AttentionBackwardOptions = {}): { dq: Tensor; dk: Tensor; dv: Tensor } {
  // dout, out: [B, T, Hq, D]  q: [B, T, Hq, D]  k, v: [B, T, Hkv, D]  lse: [B, Hq, T]
  //   ->  dq: [B, T, Hq, D]  dk, dv: [B, T, Hkv, D]
  const op = 'attentionBackward';
  const { B, T, Hq, Hkv, D, device } = checkQKV(op, q, k, v);
  checkShape(op, 'dout', checkTensorOn(op, 'dout', dout, ['f32'], 4), [B, T, Hq, D]);
  checkShape(op, 'out', checkTensorOn(op, 'out', out, ['f32'], 4), [B, T, Hq, D]);
  checkShape(op, 'lse', checkTensorOn(op, 'lse', lse, ['f32'], 3), [B, Hq, T]);
  sameDevice(op, { q, dout, out, lse });
  const scale = scaleOf(op, opts.scale, D);
  const window = windowOf(op, opts.window);
  const segments = opts.segments === undefined ? null : checkSegments(op, opts.segments, B, T);
  if (segments) sameDevice(op, { q, segments });
  const category = opts.category ?? 'activation';
  const made: Tensor[] = [];
  try {
    const dq = outTensor(op, 'dq', opts.dq, [B, T, Hq, D], { category, device });
    if (opts.dq === undefined) made.push(dq);
    const dk = outTensor(op, 'dk', opts.dk, [B, T, Hkv, D], { category, device });
    if (opts.dk === undefined) made.push(dk);
    const dv = outTensor(op, 'dv', opts.dv, [B, T, Hkv, D], { category, device });
    if (opts.dv === undefined) made.push(dv);
    checkDistinct(op, [['dq', dq], ['dk', dk], ['dv', dv]],
                  [['dout', dout], ['q', q], ['k', k], ['v', v], ['out', out], ['lse', lse]]);
    backwardFn ??= nativeFn<BackwardFn>('attention_backward');
    backwardFn(dout.handle, q.handle, k.handle, v.handle, out.handle, lse.handle, dq.handle, dk.handle, dv.handle,
               B, T, Hq, Hkv, D, scale, segments?.handle ?? null, window);
    return { dq, dk, dv };
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

type DecodeFn = (q: NativeTensorHandle, kc: NativeTensorHandle, vc: NativeTensorHandle, out: NativeTensorHandle,
                 B: number, Hq: number, Hkv: number, D: number, Tmax: number, L: number, scale: number, window: number) => void;
let decodeFn: DecodeFn | undefined;

/**
 * One new query per sequence attending over a KV cache (generation), on the
 * tensors' device.
 *   q [B, 1, Hq, D]; kCache, vCache [B, Tmax, Hkv, D] with positions 0..length-1
 *   filled (the new token's own key/value included) -> out [B, 1, Hq, D]
 *   window (0 or absent: none): only the last `window` cached positions
 *   (length - window .. length - 1) are attended, as attentionForward's window.
 */
export function attentionDecode(q: Tensor, kCache: Tensor, vCache: Tensor, length: number,
                                opts: { scale?: number; out?: Tensor; window?: number } = {}): Tensor {
  const op = 'attentionDecode';
  checkTensorOn(op, 'q', q, ['f32'], 4);
  checkTensorOn(op, 'kCache', kCache, ['f32'], 4);
  checkTensorOn(op, 'vCache', vCache, ['f32'], 4);
  const device = sameDevice(op, { q, kCache, vCache });
  const [B, one, Hq, D] = q.shape, [Bk, Tmax, Hkv, Dk] = kCache.shape;
  if (one !== 1) throw new RangeError(`${op}: q must hold one position per sequence, got [${q.shape.join(', ')}]`);
  if (Bk !== B || Dk !== D) throw new RangeError(`${op}: kCache [${kCache.shape.join(', ')}] does not fit q [${q.shape.join(', ')}]`);
  checkShape(op, 'vCache', vCache, kCache.shape);
  if (Hq % Hkv !== 0) throw new RangeError(`${op}: ${Hq} query heads are not a multiple of ${Hkv} kv heads`);
  if (!Number.isInteger(length) || length < 1 || length > Tmax) throw new RangeError(`${op}: length ${length} must be in [1, ${Tmax}]`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const window = windowOf(op, opts.window);
  const out = outTensor(op, 'out', opts.out, q.shape, { category: 'activation', device });
  decodeFn ??= nativeFn<DecodeFn>('attention_decode');
  decodeFn(q.handle, kCache.handle, vCache.handle, out.handle, B, Hq, Hkv, D, Tmax, length, scale, window);
  return out;
}
