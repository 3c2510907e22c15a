// Decode GEMV benchmark: every weight format at the SmolLM-135M block shapes
// (hidden 576, intermediate 1536, 30 layers; q, k, v, o, gate, up, down as
// [out, in]), one "token" = the 210 projections of all layers for m rows of x,
// judged against a streaming read measured in the same run.
//
//   pnpm --filter @tunebench/core bench:decode
//   pnpm --filter @tunebench/core bench:decode -- --formats int4,nf4 --rows 1 --threads 1
//   pnpm --filter @tunebench/core bench:decode -- --help
import {
  type IntNBits, type IntNGroupSize, type QuantizedIntN, type QuantizedWeight, Tensor, disposeQuantized, f16ToF32, f32ToF16,
  intnBytes, intnConstants16, intnNativeOperand, native, nativeOperand, parseCli, intOption, quantize4bit, quantizeIntN,
} from '../src/index.js';
import { type NativeTensorHandle, nativeFn } from '../src/native.js';

const HELP = `Decode GEMV benchmark (CPU): GB/s of each weight format's x W^T against
the streaming-read roof of the same run.

Usage: pnpm --filter @tunebench/core bench:decode [-- options]

Options:
  --formats LIST   comma-separated: f32, bf16, int8, int8q8, int4, int4f16,
                   int3, int2, nf4, nf4dq, fp4 (default: all). int8q8: INT8
                   groups of 32 on Q8_0's symmetric grid (fp16 scale, offset
                   -128 scale); int4f16: INT4 quantized with constants 'f16'.
                   Both read fp16 copies of their group constants
                   (intnConstants16), as the fused decoder does, with one row
                   of x (with several: int8q8 with i8 only)
  --group N        INT-N group size (default 32); --block N: 4-bit block (default 64)
  --rows LIST      rows of x per call (default 1,4,16)
  --layers N       layers of the SmolLM-135M shape (default 30)
  --threads N      kernel threads (default 1)
  --isa NAME       avx512, avx2 or portable (default: the best compiled in)
  --act LIST       activations of the quantized formats: f32 (x as given),
                   i16 (x quantized to int16 per block, integer dot products;
                   AVX-512 with VBMI), i8 (x quantized to int8 per group, u8 x
                   s8 dot products; INT-N, NF4 and FP4; AVX-512 with VNNI, and
                   BITALG for NF4/FP4) (default: those built)
  --reps N         timed tokens per row count (default 15)
  --roof-mb N      size of the streaming-read buffer in MiB (default 512)
  -h, --help       this text

Each token's 210 calls run inside one native call (decode_gemv_timed), so
"ms/token" is the kernels' own time. Each timed token is preceded by one
read of the roof buffer, timed alone: "of roof" is the median over tokens of
(the token's GB/s) / (the read's GB/s just before it), so that the ratio holds
on a machine whose bandwidth drifts; its quartiles over the tokens follow in
brackets. "multiply floor" is the time of the token's products alone
(rows x weights) at the rate of the activations' dot-product instruction,
measured at the start (i8: vpdpbusd, i16: vpdpwssd, f32: vfmadd231ps, 12
independent chains on one thread): a row near it is bound by arithmetic,
not memory. "one call each" is the same token with
one JavaScript call per projection (the binding's argument parsing and x's
quantization each time), which the fused decode step does not pay.

Weights are random (uniform, then quantized as the format says). Bytes per
token count everything a call reads of W: codes, scales and offsets (int8q8
and int4f16 with i16: their fp16 copies), absmax or its double quantization. The roof reads a buffer far larger than the caches
with vector loads on one thread. Buffer and weights are native tensors, so
both sit in transparent huge pages where the system offers them (see the
line printed first; TUNEBENCH_HUGE_PAGES=0 puts both in 4 KiB pages).`;

const opt = parseCli({
  formats: { type: 'string', default: 'f32,bf16,int8,int8q8,int4,int4f16,int3,int2,nf4,nf4dq,fp4' },
  group: { type: 'string', default: '32' },
  block: { type: 'string', default: '64' },
  rows: { type: 'string', default: '1,4,16' },
  layers: { type: 'string', default: '30' },
  threads: { type: 'string', default: '1' },
  isa: { type: 'string' },
  act: { type: 'string' },
  reps: { type: 'string', default: '15' },
  'roof-mb': { type: 'string', default: '512' },
  help: { type: 'boolean', short: 'h', default: false },
} as const, HELP);

