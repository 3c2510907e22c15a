// The suite's kernel microbenchmarks: every row measured and finite, the
// peaks are rows of the same run, the roofline bound is decided by FLOP per
// byte, and nothing allocated is left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KERNEL_REPORT_FORMAT, type KernelCase, loadOpenblas, memory, peakCases, preset, runKernelCases, sweepKernelCases } from '@tunebench/core';
import { kernelFraction, measureKernels, methodPlugin, parseMethods } from '../src/index.js';

test('kernel rows: GFLOP/s and GB/s against peaks measured in the same run', async () => {
  const before = memory.snapshot().cpu.liveTotal;
  const lines: string[] = [];
  // QLoRA adds its 4-bit GEMM rows (forward and input gradient) beside a dense bf16 input-gradient row
  const spec = parseMethods('qlora4')[0];
  const extra = methodPlugin('qlora').kernelCases!(spec, { N: 64, inF: 64, outF: 192, seed: 0 });
  const k = await measureKernels({ cfg: preset('tiny'), batchSize: 2, seqLen: 32, loraRank: 4, timeMs: 10, iterations: 2, extra, log: (l) => lines.push(l) });
  assert.equal(memory.snapshot().cpu.liveTotal, before, 'every tensor disposed');
  assert.equal(k.format, KERNEL_REPORT_FORMAT);
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
    assert.equal(r.peakGflops, Math.max(...k.rows.filter((x) => x.section === 'gemm').map((x) => x.gflops)), 'compute peak = best dense GEMM of the run');
    assert.equal(r.peakGbps, k.rows[0].gbps, 'bandwidth peak = the stream row');
    const f = kernelFraction(r)!;
    assert.ok(f > 0 && f <= 1 + 1e-12, `${r.name}: fraction ${f}`);
    // roofline: memory-bound exactly when FLOP per byte is below the balance point
    const intensity = r.gflops / r.gbps!, balance = r.peakGflops / r.peakGbps!;
    if (r.name.startsWith('stream')) assert.equal(r.bound, 'memory');
    else assert.equal(r.bound, intensity < balance ? 'memory' : 'compute', r.name);
  }
  assert.equal(kernelFraction(k.rows[0]), 1, 'the stream row is its own peak');
  assert.equal(kernelFraction({ gflops: 1, peakGflops: 0 }), null, 'no usable peak, no fraction');
});

test('the CLI sweep goes through the same harness: same row format, OpenBLAS rows beside ours when installed', async () => {
  const before = memory.snapshot().cpu.liveTotal;
  const blas = loadOpenblas();
  function* cases(): Generator<KernelCase> {
    yield* peakCases(blas);
    yield* sweepKernelCases({ sections: ['gemm'], quick: true, tokens: 32 }, blas);
  }
  const k = await runKernelCases(cases(), { timeMs: 5, iterations: 2, tokens: 32, openblas: blas });
  assert.equal(memory.snapshot().cpu.liveTotal, before, 'every tensor disposed');
  assert.equal(k.format, KERNEL_REPORT_FORMAT);
  assert.equal(k.settings.tokens, 32);
  assert.equal(new Set(k.rows.map((r) => r.name)).size, k.rows.length, 'row names are unique (the report keys on them)');
  const ours = k.rows.filter((r) => r.section === 'gemm' && r.provider === 'tunebench');
  assert.ok(ours.some((r) => r.name === 'H=256 mlp up fwd x.W^T' && r.shape === '32x768x256'), 'intermediate 8H/3 rounded up to 256');
  assert.ok(ours.some((r) => r.name === 'H=1024 mlp down dW dY^T.h bf16 W') === false, 'bf16 rows only where B is a weight (x.W^T)');
  if (!blas.available) return;
  const theirs = k.rows.filter((r) => r.provider.startsWith('openblas'));
  assert.equal(theirs.length, 1 + 10, 'the 1024^3 GEMM and every sweep GEMM');
  for (const t of theirs) {
    assert.ok(t.maxRelDiff! < 1e-4, `${t.name}: same product (${t.maxRelDiff})`);
    const mine = k.rows.find((r) => t.name === `${r.name} (OpenBLAS ${blas.core})`)!;
    assert.ok(Math.abs(mine.vsOpenblas! - t.ms / mine.ms) < 1e-12, `${mine.name}: OpenBLAS time over ours`);
  }
});
