// Tensor: a handle on native memory with shape, dtype, device and category.
import {
  type AnyTypedArray, type Category, type DType, type Device, DTYPE_BYTES,
  bf16ToF32, categoryCode, deviceCode, dtypeCode, f16ToF32, f32ToBf16, viewAs,
} from './dtype.js';
import { native, type NativeTensorHandle } from './native.js';

export interface TensorOptions {
  dtype?: DType;
  category?: Category;
  device?: Device;
}

export function shapeNumel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`invalid shape [${shape.join(', ')}]: dimensions must be non-negative integers`);
    n *= d;
  }
  if (!Number.isSafeInteger(n)) throw new RangeError(`shape [${shape.join(', ')}] has too many elements`);
  return n;
}

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly category: Category;
  readonly device: Device;
  readonly numel: number;
  /** @internal the native handle, passed to ops */
  readonly handle: NativeTensorHandle;
  private cachedView: AnyTypedArray | null = null;

  private constructor(shape: readonly number[], dtype: DType, category: Category, device: Device, handle: NativeTensorHandle) {
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.category = category;
    this.device = device;
    this.numel = shapeNumel(shape);
    this.handle = handle;
  }

  /** A zero-filled tensor. */
  static zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const dtype = opts.dtype ?? 'f32', category = opts.category ?? 'activation', device = opts.device ?? 'cpu';
    const numel = shapeNumel(shape);
    const handle = new native.NativeTensor(numel, dtypeCode(dtype), categoryCode(category), deviceCode(device));
    return new Tensor(shape, dtype, category, device, handle);
  }

  /** A tensor holding a copy of `values`. For bf16 and f16, pass numbers
   * (converted, round to nearest even) or the raw Uint16Array bits. */
  static from(values: ArrayLike<number> | AnyTypedArray, shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const device = opts.device ?? 'cpu';
    if (device !== 'cpu') {
      // staged through a host tensor (workspace while it lives), then copied over
      const host = Tensor.from(values, shape, { ...opts, device: 'cpu', category: 'workspace' });
      try {
        return host.to(device, { category: opts.category ?? 'activation' });
      } finally {
        host.dispose();
      }
    }
    const t = Tensor.zeros(shape, opts);
    if (values.length !== t.numel) {
      t.dispose();
      throw new RangeError(`Tensor.from: ${values.length} values do not fill shape [${shape.join(', ')}] (${t.numel} elements)`);
    }
    const view = t.data();
    if (t.dtype === 'bf16' && !(values instanceof Uint16Array)) {
      const src = values as ArrayLike<number>;
      for (let i = 0; i < src.length; i++) view[i] = f32ToBf16(src[i]);
    } else if (t.dtype === 'f16' && !(values instanceof Uint16Array)) {
      t.dispose();
      throw new TypeError('Tensor.from: f16 tensors take raw Uint16Array bits');
    } else if (t.dtype === 'i64') {
      const dst = view as BigInt64Array;
      if (values instanceof BigInt64Array) dst.set(values);
      else for (let i = 0; i < values.length; i++) dst[i] = BigInt(values[i] as number);
    } else {
      (view as Exclude<AnyTypedArray, BigInt64Array>).set(values as ArrayLike<number>);
    }
    return t;
  }

  /** A view of the same memory with another shape (same element count).
   * The view shares the storage: disposing either disposes both. */
  reshape(shape: readonly number[]): Tensor {
    const n = shapeNumel(shape);
    if (n !== this.numel) {
      throw new RangeError(`reshape: cannot view ${this.numel} elements [${this.shape.join(', ')}] as [${shape.join(', ')}] (${n} elements)`);
    }
    if (this.handle.disposed) throw new Error('reshape: tensor was disposed');
    return new Tensor(shape, this.dtype, this.category, this.device, this.handle);
  }

  get bytes(): number { return this.numel * DTYPE_BYTES[this.dtype]; }
  get disposed(): boolean { return this.handle.disposed; }

  /** Zero-copy typed-array view of CPU memory (bf16/f16 as raw Uint16 bits).
   * Detached (length 0) once the tensor is disposed. */
  data(): AnyTypedArray {
    if (this.handle.disposed) throw new Error('Tensor.data(): tensor was disposed');
    if (this.device !== 'cpu') throw new Error(`Tensor.data(): tensor is on ${this.device}; copy it to the CPU first`);
    if (!this.cachedView || this.cachedView.buffer.byteLength === 0 && this.numel > 0) {
      this.cachedView = viewAs(this.dtype, this.handle.view());
    }
    return this.cachedView;
  }

  /** A float32 copy of the values (converting bf16, f16 and integers), from
   * any device (a tensor elsewhere than the CPU is copied over first). */
  toFloat32(): Float32Array {
    if (this.device !== 'cpu') {
      const host = this.to('cpu', { category: 'workspace' });
      try { return host.toFloat32(); } finally { host.dispose(); }
    }
    const v = this.data();
    const out = new Float32Array(this.numel);
    if (this.dtype === 'bf16') for (let i = 0; i < out.length; i++) out[i] = bf16ToF32(v[i] as number);
    else if (this.dtype === 'f16') for (let i = 0; i < out.length; i++) out[i] = f16ToF32(v[i] as number);
    else if (this.dtype === 'i64') for (let i = 0; i < out.length; i++) out[i] = Number(v[i]);
    else out.set(v as ArrayLike<number>);
    return out;
  }

  /** A copy of this tensor on `device` (same shape, dtype and category, or
   * `category` if given). Always a new tensor, also when already there. */
  to(device: Device, opts: { category?: Category } = {}): Tensor {
    if (this.handle.disposed) throw new Error('Tensor.to(): tensor was disposed');
    const t = Tensor.zeros(this.shape, { dtype: this.dtype, category: opts.category ?? this.category, device });
    try {
      native.copy_tensor(this.handle, t.handle);
    } catch (e) {
      t.dispose();
      throw e;
    }
    return t;
  }

  /** This tensor if it is on `device` already (nothing copied, the CPU path
   * unchanged), else a copy there and this one disposed: how a model moves
   * the tensors it owns. */
  moveTo(device: Device): Tensor {
    if (this.device === device) return this;
    const t = this.to(device);
    this.dispose();
    return t;
  }

  /** Frees the memory now. Safe to call twice; views become empty. */
  dispose(): void {
    this.cachedView = null;
    this.handle.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}[${this.shape.join(', ')}], ${this.category}, ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}

