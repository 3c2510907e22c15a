// Group-wise INT-N quantization of frozen weights (QA-LoRA's base; native
// layout and kernels in native/src/intn.h and cpu/intn.cc):
//
//   W [out, in]; each row is cut into groups of L consecutive input columns,
//   N in {2, 3, 4, 8}, L in {16, 32, 64, 128}, in % L == 0; per (o, g):
//     W[o, i] = scale[o, g] * q[o, i] + offset[o, g],   q in [0, 2^N - 1]
//   RTN (asymmetric min-max): offset = min of the group, scale = (max - min) / (2^N - 1),
//     q = round((w - offset) / scale) clamped (ties to even).
//   GPTQ: the same grid, but columns are quantized left to right and each
//     column's error is pushed onto the columns not yet quantized, weighted by
//     the inverse Hessian of the layer's output error on calibration inputs.
//
//   codes: one row-major bit stream, LSB first: code e occupies stream bits
//   [e*N, e*N + N), stream bit b is bit (b % 8) of byte floor(b / 8), the
//   code's least significant bit first. 3-bit codes cross byte boundaries.
//
// Scale and offset are floats, not an integer zero point: QA-LoRA's merge adds
// a per-group constant to the offsets (addToOffsets), which must stay exact.
//
// The GEMM (ops/gemm.ts) and the fused LoRA ops take a QuantizedIntN as their
// weight operand and dequantize while packing (or, for 1..16 rows of x W^T,
// in registers in the decode GEMV, native/src/cpu/decode_gemv.cc): no dense copy is made.
// RTN quantization and dequantization run on the weight's device (CPU or
// CUDA, cuda/intn.cu); GPTQ runs on the CPU (from host copies).
import { type Category, type Device, f16ToF32, f32ToF16 } from '../dtype.js';
import { native, nativeFn, type NativeTensorHandle } from '../native.js';
import { Tensor, copyInto } from '../tensor.js';

export type IntNBits = 2 | 3 | 4 | 8;
export type IntNGroupSize = 16 | 32 | 64 | 128;
export type IntNQuantizer = 'rtn' | 'gptq';

export const INTN_BITS: readonly IntNBits[] = [2, 3, 4, 8];
export const INTN_GROUP_SIZES: readonly IntNGroupSize[] = [16, 32, 64, 128];
/** GPTQ's default damping: this fraction of H's mean diagonal is added to its diagonal. */
export const GPTQ_DEFAULT_DAMP = 0.01;

/** How GPTQ went: the damping it ended with and how many factorisations it tried. */
export interface GptqInfo {
  /** relative damping used (fraction of H's mean diagonal) */
  damp: number;
  /** the absolute value added to H's diagonal */
  lambda: number;
  /** Cholesky attempts (1 unless H needed more damping) */
  tries: number;
}

/** A frozen weight stored as group-wise INT-N codes (the kernels' quantized operand). */
export interface QuantizedIntN {
  readonly kind: 'intn';
  bits: IntNBits;
  groupSize: IntNGroupSize;
  /** logical shape [out, in] */
  shape: [number, number];
  /** out * in */
  numel: number;
  /** u8 [ceil(numel * bits / 8)]: the row-major, LSB-first bit stream */
  codes: Tensor;
  /** f32 [out, in / groupSize] */
  scales: Tensor;
  /** f32 [out, in / groupSize] */
  offsets: Tensor;
  quantizer: IntNQuantizer;
  /** exact bytes held: codes, scales and offsets (intnBytes) */
  bytes: number;
  /** GPTQ only */
  gptq?: GptqInfo;
  /** set when quantization had to depart from what was asked (extra damping, an all-zero calibration) */
  note?: string;
}

export interface QuantizeIntNOptions {
  bits: IntNBits;
  groupSize: IntNGroupSize;
  /** 'rtn' (default) or 'gptq' (needs calibration) */
  quantizer?: IntNQuantizer;
  /** GPTQ's calibration inputs X [n, in], f32: the inputs this layer sees */
  calibration?: Tensor;
  /** GPTQ's damping as a fraction of H's mean diagonal (default 0.01) */
  damp?: number;
  /** memory category of the result (default 'frozen') */
  category?: Category;
  /** 'f32' (default), or 'f16' (RTN on the CPU only): each group's scale and
   * offset rounded to an fp16 value before its codes are rounded against them,
   * so that fp16 storage of the constants (GGUF Q4_1, intnConstants16) is exact */
  constants?: 'f32' | 'f16';
}

