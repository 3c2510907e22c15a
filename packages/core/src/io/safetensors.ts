// safetensors reader and writer (https://github.com/huggingface/safetensors).
//
// File layout:
//   [0, 8)          u64 little-endian N: header length in bytes
//   [8, 8+N)        UTF-8 JSON object:
//                     { "<name>": { "dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end] },
//                       ..., optional "__metadata__": { "<key>": "<string>" } }
//                   (the reference writer pads it with spaces to a multiple of 8)
//   [8+N, EOF)      data area; [begin, end) are relative to its start, little-endian,
//                   row-major, end - begin = prod(shape) * sizeof(dtype)
//
// Reading never loads the whole file: the header is read and validated, then
// each tensor's bytes go straight into its native tensor's view (through a
// bounded scratch buffer when converting dtypes). Every problem with a file is
// an Error naming the file; a failed read frees whatever it had allocated.
// Lenient where the reference is strict: gaps between tensors and trailing
// bytes after the last one are accepted (overlaps are not).
import { closeSync, fstatSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import { resolve } from 'node:path';
import { type Category, type DType, DTYPE_BYTES } from '../dtype.js';
import { openRegularFile } from '../util/files.js';
import { parseJsonStrict } from '../util/json.js';
import { Tensor } from '../tensor.js';
import { writeFileAtomic } from './atomic.js';

/** The reference implementation's limit on the header (safetensors MAX_HEADER_SIZE). */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;
/** Chunk size for converted reads and writes, and the largest single read/write. */
const CHUNK_BYTES = 64 << 20;

/** safetensors dtype string -> our dtype, for the ones we hold natively. */
export const SAFETENSORS_TO_DTYPE: Readonly<Record<string, DType>> = Object.freeze({
  F32: 'f32', BF16: 'bf16', F16: 'f16', U8: 'u8', I32: 'i32', I8: 'i8', I64: 'i64',
});
export const DTYPE_TO_SAFETENSORS: Readonly<Record<DType, string>> = Object.freeze({
  f32: 'F32', bf16: 'BF16', f16: 'F16', u8: 'U8', i32: 'I32', i8: 'I8', i64: 'I64',
});
/** Bits per element of every dtype the format defines, in the order of the
 * reference's `Dtype` enum (the writer's sort uses it), so that headers with
 * dtypes we cannot hold still validate and give a precise error. */
const DTYPE_BITS: Readonly<Record<string, number>> = Object.freeze({
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, F64: 64, I64: 64, U64: 64,
});

const DTYPE_RANK: Readonly<Record<string, number>> = Object.freeze(Object.fromEntries(Object.keys(DTYPE_BITS).map((d, i) => [d, i])));
const FLOATING: ReadonlySet<DType> = new Set<DType>(['f32', 'bf16', 'f16']);
export type FloatTarget = 'f32' | 'bf16';

export interface SafetensorsEntry {
  name: string;
  /** the file's dtype string, e.g. 'BF16' (may be one we cannot load, e.g. 'F64') */
  dtype: string;
  shape: number[];
  /** byte offsets relative to the data area (`dataStart`) */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** in file order (by `begin`) */
  tensors: SafetensorsEntry[];
  metadata: Record<string, string>;
  /** absolute offset of the data area: 8 + header length */
  dataStart: number;
  fileSize: number;
}

export interface ReadSafetensorsOptions {
  /** load only the tensors for which this returns true */
  filter?: (name: string) => boolean;
  /** memory category of the created tensors (default 'frozen'), or one per tensor name */
  category?: Category | ((name: string) => Category);
  /** convert floating tensors (F32, BF16, F16) to this dtype; integers stay as they are */
  convert?: { to: FloatTarget };
  /** bytes per read, and per scratch chunk when converting (default 64 MiB) */
  chunkBytes?: number;
  /** called with each tensor as soon as it is read, before the next one is
   * allocated: return the tensor to keep it, or null when the callback took
   * it over (it then owns it, e.g. quantized and freed it) */
  onTensor?: (name: string, t: Tensor) => Tensor | null;
}

export interface WriteSafetensorsOptions {
  metadata?: Record<string, string>;
  /** store floating tensors (f32, bf16, f16) as this dtype */
  dtype?: FloatTarget;
  /** bytes per write, and per scratch chunk when converting (default 64 MiB) */
  chunkBytes?: number;
}

// ---------------------------------------------------------------------------
// Conversions between raw float bits (little-endian host assumed, checked below).

let f16Table: Uint32Array | null = null;
/** f16 bits -> f32 bits, exact for every value including subnormals, inf and NaN payloads. */
function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (man << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
  if (man === 0) return sign >>> 0;
  let e = 113, m = man; // subnormal: normalise
  while (!(m & 0x400)) { m <<= 1; e--; }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}
function f16ToF32Table(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32Bits(h);
  }
  return f16Table;
}

