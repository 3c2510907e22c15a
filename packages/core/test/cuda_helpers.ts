// CUDA conformance helpers: each op's CUDA kernel against its CPU reference
// on fresh random inputs. Without a CUDA build and device, the suites are
// skipped with the reason (node:test prints it).
import assert from 'node:assert/strict';
import { Tensor, cudaInfo } from '../src/index.js';

const info = cudaInfo();
/** false when a device is there, else the skip message */
export const skipCuda: false | string = info.available
  ? false
  : `no CUDA device (${info.compiled ? info.reason : 'this build has no CUDA backend'}); run on a GPU machine`;

/** A CUDA copy of a CPU tensor. */
export function onCuda(t: Tensor): Tensor {
  return t.to('cuda');
}

/** Float32 values of a tensor on any device. */
export function valuesOf(t: Tensor): Float32Array {
  if (t.device === 'cpu') return t.toFloat32();
  const h = t.to('cpu');
  try { return h.toFloat32(); } finally { h.dispose(); }
}

/** Normalised error max|got - want| / max(max|want|, 1e-30), after checking
 * every value of `got` is finite where `want` is. */
export function normalizedError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length, 'length');
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    if (Number.isFinite(w) && !Number.isFinite(g)) throw new Error(`non-finite value ${g} at ${i} (reference ${w})`);
    if (!Number.isFinite(w)) continue;
    num = Math.max(num, Math.abs(g - w));
    den = Math.max(den, Math.abs(w));
  }
  return num / Math.max(den, 1e-30);
}

/** Asserts a CUDA result (any device) matches the CPU reference within tol. */
export function assertConforms(what: string, got: Tensor, want: Tensor | ArrayLike<number>, tol: number, seed?: number): void {
  const w = want instanceof Tensor ? valuesOf(want) : want;
  const e = normalizedError(valuesOf(got), w);
  assert.ok(e <= tol, `${what}: normalised error ${e.toExponential(3)} > ${tol}${seed !== undefined ? ` (seed ${seed})` : ''}`);
}

/** Shapes used by the conformance suites: small, ragged (not multiples of any
 * tile size) and one larger. */
export const RAGGED = [1, 7, 33, 127, 257] as const;