function checkBits(op: string, bits: unknown): asserts bits is IntNBits {
  if (!INTN_BITS.includes(bits as IntNBits)) throw new RangeError(`${op}: bits must be one of ${INTN_BITS.join(', ')}, got ${JSON.stringify(bits)}`);
}

function checkGroupSize(op: string, groupSize: unknown): asserts groupSize is IntNGroupSize {
  if (!INTN_GROUP_SIZES.includes(groupSize as IntNGroupSize)) {
    throw new RangeError(`${op}: groupSize must be one of ${INTN_GROUP_SIZES.join(', ')}, got ${JSON.stringify(groupSize)}`);
  }
}

function checkShape(op: string, shape: readonly number[], groupSize: number): void {
  if (shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new RangeError(`${op}: the weight must be 2-D [out, in] with positive sizes, got [${shape.join(', ')}]`);
  }
  if (shape[1] % groupSize !== 0) {
    throw new RangeError(`${op}: in (${shape[1]} columns) is not divisible by groupSize ${groupSize}; groups never straddle rows`);
  }
}

/** Exact bytes of an INT-N weight [out, in]: the packed codes, ceil(out*in*bits/8),
 * plus an f32 scale and an f32 offset per group (8 * out * in / groupSize). */
export function intnBytes(shape: readonly [number, number] | readonly number[], bits: IntNBits, groupSize: IntNGroupSize): number {
  const op = 'intnBytes';
  checkBits(op, bits);
  checkGroupSize(op, groupSize);
  checkShape(op, shape, groupSize);
  const numel = shape[0] * shape[1];
  return Math.ceil((numel * bits) / 8) + 8 * (numel / groupSize);
}

type RtnFn = (w: NativeTensorHandle, rows: number, cols: number, bits: number, group: number,
  codes: NativeTensorHandle, scales: NativeTensorHandle, offsets: NativeTensorHandle, f16Constants?: boolean) => number;
type GptqFn = (w: NativeTensorHandle, rows: number, cols: number, h: NativeTensorHandle, bits: number, group: number, damp: number,
  codes: NativeTensorHandle, scales: NativeTensorHandle, offsets: NativeTensorHandle) =>
  { bad: number; damp?: number; lambda?: number; tries?: number; zeroH?: boolean };

/**
 * Quantizes W [out, in] (f32 or bf16) to group-wise INT-N.
 *   rtn:  per-group asymmetric min-max, round to nearest.
 *   gptq: H = 2 XᵀX / n from calibration X [n, in], plus damp · mean(diag H)
 *         on the diagonal; then GPTQ's column-by-column error compensation
 *         (blocks of 128 columns, no act-order). If H + damping is not
 *         positive definite the damping is multiplied by 10 and retried, and
 *         `note` says so.
 */
