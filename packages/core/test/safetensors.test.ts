// safetensors: round trips, a file built byte by byte from the spec, every
// corruption the reader must name, a bounded fuzz over mutated files, and the
// atomicity of writes. Files live in a fresh temp dir per run.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type DType, Tensor, bf16ToF32, f16ToF32, f32ToBf16, memory, readSafetensors, readSafetensorsHeader,
  writeFileAtomic, writeJsonAtomic, writeSafetensors,
} from '../src/index.js';
import { randn, rng } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'tunebench-st-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
const fresh = (stem = 'f'): string => join(dir, `${stem}-${fileNo++}.safetensors`);
const live = (): number => memory.snapshot().cpu.liveTotal;
const rawBytes = (t: Tensor): Uint8Array => { const v = t.data(); return new Uint8Array(v.buffer, v.byteOffset, v.byteLength); };
const disposeAll = (m: Map<string, Tensor>): void => { for (const t of m.values()) t.dispose(); };

/** A tensor of `dtype` filled with random raw bits (NaN payloads and all). */
function randomTensor(dtype: DType, shape: number[], r: ReturnType<typeof rng>): Tensor {
  const t = Tensor.zeros(shape, { dtype });
  const b = rawBytes(t);
  for (let i = 0; i < b.length; i++) b[i] = (r.next() * 256) | 0;
  return t;
}

/** A header + data file assembled by hand (the length prefix, JSON, bytes). */
function buildFile(header: unknown, data: Uint8Array, opts: { headerText?: string; pad?: boolean } = {}): Buffer {
  let h = Buffer.from(opts.headerText ?? JSON.stringify(header), 'utf8');
  if (opts.pad) h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([prefix, h, Buffer.from(data)]);
}

test('round trip is bit-exact for every dtype, including a zero-element tensor', () => {
  const r = rng();
  const before = live();
  const dtypes: DType[] = ['f32', 'bf16', 'f16', 'u8', 'i32', 'i8', 'i64'];
  const src = new Map<string, Tensor>();
  dtypes.forEach((d, i) => src.set(`t.${d}`, randomTensor(d, [3, i + 2], r)));
  src.set('empty', Tensor.zeros([0, 5], { dtype: 'bf16' }));
  src.set('scalar', randomTensor('f32', [], r));
  const path = fresh();
  writeSafetensors(path, src);
  const { tensors, metadata } = readSafetensors(path);
  assert.deepEqual(metadata, {});
  assert.deepEqual([...tensors.keys()].sort(), [...src.keys()].sort());
  for (const [name, want] of src) {
    const got = tensors.get(name)!;
    assert.equal(got.dtype, want.dtype, name);
    assert.deepEqual(got.shape, want.shape, name);
    assert.equal(got.category, 'frozen');
    assert.deepEqual(rawBytes(got), rawBytes(want), `${name} bits (seed ${r.seed})`);
  }
  const i64 = tensors.get('t.i64')!.data() as BigInt64Array;
  assert.ok(i64 instanceof BigInt64Array);
  disposeAll(tensors); disposeAll(src);
  assert.equal(live(), before);
});

