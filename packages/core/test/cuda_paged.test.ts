// Paged optimizer state: CUDA managed memory for tensors of category
// optimizer_host on cuda, prefetched to the GPU for each optimizer step and
// back to the host after it (cuda/managed.cu). The option and the prefetch
// binding are checked everywhere; the managed allocation, its accounting and
// the paged optimizers on GPU machines.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AdamW, AdamW8bit, Tensor, memory, prefetch, type Parameter } from '../src/index.js';
import { assertConforms, onCuda, skipCuda } from './cuda_helpers.js';
import { randn, rng } from './helpers.js';

describe('paged optimizer state (everywhere)', () => {
  test('is refused for CPU parameters: there is nothing to page', () => {
    const p: Parameter = { name: 'w', value: Tensor.zeros([4, 4]), grad: Tensor.zeros([4, 4]) };
    assert.throws(() => new AdamW([p], { paged: true }), /paged optimizer state is CUDA managed memory; parameter w is on cpu/);
    assert.throws(() => new AdamW8bit([p], { paged: true }), /paged optimizer state is CUDA managed memory; parameter w is on cpu/);
    p.value.dispose(); p.grad!.dispose();
  });

  test('prefetch leaves tensors that are not managed alone and checks its device', () => {
    const t = Tensor.zeros([8], { category: 'optimizer_host' });
    assert.equal(prefetch(t, 'cuda'), false);
    assert.throws(() => prefetch(t, 'gpu' as 'cuda'), /device must be 'cpu' or 'cuda'/);
    t.dispose();
  });
});

describe('paged optimizer state on CUDA', { skip: skipCuda }, () => {
  test('optimizer_host tensors on cuda are managed memory, counted under optimizer_host on cuda', () => {
    const before = memory.snapshot().cuda.live.optimizer_host;
    const t = Tensor.zeros([1000, 257], { category: 'optimizer_host', device: 'cuda' });
    assert.equal(memory.snapshot().cuda.live.optimizer_host - before, 1000 * 257 * 4);
    assert.equal(prefetch(t, 'cuda'), true);
    assert.equal(prefetch(t, 'cpu'), true);
    const h = t.to('cpu');
    assert.ok((h.data() as Float32Array).every((v) => v === 0), 'fresh managed memory is zeroed');
    // values survive the trips
    const src = Tensor.from(randn(1000 * 257, rng()), [1000, 257]), m = src.to('cuda', { category: 'optimizer_host' });
    prefetch(m, 'cuda'); prefetch(m, 'cpu'); prefetch(m, 'cuda');
    assertConforms('after prefetches', m, src, 0);
    for (const x of [t, h, src, m]) x.dispose();
    assert.equal(memory.snapshot().cuda.live.optimizer_host, before);
  });

  test('more managed memory than the device has free is refused with TB_OOM', () => {
    const free = memory.snapshot().cuda.deviceFreeBytes!;
    const numel = Math.ceil(free / 4) + (1 << 20);
    assert.throws(() => Tensor.zeros([numel], { category: 'optimizer_host', device: 'cuda' }),
      (e: Error & { code?: string; category?: string; device?: string }) =>
        e.code === 'TB_OOM' && e.category === 'optimizer_host' && e.device === 'cuda');
  });

  for (const kind of ['adamw', 'adamw8bit'] as const) {
    test(`paged ${kind} steps like the unpaged one, its state counted as optimizer_host`, () => {
      const r = rng();
      const shapes = [[64, 96], [33], [4096 + 7]];
      const numel = shapes.map((s) => s.reduce((a, b) => a * b, 1));
      const vals = numel.map((n) => randn(n, r)), gs = numel.map((n) => randn(n, r));
      const mk = (): Parameter[] => shapes.map((s, k) => {
        const v = Tensor.from(vals[k], s), g = Tensor.from(gs[k], s);
        const p = { name: `p${k}`, value: onCuda(v), grad: onCuda(g) };
        v.dispose(); g.dispose();
        return p;
      });
      const pa = mk(), pb = mk();
      const Opt = kind === 'adamw' ? AdamW : AdamW8bit;
      const before = memory.snapshot().cuda.live.optimizer_host;
      const paged = new Opt(pa, { paged: true }), plain = new Opt(pb);
      assert.equal(memory.snapshot().cuda.live.optimizer_host - before, paged.stateBytes());
      for (const t of paged.stateTensors().values()) assert.equal(t.category, 'optimizer_host');
      for (let i = 0; i < 3; i++) { paged.step(1e-2); plain.step(1e-2); }
      pa.forEach((p, k) => assertConforms(p.name, p.value, pb[k].value, 0, r.seed));
      paged.dispose(); plain.dispose();
      for (const p of [...pa, ...pb]) { p.value.dispose(); p.grad!.dispose(); }
    });
  }
});