/** The values of a tensor on any device as a typed array: the zero-copy view
 * for a CPU tensor (writes reach it), a host copy otherwise (for reading: the
 * loss, a norm, logits). */
export function hostValues(t: Tensor): AnyTypedArray {
  if (t.device === 'cpu') return t.data();
  const host = t.to('cpu', { category: 'workspace' });
  try {
    return host.data().slice();
  } finally {
    host.dispose();
  }
}

/** dst = src (same dtype and element count) on any devices: the typed-array
 * copy between two CPU tensors, a native copy otherwise. */
export function copyInto(dst: Tensor, src: Tensor): void {
  if (dst.dtype !== src.dtype || dst.numel !== src.numel) {
    throw new RangeError(`copyInto: ${src.dtype} [${src.shape.join(', ')}] does not fit ${dst.dtype} [${dst.shape.join(', ')}]`);
  }
  if (dst.device === 'cpu' && src.device === 'cpu') {
    (dst.data() as Uint8Array).set(src.data() as Uint8Array);  // same dtype: views of one kind
    return;
  }
  native.copy_tensor(src.handle, dst.handle);
}

/** Rows of `rowElems` elements between two tensors of one element size on
 * any devices: dst[dstOffset + r * dstPitch, + rowElems) = src[srcOffset + r * srcPitch, + rowElems)
 * for r < rows (offsets and pitches in elements). */
export function copyRows(src: Tensor, srcOffset: number, srcPitch: number, dst: Tensor, dstOffset: number, dstPitch: number,
                         rowElems: number, rows: number): void {
  if (src.disposed || dst.disposed) throw new Error('copyRows: a tensor was disposed');
  native.copy_rows(src.handle, srcOffset, srcPitch, dst.handle, dstOffset, dstPitch, rowElems, rows);
}