export function quantizeIntN(w: Tensor, opts: QuantizeIntNOptions): QuantizedIntN {
  const op = 'quantizeIntN';
  if (!(w instanceof Tensor)) throw new TypeError(`${op}: w must be a Tensor`);
  if (w.disposed) throw new Error(`${op}: w was disposed`);
  if (w.dtype !== 'f32' && w.dtype !== 'bf16') throw new TypeError(`${op}: w must be f32 or bf16, got ${w.dtype}`);
  if (typeof opts !== 'object' || opts === null) throw new TypeError(`${op}: options { bits, groupSize } are required`);
  const { bits, groupSize } = opts;
  checkBits(op, bits);
  checkGroupSize(op, groupSize);
  checkShape(op, w.shape, groupSize);
  const quantizer = opts.quantizer ?? 'rtn';
  if (quantizer !== 'rtn' && quantizer !== 'gptq') throw new RangeError(`${op}: quantizer must be 'rtn' or 'gptq', got ${JSON.stringify(quantizer)}`);
  const [rows, cols] = w.shape;
  const X = opts.calibration;
  if (quantizer === 'rtn') {
    if (X !== undefined) throw new Error(`${op}: calibration inputs are only used by quantizer 'gptq' (got quantizer 'rtn')`);
    if (opts.damp !== undefined) throw new Error(`${op}: damp is only used by quantizer 'gptq' (got quantizer 'rtn')`);
  } else {
    if (X === undefined) throw new Error(`${op}: quantizer 'gptq' needs calibration inputs X [n, ${cols}]`);
    if (!(X instanceof Tensor)) throw new TypeError(`${op}: calibration must be a Tensor [n, ${cols}]`);
    if (X.disposed) throw new Error(`${op}: calibration was disposed`);
    if (X.dtype !== 'f32') throw new TypeError(`${op}: calibration must be f32, got ${X.dtype}`);
    if (X.shape.length !== 2 || X.shape[1] !== cols || X.shape[0] < 1) {
      throw new RangeError(`${op}: calibration must be [n, ${cols}] with n >= 1 (the layer's inputs), got [${X.shape.join(', ')}]`);
    }
  }
  const constants = opts.constants ?? 'f32';
  if (constants !== 'f32' && constants !== 'f16') throw new RangeError(`${op}: constants must be 'f32' or 'f16', got ${JSON.stringify(constants)}`);
  if (constants === 'f16' && quantizer !== 'rtn') throw new Error(`${op}: constants 'f16' is an RTN option (got quantizer '${quantizer}')`);
  if (constants === 'f16' && w.device !== 'cpu') throw new Error(`${op}: constants 'f16' quantizes on the CPU; move the weight there first (Tensor.to('cpu'))`);
  const damp = opts.damp ?? GPTQ_DEFAULT_DAMP;
  if (typeof damp !== 'number' || !Number.isFinite(damp) || damp < 0) throw new RangeError(`${op}: damp must be a finite number >= 0, got ${damp}`);
  const category = opts.category ?? 'frozen';
  if (quantizer === 'gptq' && (w.device !== 'cpu' || (X !== undefined && X.device !== 'cpu'))) {
    // GPTQ runs on the CPU: a weight elsewhere is quantized from a host copy,
    // and the result goes back to the weight's device (RTN runs where w is)
    const hw = w.to('cpu', { category: 'workspace' });
    const hx = X !== undefined && X.device !== 'cpu' ? X.to('cpu', { category: 'workspace' }) : X;
    try {
      return moveIntN(quantizeIntN(hw, { ...opts, calibration: hx }), w.device);
    } finally {
      hw.dispose();
      if (hx !== X) hx?.dispose();
    }
  }
  const numel = rows * cols;
  const device = w.device;
  const codes = Tensor.zeros([Math.ceil((numel * bits) / 8)], { dtype: 'u8', category, device });
  const scales = Tensor.zeros([rows, cols / groupSize], { category, device });
  const offsets = Tensor.zeros([rows, cols / groupSize], { category, device });
  const base = { kind: 'intn' as const, bits, groupSize, shape: [rows, cols] as [number, number], numel, codes, scales, offsets, quantizer,
    bytes: intnBytes([rows, cols], bits, groupSize) };
  const refuse = (bad: number) => new RangeError(
    `${op}: the weight holds ${bad} NaN or infinite value(s), or groups whose range overflows float32; refusing to quantize it`);
  try {
    if (quantizer === 'rtn') {
      const bad = nativeFn<RtnFn>('intn_quantize')(w.handle, rows, cols, bits, groupSize, codes.handle, scales.handle, offsets.handle, constants === 'f16');
      if (bad > 0) throw refuse(bad);
      return base;
    }
    // H = 2 XᵀX / n: the Hessian of the layer's squared output error ||X Wᵀ - X Ŵᵀ||² / n in each row of W
    const n = X!.shape[0];
    const H = Tensor.zeros([cols, cols], { category: 'workspace' });
    native.gemm(true, false, cols, cols, n, 2 / n, X!.handle, cols, X!.handle, cols, 0, H.handle, cols);
    let res: ReturnType<GptqFn>;
    try {
      res = nativeFn<GptqFn>('intn_gptq')(w.handle, rows, cols, H.handle, bits, groupSize, damp, codes.handle, scales.handle, offsets.handle);
    } catch (e) {
      throw new Error(`${op}: ${(e as Error).message.replace(/^intn_gptq: /, '')}`);
    } finally {
      H.dispose();
    }
    if (res.bad > 0) throw refuse(res.bad);
    const notes: string[] = [];
    if (res.zeroH) notes.push('the calibration inputs are all zero (H = 0): identity used for H, so GPTQ gave the RTN result');
    else if (res.tries! > 1) notes.push(`H + ${damp} * mean(diag H) was not positive definite; damping raised to ${res.damp} after ${res.tries} tries`);
    return { ...base, gptq: { damp: res.damp!, lambda: res.lambda!, tries: res.tries! }, ...(notes.length ? { note: notes.join('; ') } : {}) };
  } catch (e) {
    codes.dispose();
    scales.dispose();
    offsets.dispose();
    throw e;
  }
}

