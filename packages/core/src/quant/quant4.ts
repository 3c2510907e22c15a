// 4-bit blockwise quantization of frozen weights, exactly as bitsandbytes does
// it (native/src/quant4.h and quant_maps.h hold the tables and their sources):
//
//   W [rows, cols] flattened row-major, blocks of `blockSize` (default 64)
//   absmax[b] = max |W| in block b (fp32); code = nearest table value to W/absmax
//   packed: two codes per byte, the even element in the high nibble
//   NF4 table (QLoRA, appendix E) or FP4 (E2M1, bitsandbytes' variant)
//   double quantization: absmax - mean(absmax) quantized blockwise (256) to
//   8 bits with the signed dynamic map, one fp32 scale per 256 blocks, plus
//   the mean as one fp32 offset.
//
// The GEMM (ops/gemm.ts) and the fused LoRA ops take a QuantizedWeight as
// their weight operand and dequantize while packing: no dense copy is made.
// Quantizing a weight on CUDA gives a quantized weight on CUDA (the kernels of
// cuda/nf4.cu); dequantizing writes to the weight's device.
import type { Category, Device } from '../dtype.js';
import { nativeFn, type NativeTensorHandle } from '../native.js';
import { Tensor, copyInto, hostValues } from '../tensor.js';
import { type QuantizedIntN, checkIntN, disposeIntN, intnNativeOperand, moveIntN } from './intn.js';

export type Quant4Format = 'nf4' | 'fp4';

/** Double-quantized absmax: 8-bit signed dynamic-map codes, one fp32 scale per `blockSize` (256) codes, one fp32 offset. */
export interface DoubleQuant {
  /** u8 [numel / blockSize of the weight] */
  codes: Tensor;
  /** f32 [ceil(codes / 256)] */
  scales: Tensor;
  /** the mean absmax, subtracted before quantizing */
  offset: number;
  /** 256 */
  blockSize: number;
}

/** A frozen weight stored as 4-bit codes (the kernels' quantized operand). */
export interface Quantized4bit {
  readonly kind: 'quant4';
  format: Quant4Format;
  /** logical shape [rows, cols] (a weight: [out, in]) */
  shape: [number, number];
  /** logical element count rows * cols */
  numel: number;
  blockSize: number;
  /** u8 [ceil(numel / 2)] */
  packed: Tensor;
  /** f32 [ceil(numel / blockSize)]; absent when double-quantized (dq holds it) */
  absmax?: Tensor;
  dq?: DoubleQuant;
  /** exact bytes held: codes, absmax or its double quantization (codes, scales, the 4-byte offset) */
  bytes: number;
}

/** Every quantized weight format the kernels accept: 4-bit (QLoRA) and group-wise INT-N (QA-LoRA, quant/intn.ts). */
export type QuantizedWeight = Quantized4bit | QuantizedIntN;

/** A GEMM weight operand: a dense tensor or a quantized weight. */
export type WeightOperand = Tensor | QuantizedWeight;

export function isQuantized(w: unknown): w is QuantizedWeight {
  if (typeof w !== 'object' || w === null || w instanceof Tensor) return false;
  const kind = (w as { kind?: unknown }).kind;
  return kind === 'quant4' || kind === 'intn';
}

export interface Quantize4bitOptions {
  format: Quant4Format;
  /** values per absmax block: a power of two in 32..4096 (default 64) */
  blockSize?: number;
  /** double-quantize the absmax (default false, as bitsandbytes' quantize_4bit) */
  doubleQuant?: boolean;
  /** memory category of the result (default 'frozen') */
  category?: Category;
}

export const QUANT4_FORMATS: readonly Quant4Format[] = ['nf4', 'fp4'];
const DQ_BLOCK = 256;

function formatCode(f: Quant4Format): number {
  const i = QUANT4_FORMATS.indexOf(f);
  if (i < 0) throw new TypeError(`4-bit format must be ${QUANT4_FORMATS.map((x) => `'${x}'`).join(' or ')}, got ${JSON.stringify(f)}`);
  return i;
}

function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < 32 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(`4-bit blockSize must be a power of two from 32 to 4096, got ${blockSize}`);
  }
}

/** Exact bytes of a 4-bit weight of `numel` values: packed codes plus the
 * fp32 absmax (4 bytes per block), or with double quantization one byte per
 * block, 4 bytes per 256 blocks and the 4-byte offset. */
export function quant4Bytes(numel: number, blockSize: number, doubleQuant: boolean): number {
  const blocks = Math.ceil(numel / blockSize);
  return Math.ceil(numel / 2) + (doubleQuant ? blocks + 4 * Math.ceil(blocks / DQ_BLOCK) + 4 : 4 * blocks);
}

type QuantizeFn = (x: NativeTensorHandle, numel: number, block: number, format: number, packed: NativeTensorHandle, absmax: NativeTensorHandle) => number;
type Quantize8Fn = (x: NativeTensorHandle, n: number, block: number, signed: boolean, codes: NativeTensorHandle, scales: NativeTensorHandle) => void;