test('the written layout is the reference one: widest dtype first, then by name, contiguous, padded with spaces', () => {
  // The reference serializer orders by dtype (descending) then name, which keeps
  // every tensor aligned to its element size; this file is byte-identical to its output.
  const a = Tensor.from([1, 2], [2]), b = Tensor.from([3], [1], { dtype: 'i32' }), z = Tensor.from([5, 6, 7], [3], { dtype: 'bf16' });
  const u = Tensor.from([1], [1], { dtype: 'u8' }), l = Tensor.from([7], [1], { dtype: 'i64' });
  const path = fresh();
  writeSafetensors(path, { z, a, b, '0u': u, l }, { metadata: { format: 'pt' } });
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const text = buf.subarray(8, 8 + n).toString('utf8');
  assert.equal(text.trimEnd(),
    '{"__metadata__":{"format":"pt"},"l":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"b":{"dtype":"I32","shape":[1],"data_offsets":[16,20]},' +
    '"z":{"dtype":"BF16","shape":[3],"data_offsets":[20,26]},"0u":{"dtype":"U8","shape":[1],"data_offsets":[26,27]}}');
  assert.match(text, /^[^ ]* *$/, 'padding is trailing spaces');
  assert.equal(buf.length, 8 + n + 27);
  assert.deepEqual([...buf.subarray(8 + n + 8, 8 + n + 16)], [...new Uint8Array(new Float32Array([1, 2]).buffer)]);
  const h = readSafetensorsHeader(path);
  assert.equal(h.dataStart, 8 + n);
  assert.equal(h.fileSize, buf.length);
  assert.deepEqual(h.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end]),
    [['l', 'I64', [1], 0, 8], ['a', 'F32', [2], 8, 16], ['b', 'I32', [1], 16, 20], ['z', 'BF16', [3], 20, 26], ['0u', 'U8', [1], 26, 27]]);
  a.dispose(); b.dispose(); z.dispose(); u.dispose(); l.dispose();
});

test('a file built byte by byte from the spec reads correctly', () => {
  // w: F32 [2, 2] at [0, 16); ids: I64 [3] at [16, 40); h: F16 [2] at [40, 44); b: BF16 [1] at [44, 46)
  const data = new Uint8Array(46);
  const dv = new DataView(data.buffer);
  [1.5, -2, 0.25, 1e-3].forEach((v, i) => dv.setFloat32(i * 4, v, true));
  [7n, -1n, 2n ** 40n].forEach((v, i) => dv.setBigInt64(16 + i * 8, v, true));
  dv.setUint16(40, 0x3c00, true); // f16 1.0
  dv.setUint16(42, 0xc500, true); // f16 -5.0
  dv.setUint16(44, 0x4049, true); // bf16 3.140625
  const header = {
    __metadata__: { format: 'pt', note: 'hand made' },
    ids: { dtype: 'I64', shape: [3], data_offsets: [16, 40] },
    w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
    h: { dtype: 'F16', shape: [2], data_offsets: [40, 44] },
    b: { dtype: 'BF16', shape: [1], data_offsets: [44, 46] },
  };
  const path = fresh();
  writeFileSync(path, buildFile(header, data)); // unpadded header: legal too
  const before = live();
  const { tensors, metadata } = readSafetensors(path);
  assert.deepEqual(metadata, { format: 'pt', note: 'hand made' });
  assert.deepEqual([...tensors.keys()], ['w', 'ids', 'h', 'b'], 'file order');
  assert.deepEqual(Array.from(tensors.get('w')!.data() as Float32Array), [1.5, -2, 0.25, Math.fround(1e-3)]);
  assert.deepEqual(tensors.get('w')!.shape, [2, 2]);
  assert.deepEqual(Array.from(tensors.get('ids')!.data() as BigInt64Array), [7n, -1n, 2n ** 40n]);
  assert.deepEqual(Array.from(tensors.get('h')!.toFloat32()), [1, -5]);
  assert.deepEqual(Array.from(tensors.get('b')!.toFloat32()), [3.140625]);
  disposeAll(tensors);
  const only = readSafetensors(path, { filter: (n) => n === 'h', category: 'trainable', convert: { to: 'f32' } });
  assert.deepEqual([...only.tensors.keys()], ['h']);
  assert.equal(only.tensors.get('h')!.dtype, 'f32');
  assert.equal(only.tensors.get('h')!.category, 'trainable');
  assert.deepEqual(Array.from(only.tensors.get('h')!.data() as Float32Array), [1, -5]);
  disposeAll(only.tensors);
  assert.equal(live(), before);
});

