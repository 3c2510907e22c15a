// The suite's kernel microbenchmarks: every row measured and finite, the
// peaks are rows of the same run, the roofline bound is decided by FLOP per
// byte, and nothing allocated is left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { memory, preset } from '@tunebench/core';
import { kernelFraction, measureKernels, methodPlugin, parseMethods } from '../src/index.js';

test('kernel rows: GFLOP/s and GB/s against peaks measured in the same run', async () => {
  const before = memory.snapshot().cpu.liveTotal;
  const lines: string[] = [];
  // QLoRA adds its 4-bit GEMM rows (forward and input gradient) beside a dense bf16 input-gradient row
  const spec = parseMethods('qlora4')[0];
  const extra = methodPlugin('qlora').kernelCases!(spec, { N: 64, inF: 64, outF: 192, seed: 0 });
  const k = await measureKernels({ cfg: preset('tiny'), batchSize: 2, seqLen: 32, loraRank: 4, timeMs: 10, iterations: 2, extra, log: (l) => lines.push(l) });
  assert.equal(memory.snapshot().cpu.liveTotal, before, 'every tensor disposed');
  assert.deepEqual(k.settings.timeMs, 10);
  assert.equal(k.settings.tokens, 64);
  const names = k.rows.map((r) => r.name);
  for (const want of [/^stream/, /^gemm 1024x1024x1024$/, /^gemm x\.W\^T 64x192x64 f32 W$/, /bf16 W$/, /^lora forward r4/, /^lora backward r4/, /^attention forward B2 T32 Hq4 Hkv2 D16$/, /^attention backward/,
    /^nf4 gemm x\.W\^T 64x192x64 \(nf4\+dq b64\)$/, /^nf4 gemm dy\.W 64x64x192/, /^dense gemm dy\.W 64x64x192 bf16 W$/]) {
    assert.ok(names.some((n) => want.test(n)), `a row ${want}: ${names.join(', ')}`);
  }
  assert.equal(lines.length, k.rows.length, 'one progress line per kernel');
  for (const r of k.rows) {
    assert.ok(r.ms! > 0 && r.gflops > 0 && r.gbps! > 0, `${r.name}: measured`);
    assert.equal(r.peakGflops, Math.max(...k.rows.filter((x) => x.name.startsWith('gemm')).map((x) => x.gflops)), 'compute peak = best GEMM of the run');
    assert.equal(r.peakGbps, k.rows[0].gbps, 'bandwidth peak = the stream row');
    const f = kernelFraction(r)!;
    assert.ok(f > 0 && f <= 1 + 1e-12, `${r.name}: fraction ${f}`);
    // roofline: memory-bound exactly when FLOP per byte is below the balance point
    const intensity = r.gflops / r.gbps!, balance = r.peakGflops / r.peakGbps!;
    if (r.name.startsWith('stream')) assert.equal(r.bound, 'memory');
    else assert.equal(r.bound, intensity < balance ? 'memory' : 'compute', r.name);
  }
  assert.equal(kernelFraction(k.rows[0]), 1, 'the stream row is its own peak');
  assert.equal(kernelFraction({ name: 'x', gflops: 1, peakGflops: 0 }), null, 'no usable peak, no fraction');
});
