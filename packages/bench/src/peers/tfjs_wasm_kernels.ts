// Kernels the TensorFlow.js wasm backend (4.22) lacks and the peer's model
// needs, registered for 'wasm' in plain JS over the backend's heap: the same
// arithmetic as tfjs's cpu backend, so losses and gradients match it.
//
// UnsortedSegmentSum: the gradient of tf.gather (the embedding lookup).
import type * as TF from '@tensorflow/tfjs';

/** The parts of tfjs-backend-wasm's BackendWasm a JS kernel uses. */
interface WasmBackendHeap {
  makeOutput(shape: number[], dtype: TF.DataType): TF.TensorInfo;
  typedArrayFromHeap(t: TF.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** out[s, ...] = sum of x[i, ...] over the i with segmentIds[i] = s; ids outside
 * [0, numSegments) are dropped, as in TensorFlow.
 * x [S..., inner...], segmentIds [S...] (int32) -> out [numSegments, inner...]. */
export function unsortedSegmentSumForward(x: Float32Array, ids: Int32Array, numSegments: number, out: Float32Array): void {
  const inner = ids.length ? x.length / ids.length : 0;
  out.fill(0);
  for (let i = 0; i < ids.length; i++) {
    const s = ids[i];
    if (s < 0 || s >= numSegments) continue;
    const src = i * inner, dst = s * inner;
    for (let j = 0; j < inner; j++) out[dst + j] += x[src + j];
  }
}

let registered = false;
/** Registers the missing kernels for the 'wasm' backend, once per process. */
export function registerWasmKernels(tf: typeof TF): void {
  if (registered) return;
  registered = true;
  if (tf.getKernel('UnsortedSegmentSum', 'wasm')) return;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const { x, segmentIds } = inputs as { x: TF.TensorInfo; segmentIds: TF.TensorInfo };
      const { numSegments } = attrs as unknown as { numSegments: number };
      if (x.dtype !== 'float32' || segmentIds.dtype !== 'int32') {
        throw new Error(`UnsortedSegmentSum (wasm, tunebench): float32 x and int32 ids only, got ${x.dtype} and ${segmentIds.dtype}`);
      }
      const b = backend as unknown as WasmBackendHeap;
      const out = b.makeOutput([numSegments, ...x.shape.slice(segmentIds.shape.length)], 'float32');
      unsortedSegmentSumForward(b.typedArrayFromHeap(x) as Float32Array, b.typedArrayFromHeap(segmentIds) as Int32Array, numSegments, b.typedArrayFromHeap(out) as Float32Array);
      return out;
    },
  });
}
