import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CATEGORIES, Tensor, bf16ToF32, f32ToBf16, memory, native } from '../src/index.js';

test('allocations are counted exactly per category, live and peak', () => {
  memory.resetPeak();
  const before = memory.snapshot().cpu;
  const a = Tensor.zeros([3, 5], { category: 'frozen', dtype: 'bf16' });      // 30 bytes
  const b = Tensor.zeros([7], { category: 'optimizer', dtype: 'f32' });       // 28 bytes
  const c = Tensor.zeros([2, 2, 2], { category: 'optimizer', dtype: 'i32' }); // 32 bytes
  let s = memory.snapshot().cpu;
  assert.equal(s.live.frozen - before.live.frozen, 30);
  assert.equal(s.live.optimizer - before.live.optimizer, 60);
  assert.equal(s.liveTotal - before.liveTotal, 90);
  assert.equal(s.allocations - before.allocations, 3);
  b.dispose();
  s = memory.snapshot().cpu;
  assert.equal(s.live.optimizer - before.live.optimizer, 32);
  assert.equal(s.peak.optimizer - before.live.optimizer, 60, 'peak keeps the high-water mark');
  assert.equal(s.peakTotal - before.liveTotal, 90);
  memory.resetPeak();
  s = memory.snapshot().cpu;
  assert.equal(s.peak.optimizer, s.live.optimizer);
  assert.equal(s.peakTotal, s.liveTotal);
  a.dispose(); c.dispose();
  const after = memory.snapshot().cpu;
  for (const cat of CATEGORIES) assert.equal(after.live[cat], before.live[cat], `category ${cat} back to where it was`);
});

test('dispose is safe twice and detaches views', () => {
  const t = Tensor.from([1, 2, 3, 4], [2, 2]);
  const v = t.data() as Float32Array;
  assert.deepEqual(Array.from(v), [1, 2, 3, 4]);
  t.dispose();
  t.dispose();
  assert.equal(t.disposed, true);
  assert.equal(v.length, 0, 'the old view is detached, not dangling');
  assert.throws(() => t.data(), /disposed/);
});

test('views are zero-copy', () => {
  const t = Tensor.zeros([4]);
  const v1 = t.data() as Float32Array;
  v1[2] = 7;
  const again = Tensor.zeros([1]);
  assert.equal((t.data() as Float32Array)[2], 7);
  t.dispose(); again.dispose();
});

test('dtypes: sizes, bf16 rounding, typed views', () => {
  const sizes = { f32: 4, bf16: 2, f16: 2, u8: 1, i32: 4, i8: 1, i64: 8 } as const;
  for (const [dtype, size] of Object.entries(sizes)) {
    const t = Tensor.zeros([5], { dtype: dtype as keyof typeof sizes });
    assert.equal(t.bytes, 5 * size);
    assert.equal(t.handle.bytes, 5 * size);
    t.dispose();
  }
  assert.equal(f32ToBf16(1.0), 0x3f80);
  assert.equal(bf16ToF32(0x3f80), 1.0);
  // 1 + 2^-8 is halfway between bf16 1.0 and 1+2^-7: ties to even -> 1.0
  assert.equal(bf16ToF32(f32ToBf16(1 + 2 ** -8)), 1.0);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
  const b = Tensor.from([0.5, -2, 3.140625], [3], { dtype: 'bf16' });
  assert.deepEqual(Array.from(b.toFloat32()), [0.5, -2, 3.140625]);
  b.dispose();
});

test('bad shapes, dtypes and categories are rejected with clear errors', () => {
  assert.throws(() => Tensor.zeros([2, -1]), /non-negative integers/);
  assert.throws(() => Tensor.zeros([2.5]), /non-negative integers/);
  assert.throws(() => Tensor.zeros([2], { dtype: 'f64' as never }), /unknown dtype 'f64'/);
  assert.throws(() => Tensor.zeros([2], { category: 'weights' as never }), /unknown memory category 'weights'/);
  assert.throws(() => Tensor.from([1, 2, 3], [2, 2]), /3 values do not fill shape \[2, 2\]/);
  assert.throws(() => new native.NativeTensor(-1, 0, 0, 0), /non-negative integer/);
});

