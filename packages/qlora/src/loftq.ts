// LoftQ initialisation (Li et al. 2023): start the adapter at the best rank-r
// correction of the quantization error, so that deq(Q) + s·B·A is closer to
// the original W than deq(Q) alone. Alternating:
//   Q_t = quant(W - s·B·A),  R_t = W - deq(Q_t),  s·B·A = best rank-r approximation of R_t
// with B·A split evenly: B = U·sqrt(S)/sqrt(s), A = sqrt(S)·Vᵀ/sqrt(s), so that
// s·B·A = U·S·Vᵀ whatever the LoRA scale s is (alpha/r or alpha/sqrt(r)).
//
// The rank-r SVD is randomized (Halko, Martinsson, Tropp 2011): a Gaussian
// sketch of r + 8 columns, two power iterations with re-orthonormalisation,
// then the exact SVD of the small projected matrix (Jacobi eigenvalues of its
// Gram matrix). The GEMMs run in the native core; the small dense steps here.
import { type Quantized4bit, Rng, Tensor, addInPlace, dequantize4bit, disposeQuantized, matmul, quantize4bit } from '@tunebench/core';

export interface LowRank {
  /** [m, r] = U·sqrt(S) */
  left: Float32Array;
  /** [r, n] = sqrt(S)·Vᵀ */
  right: Float32Array;
  /** singular values, descending */
  sigma: Float64Array;
}

/** Orthonormalises the k columns of Y [m, k] in place (modified Gram-Schmidt, twice for stability). */
function orthonormalizeColumns(Y: Float32Array, m: number, k: number): void {
  const col = new Float64Array(m);
  for (let j = 0; j < k; j++) {
    for (let i = 0; i < m; i++) col[i] = Y[i * k + j];
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < m; i++) dot += Y[i * k + p] * col[i];
        for (let i = 0; i < m; i++) col[i] -= dot * Y[i * k + p];
      }
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += col[i] * col[i];
    norm = Math.sqrt(norm);
    // a dependent column (rank below k) becomes zero rather than noise
    const inv = norm > 1e-30 ? 1 / norm : 0;
    for (let i = 0; i < m; i++) Y[i * k + j] = col[i] * inv;
  }
}

/** Eigen-decomposition of a symmetric k x k matrix (cyclic Jacobi): values descending, vectors as columns of V. */
function symmetricEigen(a: Float64Array, k: number): { values: Float64Array; vectors: Float64Array } {
  const A = Float64Array.from(a), V = new Float64Array(k * k);
  for (let i = 0; i < k; i++) V[i * k + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0, diag = 0;
    for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) (i === j ? (diag += A[i * k + j] ** 2) : (off += A[i * k + j] ** 2));
    if (off <= 1e-30 * Math.max(diag, 1e-300)) break;
    for (let p = 0; p < k - 1; p++) {
      for (let q = p + 1; q < k; q++) {
        const apq = A[p * k + q];
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (A[q * k + q] - A[p * k + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let i = 0; i < k; i++) {  // columns p, q
          const aip = A[i * k + p], aiq = A[i * k + q];
          A[i * k + p] = c * aip - s * aiq;
          A[i * k + q] = s * aip + c * aiq;
        }
        for (let i = 0; i < k; i++) {  // rows p, q
          const api = A[p * k + i], aqi = A[q * k + i];
          A[p * k + i] = c * api - s * aqi;
          A[q * k + i] = s * api + c * aqi;
        }
        for (let i = 0; i < k; i++) {
          const vip = V[i * k + p], viq = V[i * k + q];
          V[i * k + p] = c * vip - s * viq;
          V[i * k + q] = s * vip + c * viq;
        }
      }
    }
  }
  const order = Array.from({ length: k }, (_, i) => i).sort((x, y) => A[y * k + y] - A[x * k + x]);
  const values = new Float64Array(k), vectors = new Float64Array(k * k);
  order.forEach((src, dst) => {
    values[dst] = A[src * k + src];
    for (let i = 0; i < k; i++) vectors[i * k + dst] = V[i * k + src];
  });
  return { values, vectors };
}