/** Quantizes a 2-D weight (f32 or bf16, on the CPU or CUDA) to NF4/FP4 in
 * bitsandbytes' layout; the result lives on the weight's device. */
export function quantize4bit(w: Tensor, opts: Quantize4bitOptions): Quantized4bit {
  const op = 'quantize4bit';
  if (!(w instanceof Tensor)) throw new TypeError(`${op}: w must be a Tensor`);
  if (w.disposed) throw new Error(`${op}: w was disposed`);
  if (w.dtype !== 'f32' && w.dtype !== 'bf16') throw new TypeError(`${op}: w must be f32 or bf16, got ${w.dtype}`);
  if (w.shape.length !== 2) throw new RangeError(`${op}: w must be 2-D [rows, cols], got [${w.shape.join(', ')}]`);
  const format = opts?.format;
  const fmt = formatCode(format);
  const blockSize = opts.blockSize ?? 64;
  checkBlockSize(blockSize);
  const doubleQuant = opts.doubleQuant ?? false;
  if (typeof doubleQuant !== 'boolean') throw new TypeError(`${op}: doubleQuant must be a boolean`);
  const category = opts.category ?? 'frozen';
  const numel = w.numel, blocks = Math.ceil(numel / blockSize);
  const device = w.device;
  const packed = Tensor.zeros([Math.ceil(numel / 2)], { dtype: 'u8', category, device });
  const absmax = Tensor.zeros([blocks], { category: doubleQuant ? 'workspace' : category, device });
  try {
    const bad = nativeFn<QuantizeFn>('quant4_quantize')(w.handle, numel, blockSize, fmt, packed.handle, absmax.handle);
    if (bad > 0) throw new RangeError(`${op}: the weight holds ${bad} NaN or infinite value(s); refusing to quantize it`);
    const shape: [number, number] = [w.shape[0], w.shape[1]];
    if (!doubleQuant) return { kind: 'quant4', format, shape, numel, blockSize, packed, absmax, bytes: quant4Bytes(numel, blockSize, false) };
    // the codes above used the fp32 absmax; now the absmax itself is stored in 8 bits
    // (the mean is taken on the host: a CUDA absmax goes there and back)
    const host = device === 'cpu' ? absmax : absmax.to('cpu');
    const av = host.data() as Float32Array;
    let sum = 0;
    for (let i = 0; i < av.length; i++) sum += av[i];
    const offset = Math.fround(sum / av.length);
    for (let i = 0; i < av.length; i++) av[i] = Math.fround(av[i] - offset);
    if (host !== absmax) {
      copyInto(absmax, host);
      host.dispose();
    }
    const codes = Tensor.zeros([blocks], { dtype: 'u8', category, device });
    const scales = Tensor.zeros([Math.ceil(blocks / DQ_BLOCK)], { category, device });
    nativeFn<Quantize8Fn>('blockwise_quantize8')(absmax.handle, blocks, DQ_BLOCK, true, codes.handle, scales.handle);
    absmax.dispose();
    return {
      kind: 'quant4', format, shape, numel, blockSize, packed, dq: { codes, scales, offset, blockSize: DQ_BLOCK },
      bytes: quant4Bytes(numel, blockSize, true),
    };
  } catch (e) {
    packed.dispose();
    absmax.dispose();
    throw e;
  }
}

/** The operand object the native bindings take for a quantized weight (native/src/operand.h). */
export function nativeOperand(w: WeightOperand): NativeTensorHandle | object {
  if (w instanceof Tensor) return w.handle;
  checkQuantized('operand', 'W', w);
  if (w.kind === 'intn') return intnNativeOperand(w);
  return {
    kind: 'q4', format: formatCode(w.format), rows: w.shape[0], cols: w.shape[1], blockSize: w.blockSize,
    packed: w.packed.handle, absmax: w.absmax?.handle ?? null,
    dqCodes: w.dq?.codes.handle ?? null, dqScales: w.dq?.scales.handle ?? null, dqOffset: w.dq?.offset ?? 0, dqBlock: w.dq?.blockSize ?? DQ_BLOCK,
  };
}

/** The tensors of a weight operand by name (`name` itself for a dense one,
 * `name.part` for each part of a quantized one), for sameDevice(). */
export function weightTensors(name: string, w: WeightOperand): Record<string, Tensor | undefined> {
  if (w instanceof Tensor) return { [name]: w };
  if (w.kind === 'intn') return { [`${name}.codes`]: w.codes, [`${name}.scales`]: w.scales, [`${name}.offsets`]: w.offsets };
  return { [`${name}.packed`]: w.packed, [`${name}.absmax`]: w.absmax, [`${name}.dq.codes`]: w.dq?.codes, [`${name}.dq.scales`]: w.dq?.scales };
}

