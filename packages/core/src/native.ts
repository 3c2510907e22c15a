// Loads the native addon and gives it a hand-written type.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';

export interface NativeTensorHandle {
  readonly disposed: boolean;
  readonly bytes: number;
  dispose(): void;
  view(): ArrayBuffer;
}

export interface DeviceMemory {
  live: Record<string, number>;
  peak: Record<string, number>;
  liveTotal: number;
  peakTotal: number;
  allocations: number;
  cachedBytes: number;
  /** CUDA only: bytes the caching pool holds from the driver, now and at most since the last reset */
  reservedBytes?: number;
  reservedPeakBytes?: number;
  /** CUDA only: cudaMemGetInfo */
  deviceFreeBytes?: number;
  deviceTotalBytes?: number;
}

export interface CudaInfo {
  /** this build contains the CUDA backend */
  compiled: boolean;
  /** a CUDA device is usable now */
  available: boolean;
  /** why not, when not available */
  reason?: string;
  /** TUNEBENCH_FAKE_CUDA=1: "CUDA" tensors in host memory, CPU kernels (a plumbing test, never a measurement) */
  fake?: boolean;
  name?: string;
  /** compute capability, e.g. "9.0" */
  capability?: string;
  sms?: number;
  totalBytes?: number;
  driverVersion?: number;
  runtimeVersion?: number;
  /** where device memory comes from: true, the stream-ordered memory pool;
   * false, cudaMalloc behind a block cache (the device has no memory pools,
   * its pool could not be set up, or TUNEBENCH_CUDA_NO_MEMPOOL=1) */
  memoryPool?: boolean;
  /** the allocator in words, and why not the pool when it is not */
  allocator?: string;
}

/** The binding. Functions take native tensor handles and plain numbers; the
 * typed wrappers in ops/ validate shapes and dtypes before calling them. */
export interface NativeBinding {
  NativeTensor: new (numel: number, dtype: number, category: number, device: number) => NativeTensorHandle;
  memorySnapshot(): Record<'cpu' | 'cuda', DeviceMemory>;
  memoryResetPeak(): void;
  memoryEmptyCache(): void;
  setAllocLimit(bytes: number): void;
  getThreads(): number;
  setThreads(n: number): void;
  cudaCompiled: boolean;
  /** usable CUDA devices (0 without a CUDA build, driver or device) */
  cudaDevices(): number;
  cudaInfo(): CudaInfo;
  /** dst = src (same byte count, any devices); returns once the bytes are there */
  copy_tensor(src: NativeTensorHandle, dst: NativeTensorHandle): void;
  /** rows of rowElems elements, src[srcOffset + r*srcPitch ..] -> dst[dstOffset + r*dstPitch ..]
   * (elements of the tensors' common size, any devices); returns once the bytes are there */
  copy_rows(src: NativeTensorHandle, srcOffset: number, srcPitch: number, dst: NativeTensorHandle,
            dstOffset: number, dstPitch: number, rowElems: number, rows: number): void;
  /** waits for the CUDA stream (no-op on the CPU) */
  synchronize(): void;
  opFamilies: string[];
  gemmKernel: string;
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number,
       A: NativeTensorHandle, lda: number, B: NativeTensorHandle, ldb: number, beta: number,
       C: NativeTensorHandle, ldc: number, reference?: boolean): void;
  [name: string]: unknown;
}

function addonPath(): string {
  const override = process.env.TUNEBENCH_ADDON;
  if (override) return resolve(override);
  // src/ and dist/ sit at the same depth under the package root.
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, '..', 'build', 'Release', 'tunebench.node');
}

/**
 * How long an idle kernel thread spins before it sleeps. The kernels run on
 * OpenMP (libgomp): a thread waiting for a region or at a barrier busy-waits
 * for GOMP_SPINCOUNT iterations (libgomp's default 300000, about 3 ms; with
 * OMP_WAIT_POLICY=ACTIVE about 5 minutes) before blocking on a futex. A
 * decode step is many short regions with JavaScript in between, so with the
 * default the workers hardly ever sleep, and on cores another process also
 * uses they spin away the time slices the threads doing the work need: 2
 * threads beside one busy process ran decode and training several times
 * slower than 1 thread (`pnpm bench:threads`). 100 iterations (about a
 * microsecond) is what libgomp itself uses when it knows its threads
 * outnumber the CPUs; it cannot know that other processes share them.
 * Measured beside a busy process on a loaded 2-core machine, 10000 and 1000
 * still lost to 100 and 0 (docs/benchmarks/2026-12-06-threads.md).
 */
export const DEFAULT_GOMP_SPINCOUNT = 100;

/** Where the OpenMP wait settings came from (see openmpWait). */
export interface OpenMpWait {
  /** 'tunebench': the loader set GOMP_SPINCOUNT; 'user': the environment
   * already had OMP_WAIT_POLICY or GOMP_SPINCOUNT, left as it was;
   * 'unset': the addon was loaded from a worker thread, whose process.env
   * is its own copy and cannot reach the runtime (the runtime's default holds) */
  source: 'tunebench' | 'user' | 'unset';
  /** the environment's values when the addon was loaded */
  OMP_WAIT_POLICY?: string;
  GOMP_SPINCOUNT?: string;
}

/**
 * libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, in its constructor,
 * which runs when loading the addon first loads libgomp; so they are set here,
 * before require(). A user's own setting of either is respected. Setting
 * process.env on the main thread changes the process environment (setenv);
 * on a worker thread it changes only that thread's copy, so nothing is set.
 */
export function configureOpenMpWait(env: NodeJS.ProcessEnv = process.env, mainThread = isMainThread): OpenMpWait {
  const policy = env.OMP_WAIT_POLICY, spin = env.GOMP_SPINCOUNT;
  const given = (v: string | undefined) => v !== undefined && v.trim() !== '';
  if (given(policy) || given(spin)) {
    return { source: 'user', ...(given(policy) ? { OMP_WAIT_POLICY: policy } : {}), ...(given(spin) ? { GOMP_SPINCOUNT: spin } : {}) };
  }
  if (!mainThread) return { source: 'unset' };
  env.GOMP_SPINCOUNT = String(DEFAULT_GOMP_SPINCOUNT);
  return { source: 'tunebench', GOMP_SPINCOUNT: env.GOMP_SPINCOUNT };
}

/** The OpenMP wait settings the addon was loaded with. */
export let openmpWait: OpenMpWait = { source: 'unset' };

function load(): NativeBinding {
  const path = addonPath();
  if (!existsSync(path)) {
    throw new Error(`tunebench native addon not found at ${path}. Build it first: pnpm build (needs CMake and a C++ compiler).`);
  }
  openmpWait = configureOpenMpWait();
  const require = createRequire(import.meta.url);
  return require(path) as NativeBinding;
}

export const native: NativeBinding = load();

/** A binding function by name, typed by the caller. */
export function nativeFn<F extends (...args: never[]) => unknown>(name: string): F {
  const f = native[name];
  if (typeof f !== 'function') throw new Error(`native op '${name}' is missing from the addon (rebuild with pnpm build)`);
  return f as F;
}