test('metadata round trip, including awkward keys', () => {
  const t = Tensor.from([1], [1]);
  const path = fresh();
  const metadata = { format: 'pt', '0': 'zero', 'ünï': 'cödé "quoted"\n', __proto__x: '' };
  writeSafetensors(path, { '123': t, x: t }, { metadata });
  const { tensors, metadata: got } = readSafetensors(path);
  assert.deepEqual(got, metadata);
  assert.deepEqual([...tensors.keys()].sort(), ['123', 'x']);
  disposeAll(tensors); t.dispose();
});

test('conversion: f32 -> bf16 -> f32 equals the rounding helper; integers are left alone', () => {
  const r = rng();
  const vals = randn(1000, r, 3);
  vals.set([0, -0, Infinity, -Infinity, NaN, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, 1e-40]);
  const f = Tensor.from(vals, [1000]);
  const ints = Tensor.from([1, -2, 3], [3], { dtype: 'i32' });
  const halves = Tensor.from(new Uint16Array([0x3c00, 0x0001, 0x8400, 0x7bff, 0x7c00, 0xfe01]), [6], { dtype: 'f16' });
  const before = live();
  const p1 = fresh(), p2 = fresh();
  writeSafetensors(p1, { f, ints, halves }, { dtype: 'bf16' });
  const h1 = readSafetensorsHeader(p1);
  assert.deepEqual(h1.tensors.map((t) => t.dtype).sort(), ['BF16', 'BF16', 'I32']);
  const back = readSafetensors(p1, { convert: { to: 'f32' } }).tensors;
  const want = Array.from(vals, (v) => bf16ToF32(f32ToBf16(v)));
  const got = back.get('f')!.data() as Float32Array;
  assert.equal(back.get('f')!.dtype, 'f32');
  for (let i = 0; i < want.length; i++) assert.ok(Object.is(got[i], want[i]) || (Number.isNaN(got[i]) && Number.isNaN(want[i])), `element ${i}: ${got[i]} vs ${want[i]} (seed ${r.seed})`);
  assert.equal(back.get('ints')!.dtype, 'i32');
  assert.deepEqual(Array.from(back.get('ints')!.data() as Int32Array), [1, -2, 3]);
  const hw = Array.from(halves.data() as Uint16Array, (h) => bf16ToF32(f32ToBf16(f16ToF32(h))));
  assert.deepEqual(Array.from(back.get('halves')!.data() as Float32Array).map(String), hw.map(String));
  disposeAll(back);

  // Read-side conversion, f32 file -> bf16 tensors, bit for bit as f32ToBf16.
  writeSafetensors(p2, { f });
  const asBf16 = readSafetensors(p2, { convert: { to: 'bf16' } }).tensors.get('f')!;
  assert.equal(asBf16.dtype, 'bf16');
  assert.deepEqual(Array.from(asBf16.data() as Uint16Array), Array.from(vals, (v) => f32ToBf16(v)));
  asBf16.dispose();

  // Small chunks (many reads, many converted pieces) give the same bits, both ways.
  const p3 = fresh();
  writeSafetensors(p3, { f, ints, halves }, { dtype: 'bf16', chunkBytes: 100 });
  assert.deepEqual(readFileSync(p3), readFileSync(p1));
  for (const to of ['f32', 'bf16'] as const) {
    const whole = readSafetensors(p2, { convert: { to } }).tensors;
    const pieces = readSafetensors(p2, { convert: { to }, chunkBytes: 100 }).tensors;
    const same = readSafetensors(p3, { chunkBytes: 12 }).tensors;
    const plain = readSafetensors(p1).tensors;
    assert.deepEqual(rawBytes(pieces.get('f')!), rawBytes(whole.get('f')!), `chunked read to ${to}`);
    assert.deepEqual(rawBytes(same.get('f')!), rawBytes(plain.get('f')!), 'chunked plain read');
    disposeAll(whole); disposeAll(pieces); disposeAll(same); disposeAll(plain);
  }
  assert.equal(live(), before);
  f.dispose(); ints.dispose(); halves.dispose();
});

