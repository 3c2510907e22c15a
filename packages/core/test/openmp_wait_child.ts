// Run by openmp_wait.test.ts in a process of its own (libgomp reads its wait
// settings once, when the addon loads it): the parent sets the environment,
// this reports what the loader chose and how much CPU the process burns while
// its kernel threads have nothing to do. Prints one JSON line.
import { Tensor, matmul, native, openmpWait } from '../src/index.js';

const idleMs = Number(process.env.IDLE_MS ?? '300');
// a GEMM big enough to run on every kernel thread (gemm.cc goes parallel from 64K elements of B)
const a = Tensor.from(new Float32Array(64 * 256).fill(0.5), [64, 256]);
const b = Tensor.from(new Float32Array(256 * 256).fill(0.25), [256, 256]);
for (let i = 0; i < 5; i++) matmul(a, b).dispose();
// then nothing: the main thread sleeps, the kernel threads wait for the next region
const before = process.cpuUsage(), t0 = performance.now();
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, idleMs);
const used = process.cpuUsage(before), wallMs = performance.now() - t0;
a.dispose(); b.dispose();
console.log(JSON.stringify({ openmpWait, threads: native.getThreads(), idleCpuMs: (used.user + used.system) / 1000, wallMs }));
