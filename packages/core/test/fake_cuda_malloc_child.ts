// Run by fake_cuda_malloc.test.ts in a process of its own (the allocator is
// chosen once per process): TUNEBENCH_FAKE_CUDA=1 with the fake device's
// answers set by the parent. Prints one JSON line of what it observed.
import { Tensor, cudaInfo, memory } from '../src/index.js';

const MiB = 2 ** 20;
const cuda = () => memory.snapshot().cuda;
const take = (mib: number) => Tensor.zeros([(mib * MiB) / 4], { device: 'cuda', category: 'activation' });
const out: Record<string, unknown> = {};

const info = cudaInfo();
out.info = { available: info.available, fake: info.fake, memoryPool: info.memoryPool, allocator: info.allocator, totalBytes: info.totalBytes };

memory.emptyCache();
memory.resetPeak();
const base = cuda();
out.base = { live: base.liveTotal, reserved: base.reservedBytes };

// 3 MiB asked for: live 3 MiB, reserved a whole number of blocks >= 3 MiB
const a = take(3);
const s1 = cuda();
out.afterAlloc = { live: s1.liveTotal, reserved: s1.reservedBytes, cached: s1.cachedBytes };
a.dispose();
const s2 = cuda();
out.afterFree = { live: s2.liveTotal, reserved: s2.reservedBytes, cached: s2.cachedBytes };
// the same size again: the kept block, no new reservation
const b = take(3);
const s3 = cuda();
out.afterReuse = { live: s3.liveTotal, reserved: s3.reservedBytes };
b.dispose();
memory.emptyCache();
const s4 = cuda();
out.afterEmpty = { live: s4.liveTotal, reserved: s4.reservedBytes, cached: s4.cachedBytes, peak: s4.reservedPeakBytes };
memory.resetPeak();
out.afterResetPeak = { peak: cuda().reservedPeakBytes };

// out of memory with blocks kept: they are given back and the allocation retried
const total = info.totalBytes ?? 0;
const big = Math.floor((total * 0.6) / MiB);
const c = take(big);
c.dispose();
const kept = cuda();
out.keptBeforeRetry = { cached: kept.cachedBytes, reserved: kept.reservedBytes };
const other = big - 4;  // another size: the kept block cannot serve it, and both do not fit
let retried: unknown;
try {
  const d = take(other);
  const s5 = cuda();
  retried = { ok: true, live: s5.liveTotal, reserved: s5.reservedBytes, cached: s5.cachedBytes };
  d.dispose();
} catch (e) {
  retried = { ok: false, message: (e as Error).message };
}
out.retried = retried;
// more than the device has: refused as out of memory (TB_OOM), nothing counted
const liveBefore = cuda().liveTotal;
try {
  take(Math.ceil((total * 1.5) / MiB));
  out.tooBig = { refused: false };
} catch (e) {
  const err = e as Error & { code?: string; device?: string };
  out.tooBig = { refused: true, code: err.code, device: err.device, message: err.message, liveUnchanged: cuda().liveTotal === liveBefore };
}

// a CUDA round trip through the fallback keeps every byte
const h = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
const g = h.to('cuda');
out.roundTrip = [...g.to('cpu').toFloat32()];
g.dispose();
h.dispose();
console.log(JSON.stringify(out));
