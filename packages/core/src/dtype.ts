// Element types, memory categories and devices, with the codes the native
// addon uses. Keep in step with native/src/tensor.h.

export const DTYPES = ['f32', 'bf16', 'f16', 'u8', 'i32', 'i8', 'i64'] as const;
export type DType = (typeof DTYPES)[number];

export const CATEGORIES = ['frozen', 'trainable', 'grad', 'optimizer', 'optimizer_host', 'activation', 'workspace'] as const;
export type Category = (typeof CATEGORIES)[number];

export const DEVICES = ['cpu', 'cuda'] as const;
export type Device = (typeof DEVICES)[number];

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, bf16: 2, f16: 2, u8: 1, i32: 4, i8: 1, i64: 8 };

export type TypedArrayFor<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'bf16' | 'f16'
    ? Uint16Array
    : D extends 'u8'
      ? Uint8Array
      : D extends 'i32'
        ? Int32Array
        : D extends 'i8'
          ? Int8Array
          : BigInt64Array;

export type AnyTypedArray = Float32Array | Uint16Array | Uint8Array | Int32Array | Int8Array | BigInt64Array;

export function dtypeCode(d: DType): number {
  const i = DTYPES.indexOf(d);
  if (i < 0) throw new TypeError(`unknown dtype '${String(d)}' (known: ${DTYPES.join(', ')})`);
  return i;
}
export function categoryCode(c: Category): number {
  const i = CATEGORIES.indexOf(c);
  if (i < 0) throw new TypeError(`unknown memory category '${String(c)}' (known: ${CATEGORIES.join(', ')})`);
  return i;
}
export function deviceCode(d: Device): number {
  const i = DEVICES.indexOf(d);
  if (i < 0) throw new TypeError(`unknown device '${String(d)}' (known: ${DEVICES.join(', ')})`);
  return i;
}

export function viewAs(dtype: DType, buf: ArrayBuffer): AnyTypedArray {
  switch (dtype) {
    case 'f32': return new Float32Array(buf);
    case 'bf16':
    case 'f16': return new Uint16Array(buf);
    case 'u8': return new Uint8Array(buf);
    case 'i32': return new Int32Array(buf);
    case 'i8': return new Int8Array(buf);
    case 'i64': return new BigInt64Array(buf);
  }
}

// bf16 is the top half of an f32, rounded to nearest even.
const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
export function f32ToBf16(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
export function bf16ToF32(h: number): number {
  u32buf[0] = (h & 0xffff) << 16;
  return f32buf[0];
}
/** f32 -> IEEE half bits, rounded to nearest even (as ggml's GGML_FP32_TO_FP16
 * and numpy's float16 cast): subnormals kept, overflow to inf, NaN stays NaN. */
export function f32ToF16(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  const sign = (u >>> 16) & 0x8000, exp = (u >>> 23) & 0xff, mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;  // below half the smallest subnormal: rounds to 0
    const m = mant | 0x800000, shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;  // a carry out of the mantissa gives the smallest normal, correctly
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;  // a carry may reach inf, correctly
  return sign | h;
}
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