const int = (name: string, v: string): number => intOption(name, v, 1);
const layers = int('layers', opt.layers), reps = int('reps', opt.reps), roofMb = int('roof-mb', opt['roof-mb']);
const group = int('group', opt.group) as IntNGroupSize, block = int('block', opt.block);
const rows = opt.rows.split(',').map((s) => int('rows', s.trim()));
if (rows.some((m) => m > 16)) throw new Error('--rows: the decode GEMV takes at most 16 rows');
native.setThreads(int('threads', opt.threads));
const isas = nativeFn<() => string[]>('decode_isas')();
const isa = opt.isa ?? (native as unknown as { decodeKernel: string }).decodeKernel;
if (!isas.includes(isa)) throw new Error(`--isa ${isa}: this build has ${isas.join(', ')}`);
const decodeGemv = nativeFn<(x: NativeTensorHandle, w: object, y: NativeTensorHandle, m: number, o: number, i: number, isa?: string, act?: string) => void>('decode_gemv');
const i16Built = (native as unknown as { decodeI16: boolean }).decodeI16;
const i8Built = (native as unknown as { decodeI8?: boolean }).decodeI8 === true;
const i8Q4Built = (native as unknown as { decodeI8Q4?: boolean }).decodeI8Q4 === true;
const acts = (opt.act ?? (i8Built ? 'f32,i16,i8' : i16Built ? 'f32,i16' : 'f32')).split(',').map((s) => s.trim()).filter(Boolean);
for (const a of acts) if (a !== 'f32' && a !== 'i16' && a !== 'i8') throw new Error(`--act: unknown '${a}' (f32, i16 or i8)`);
if (acts.includes('i16') && (!i16Built || isa !== 'avx512')) throw new Error('--act i16: this build has no i16 decode path (it needs AVX-512 with VBMI, and --isa avx512)');
if (acts.includes('i8') && (!i8Built || isa !== 'avx512')) throw new Error('--act i8: this build has no i8 decode path (it needs AVX-512 with VBMI and VNNI, and --isa avx512)');
// i8 applies to INT-N and 4-bit blockwise weights (4-bit: where the build has it); any other call takes the i16 path, so those rows are not repeated
const actsOf = (format: string, m: number): string[] =>
  format === 'f32' || format === 'bf16' ? ['f32'] : acts.filter((a) => a !== 'i8' || (['int2', 'int3', 'int4', 'int4f16', 'int8', 'int8q8'].includes(format) || (i8Q4Built && ['nf4', 'nf4dq', 'fp4'].includes(format))));
const streamRead = nativeFn<(t: NativeTensorHandle, passes: number) => number>('stream_read');

const median = (a: number[]): number => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
/** The lower and upper quartiles (nearest rank). */
const quartiles = (a: number[]): [number, number] => {
  const s = [...a].sort((x, y) => x - y);
  return [s[Math.floor((s.length - 1) / 4)], s[Math.ceil((3 * (s.length - 1)) / 4)]];
};

// ---- the roof ----
// Measured once at the start (printed), and again before every timed token
// inside decode_gemv_timed (the "of roof" of each row).
const roofBuf = Tensor.zeros([(roofMb * 1024 * 1024) / 4]);
{
  const v = roofBuf.data() as Float32Array;
  for (let i = 0; i < v.length; i += 1024) v[i] = 1;  // touch every page
}
const roofRuns: number[] = [];
function roof(): number {
  streamRead(roofBuf.handle, 1);
  const gbs: number[] = [];
  for (let r = 0; r < Math.max(5, reps); r++) {
    const t0 = process.hrtime.bigint();
    streamRead(roofBuf.handle, 1);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    gbs.push((roofBuf.numel * 4) / s / 1e9);
  }
  roofRuns.push(median(gbs));
  return roofRuns[0];
}

// ---- weights ----
const C = 576, I = 1536;
const SHAPES: [number, number][] = [[C, C], [192, C], [192, C], [C, C], [I, C], [I, C], [C, I]];