/** Throws a clear error when an INT-N weight is disposed or inconsistent. */
export function checkIntN(op: string, name: string, q: QuantizedIntN): void {
  if (typeof q !== 'object' || q === null || q.kind !== 'intn') throw new TypeError(`${op}: '${name}' is not an INT-N weight`);
  for (const [k, t] of [['codes', q.codes], ['scales', q.scales], ['offsets', q.offsets]] as const) {
    if (!(t instanceof Tensor)) throw new TypeError(`${op}: INT-N '${name}': ${k} is not a Tensor`);
    if (t.disposed) throw new Error(`${op}: INT-N '${name}' was disposed`);
  }
  checkBits(`${op}: INT-N '${name}'`, q.bits);
  checkGroupSize(`${op}: INT-N '${name}'`, q.groupSize);
  checkShape(`${op}: INT-N '${name}'`, q.shape, q.groupSize);
  const [rows, cols] = q.shape, numel = rows * cols, groups = numel / q.groupSize;
  const sizes: [string, number, number, string, string][] = [
    ['values', q.numel, numel, '', ''],
    ['codes', q.codes.numel, Math.ceil((numel * q.bits) / 8), q.codes.dtype, 'u8'],
    ['scales', q.scales.numel, groups, q.scales.dtype, 'f32'],
    ['offsets', q.offsets.numel, groups, q.offsets.dtype, 'f32'],
  ];
  for (const [what, got, want, dt, wantDt] of sizes) {
    if (dt !== wantDt) throw new TypeError(`${op}: INT-N '${name}': ${what} must be ${wantDt}, got ${dt}`);
    if (got !== want) {
      throw new RangeError(`${op}: INT-N '${name}' is [${rows}, ${cols}] (${q.bits}-bit, groupSize ${q.groupSize}) but holds ${got} ${what}, needs ${want}`);
    }
  }
}

/** The operand object the native bindings take for an INT-N weight (native/src/operand.h).
 * With `constants` (from intnConstants16, built from this weight's current
 * scales and offsets), the CPU decode GEMV reads those fp16 copies instead. */
export function intnNativeOperand(q: QuantizedIntN, constants?: IntNConstants16): object {
  return {
    kind: 'intn', rows: q.shape[0], cols: q.shape[1], bits: q.bits, groupSize: q.groupSize,
    codes: q.codes.handle, scales: q.scales.handle, offsets: q.offsets.handle,
    ...(constants ? { constants16: constants.tensor.handle, zero16: constants.zero ?? undefined } : {}),
  };
}

/** fp16 copies of an INT-N weight's group constants (see intnConstants16). */
export interface IntNConstants16 {
  /** u8: the scales as fp16, then (unless `zero` is set) the offsets as fp16 */
  tensor: Tensor;
  /** set when every offset is -zero * scale: no offsets are stored */
  zero: number | null;
}

/**
 * The group constants of `q` in fp16 for the CPU decode GEMV, or null when
 * some scale (or offset, unless every offset is -z * scale for one z) does
 * not convert to fp16 exactly. The copies hold the same values, so results
 * do not change; a decode token reads 2 (or 4) bytes per group instead of 8
 * (INT8 groups of 32 on Q8_0's grid: 1.06 instead of 1.25 bytes per weight).
 * They are a snapshot: build them again after the weight's scales or offsets
 * change (merging an adapter does), and dispose the tensor when done.
 */
export function intnConstants16(q: QuantizedIntN, opts: { category?: Category } = {}): IntNConstants16 | null {
  checkIntN('intnConstants16', 'q', q);
  if (q.scales.device !== 'cpu') return null;
  const groups = q.scales.numel;
  // most weights have f32 scales: look at the first before allocating anything
  const s0 = (q.scales.data() as Float32Array)[0];
  if (groups === 0 || f16ToF32(f32ToF16(s0)) !== s0 || !Number.isFinite(s0)) return null;
  const t = Tensor.zeros([4 * groups], { dtype: 'u8', category: opts.category ?? 'frozen' });
  const r = nativeFn<(s: NativeTensorHandle, o: NativeTensorHandle, out: NativeTensorHandle) => { exact: boolean; symmetric: boolean; zero: number }>(
    'intn_constants16')(q.scales.handle, q.offsets.handle, t.handle);
  if (!r.exact) { t.dispose(); return null; }
  if (!r.symmetric) return { tensor: t, zero: null };
  // scales only: keep the first half
  const half = Tensor.zeros([2 * groups], { dtype: 'u8', category: opts.category ?? 'frozen' });
  (half.data() as Uint8Array).set((t.data() as Uint8Array).subarray(0, 2 * groups));
  t.dispose();
  return { tensor: half, zero: r.zero };
}