test('out-of-memory is an error naming the bytes and category, and nothing leaks', () => {
  const before = memory.snapshot().cpu.liveTotal;
  memory.setAllocationLimit(1 << 20);
  try {
    assert.throws(() => Tensor.zeros([1 << 20], { category: 'activation' }), (e: Error & { code?: string; bytes?: number }) => {
      assert.equal(e.code, 'TB_OOM');
      assert.equal(e.bytes, 4 << 20);
      assert.match(e.message, /out of memory: could not allocate 4194304 bytes of activation on cpu/);
      return true;
    });
  } finally {
    memory.setAllocationLimit(0);
  }
  assert.equal(memory.snapshot().cpu.liveTotal, before);
});

test('a tensor collected without dispose is freed by its finalizer', async (t) => {
  if (typeof global.gc !== 'function') { t.skip('run node with --expose-gc to check finalizers'); return; }
  const before = memory.snapshot().cpu.live.workspace;
  (() => { Tensor.zeros([1 << 16], { category: 'workspace' }); })();
  for (let i = 0; i < 10 && memory.snapshot().cpu.live.workspace !== before; i++) {
    global.gc();
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(memory.snapshot().cpu.live.workspace, before);
});

test('large blocks are cached for reuse, handed back zeroed, and released by emptyCache', () => {
  memory.emptyCache();
  assert.equal(memory.snapshot().cpu.cachedBytes, 0);
  const a = Tensor.zeros([1 << 18]);  // 1 MiB
  (a.data() as Float32Array).fill(7);
  const live = memory.snapshot().cpu.liveTotal;
  a.dispose();
  const s1 = memory.snapshot().cpu;
  assert.equal(s1.liveTotal, live - (1 << 20), 'live bytes drop at once');
  assert.equal(s1.cachedBytes, 1 << 20, 'the block is kept');
  const b = Tensor.zeros([1 << 18]);
  assert.equal(memory.snapshot().cpu.cachedBytes, 0, 'the same block is reused');
  assert.ok((b.data() as Float32Array).every((x) => x === 0), 'a reused block is zeroed');
  b.dispose();
  memory.emptyCache();
  assert.equal(memory.snapshot().cpu.cachedBytes, 0);
});

// ---- huge-page blocks (tensor.cc): blocks of 64 KiB and more come from
// 2 MiB-aligned mappings asked for transparent huge pages ----

test('medium and large CPU blocks never overlap: random sizes, filled, freed in random order', () => {
  let seed = 7;
  const rnd = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 2 ** 32; };
  const live: { t: Tensor; v: number }[] = [];
  for (let round = 0; round < 200; round++) {
    if (live.length > 0 && rnd() < 0.45) {
      const i = Math.floor(rnd() * live.length);
      const { t, v } = live.splice(i, 1)[0];
      const d = t.data() as Float32Array;
      assert.ok(d[0] === v && d[d.length - 1] === v && d[d.length >> 1] === v, `block ${t.numel} floats lost its contents`);
      t.dispose();
    } else {
      // 16 KiB .. 6 MiB: below the slab size, slab blocks, own mappings
      const n = Math.floor(4096 * Math.pow(400, rnd()));
      const t = Tensor.zeros([n]);
      (t.data() as Float32Array).fill(round + 1);
      live.push({ t, v: round + 1 });
    }
  }
  for (const { t, v } of live) {
    const d = t.data() as Float32Array;
    assert.ok(d.every((x) => x === v), `block ${t.numel} floats lost its contents`);
    t.dispose();
  }
});

test('a large CPU tensor is backed by transparent huge pages where the system offers them', { skip: !thpOffered() && 'transparent huge pages are off here' }, () => {
  const before = anonHugeKb();
  const t = Tensor.zeros([16 * 1024 * 1024]);  // 64 MiB, touched by zeroing
  try {
    const after = anonHugeKb();
    assert.ok(after - before >= 32 * 1024, `AnonHugePages grew by ${after - before} kB for a 64 MiB tensor`);
  } finally {
    t.dispose();
  }
});

function thpOffered(): boolean {
  try {
    const mode = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    return /\[(always|madvise)\]/.test(mode) && process.env.TUNEBENCH_HUGE_PAGES !== '0';
  } catch { return false; }
}

function anonHugeKb(): number {
  const m = /AnonHugePages:\s+(\d+) kB/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'));
  return m ? Number(m[1]) : 0;
}