/** Converts `n` elements of raw `from` bits in `src` into raw `to` bits in `dst`.
 * f32 -> bf16 rounds to nearest even and keeps NaNs quiet (as f32ToBf16). */
function convertBits(from: DType, src: Uint8Array, to: FloatTarget, dst: Uint8Array, n: number): void {
  if (from === to) { dst.set(src.subarray(0, n * DTYPE_BYTES[from])); return; }
  if (to === 'f32') {
    const out = new Uint32Array(dst.buffer, dst.byteOffset, n);
    const inp = new Uint16Array(src.buffer, src.byteOffset, n);
    if (from === 'bf16') for (let i = 0; i < n; i++) out[i] = inp[i] << 16;
    else { const t = f16ToF32Table(); for (let i = 0; i < n; i++) out[i] = t[inp[i]]; }
    return;
  }
  const out = new Uint16Array(dst.buffer, dst.byteOffset, n);
  const bits = from === 'f32' ? new Uint32Array(src.buffer, src.byteOffset, n) : null;
  const half = from === 'f16' ? new Uint16Array(src.buffer, src.byteOffset, n) : null;
  const t = half ? f16ToF32Table() : null;
  for (let i = 0; i < n; i++) {
    const u = bits ? bits[i] : t![half![i]];
    out[i] = (u & 0x7fffffff) > 0x7f800000 ? ((u >>> 16) | 0x40) & 0xffff : ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
  }
}

function checkHost(): void {
  if (endianness() !== 'LE') throw new Error('safetensors IO needs a little-endian host');
}

// ---------------------------------------------------------------------------
// Header

const q = (s: string): string => (s.length > 120 ? JSON.stringify(s.slice(0, 120)) + '...' : JSON.stringify(s));
const show = (v: unknown): string => {
  let s: string;
  try { s = JSON.stringify(v) ?? String(v); } catch { s = String(v); }
  return s.length > 80 ? s.slice(0, 80) + '...' : s;
};
const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A chunk size that holds at least one element of any dtype and keeps them whole. */
function chunkSize(requested: number | undefined): number {
  const c = requested ?? CHUNK_BYTES;
  if (typeof c !== 'number' || !(c > 0)) throw new RangeError(`chunkBytes must be a positive number, got ${show(c)}`);
  return Math.max(8, Math.floor(Math.min(c, 2 ** 30) / 8) * 8);
}

function readFully(fd: number, dst: Uint8Array, position: number, path: string, chunk = CHUNK_BYTES): void {
  let off = 0;
  while (off < dst.byteLength) {
    const len = Math.min(dst.byteLength - off, chunk);
    const n = readSync(fd, dst, off, len, position + off);
    if (n <= 0) throw new Error(`${path}: unexpected end of file at byte ${position + off} (did the file change while being read?)`);
    off += n;
  }
}