test('f16 widening is exact for all 65536 bit patterns', () => {
  const bits = new Uint16Array(65536);
  for (let i = 0; i < bits.length; i++) bits[i] = i;
  const t = Tensor.from(bits, [65536], { dtype: 'f16' });
  const path = fresh();
  writeSafetensors(path, { t });
  const wide = readSafetensors(path, { convert: { to: 'f32' } }).tensors.get('t')!;
  const got = wide.data() as Float32Array;
  for (let i = 0; i < 65536; i++) {
    const w = f16ToF32(i);
    if (!(Object.is(got[i], w) || (Number.isNaN(w) && Number.isNaN(got[i])))) assert.fail(`f16 0x${i.toString(16)}: ${got[i]} vs ${w}`);
  }
  wide.dispose(); t.dispose();
});

// Each corrupt file, and the phrase its error must carry.
function corruptions(): Array<[string, Buffer, RegExp]> {
  const d16 = new Uint8Array(16);
  const ok = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] }, ...extra });
  const len = (n: bigint, rest: Buffer = Buffer.alloc(0)): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(n); return Buffer.concat([b, rest]); };
  return [
    ['empty file', Buffer.alloc(0), /0 bytes is shorter than the 8-byte header length prefix/],
    ['7 bytes', Buffer.alloc(7), /shorter than the 8-byte header/],
    ['absurd header length', len(2n ** 62n, Buffer.from('{}')), /header length 4611686018427387904 exceeds the limit/],
    ['header longer than file', len(1000n, Buffer.from('{}')), /header length 1000 runs past the end of the file \(10 bytes\)/],
    ['invalid UTF-8', len(2n, Buffer.from([0xff, 0xfe])), /header is not valid UTF-8/],
    ['not JSON', buildFile(null, d16, { headerText: '{"a": ' }), /header: not valid JSON/],
    ['JSON array', buildFile([1, 2], d16), /header is not a JSON object \(got an array\)/],
    ['JSON null', buildFile(null, d16), /header is not a JSON object/],
    ['entry not an object', buildFile({ a: 5 }, d16), /tensor "a": entry is not an object/],
    ['missing dtype', buildFile({ a: { shape: [4], data_offsets: [0, 16] } }, d16), /tensor "a": missing dtype/],
    ['missing shape', buildFile({ a: { dtype: 'F32', data_offsets: [0, 16] } }, d16), /tensor "a": missing shape/],
    ['missing data_offsets', buildFile({ a: { dtype: 'F32', shape: [4] } }, d16), /tensor "a": missing data_offsets/],
    ['dtype not a string', buildFile({ a: { dtype: 4, shape: [4], data_offsets: [0, 16] } }, d16), /tensor "a": dtype must be a string/],
    ['unknown dtype', buildFile({ a: { dtype: 'Q9', shape: [4], data_offsets: [0, 16] } }, d16), /tensor "a": unknown dtype "Q9"/],
    ['shape not an array', buildFile({ a: { dtype: 'F32', shape: 4, data_offsets: [0, 16] } }, d16), /tensor "a": shape must be an array/],
    ['negative dim', buildFile({ a: { dtype: 'F32', shape: [-4], data_offsets: [0, 16] } }, d16), /tensor "a": shape\[0\] must be a non-negative integer, got -4/],
    ['fractional dim', buildFile({ a: { dtype: 'F32', shape: [2, 1.5], data_offsets: [0, 16] } }, d16), /shape\[1\] must be a non-negative integer, got 1.5/],
    ['unsafe dim', buildFile(null, d16, { headerText: '{"a":{"dtype":"F32","shape":[1e300],"data_offsets":[0,16]}}' }), /shape\[0\] must be a non-negative integer/],
    ['string dim', buildFile({ a: { dtype: 'F32', shape: ['4'], data_offsets: [0, 16] } }, d16), /shape\[0\] must be a non-negative integer, got "4"/],
    ['too many elements', buildFile({ a: { dtype: 'F32', shape: [2 ** 30, 2 ** 30], data_offsets: [0, 16] } }, d16), /has too many elements/],
    ['offsets not integers', buildFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16.5] } }, d16), /data_offsets must be an array of two non-negative integers/],
    ['offsets wrong arity', buildFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0] } }, d16), /data_offsets must be an array of two non-negative integers/],
    ['negative offset', buildFile({ a: { dtype: 'F32', shape: [0], data_offsets: [-4, -4] } }, d16), /data_offsets must be an array of two non-negative integers/],
    ['begin > end', buildFile({ a: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, d16), /data_offsets begin 8 > end 4/],
    ['end beyond data', buildFile({ a: { dtype: 'F32', shape: [8], data_offsets: [0, 32] } }, d16), /data_offsets end 32 is beyond the data area \(16 bytes/],
    ['truncated data', buildFile(ok(), d16.subarray(0, 10)), /data_offsets end 16 is beyond the data area \(10 bytes/],
    ['length mismatch', buildFile({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, d16), /byte length 16 does not match shape \[3\] of F32 \(12 bytes\)/],
    ['overlap', buildFile(ok({ b: { dtype: 'I32', shape: [2], data_offsets: [8, 16] } }), d16), /tensor "b" \[8, 16\) overlaps tensor "a" \[0, 16\)/],
    ['metadata not an object', buildFile(ok({ __metadata__: ['x'] }), d16), /__metadata__ must be an object mapping strings to strings/],
    ['metadata value not a string', buildFile(ok({ __metadata__: { format: 1 } }), d16), /__metadata__ must be an object mapping strings to strings, but "format" is 1/],
    ['unsupported dtype', buildFile({ a: { dtype: 'F64', shape: [2], data_offsets: [0, 16] } }, d16), /unsupported dtype F64 for tensor "a"/],
    ['unsupported dtype after a good one', buildFile(ok({ z: { dtype: 'BOOL', shape: [0], data_offsets: [16, 16] } }), d16), /unsupported dtype BOOL for tensor "z"/],
  ];
}

test('every corruption gives an Error naming the file and the problem, and leaks nothing', () => {
  const before = live();
  for (const [what, bytes, phrase] of corruptions()) {
    const path = fresh(what.replace(/\W+/g, '_'));
    writeFileSync(path, bytes);
    assert.throws(() => readSafetensors(path), (e: unknown) => {
      assert.ok(e instanceof Error, `${what}: threw a non-Error`);
      assert.ok(e.message.includes(path), `${what}: message does not name the file: ${e.message}`);
      assert.match(e.message, phrase, what);
      return true;
    }, what);
    assert.equal(live(), before, `${what}: memory leaked`);
  }
  // Legal oddities: a zero-element tensor, null metadata. (Gaps between
  // tensors and trailing bytes are refused, as the reference implementation
  // refuses them: see the cases above and robustness.test.ts.)
  const path = fresh();
  writeFileSync(path, buildFile({
    __metadata__: null, e: { dtype: 'I8', shape: [0, 3], data_offsets: [0, 0] }, a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] },
  }, new Uint8Array([9, 8])));
  const { tensors, metadata } = readSafetensors(path);
  assert.deepEqual(metadata, {});
  assert.deepEqual(Array.from(tensors.get('a')!.data() as Uint8Array), [9, 8]);
  assert.equal(tensors.get('e')!.numel, 0);
  disposeAll(tensors);
  // A tensor the filter skips may have a dtype we cannot hold.
  const f64 = fresh();
  writeFileSync(f64, buildFile({ d: { dtype: 'F64', shape: [1], data_offsets: [0, 8] }, a: { dtype: 'U8', shape: [1], data_offsets: [8, 9] } }, new Uint8Array(9)));
  const part = readSafetensors(f64, { filter: (n) => n !== 'd' });
  assert.deepEqual([...part.tensors.keys()], ['a']);
  disposeAll(part.tensors);
  assert.equal(live(), before);
});