/** Throws a clear error when a quantized weight is disposed or inconsistent. */
export function checkQuantized(op: string, name: string, w: QuantizedWeight): void {
  if (!isQuantized(w)) throw new TypeError(`${op}: '${name}' is not a quantized weight`);
  if (w.kind === 'intn') { checkIntN(op, name, w); return; }
  const parts = [w.packed, w.absmax, w.dq?.codes, w.dq?.scales].filter((t): t is Tensor => t !== undefined);
  if (parts.some((t) => t.disposed)) throw new Error(`${op}: quantized '${name}' was disposed`);
  if (!w.absmax && !w.dq) throw new Error(`${op}: quantized '${name}' has neither absmax nor double-quantized absmax`);
  // sizes against the logical shape, before any op allocates its output
  const [rows, cols] = w.shape, numel = rows * cols, blocks = Math.ceil(numel / w.blockSize);
  const sizes: [string, number, number][] = [['values', w.numel, numel], ['packed codes', w.packed.numel, Math.ceil(numel / 2)]];
  if (w.absmax) sizes.push(['absmax', w.absmax.numel, blocks]);
  else sizes.push(['double-quantized absmax', w.dq!.codes.numel, blocks], ['double-quantization scales', w.dq!.scales.numel, Math.ceil(blocks / w.dq!.blockSize)]);
  const bad = sizes.find(([, got, want]) => got !== want);
  if (bad) throw new RangeError(`${op}: quantized '${name}' is [${rows}, ${cols}] (blockSize ${w.blockSize}) but holds ${bad[1]} ${bad[0]}, needs ${bad[2]}`);
}

/** The weight as a new f32 tensor [rows, cols] (for merging, export and tests; the kernels never need it). */
export function dequantize4bit(q: Quantized4bit, opts: { category?: Category } = {}): Tensor {
  if ((q as { kind?: unknown })?.kind !== 'quant4') throw new TypeError('dequantize4bit: q is not a 4-bit weight (an INT-N weight dequantizes with dequantizeIntN)');
  checkQuantized('dequantize4bit', 'q', q);
  const out = Tensor.zeros(q.shape, { category: opts.category ?? 'workspace', device: q.packed.device });
  nativeFn<(w: object, r: number, c: number, out: NativeTensorHandle) => void>('quant4_dequantize')(nativeOperand(q), q.shape[0], q.shape[1], out.handle);
  return out;
}

/** The absmax per block as fp32 values (expanding a double quantization). */
export function quant4Absmax(q: Quantized4bit): Float32Array {
  if (q.absmax) return Float32Array.from(hostValues(q.absmax) as Float32Array);
  const dq = q.dq!;
  const out = Tensor.zeros([dq.codes.numel], { category: 'workspace', device: dq.codes.device });
  try {
    nativeFn<(c: NativeTensorHandle, s: NativeTensorHandle, n: number, b: number, signed: boolean, off: number, o: NativeTensorHandle) => void>(
      'blockwise_dequantize8')(dq.codes.handle, dq.scales.handle, dq.codes.numel, dq.blockSize, true, dq.offset, out.handle);
    return Float32Array.from(hostValues(out) as Float32Array);
  } finally {
    out.dispose();
  }
}

/** Moves a quantized weight's tensors (codes and every constant) to `device`:
 * copies there, the old tensors disposed; nothing done when already there. Returns q. */
export function moveQuantized(q: QuantizedWeight, device: Device): QuantizedWeight {
  if (q.kind === 'intn') return moveIntN(q, device);
  q.packed = q.packed.moveTo(device);
  if (q.absmax) q.absmax = q.absmax.moveTo(device);
  if (q.dq) {
    q.dq.codes = q.dq.codes.moveTo(device);
    q.dq.scales = q.dq.scales.moveTo(device);
  }
  return q;
}

export function disposeQuantized(q: QuantizedWeight): void {
  if (q.kind === 'intn') { disposeIntN(q); return; }
  q.packed.dispose();
  q.absmax?.dispose();
  q.dq?.codes.dispose();
  q.dq?.scales.dispose();
}

function table(name: string, fill: (out: NativeTensorHandle) => void, n: number): Float32Array {
  const t = Tensor.zeros([n], { category: 'workspace' });
  try {
    fill(t.handle);
    return Float32Array.from(t.data() as Float32Array);
  } catch (e) {
    throw new Error(`${name}: ${(e as Error).message}`);
  } finally {
    t.dispose();
  }
}

/** The 16 values of a 4-bit format by code, as the kernels use them. */
export function quant4Table(format: Quant4Format): Float32Array {
  const f = formatCode(format);
  return table('quant4Table', (h) => nativeFn<(f: number, o: NativeTensorHandle) => void>('quant4_table')(f, h), 16);
}

/** bitsandbytes' 8-bit dynamic map (signed or unsigned), sorted, as the kernels use it. */
export function dynamicMap8(signed: boolean): Float32Array {
  return table('dynamicMap8', (h) => nativeFn<(s: boolean, o: NativeTensorHandle) => void>('dynamic_map8')(signed, h), 256);
}