let seed = 12345;
function uniform(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    a[i] = ((seed / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

interface Weight { op: object; out: number; inF: number; bytes: number; dispose(): void; op16?: object; bytes16?: number }

/** INT8 groups of 32 on Q8_0's symmetric grid: d = fp16(max |w| / 127), code round(w / d) + 128, offset -128 d. */
function q8Grid(vals: Float32Array, out: number, inF: number): QuantizedIntN {
  const nb = (out * inF) / 32, codes = new Uint8Array(out * inF), scales = new Float32Array(nb), offsets = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(vals[b * 32 + j]));
    const d = f16ToF32(f32ToF16(amax / 127));
    scales[b] = d;
    offsets[b] = -128 * d;
    for (let j = 0; j < 32; j++) codes[b * 32 + j] = (d > 0 ? Math.max(-127, Math.min(127, Math.round(vals[b * 32 + j] / d))) : 0) + 128;
  }
  const opts = { category: 'frozen' as const };
  return {
    kind: 'intn', bits: 8, groupSize: 32, shape: [out, inF], numel: out * inF, quantizer: 'rtn', bytes: intnBytes([out, inF], 8, 32),
    codes: Tensor.from(codes, [out * inF], { ...opts, dtype: 'u8' }), scales: Tensor.from(scales, [out, inF / 32], opts),
    offsets: Tensor.from(offsets, [out, inF / 32], opts),
  };
}

function makeWeight(format: string, out: number, inF: number): Weight {
  const vals = uniform(out * inF, 0.05);
  if (format === 'f32' || format === 'bf16') {
    const t = Tensor.from(vals, [out, inF], { dtype: format, category: 'frozen' });
    return { op: t.handle, out, inF, bytes: out * inF * (format === 'f32' ? 4 : 2), dispose: () => t.dispose() };
  }
  if (format === 'int8q8' || format === 'int4f16') {
    let q: QuantizedIntN;
    if (format === 'int8q8') {
      q = q8Grid(vals, out, inF);
    } else {
      const w = Tensor.from(vals, [out, inF], { category: 'workspace' });
      q = quantizeIntN(w, { bits: 4, groupSize: group, constants: 'f16' });
      w.dispose();
    }
    const c = intnConstants16(q);
    if (!c) throw new Error(`${format}: fp16 constants expected`);
    return {
      op: nativeOperand(q), out, inF, bytes: q.bytes, op16: intnNativeOperand(q, c), bytes16: q.codes.numel + c.tensor.numel,
      dispose: () => { c.tensor.dispose(); disposeQuantized(q); },
    };
  }
  const w = Tensor.from(vals, [out, inF], { category: 'frozen' });
  let q: QuantizedWeight;
  if (format.startsWith('int')) q = quantizeIntN(w, { bits: Number(format.slice(3)) as IntNBits, groupSize: group });
  else if (format === 'nf4' || format === 'fp4') q = quantize4bit(w, { format, blockSize: block });
  else if (format === 'nf4dq') q = quantize4bit(w, { format: 'nf4', blockSize: block, doubleQuant: true });
  else throw new Error(`--formats: unknown format '${format}'`);
  w.dispose();
  return { op: nativeOperand(q), out, inF, bytes: q.bytes, dispose: () => disposeQuantized(q) };
}

// ---- run ----
const roofGbs = roof();
console.log(`decode GEMV, SmolLM-135M blocks (${layers} layers x 7 projections), ${native.getThreads()} thread(s), isa ${isa}`);
{
  const { readFileSync } = await import('node:fs');
  let thp = 'unknown';
  try { thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').trim(); } catch { /* not Linux */ }
  const huge = /AnonHugePages:\s+(\d+) kB/.exec((() => { try { return readFileSync('/proc/self/smaps_rollup', 'utf8'); } catch { return ''; } })());
  console.log(`transparent huge pages: ${thp}; TUNEBENCH_HUGE_PAGES=${process.env.TUNEBENCH_HUGE_PAGES ?? '(unset: on)'}; AnonHugePages now ${huge ? `${Number(huge[1]) >> 10} MiB` : 'unknown'}`);
}
console.log(`streaming-read roof: ${roofGbs.toFixed(2)} GB/s (${roofMb} MiB buffer, 1 thread, median of ${Math.max(5, reps)})`);
// the multiply rate: what several rows of x are bound by (each row multiplies every weight once)
const dotRate = nativeFn<(kind: string, iters?: number) => number | null>('dot_rate');
const rates = new Map<string, number | null>();
for (const k of ['i8', 'i16', 'f32']) rates.set(k, median([dotRate(k), dotRate(k), dotRate(k)].map((v) => v ?? NaN)));
const rateText = (k: string) => (Number.isFinite(rates.get(k)) ? `${(rates.get(k)! / 1e9).toFixed(1)} G/s` : 'not built');
console.log(`multiply rate (1 thread, independent instructions): i8 ${rateText('i8')} u8 x s8 products (vpdpbusd), i16 ${rateText('i16')} (vpdpwssd), f32 ${rateText('f32')} FMA (vfmadd231ps)`);
const weightsPerToken = layers * SHAPES.reduce((t, [o, i]) => t + o * i, 0);
console.log('');
const decodeGemvTimed = nativeFn<(calls: unknown[], passes: number, isa?: string, act?: string, roof?: NativeTensorHandle) => { kernelS: number[]; roofS: number[] }>('decode_gemv_timed');

const header = ['format', 'act', 'rows', 'MB/token', 'ms/token', 'GB/s', 'roof GB/s', 'of roof', 'multiply floor ms', 'ms/token, one call each', 'tokens/s (x m)'];
const table: string[][] = [];
/** m rows times every weight of a token at the multiply rate of act's dot product ('-' where not measured) */
const floorMs = (act: string, m: number): string => {
  const r = rates.get(act);
  return r !== undefined && Number.isFinite(r) ? ((m * weightsPerToken) / r! * 1e3).toFixed(2) : '-';
};
for (const format of opt.formats.split(',').map((s) => s.trim()).filter(Boolean)) {
  const weights: Weight[] = [];
  try {
    for (let l = 0; l < layers; l++) for (const [o, i] of SHAPES) weights.push(makeWeight(format, o, i));
    const bytes = weights.reduce((s, w) => s + w.bytes, 0);
    for (const m of rows) for (const act of actsOf(format, m)) {
      const xs = new Map<number, Tensor>(), ys = new Map<number, Tensor>();
      for (const k of [C, I]) xs.set(k, Tensor.from(uniform(m * k, 1), [m, k]));
      for (const o of [C, 192, I]) ys.set(o, Tensor.zeros([m, o]));
      // int8q8 and int4f16 read the fp16 copies of their group constants, as the fused decoder does
      // (i16: one row of x; i8: one row, and INT8 with several)
      const h16 = act !== 'f32' && (format === 'int8q8' || format === 'int4f16');
      const op = (w: Weight) => (h16 ? w.op16! : w.op);
      const calls = weights.map((w) => [xs.get(w.inF)!.handle, op(w), ys.get(w.out)!.handle, m, w.out, w.inF]);
      decodeGemvTimed(calls, 1, isa, act);  // warm: pages faulted in, fp16 copies read once
      const { kernelS, roofS } = decodeGemvTimed(calls, reps, isa, act, roofBuf.handle);
      const oneEach: number[] = [];
      for (let r = 0; r < Math.min(reps, 5); r++) {
        const t0 = process.hrtime.bigint();
        for (const w of weights) decodeGemv(xs.get(w.inF)!.handle, op(w), ys.get(w.out)!.handle, m, w.out, w.inF, isa, act);
        oneEach.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      // the fp16 constants are read only by one-row calls on the kernels' eight-row path (the f32 ones otherwise)
      const bytesRead = h16 && (m === 1 || (act === 'i8' && format === 'int8q8')) ? weights.reduce((t, w) => t + w.bytes16!, 0) : bytes;
      const roofBytes = roofBuf.numel * 4;
      const s = median(kernelS), gbs = bytesRead / s / 1e9;
      const ratios = kernelS.map((k, r) => (bytesRead / k) / (roofBytes / roofS[r]));
      const ratio = median(ratios), [q1, q3] = quartiles(ratios);
      const pairedRoof = median(roofS.map((t) => roofBytes / t / 1e9));
      roofRuns.push(pairedRoof);
      table.push([format, act, String(m), (bytesRead / 1e6).toFixed(1), (s * 1e3).toFixed(2), gbs.toFixed(2), pairedRoof.toFixed(2),
        `${(100 * ratio).toFixed(0)}% (${(100 * q1).toFixed(0)}-${(100 * q3).toFixed(0)})`, floorMs(act, m), (median(oneEach) * 1e3).toFixed(2), (m / s).toFixed(1)]);
      for (const t of [...xs.values(), ...ys.values()]) t.dispose();
      console.log(table[table.length - 1].join('\t'));
    }
  } finally {
    for (const w of weights) w.dispose();
  }
}
console.log('');
const widths = header.map((h, c) => Math.max(h.length, ...table.map((r) => r[c].length)));
const line = (r: string[]) => r.map((v, c) => (c < 2 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join('  ');
console.log(line(header));
for (const r of table) console.log(line(r));
roofBuf.dispose();
console.log(`\nroof: ${roofGbs.toFixed(2)} GB/s at the start, ${Math.min(...roofRuns.slice(1)).toFixed(2)}-${Math.max(...roofRuns.slice(1)).toFixed(2)} beside the rows (medians); "of roof" pairs each token with the read just before it; load average ${(await import('node:os')).loadavg().map((v) => v.toFixed(2)).join(' ')}`);