test('a failed read after allocations frees them (allocation refused midway)', () => {
  const r = rng();
  const src = { a: randomTensor('f32', [64], r), b: randomTensor('f32', [1024], r) };
  const path = fresh();
  writeSafetensors(path, src);
  const before = live();
  memory.setAllocationLimit(1000); // 'a' (256 bytes) fits, 'b' (4096) does not
  try {
    assert.throws(() => readSafetensors(path), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'TB_OOM');
      assert.ok(e.message.includes(path) && /tensor "b"/.test(e.message), e.message);
      return true;
    });
  } finally {
    memory.setAllocationLimit(0);
  }
  assert.equal(live(), before);
  src.a.dispose(); src.b.dispose();
});

test('fuzz: mutated files either read consistently or throw an Error', { timeout: 60_000 }, () => {
  const r = rng();
  const rand = (n: number): number => Math.floor(r.next() * n);
  // Valid seeds: a few dtypes and shapes, with and without metadata, unpadded and padded.
  const seeds: Buffer[] = [];
  for (let s = 0; s < 4; s++) {
    const m = new Map<string, Tensor>();
    const dts: DType[] = ['f32', 'bf16', 'i64', 'u8', 'f16', 'i32'];
    for (let k = 0; k < 2 + s; k++) m.set(`layer.${k}.w`, randomTensor(dts[(s + k) % dts.length], [1 + rand(4), rand(3)], r));
    const p = fresh('seed');
    writeSafetensors(p, m, s % 2 ? { metadata: { format: 'pt', k: String(s) } } : {});
    seeds.push(readFileSync(p));
    disposeAll(m);
  }
  const snippets = ['-1', '1e309', '0.5', '"F64"', '"BF16"', '[]', '{}', 'null', 'true', '99999999999999999999', '[0,4]', '[4,0]',
    '[1,2,3]', '"__metadata__"', ',', ':', '"', '{', '}', '[', ']', '\\u0000', '"\uD800"', '9007199254740993', '[1e6,1e6]'];
  const before = live();
  const start = Date.now();
  let count = 0, ok = 0;
  const path = fresh('fuzz');
  for (; count < 300 && Date.now() - start < 5000; count++) {
    const seed = seeds[rand(seeds.length)];
    let b = Buffer.from(seed);
    const n = Number(b.readBigUInt64LE(0));
    const kind = rand(8);
    if (kind === 0) { for (let k = 1 + rand(4); k > 0; k--) b[8 + rand(n)] ^= 1 << rand(8); }
    else if (kind === 1) { b[rand(8)] ^= 1 << rand(8); }
    else if (kind === 2) b = b.subarray(0, rand(b.length));
    else if (kind === 3) b = Buffer.concat([b, Buffer.from(Array.from({ length: 1 + rand(64) }, () => rand(256)))]);
    else if (kind >= 6) {
      // structure-aware: replace one field of one entry with a random JSON value, or nudge a number
      const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, Record<string, unknown>>;
      const names = Object.keys(header);
      const entry = header[names[rand(names.length)]];
      const fields = Object.keys(entry);
      const field = fields[rand(fields.length)];
      const v = entry[field];
      if (kind === 6 && Array.isArray(v) && v.length) { const i = rand(v.length); v[i] = (v[i] as number) + rand(9) - 4; }
      else entry[field] = JSON.parse(snippets.filter((x) => { try { JSON.parse(x); return true; } catch { return false; } })[rand(17)]);
      const h = Buffer.from(JSON.stringify(header), 'utf8');
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(h.length));
      b = Buffer.concat([prefix, h, b.subarray(8 + n)]);
    } else {
      // splice a JSON snippet into the header; kind 5 keeps the length prefix consistent
      const text = b.subarray(8, 8 + n).toString('latin1');
      const at = rand(text.length), cut = rand(6);
      const h = Buffer.from(text.slice(0, at) + snippets[rand(snippets.length)] + text.slice(at + cut), 'latin1');
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(kind === 5 ? h.length : n));
      b = Buffer.concat([prefix, h, b.subarray(8 + n)]);
    }
    writeFileSync(path, b);
    try {
      const { tensors } = readSafetensors(path);
      for (const [name, t] of tensors) {
        const expect = t.shape.reduce((a, d) => a * d, 1);
        assert.equal(t.numel, expect, `${name}: numel`);
        assert.equal(rawBytes(t).byteLength, t.bytes, `${name}: bytes`);
      }
      disposeAll(tensors);
      ok++;
    } catch (e) {
      if (!(e instanceof Error) || e.name === 'AssertionError') throw e;
      assert.ok(e.message.includes(path), `message names the file: ${e.message} (seed ${r.seed})`);
    }
    try { readSafetensorsHeader(path); } catch (e) { if (!(e instanceof Error)) throw e; }
    assert.equal(live(), before, `memory leaked at mutation ${count} (seed ${r.seed})`);
  }
  assert.ok(count >= 50, `only ${count} mutations ran`);
  assert.ok(ok < count, 'some mutations must be rejected');
});