/** The weight as a new f32 tensor [out, in] (merging, export, tests; the kernels never need it). */
export function dequantizeIntN(q: QuantizedIntN, opts: { category?: Category } = {}): Tensor {
  checkIntN('dequantizeIntN', 'q', q);
  const out = Tensor.zeros(q.shape, { category: opts.category ?? 'workspace', device: q.codes.device });
  nativeFn<(w: object, r: number, c: number, out: NativeTensorHandle) => void>('intn_dequantize')(intnNativeOperand(q), q.shape[0], q.shape[1], out.handle);
  return out;
}

/**
 * offsets[o, g] += delta[o, g] (in f32), codes and scales unchanged: every
 * weight of group (o, g) moves by delta[o, g]. This is how QA-LoRA merges its
 * adapter: its input is average-pooled per group, so its product is constant
 * across a group's columns and folds into the group's offset.
 * delta: Float32Array [out * in / groupSize], row-major like offsets.
 */
export function addToOffsets(q: QuantizedIntN, delta: Float32Array): void {
  const op = 'addToOffsets';
  checkIntN(op, 'q', q);
  if (!(delta instanceof Float32Array)) throw new TypeError(`${op}: delta must be a Float32Array [out * in / groupSize]`);
  const n = q.offsets.numel;
  if (delta.length !== n) {
    throw new RangeError(`${op}: delta has ${delta.length} values, the weight [${q.shape.join(', ')}] with groupSize ${q.groupSize} has ${n} groups`);
  }
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(delta[i])) throw new RangeError(`${op}: delta[${i}] is ${delta[i]}; refusing a non-finite offset`);
  }
  if (q.offsets.device !== 'cpu') {
    // the same f32 additions on a host copy, copied back
    const host = q.offsets.to('cpu', { category: 'workspace' });
    try {
      const off = host.data() as Float32Array;
      for (let i = 0; i < n; i++) off[i] += delta[i];
      copyInto(q.offsets, host);
    } finally {
      host.dispose();
    }
    return;
  }
  const off = q.offsets.data() as Float32Array;
  for (let i = 0; i < n; i++) off[i] += delta[i];  // stored with one f32 rounding
}

/** Moves an INT-N weight's codes, scales and offsets to `device` (copies
 * there, the old tensors disposed; nothing done when already there). Returns q. */
export function moveIntN(q: QuantizedIntN, device: Device): QuantizedIntN {
  q.codes = q.codes.moveTo(device);
  q.scales = q.scales.moveTo(device);
  q.offsets = q.offsets.moveTo(device);
  return q;
}

/** y [m, out] = x [m, in] · deq(W)ᵀ through the decode GEMV (m <= 16):
 * codes expanded to floats in registers, threads over output rows.
 * matmul uses the same kernel for x Wᵀ with m <= 16; this entry point is for tests. */
export function intnDecode(x: Tensor, q: QuantizedIntN, opts: { category?: Category } = {}): Tensor {
  const op = 'intnDecode';
  checkIntN(op, 'W', q);
  if (!(x instanceof Tensor) || x.disposed) throw new TypeError(`${op}: x must be a live Tensor`);
  if (x.dtype !== 'f32') throw new TypeError(`${op}: x must be f32, got ${x.dtype}`);
  const [out, inF] = q.shape;
  if (x.shape.length !== 2 || x.shape[1] !== inF || x.shape[0] < 1 || x.shape[0] > 16) {
    throw new RangeError(`${op}: x must be [m, ${inF}] with 1 <= m <= 16, got [${x.shape.join(', ')}]`);
  }
  const y = Tensor.zeros([x.shape[0], out], { category: opts.category ?? 'activation', device: x.device });
  nativeFn<(x: NativeTensorHandle, w: object, y: NativeTensorHandle, m: number, o: number, i: number) => void>('intn_decode')(
    x.handle, intnNativeOperand(q), y.handle, x.shape[0], out, inF);
  return y;
}

export function disposeIntN(q: QuantizedIntN): void {
  q.codes.dispose();
  q.scales.dispose();
  q.offsets.dispose();
}