function parseHeader(fd: number, path: string): SafetensorsHeader {
  const fileSize = fstatSync(fd).size;
  const bad = (msg: string): Error => new Error(`${path}: ${msg}`);
  if (fileSize < 8) throw bad(`not a safetensors file: ${fileSize} bytes is shorter than the 8-byte header length prefix`);
  const prefix = Buffer.alloc(8);
  readFully(fd, prefix, 0, path);
  const n64 = prefix.readBigUInt64LE(0);
  if (n64 > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    throw bad(`header length ${n64} exceeds the limit of ${SAFETENSORS_MAX_HEADER_BYTES} bytes (corrupt or not a safetensors file)`);
  }
  const n = Number(n64);
  if (8 + n > fileSize) throw bad(`header length ${n} runs past the end of the file (${fileSize} bytes)`);
  const raw = Buffer.alloc(n);
  readFully(fd, raw, 8, path);
  let text: string;
  try { text = new TextDecoder('utf-8', { fatal: true }).decode(raw); } catch { throw bad('header is not valid UTF-8'); }
  let json: unknown;
  try { json = parseJsonStrict(text, 'header'); } catch (e) { throw bad((e as Error).message); }
  if (!isPlainObject(json)) throw bad(`header is not a JSON object (got ${Array.isArray(json) ? 'an array' : show(json)})`);

  const dataStart = 8 + n, dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: SafetensorsEntry[] = [];
  for (const name of Object.keys(json)) {
    const v = json[name];
    if (name === '__metadata__') {
      if (v === null) continue;
      if (!isPlainObject(v)) throw bad(`__metadata__ must be an object mapping strings to strings, got ${show(v)}`);
      for (const k of Object.keys(v)) {
        if (typeof v[k] !== 'string') throw bad(`__metadata__ must be an object mapping strings to strings, but ${q(k)} is ${show(v[k])}`);
        Object.defineProperty(metadata, k, { value: v[k], enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    const where = `tensor ${q(name)}`;
    if (!isPlainObject(v)) throw bad(`${where}: entry is not an object (got ${show(v)})`);
    for (const k of ['dtype', 'shape', 'data_offsets']) if (!(k in v)) throw bad(`${where}: missing ${k}`);
    const { dtype, shape, data_offsets: offsets } = v;
    if (typeof dtype !== 'string') throw bad(`${where}: dtype must be a string, got ${show(dtype)}`);
    const bits = DTYPE_BITS[dtype];
    if (bits === undefined || !Object.prototype.hasOwnProperty.call(DTYPE_BITS, dtype)) {
      throw bad(`${where}: unknown dtype ${q(dtype)} (the format defines ${Object.keys(DTYPE_BITS).join(', ')})`);
    }
    if (!Array.isArray(shape)) throw bad(`${where}: shape must be an array, got ${show(shape)}`);
    let numel = 1;
    shape.forEach((d, i) => {
      if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) throw bad(`${where}: shape[${i}] must be a non-negative integer, got ${show(d)}`);
      numel *= d;
    });
    if (!Number.isSafeInteger(numel)) throw bad(`${where}: shape ${show(shape)} has too many elements`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
      throw bad(`${where}: data_offsets must be an array of two non-negative integers, got ${show(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) throw bad(`${where}: data_offsets begin ${begin} > end ${end}`);
    if (end > dataSize) throw bad(`${where}: data_offsets end ${end} is beyond the data area (${dataSize} bytes; file truncated?)`);
    const want = (numel * bits) / 8;
    if (end - begin !== want) {
      throw bad(`${where}: byte length ${end - begin} does not match shape [${shape.join(', ')}] of ${dtype} (${want} bytes)`);
    }
    tensors.push({ name, dtype, shape: [...shape] as number[], begin, end });
  }
  // As the reference implementation validates: sorted by offsets, each tensor
  // starts where the previous one ended, and the last one ends exactly where
  // the file does. A gap, an overlap or trailing bytes mean a corrupt file
  // (e.g. a header length one short reads every tensor shifted by a byte).
  const ordered = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0, prev: SafetensorsEntry | null = null;
  for (const t of ordered) {
    if (t.begin < pos) throw bad(`tensor ${q(t.name)} [${t.begin}, ${t.end}) overlaps tensor ${q(prev!.name)} [${prev!.begin}, ${prev!.end})`);
    if (t.begin > pos) throw bad(`tensor ${q(t.name)} starts at data byte ${t.begin} but the previous tensor ends at ${pos}: a gap the format does not allow (corrupt header or offsets)`);
    pos = t.end;
    prev = t;
  }
  if (pos !== dataSize) {
    throw bad(`the tensors fill ${pos} bytes of the data area but the file holds ${dataSize} after the header: ${dataSize - pos} unaccounted byte(s) (wrong header length or a corrupt file)`);
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  return { tensors, metadata, dataStart, fileSize };
}

/** Reads and validates the header of a safetensors file (no tensor data). */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const file = resolve(path);
  const fd = openRegularFile(file, 'safetensors file');
  try { return parseHeader(fd, file); } finally { closeSync(fd); }
}

// ---------------------------------------------------------------------------
// Read

const bytesOf = (t: Tensor): Uint8Array => {
  const v = t.data();
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
};

/** Loads tensors from a safetensors file into native memory. */
export function readSafetensors(path: string, opts: ReadSafetensorsOptions = {}): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  checkHost();
  const file = resolve(path);
  const categoryOf = typeof opts.category === 'function' ? opts.category : (() => (opts.category as Category | undefined) ?? 'frozen');
  const to = opts.convert?.to;
  const chunk = chunkSize(opts.chunkBytes);
  if (to !== undefined && to !== 'f32' && to !== 'bf16') throw new TypeError(`${file}: convert.to must be 'f32' or 'bf16', got ${show(to)}`);
  const fd = openRegularFile(file, 'safetensors file');
  const tensors = new Map<string, Tensor>();
  try {
    const header = parseHeader(fd, file);
    // Decide every dtype before allocating anything.
    const plan: Array<{ e: SafetensorsEntry; src: DType; dst: DType }> = [];
    for (const e of header.tensors) {
      if (opts.filter && !opts.filter(e.name)) continue;
      const src = SAFETENSORS_TO_DTYPE[e.dtype];
      if (!src || !Object.prototype.hasOwnProperty.call(SAFETENSORS_TO_DTYPE, e.dtype)) {
        throw new Error(`${file}: unsupported dtype ${e.dtype} for tensor ${q(e.name)} (supported: ${Object.keys(SAFETENSORS_TO_DTYPE).join(', ')})`);
      }
      plan.push({ e, src, dst: to && FLOATING.has(src) ? to : src });
    }
    let scratchBytes = 0;
    for (const p of plan) if (p.src !== p.dst) scratchBytes = Math.max(scratchBytes, Math.min(p.e.end - p.e.begin, chunk));
    const scratch = new Uint8Array(scratchBytes); // fresh ArrayBuffer: aligned for any element type

    for (const { e, src, dst } of plan) {
      let t: Tensor;
      try {
        t = Tensor.zeros(e.shape, { dtype: dst, category: categoryOf(e.name) });
      } catch (err) {
        if (err instanceof Error) err.message = `${file}: tensor ${q(e.name)}: ${err.message}`;
        throw err;
      }
      tensors.set(e.name, t);
      if (t.numel > 0) {
        const out = bytesOf(t);
        const pos = header.dataStart + e.begin;
        if (src === dst) {
          readFully(fd, out, pos, file, chunk);
        } else {
          const srcSize = DTYPE_BYTES[src], dstSize = DTYPE_BYTES[dst];
          const perChunk = Math.floor(scratch.byteLength / srcSize);
          for (let i = 0; i < t.numel; i += perChunk) {
            const k = Math.min(perChunk, t.numel - i);
            const part = scratch.subarray(0, k * srcSize);
            readFully(fd, part, pos + i * srcSize, file, chunk);
            convertBits(src, part, dst as FloatTarget, out.subarray(i * dstSize, (i + k) * dstSize), k);
          }
        }
      }
      if (opts.onTensor) {
        tensors.delete(e.name);  // from here the callback owns it
        const kept = opts.onTensor(e.name, t);
        if (kept) tensors.set(e.name, kept);
      }
    }
    return { tensors, metadata: header.metadata };
  } catch (err) {
    for (const t of tensors.values()) t.dispose();
    throw err;
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Write

/** Writes tensors as a safetensors file, atomically, byte for byte as the
 * reference serializer lays it out: `__metadata__` first, tensors ordered by
 * dtype (widest first, so every tensor is aligned to its element size) then by
 * name, contiguous, header padded with spaces to a multiple of 8. */
export function writeSafetensors(
  path: string, tensors: Map<string, Tensor> | Record<string, Tensor>, opts: WriteSafetensorsOptions = {},
): void {
  checkHost();
  const file = resolve(path);
  const bad = (msg: string): Error => new Error(`${file}: ${msg}`);
  const entries: Array<[string, Tensor]> = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const target = opts.dtype;
  const chunk = chunkSize(opts.chunkBytes);
  if (target !== undefined && target !== 'f32' && target !== 'bf16') throw bad(`dtype must be 'f32' or 'bf16', got ${show(target)}`);
  const stored = (t: Tensor): DType => (target && FLOATING.has(t.dtype) ? target : t.dtype);
  const rank = (t: Tensor): number => DTYPE_RANK[DTYPE_TO_SAFETENSORS[stored(t)]];
  for (const [name, t] of entries) if (!(t instanceof Tensor)) throw bad(`tensor ${q(name)} is not a Tensor`);
  entries.sort(([a, ta], [b, tb]) => rank(tb) - rank(ta) || (a < b ? -1 : a > b ? 1 : 0));

  const plan: Array<{ name: string; t: Tensor; dst: DType; begin: number; end: number }> = [];
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === '__metadata__') throw bad(`'__metadata__' cannot be a tensor name`);
    if (!(t instanceof Tensor)) throw bad(`tensor ${q(name)} is not a Tensor`);
    if (t.disposed) throw bad(`tensor ${q(name)} was disposed`);
    const dst = stored(t);
    const bytes = t.numel * DTYPE_BYTES[dst];
    plan.push({ name, t, dst, begin: offset, end: offset + bytes });
    offset += bytes;
  }

  // Built by hand: a JS object would move integer-like names to the front.
  const parts: string[] = [];
  if (opts.metadata !== undefined) {
    if (!isPlainObject(opts.metadata)) throw bad('metadata must be an object mapping strings to strings');
    const kv = Object.keys(opts.metadata).map((k) => {
      const v = opts.metadata![k];
      if (typeof v !== 'string') throw bad(`metadata value for ${q(k)} must be a string, got ${show(v)}`);
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`"__metadata__":{${kv.join(',')}}`);
  }
  for (const p of plan) {
    parts.push(`${JSON.stringify(p.name)}:{"dtype":"${DTYPE_TO_SAFETENSORS[p.dst]}","shape":[${p.t.shape.join(',')}],"data_offsets":[${p.begin},${p.end}]}`);
  }
  let header = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const pad = (8 - (header.byteLength % 8)) % 8;
  if (pad) header = Buffer.concat([header, Buffer.alloc(pad, 0x20)]);
  if (header.byteLength > SAFETENSORS_MAX_HEADER_BYTES) throw bad(`header would be ${header.byteLength} bytes, over the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit`);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(header.byteLength), 0);

  let scratchBytes = 0;
  for (const p of plan) if (p.dst !== p.t.dtype) scratchBytes = Math.max(scratchBytes, Math.min(p.end - p.begin, chunk));

  function* chunks(): Generator<Uint8Array> {
    yield prefix;
    yield header;
    const scratch = new Uint8Array(scratchBytes);
    for (const { name, t: given, dst, begin, end } of plan) {
      if (given.numel === 0) continue;
      // a tensor on another device is copied to the host while it is written, one at a time
      const t = given.device === 'cpu' ? given : given.to('cpu', { category: 'workspace' });
      try {
        const src = bytesOf(t);
        if (src.byteLength !== t.numel * DTYPE_BYTES[t.dtype]) throw new Error(`tensor ${q(name)}: view has ${src.byteLength} bytes, expected ${t.numel * DTYPE_BYTES[t.dtype]}`);
        if (dst === t.dtype) {
          for (let o = 0; o < src.byteLength; o += chunk) yield src.subarray(o, Math.min(o + chunk, src.byteLength));
          continue;
        }
        const srcSize = DTYPE_BYTES[t.dtype], dstSize = DTYPE_BYTES[dst];
        const perChunk = Math.floor(scratch.byteLength / dstSize);
        let written = 0;
        for (let i = 0; i < t.numel; i += perChunk) {
          const k = Math.min(perChunk, t.numel - i);
          const out = scratch.subarray(0, k * dstSize);
          convertBits(t.dtype, src.subarray(i * srcSize, (i + k) * srcSize), dst as FloatTarget, out, k);
          written += out.byteLength;
          yield out; // written before the generator resumes, so the scratch can be reused
        }
        if (written !== end - begin) throw new Error(`tensor ${q(name)}: wrote ${written} bytes, expected ${end - begin}`);
      } finally {
        if (t !== given) t.dispose();
      }
    }
  }
  writeFileAtomic(file, chunks());
}