test('writeFileAtomic: replaces the file; a failure midway leaves the old file and no temp file', () => {
  const sub = mkdtempSync(join(dir, 'atomic-'));
  const target = join(sub, 'x.bin');
  writeFileAtomic(target, 'old contents');
  writeFileAtomic(target, [Buffer.from('new '), 'contents', new Uint16Array([0x4241])]);
  assert.equal(readFileSync(target, 'utf8'), 'new contentsAB');
  function* failing(): Generator<Uint8Array> { yield Buffer.from('partial'); throw new Error('producer failed'); }
  assert.throws(() => writeFileAtomic(target, failing()), (e: Error) => {
    assert.match(e.message, /could not write .*x\.bin: producer failed/);
    return true;
  });
  assert.equal(readFileSync(target, 'utf8'), 'new contentsAB');
  assert.deepEqual(readdirSync(sub), ['x.bin']);
  assert.throws(() => writeFileAtomic(join(sub, 'missing-dir', 'y'), 'z'), /could not write .*missing-dir.*ENOENT/);
  writeJsonAtomic(join(sub, 'c.json'), { a: [1] });
  assert.equal(readFileSync(join(sub, 'c.json'), 'utf8'), '{\n  "a": [\n    1\n  ]\n}\n');
  assert.deepEqual(readdirSync(sub).sort(), ['c.json', 'x.bin']);
});