/** Best rank-r approximation of M [m, n] (f32), randomized, seeded. */
export function lowRankApprox(M: Tensor, r: number, seed = 0, powerIters = 2): LowRank {
  const [m, n] = M.shape;
  if (!Number.isInteger(r) || r < 1 || r > Math.min(m, n)) throw new RangeError(`lowRankApprox: rank ${r} must be in 1..${Math.min(m, n)} for a [${m}, ${n}] matrix`);
  const k = Math.min(r + 8, m, n);
  const rng = new Rng(seed);
  const omega = Tensor.from(Float32Array.from({ length: n * k }, () => rng.normal()), [n, k], { category: 'workspace' });
  const owned: Tensor[] = [omega];
  try {
    let Y = matmul(M, omega, { category: 'workspace' });  // [m, k]
    owned.push(Y);
    orthonormalizeColumns(Y.data() as Float32Array, m, k);
    for (let it = 0; it < powerIters; it++) {
      const Z = matmul(M, Y, { transA: true, category: 'workspace' });  // [n, k]
      owned.push(Z);
      orthonormalizeColumns(Z.data() as Float32Array, n, k);
      Y = matmul(M, Z, { category: 'workspace' });
      owned.push(Y);
      orthonormalizeColumns(Y.data() as Float32Array, m, k);
    }
    const Bs = matmul(Y, M, { transA: true, category: 'workspace' });  // [k, n] = Qᵀ M
    owned.push(Bs);
    const bv = Bs.data() as Float32Array;
    const gram = new Float64Array(k * k);
    for (let i = 0; i < k; i++) {
      for (let j = i; j < k; j++) {
        let s = 0;
        for (let c = 0; c < n; c++) s += bv[i * n + c] * bv[j * n + c];
        gram[i * k + j] = gram[j * k + i] = s;
      }
    }
    const { values, vectors } = symmetricEigen(gram, k);
    const sigma = new Float64Array(r);
    const left = new Float32Array(m * r), right = new Float32Array(r * n);
    const qv = Y.data() as Float32Array;
    for (let j = 0; j < r; j++) {
      const s = Math.sqrt(Math.max(values[j], 0));
      sigma[j] = s;
      if (s === 0) continue;
      const root = Math.sqrt(s);
      // U[:, j] = Q · w_j ; V[:, j] = Bsᵀ w_j / s
      for (let i = 0; i < m; i++) {
        let u = 0;
        for (let p = 0; p < k; p++) u += qv[i * k + p] * vectors[p * k + j];
        left[i * r + j] = u * root;
      }
      for (let c = 0; c < n; c++) {
        let v = 0;
        for (let p = 0; p < k; p++) v += bv[p * n + c] * vectors[p * k + j];
        right[j * n + c] = (v / s) * root;
      }
    }
    return { left, right, sigma };
  } finally {
    for (const t of owned) t.dispose();
  }
}

export interface LoftqResult {
  quantized: Quantized4bit;
  /** B [out, r] and A [r, in] such that scale·B·A approximates W - deq(quantized) */
  A: Float32Array;
  B: Float32Array;
  /** ||W - deq(Q)||_F before and ||W - deq(Q) - s·B·A||_F after, at the last iteration */
  errorBefore: number;
  errorAfter: number;
}

function frobenius(t: Tensor): number {
  const v = t.data() as Float32Array;
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
}

/** LoftQ for one weight W [out, in] (not consumed). */
export function loftq(W: Tensor, o: { format: 'nf4' | 'fp4'; blockSize: number; doubleQuant: boolean; r: number; scale: number; iters: number; seed: number }): LoftqResult {
  const [out, inF] = W.shape;
  const Wf = Tensor.from(W.toFloat32(), W.shape, { category: 'workspace' });
  let q: Quantized4bit | null = null;
  let low: LowRank | null = null;
  let before = 0, after = 0;
  try {
    for (let it = 0; it < o.iters; it++) {
      // target of this iteration: W - (current low-rank part)
      const target = Tensor.from(Wf.data() as Float32Array, W.shape, { category: 'workspace' });
      try {
        if (low) {
          const L = Tensor.from(low.left, [out, o.r], { category: 'workspace' }), R = Tensor.from(low.right, [o.r, inF], { category: 'workspace' });
          matmul(L, R, { out: target, alpha: -1, beta: 1 });
          L.dispose(); R.dispose();
        }
        if (q) disposeQuantized(q);
        q = quantize4bit(target, { format: o.format, blockSize: o.blockSize, doubleQuant: o.doubleQuant });
      } finally {
        target.dispose();
      }
      const res = dequantize4bit(q);
      try {
        addInPlace(res, Wf, -1);  // res = deq(Q) - W
        const tv = res.data() as Float32Array;
        for (let i = 0; i < tv.length; i++) tv[i] = -tv[i];  // W - deq(Q)
        before = frobenius(res);
        low = lowRankApprox(res, o.r, o.seed + it);
        const L = Tensor.from(low.left, [out, o.r], { category: 'workspace' }), R = Tensor.from(low.right, [o.r, inF], { category: 'workspace' });
        matmul(L, R, { out: res, alpha: -1, beta: 1 });
        L.dispose(); R.dispose();
        after = frobenius(res);
      } finally {
        res.dispose();
      }
    }
    const k = 1 / Math.sqrt(o.scale);
    const B = Float32Array.from(low!.left, (v) => v * k), A = Float32Array.from(low!.right, (v) => v * k);
    return { quantized: q!, A, B, errorBefore: before, errorAfter: after };
  } catch (e) {
    if (q) disposeQuantized(q);
    throw e;
  } finally {
    Wf.dispose();
  }
}