test('writeSafetensors failing midway leaves the old file intact and no temp file', () => {
  const sub = mkdtempSync(join(dir, 'atomic-st-'));
  const path = join(sub, 'model.safetensors');
  const a = Tensor.from([1, 2, 3], [3]), b = Tensor.from([4, 5], [2]);
  writeSafetensors(path, { a, b });
  const good = readFileSync(path);
  // 'a' streams out, then 'b' fails while its bytes are being fetched.
  const big = Tensor.zeros([1 << 16]);
  const broken = Tensor.from([9], [1]);
  (broken as unknown as { data: () => never }).data = () => { throw new Error('device lost'); };
  assert.throws(() => writeSafetensors(path, { a: big, b: broken }), /could not write .*model\.safetensors: device lost/);
  assert.deepEqual(readFileSync(path), good);
  assert.deepEqual(readdirSync(sub), ['model.safetensors']);
  // Disposed tensors are refused before anything is written.
  const gone = Tensor.from([1], [1]);
  gone.dispose();
  assert.throws(() => writeSafetensors(path, { gone }), /model\.safetensors: tensor "gone" was disposed/);
  assert.deepEqual(readFileSync(path), good);
  assert.deepEqual(readdirSync(sub), ['model.safetensors']);
  a.dispose(); b.dispose(); big.dispose(); broken.dispose();
});
