// Scaled RoPE (nn/rope_scaling.ts): each variant's inverse frequencies against
// references written here from the published formulas, in float64; a tiny
// random model's logits at positions beyond the original context against an
// independent float64 forward written here; loss and every gradient against
// the tfjs reference model given the same tables; KV-cache decode; Hugging
// Face config directories (a Llama 3.2 style config loads, saves back with its
// rope_scaling, unknown types are refused by name); GGUF export.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';
import {
  ByteTokenizer, KVCache, LlamaModel, type LlamaConfig, type RopeScaling, Tensor, configFromHf, configToHf, exportGguf, generate,
  ggufScalar, loadHfModel, readGguf, rope, ropeBackward, ropeFrequencies, ropeInvFreq, ropePositionLimit, saveHfModel, validateConfig,
} from '../src/index.js';
import { tfjsLlamaLoss } from '../src/reference/tfjs_llama.js';
import { assertClose, randn, relErr, rng, tfjs } from './helpers.js';

const root = mkdtempSync(join(tmpdir(), 'tunebench-rope-'));
after(() => rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------
// Reference inverse frequencies, float64, from the published formulas.

/** RoPE (Su et al. 2021): theta_i = base^(-2i/D). */
function refBase(D: number, theta: number): number[] {
  return Array.from({ length: D / 2 }, (_, i) => 1 / theta ** ((2 * i) / D));
}

/** Position interpolation (Chen et al. 2023): positions divided by the factor, i.e. every frequency. */
function refLinear(D: number, theta: number, factor: number): number[] {
  return refBase(D, theta).map((w) => w / factor);
}

/** Dynamic NTK-aware scaling (bloc97, emozilla; transformers' "dynamic"): the
 * base grows with the sequence length L once L exceeds the trained length M. */
function refDynamic(D: number, theta: number, factor: number, M: number, L: number): number[] {
  if (L <= M) return refBase(D, theta);
  const b = theta * ((factor * L) / M - (factor - 1)) ** (D / (D - 2));
  return refBase(D, b);
}

/** Llama 3.1 frequency scaling (Llama 3 report; transformers' "llama3"): wavelengths
 * shorter than O/high untouched, longer than O/low divided by the factor,
 * a linear blend in 1/wavelength between. */
function refLlama3(D: number, theta: number, factor: number, low: number, high: number, O: number): number[] {
  return refBase(D, theta).map((w) => {
    const wavelen = (2 * Math.PI) / w;
    if (wavelen < O / high) return w;
    if (wavelen > O / low) return w / factor;
    const s = (O / wavelen - low) / (high - low);
    return (1 - s) * (w / factor) + s * w;
  });
}

/** YaRN (Peng et al. 2023), "NTK-by-parts": dimension d rotates r(d) = O / wavelength
 * times over the original context; d below the dimension turning beta_fast times
 * keeps its frequency, above the one turning beta_slow times is interpolated by
 * the factor, linear ramp between. Attention temperature sqrt(1/t) = 0.1 ln(s) + 1. */
function refYarn(D: number, theta: number, factor: number, O: number, betaFast = 32, betaSlow = 1, truncate = true): number[] {
  // the dimension index (in units of D, as in the paper's eq. for d(r)) that makes r rotations
  const dimOf = (r: number) => (D * Math.log(O / (2 * Math.PI * r))) / (2 * Math.log(theta));
  let lo = dimOf(betaFast), hi = dimOf(betaSlow);
  if (truncate) { lo = Math.floor(lo); hi = Math.ceil(hi); }
  lo = Math.max(lo, 0); hi = Math.min(hi, D - 1);
  if (hi === lo) hi += 0.001;
  return refBase(D, theta).map((w, i) => {
    const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));  // 0: keep, 1: interpolate
    return (w / factor) * ramp + w * (1 - ramp);
  });
}
const yarnTemperature = (s: number) => (s <= 1 ? 1 : 0.1 * Math.log(s) + 1);

/** Elementwise relative error of a float32 table against float64 values. */
function maxRel(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let e = 0;
  for (let i = 0; i < got.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]) / Math.abs(want[i]));
  return e;
}

const cfgWith = (over: Partial<LlamaConfig>): LlamaConfig => ({
  vocabSize: 61, hiddenSize: 64, intermediateSize: 96, numLayers: 2, numHeads: 4, numKvHeads: 2,
  rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 128, tieWordEmbeddings: false, ...over,
});

test('inverse frequencies of each variant match the published formulas (float32 vs float64)', () => {
  // head dims 16 and 128 (Llama 3 8B), thetas 1e4 and 5e5
  for (const [hidden, heads, theta] of [[64, 4, 10000], [512, 4, 500000]] as const) {
    const D = hidden / heads;
    const base = cfgWith({ hiddenSize: hidden, numHeads: heads, numKvHeads: 2, ropeTheta: theta, maxPositionEmbeddings: 64 });
    assert.ok(maxRel(ropeInvFreq(D, theta), refBase(D, theta)) < 3e-7, 'base table');
    assert.equal(ropeFrequencies(base), undefined, 'plain RoPE: no table, the kernels use theta');

    const lin = ropeFrequencies({ ...base, ropeScaling: { type: 'linear', factor: 4 } })!;
    assert.ok(maxRel(lin.invFreq, refLinear(D, theta, 4)) < 3e-7, 'linear');
    assert.equal(lin.attentionScale, 1);

    const dyn: LlamaConfig = { ...base, ropeScaling: { type: 'dynamic', factor: 2 } };
    // up to M positions: the plain table, bit for bit
    assert.deepEqual(ropeFrequencies(dyn, 64)!.invFreq, ropeInvFreq(D, theta));
    for (const L of [65, 100, 1000]) {
      const got = ropeFrequencies(dyn, L)!.invFreq;
      // theta' is formed in float32 as transformers does; its rounding moves
      // the last frequencies by up to (D/2) ulps of theta', about 1e-6 relative
      assert.ok(maxRel(got, refDynamic(D, theta, 2, 64, L)) < 3e-6, `dynamic L=${L}: ${maxRel(got, refDynamic(D, theta, 2, 64, L))}`);
      assert.ok(maxRel(got, refBase(D, theta)) > 1e-2, `dynamic L=${L} changes the table`);
    }

    const l3: RopeScaling = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 32 };
    const l3f = ropeFrequencies({ ...base, ropeScaling: l3 })!;
    assert.ok(maxRel(l3f.invFreq, refLlama3(D, theta, 8, 1, 4, 32)) < 5e-7, 'llama3');

    const y: RopeScaling = { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32 };
    const yf = ropeFrequencies({ ...base, ropeScaling: y })!;
    assert.ok(maxRel(yf.invFreq, refYarn(D, theta, 4, 32)) < 5e-7, `yarn ${maxRel(yf.invFreq, refYarn(D, theta, 4, 32))}`);
    assert.ok(Math.abs(yf.attentionScale - yarnTemperature(4)) < 1e-12, 'yarn attention factor 0.1 ln(s) + 1');
    const yt = ropeFrequencies({ ...base, ropeScaling: { ...y, truncate: false, betaFast: 16, betaSlow: 2 } })!;
    assert.ok(maxRel(yt.invFreq, refYarn(D, theta, 4, 32, 16, 2, false)) < 5e-7, 'yarn without truncation, other betas');
  }
});

test('llama3 bands on the Llama 3.2 config: high frequencies kept bit for bit, low ones divided by 32, the band between blended', () => {
  const c: LlamaConfig = cfgWith({
    hiddenSize: 256, numHeads: 4, numKvHeads: 2, ropeTheta: 500000, maxPositionEmbeddings: 131072,
    ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
  });
  const D = 64, base = ropeInvFreq(D, 500000), got = ropeFrequencies(c)!.invFreq;
  let high = 0, low = 0, mid = 0;
  for (let i = 0; i < D / 2; i++) {
    const wavelen = (2 * Math.PI) / base[i];
    if (wavelen < 8192 / 4) { assert.equal(got[i], base[i], `dim ${i} (wavelength ${wavelen.toFixed(0)}) untouched`); high++; }
    else if (wavelen > 8192) { assert.equal(got[i], Math.fround(base[i] / 32), `dim ${i} divided by 32`); low++; }
    else { assert.ok(got[i] < base[i] && got[i] > base[i] / 32, `dim ${i} blended`); mid++; }
  }
  assert.ok(high > 0 && low > 0 && mid > 0, `all three bands present (${high}, ${mid}, ${low})`);
  assert.equal(ropePositionLimit(c), 131072 * 2, 'positions up to original context x factor');
});

test('yarn attention factor: explicit attention_factor, mscale / mscale_all_dim ratio, factor <= 1', () => {
  const c = cfgWith({ maxPositionEmbeddings: 64 });
  const y = (s: Partial<RopeScaling>) => ropeFrequencies({ ...c, ropeScaling: { type: 'yarn', factor: 8, originalMaxPositionEmbeddings: 32, ...s } })!.attentionScale;
  assert.equal(y({ attentionFactor: 1.5 }), 1.5);
  const m = (s: number, k: number) => 0.1 * k * Math.log(s) + 1;
  assert.ok(Math.abs(y({ mscale: 0.707, mscaleAllDim: 0.707 }) - 1) < 1e-12, 'equal mscales: 1');
  assert.ok(Math.abs(y({ mscale: 1, mscaleAllDim: 0.5 }) - m(8, 1) / m(8, 0.5)) < 1e-12);
  assert.ok(Math.abs(y({ mscale: 1 }) - m(8, 1)) < 1e-12, 'mscale alone: the default');
  assert.equal(y({ factor: 1 }), 1);
});

// ---------------------------------------------------------------------------
// An independent float64 forward of the LLaMA model (HF LlamaForCausalLM)
// with a given RoPE table per token: logits [T, V] of one sequence.

/** table(t): the inverse frequencies token t is rotated with; pos(t): its position (default t) */
interface RefRope { table: (t: number) => number[]; scale: number; pos?: (t: number) => number }

function refLogits(cfg: LlamaConfig, W: Map<string, Float32Array>, ids: number[], rp: RefRope): Float64Array {
  const C = cfg.hiddenSize, Hq = cfg.numHeads, Hkv = cfg.numKvHeads, D = C / Hq, h = D / 2, T = ids.length, V = cfg.vocabSize;
  const I = cfg.intermediateSize;
  const w = (n: string) => W.get(n)!;
  const matvec = (m: Float32Array, x: Float64Array, rows: number, cols: number) => {
    const y = new Float64Array(rows);
    for (let r = 0; r < rows; r++) { let s = 0; for (let c = 0; c < cols; c++) s += m[r * cols + c] * x[c]; y[r] = s; }
    return y;
  };
  const rms = (x: Float64Array, g: Float32Array) => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + cfg.rmsNormEps);
    return Float64Array.from(x, (v, i) => v * r * g[i]);
  };
  const rot = (v: Float64Array, heads: number, t: number) => {
    const inv = rp.table(t), out = new Float64Array(v.length);
    for (let hd = 0; hd < heads; hd++) for (let i = 0; i < h; i++) {
      const a = (rp.pos ? rp.pos(t) : t) * inv[i], c = Math.cos(a) * rp.scale, s = Math.sin(a) * rp.scale;
      const x1 = v[hd * D + i], x2 = v[hd * D + i + h];
      out[hd * D + i] = x1 * c - x2 * s;
      out[hd * D + i + h] = x2 * c + x1 * s;
    }
    return out;
  };
  const emb = w('model.embed_tokens.weight');
  let xs = ids.map((id) => Float64Array.from(emb.subarray(id * C, (id + 1) * C)));
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const hs = xs.map((x) => rms(x, w(`${p}.input_layernorm.weight`)));
    const q = hs.map((x, t) => rot(matvec(w(`${p}.self_attn.q_proj.weight`), x, Hq * D, C), Hq, t));
    const k = hs.map((x, t) => rot(matvec(w(`${p}.self_attn.k_proj.weight`), x, Hkv * D, C), Hkv, t));
    const v = hs.map((x) => matvec(w(`${p}.self_attn.v_proj.weight`), x, Hkv * D, C));
    xs = xs.map((x, t) => {
      const att = new Float64Array(Hq * D);
      for (let hd = 0; hd < Hq; hd++) {
        const kv = Math.floor(hd / (Hq / Hkv));
        const sc = new Float64Array(t + 1);
        let mx = -Infinity;
        for (let s = 0; s <= t; s++) {
          let d = 0;
          for (let i = 0; i < D; i++) d += q[t][hd * D + i] * k[s][kv * D + i];
          sc[s] = d / Math.sqrt(D);
          mx = Math.max(mx, sc[s]);
        }
        let z = 0;
        for (let s = 0; s <= t; s++) { sc[s] = Math.exp(sc[s] - mx); z += sc[s]; }
        for (let s = 0; s <= t; s++) for (let i = 0; i < D; i++) att[hd * D + i] += (sc[s] / z) * v[s][kv * D + i];
      }
      const x2 = Float64Array.from(matvec(w(`${p}.self_attn.o_proj.weight`), att, C, Hq * D), (o, i) => o + x[i]);
      const h2 = rms(x2, w(`${p}.post_attention_layernorm.weight`));
      const g = matvec(w(`${p}.mlp.gate_proj.weight`), h2, I, C), u = matvec(w(`${p}.mlp.up_proj.weight`), h2, I, C);
      const m = Float64Array.from(g, (gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]);
      return Float64Array.from(matvec(w(`${p}.mlp.down_proj.weight`), m, C, I), (d, i) => d + x2[i]);
    });
  }
  const head = cfg.tieWordEmbeddings ? emb : w('lm_head.weight');
  const out = new Float64Array(T * V);
  xs.forEach((x, t) => out.set(matvec(head, rms(x, w('model.norm.weight')), V, C), t * V));
  return out;
}

function weightsOf(model: LlamaModel): Map<string, Float32Array> {
  return new Map([...model.namedTensors()].map(([n, t]) => [n, t.toFloat32()]));
}

function modelLogits(model: LlamaModel, ids: number[]): Float32Array {
  const idsT = Tensor.from(Int32Array.from(ids), [1, ids.length], { dtype: 'i32' });
  const hdn = model.hidden(idsT), lg = model.logits(hdn);
  const out = lg.toFloat32();
  for (const t of [idsT, hdn, lg]) t.dispose();
  return out;
}

/** The variants on a tiny model (D = 16): the original context O = 24 (llama3,
 * yarn) or max_position_embeddings M = 32 (linear, dynamic), sequences of 80. */
const D16 = 16;
const VARIANTS: { name: string; cfg: LlamaConfig; ref: (T: number) => RefRope }[] = [
  {
    // wavelengths 6.3 (kept: < 32/4), 19.9 (blended), 62.8 and longer (divided by 8)
    name: 'llama3', cfg: cfgWith({ maxPositionEmbeddings: 96, ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 32 } }),
    ref: () => ({ table: () => refLlama3(D16, 10000, 8, 1, 4, 32), scale: 1 }),
  },
  {
    name: 'linear', cfg: cfgWith({ maxPositionEmbeddings: 32, ropeScaling: { type: 'linear', factor: 4 } }),
    ref: () => ({ table: () => refLinear(D16, 10000, 4), scale: 1 }),
  },
  {
    name: 'dynamic', cfg: cfgWith({ maxPositionEmbeddings: 32, ropeScaling: { type: 'dynamic', factor: 2 } }),
    ref: (T) => ({ table: () => refDynamic(D16, 10000, 2, 32, T), scale: 1 }),
  },
  {
    name: 'yarn', cfg: cfgWith({ ropeTheta: 500, maxPositionEmbeddings: 96, ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 24 } }),
    ref: () => ({ table: () => refYarn(D16, 500, 4, 24), scale: yarnTemperature(4) }),
  },
];

for (const v of VARIANTS) {
  test(`${v.name}: logits at positions 0..79 (past the original context) match an independent float64 forward`, () => {
    const r = rng();
    validateConfig(v.cfg);
    const model = LlamaModel.init(v.cfg, { seed: r.seed, std: 0.2, trainable: false });
    const T = 80, ids = Array.from({ length: T }, () => Math.floor(r.next() * v.cfg.vocabSize));
    const W = weightsOf(model);
    const got = modelLogits(model, ids);
    const want = refLogits(v.cfg, W, ids, v.ref(T));
    assertClose(`${v.name} logits`, got, want, 2e-5, r.seed);
    // the scaling matters here: plain RoPE gives other logits
    const plain = refLogits(v.cfg, W, ids, { table: () => refBase(D16, v.cfg.ropeTheta), scale: 1 });
    assert.ok(relErr(plain, want) > 1e-2, `${v.name}: the scaled model differs from plain RoPE (${relErr(plain, want)})`);
    model.dispose();
  });
}

test('dynamic: within max_position_embeddings the logits are plain RoPE\'s, bit for bit', () => {
  const dyn = VARIANTS.find((x) => x.name === 'dynamic')!.cfg;
  const { ropeScaling: _s, ...plainCfg } = dyn;
  const a = LlamaModel.init(dyn, { seed: 5, std: 0.2, trainable: false }), b = LlamaModel.init(plainCfg, { seed: 5, std: 0.2, trainable: false });
  const ids = Array.from({ length: 32 }, (_, i) => (i * 7) % 61);
  assert.deepEqual(modelLogits(a, ids), modelLogits(b, ids));
  a.dispose(); b.dispose();
});

// ---------------------------------------------------------------------------
// Loss and gradients against tfjs (the whole-model reference, given the table)

async function gradientCheck(cfg: LlamaConfig, T: number, table: number[], scale: number, positions?: Int32Array): Promise<void> {
  const tf = await tfjs();
  const r = rng();
  const model = LlamaModel.init(cfg, { seed: r.seed, std: 0.15 });
  for (const prm of model.parameters()) {
    if (prm.value.shape.length === 1) {
      const vals = prm.value.data() as Float32Array;
      for (let i = 0; i < vals.length; i++) vals[i] = 1 + 0.2 * r.normal();
    }
  }
  const B = 1, ids = new Int32Array(T), targets = new Int32Array(T);
  for (let i = 0; i < T; i++) { ids[i] = Math.floor(r.next() * cfg.vocabSize); targets[i] = Math.floor(r.next() * cfg.vocabSize); }
  const idsT = Tensor.from(ids, [B, T], { dtype: 'i32' }), tgT = Tensor.from(targets, [B, T], { dtype: 'i32' });
  const posT = positions ? Tensor.from(positions, [B, T], { dtype: 'i32' }) : undefined;
  model.zeroGrad();
  const out = model.forward({ ids: idsT, targets: tgT, positions: posT });
  const sc = 1 / out.count;
  model.backward(sc);
  const names = model.parameters().map((p) => p.name);
  const vars = model.parameters().map((prm) => tf.tensor(prm.value.toFloat32(), [...prm.value.shape]));
  const f = (...xs: TF.Tensor[]) => {
    const P = new Map(names.map((n, i) => [n, xs[i]]));
    return tfjsLlamaLoss(tf, cfg, P, ids, targets, B, T, undefined, positions ? { positions } : {}, { invFreq: table, attentionScale: scale }).mul(sc) as TF.Scalar;
  };
  const { value, grads } = tf.valueAndGrads(f)(vars);
  const refLoss = (await value.data())[0] / sc;
  assert.ok(Math.abs(out.lossSum - refLoss) / Math.abs(refLoss) < 1e-4, `loss ${out.lossSum} vs tfjs ${refLoss} (seed ${r.seed})`);
  model.parameters().forEach((prm, i) => {
    const err = relErr(prm.grad!.toFloat32(), grads[i].dataSync());
    assert.ok(err < 2e-4, `gradient of ${prm.name}: relative error ${err.toExponential(2)} (seed ${r.seed})`);
  });
  // and the table matters for the gradients too
  const plain = tf.grads((...xs: TF.Tensor[]) => {
    const P = new Map(names.map((n, i) => [n, xs[i]]));
    return tfjsLlamaLoss(tf, cfg, P, ids, targets, B, T, undefined, positions ? { positions } : {}).mul(sc) as TF.Scalar;
  })(vars);
  const qName = names.indexOf('model.layers.0.self_attn.q_proj.weight');
  assert.ok(relErr(model.parameters()[qName].grad!.toFloat32(), plain[qName].dataSync()) > 1e-2, 'plain RoPE gives other q_proj gradients');
  for (const t of [idsT, tgT]) t.dispose();
  posT?.dispose();
  model.dispose();
  tf.disposeVariables();
  tf.dispose([...vars, ...grads, ...plain, value]);
}

test('yarn (attention factor on cos and sin): loss and every gradient match tfjs at positions past the original context', async () => {
  const v = VARIANTS.find((x) => x.name === 'yarn')!;
  await gradientCheck(v.cfg, 40, refYarn(D16, 500, 4, 24), yarnTemperature(4));
});

test('llama3: loss and every gradient match tfjs at positions past the original context', async () => {
  const v = VARIANTS.find((x) => x.name === 'llama3')!;
  await gradientCheck(v.cfg, 40, refLlama3(D16, 10000, 8, 1, 4, 32), 1);
});

test('dynamic: a batch longer than max_position_embeddings trains with the table of its length (packed positions too)', async () => {
  const v = VARIANTS.find((x) => x.name === 'dynamic')!;
  await gradientCheck(v.cfg, 44, refDynamic(D16, 10000, 2, 32, 44), 1);
  // packed: the longest position decides (41 + 1 = 42 > 32)
  const pos = Int32Array.from({ length: 44 }, (_, t) => (t < 2 ? t : t - 2));
  await gradientCheck(v.cfg, 44, refDynamic(D16, 10000, 2, 32, 42), 1, pos);
});

test('activation checkpointing recomputes with the same scaled table: identical gradients', () => {
  const cfg = VARIANTS.find((x) => x.name === 'yarn')!.cfg;
  const grads = (mode: 'off' | 'block') => {
    const m = LlamaModel.init(cfg, { seed: 9, std: 0.15 });
    m.checkpointing = mode;
    const ids = Tensor.from(Int32Array.from({ length: 40 }, (_, i) => (i * 5) % 61), [1, 40], { dtype: 'i32' });
    const tg = Tensor.from(Int32Array.from({ length: 40 }, (_, i) => (i * 3) % 61), [1, 40], { dtype: 'i32' });
    const o = m.forward({ ids, targets: tg });
    m.backward(1 / o.count);
    const g = m.parameters().map((p) => p.grad!.toFloat32());
    ids.dispose(); tg.dispose(); m.dispose();
    return g;
  };
  assert.deepEqual(grads('block'), grads('off'));
});

// ---------------------------------------------------------------------------
// KV-cache decode

test('KV-cache decode past the original context equals recomputing the whole sequence (llama3, linear, yarn)', () => {
  for (const v of VARIANTS.filter((x) => x.name !== 'dynamic')) {
    const model = LlamaModel.init(v.cfg, { seed: 11, std: 0.2, trainable: false });
    const prompt = Array.from({ length: 20 }, (_, i) => (i * 13 + 1) % 61);
    const cached = generate(model, prompt, { maxNewTokens: 30 }).tokens;
    const full = generate(model, prompt, { maxNewTokens: 30, noCache: true }).tokens;
    assert.deepEqual(cached, full, `${v.name}: greedy tokens with and without the cache`);
    // the last decode step's logits against the independent forward
    const seq = [...prompt, ...cached.slice(0, 29)];
    const cache = new KVCache(v.cfg, 1, seq.length + 1);
    const pre = Tensor.from(Int32Array.from(seq), [1, seq.length], { dtype: 'i32' });
    model.hidden(pre, cache).dispose();
    const last = Tensor.from(Int32Array.of(cached[29]), [1, 1], { dtype: 'i32' });
    const hd = model.hidden(last, cache), lg = model.logits(hd);
    const want = refLogits(v.cfg, weightsOf(model), [...seq, cached[29]], v.ref(seq.length + 1)).subarray(seq.length * 61);
    assertClose(`${v.name} decode logits at position ${seq.length}`, lg.toFloat32(), want, 2e-5);
    for (const t of [pre, last, hd, lg]) t.dispose();
    cache.dispose();
    model.dispose();
  }
});

test('dynamic decode: each step rotates its token with the table of its own length, cached keys keep theirs', () => {
  const v = VARIANTS.find((x) => x.name === 'dynamic')!;
  const model = LlamaModel.init(v.cfg, { seed: 12, std: 0.2, trainable: false });
  const W = weightsOf(model);
  const P = 30, steps = 10, ids = Array.from({ length: P + steps }, (_, i) => (i * 11 + 3) % 61);
  const cache = new KVCache(v.cfg, 1, P + steps);
  const pre = Tensor.from(Int32Array.from(ids.slice(0, P)), [1, P], { dtype: 'i32' });
  model.hidden(pre, cache).dispose();
  pre.dispose();
  // token t was processed in a call of length max(P, t + 1)
  const ref = refLogits(v.cfg, W, ids, { table: (t) => refDynamic(D16, 10000, 2, 32, Math.max(P, t + 1)), scale: 1 });
  for (let t = P; t < P + steps; t++) {
    const x = Tensor.from(Int32Array.of(ids[t]), [1, 1], { dtype: 'i32' });
    const hd = model.hidden(x, cache), lg = model.logits(hd);
    assertClose(`dynamic decode logits at position ${t}`, lg.toFloat32(), ref.subarray(t * 61, (t + 1) * 61), 2e-5);
    for (const z of [x, hd, lg]) z.dispose();
  }
  cache.dispose();
  model.dispose();
});

test('position limits: plain RoPE stops at max_position_embeddings, scaled variants go past it', () => {
  const lin = VARIANTS.find((x) => x.name === 'linear')!.cfg;
  assert.equal(ropePositionLimit(lin), 128);
  const { ropeScaling: _s, ...plain } = lin;
  assert.equal(ropePositionLimit(plain), 32);
  const m = LlamaModel.init(lin, { seed: 1, trainable: false });
  const ids = Tensor.zeros([1, 129], { dtype: 'i32' });
  assert.throws(() => m.forward({ ids, targets: ids }, { training: false }),
    /sequence length 129 exceeds the position limit 128 \(max_position_embeddings 32 with rope_scaling linear, factor 4\)/);
  assert.throws(() => new KVCache(lin, 1, 129), /maxLength must be in \[1, 128\]/);
  ids.dispose();
  m.dispose();
});

// ---------------------------------------------------------------------------
// The op's table and attention scale

test('rope with a table and an attention scale: the scaled rotation, and backward is its transpose', () => {
  const r = rng();
  const [B, T, H, D] = [2, 9, 3, 12], h = D / 2, n = B * T * H * D;
  const inv = Float32Array.from({ length: h }, () => 0.01 + r.next());
  const pos = Int32Array.from({ length: B * T }, () => Math.floor(r.next() * 5000));
  const xv = randn(n, r), dv = randn(n, r);
  const x = Tensor.from(xv, [B, T, H, D]), d = Tensor.from(dv, [B, T, H, D]), p = Tensor.from(pos, [B, T], { dtype: 'i32' });
  const m = 1.3;
  const y = rope(x, p, { invFreq: inv, attentionScale: m }), dx = ropeBackward(d, p, { invFreq: inv, attentionScale: m });
  const want = new Float64Array(n);
  for (let bt = 0; bt < B * T; bt++) for (let hd = 0; hd < H; hd++) for (let i = 0; i < h; i++) {
    const a = Math.fround(pos[bt] * inv[i]), c = Math.cos(a) * m, s = Math.sin(a) * m, e = (bt * H + hd) * D + i;
    want[e] = xv[e] * c - xv[e + h] * s;
    want[e + h] = xv[e + h] * c + xv[e] * s;
  }
  assertClose('scaled rotation', y.toFloat32(), want, 1e-6, r.seed);
  // <R x, d> = <x, R^T d>
  const yv = y.toFloat32(), dxv = dx.toFloat32();
  let lhs = 0, rhs = 0;
  for (let i = 0; i < n; i++) { lhs += yv[i] * dv[i]; rhs += xv[i] * dxv[i]; }
  assert.ok(Math.abs(lhs - rhs) < 1e-4 * Math.abs(lhs) + 1e-4, `adjoint: ${lhs} vs ${rhs}`);
  // the table of the base frequencies with scale 1 is plain RoPE, bit for bit
  const plainT = rope(x, p, { theta: 777 }), tableT = rope(x, p, { invFreq: ropeInvFreq(D, 777), attentionScale: 1 });
  assert.deepEqual(tableT.data(), plainT.data());
  assert.throws(() => rope(x, p, { invFreq: new Float32Array(5) }), /rope: 'invFreq' must be a Float32Array of D\/2 = 6 entries, got 5 entries/);
  assert.throws(() => rope(x, p, { invFreq: Float32Array.of(1, 2, 3, 4, 5, NaN) }), /'invFreq' entry 5 is NaN, not finite/);
  assert.throws(() => ropeBackward(d, p, { attentionScale: 0 }), /ropeBackward: 'attentionScale' must be a positive finite number, got 0/);
  for (const t of [x, d, p, y, dx, plainT, tableT]) t.dispose();
});

// ---------------------------------------------------------------------------
// Hugging Face config.json

/** config.json of a Llama 3.2 style checkpoint (the rope_scaling of meta-llama/Llama-3.2-1B), shrunk. */
const LLAMA32_STYLE = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 0, eos_token_id: 1,
  head_dim: 16, hidden_act: 'silu', hidden_size: 64, initializer_range: 0.02, intermediate_size: 96,
  max_position_embeddings: 131072, mlp_bias: false, model_type: 'llama', num_attention_heads: 4, num_hidden_layers: 2,
  num_key_value_heads: 2, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: 'bfloat16', transformers_version: '4.45.0.dev0', use_cache: true, vocab_size: 61,
};

test('a Llama 3.2 style directory loads with its llama3 scaling, computes it, and saves it back', () => {
  const c = configFromHf(LLAMA32_STYLE, 'llama32/config.json');
  assert.deepEqual(c.ropeScaling, { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  // a model saved with that config.json, loaded back
  const dir = join(root, 'llama32');
  const m0 = LlamaModel.init(c, { seed: 21, std: 0.2 });
  saveHfModel(m0, dir, { dtype: 'f32' });
  const saved = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  assert.deepEqual(saved.rope_scaling, { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(LLAMA32_STYLE));  // the checkpoint's own file
  const m = loadHfModel(dir, { trainable: false, frozenDtype: 'f32' });
  assert.deepEqual(m.config, c);
  const table = refLlama3(16, 500000, 32, 1, 4, 8192);
  const W = weightsOf(m);
  const ids = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3];
  assertClose('llama3 logits (positions 0..11)', modelLogits(m, ids), refLogits(c, W, ids, { table: () => table, scale: 1 }), 2e-5);
  // positions past 8192, where the low frequencies are scaled (a packed batch
  // placed there): the loss against the reference's cross-entropy
  const T = ids.length, at = (t: number) => 9000 + 1500 * t;
  const targets = [...ids.slice(1), 2];
  const ce = (logits: Float64Array) => {
    let sum = 0;
    for (let t = 0; t < T; t++) {
      const row = logits.subarray(t * 61, (t + 1) * 61);
      const mx = Math.max(...row);
      sum += mx + Math.log(row.reduce((z, x) => z + Math.exp(x - mx), 0)) - row[targets[t]];
    }
    return sum;
  };
  const idsT = Tensor.from(Int32Array.from(ids), [1, T], { dtype: 'i32' }), tgT = Tensor.from(Int32Array.from(targets), [1, T], { dtype: 'i32' });
  const posT = Tensor.from(Int32Array.from({ length: T }, (_, t) => at(t)), [1, T], { dtype: 'i32' });
  const { lossSum } = m.forward({ ids: idsT, targets: tgT, positions: posT }, { training: false });
  const want = ce(refLogits(c, W, ids, { table: () => table, scale: 1, pos: at }));
  // float32 angles (as transformers forms them) at positions ~2.5e4 are off
  // by up to ~2e-3 rad from the float64 reference's: a looser bound here
  assert.ok(Math.abs(lossSum - want) < 1e-4 * Math.abs(want), `loss at positions 9000.. ${lossSum} vs reference ${want}`);
  const plain = ce(refLogits(c, W, ids, { table: () => refBase(16, 500000), scale: 1, pos: at }));
  assert.ok(Math.abs(plain - want) > 1e-2 * Math.abs(want), `plain RoPE gives another loss there (${plain} vs ${want})`);
  for (const t of [idsT, tgT, posT]) t.dispose();
  m.dispose();
  m0.dispose();
  // configToHf / configFromHf round trip for every variant
  for (const v of VARIANTS) assert.deepEqual(configFromHf(JSON.parse(JSON.stringify(configToHf(v.cfg))), v.name), v.cfg);
});

test('rope_scaling spellings: legacy type key, rope_parameters, top-level original_max_position_embeddings, yarn without factor', () => {
  const base = { ...LLAMA32_STYLE, max_position_embeddings: 4096, rope_theta: 10000.0 } as Record<string, unknown>;
  delete base.rope_scaling;
  const c1 = configFromHf({ ...base, rope_scaling: { type: 'linear', factor: 2.0 } }, 'x');
  assert.deepEqual(c1.ropeScaling, { type: 'linear', factor: 2 });
  const c2 = configFromHf({ ...base, rope_theta: undefined, rope_parameters: { rope_type: 'yarn', rope_theta: 10000, factor: 4.0, original_max_position_embeddings: 1024, beta_fast: 16 } }, 'x');
  assert.deepEqual(c2.ropeScaling, { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 1024, betaFast: 16 });
  const c3 = configFromHf({ ...base, original_max_position_embeddings: 2048, rope_scaling: { rope_type: 'yarn', factor: 2.0, original_max_position_embeddings: 1024 } }, 'x');
  assert.equal(c3.ropeScaling!.originalMaxPositionEmbeddings, 2048, 'the top-level key wins');
  const c4 = configFromHf({ ...base, rope_scaling: { rope_type: 'yarn', original_max_position_embeddings: 1024 } }, 'x');
  assert.equal(c4.ropeScaling!.factor, 4, 'yarn without factor: max_position_embeddings / original');
  const c5 = configFromHf({ ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'x');
  assert.equal(c5.ropeScaling!.originalMaxPositionEmbeddings, 4096, 'yarn without original: max_position_embeddings');
  assert.equal(configFromHf({ ...base, rope_scaling: { rope_type: 'default' } }, 'x').ropeScaling, undefined);
  assert.equal(configFromHf({ ...base, rope_scaling: null }, 'x').ropeScaling, undefined);
  assert.equal(configFromHf({ ...base, rope_scaling: {} }, 'x').ropeScaling, undefined);
});

test('unsupported or malformed rope scaling is refused by name', () => {
  const base = { ...LLAMA32_STYLE } as Record<string, unknown>;
  const bad = (over: Record<string, unknown>, re: RegExp) => assert.throws(() => configFromHf({ ...base, ...over }, 'm/config.json'), re);
  bad({ rope_scaling: { rope_type: 'xyz', factor: 2 } },
    /m\/config\.json: rope_scaling\.rope_type "xyz" is not supported \(supported: default, linear, dynamic, llama3, yarn\)/);
  bad({ rope_scaling: { type: 'longrope', factor: 2, short_factor: [1], long_factor: [2] } }, /rope_scaling\.type "longrope" is not supported \(supported: default, linear, dynamic, llama3, yarn\)/);
  bad({ rope_scaling: null, rope_parameters: { rope_type: 'su', rope_theta: 10000 } }, /rope_parameters\.rope_type "su" is not supported/);
  bad({ rope_scaling: { factor: 8 } }, /rope_scaling \{"factor":8\} names no rope_type \(or legacy type\)/);
  bad({ rope_scaling: { rope_type: 'llama3', factor: 8 } }, /rope_scaling \(llama3\) is missing low_freq_factor; rope_scaling \(llama3\) is missing high_freq_factor/);
  bad({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8192 } },
    /rope_scaling\.high_freq_factor \(1\) must be larger than rope_scaling\.low_freq_factor \(4\)/);
  bad({ rope_scaling: { rope_type: 'linear', factor: '2' } }, /rope_scaling\.factor must be a number, got "2"/);
  bad({ rope_scaling: { rope_type: 'linear', factor: -2 } }, /rope_scaling\.factor must be a positive number, got -2/);
  bad({ rope_scaling: { rope_type: 'yarn', factor: 4, truncate: 'no' } }, /rope_scaling\.truncate must be a boolean/);
  bad({ rope_scaling: { rope_type: 'linear', factor: 2 }, rope_parameters: { rope_type: 'linear', factor: 4 } }, /rope_scaling .* and rope_parameters .* disagree/);
  bad({ rope_scaling: { rope_type: 'linear', factor: 2, partial_rotary_factor: 0.5 } }, /rope_scaling\.partial_rotary_factor 0\.5 is not supported/);
  bad({ rope_scaling: 'llama3' }, /rope_scaling must be an object or null, got "llama3"/);
  assert.throws(() => validateConfig({ ...cfgWith({}), ropeScaling: { type: 'ntk' as 'linear', factor: 2 } }), /ropeScaling\.type "ntk" is not supported/);
});

// ---------------------------------------------------------------------------
// GGUF

test('GGUF export: linear and yarn as llama.cpp rope.scaling keys, llama3 as rope_freqs, dynamic refused', () => {
  const tok = new ByteTokenizer();
  const at = (name: string) => join(root, `${name}.gguf`);
  const byte = (c: LlamaConfig) => ({ ...c, vocabSize: 259 });
  const lin = LlamaModel.init(byte(VARIANTS[1].cfg), { seed: 1, trainable: false });
  exportGguf(lin, at('lin'), { type: 'f16', tokenizer: tok });
  const gl = readGguf(at('lin'));
  assert.equal(ggufScalar(gl, 'llama.rope.scaling.type'), 'linear');
  assert.equal(ggufScalar(gl, 'llama.rope.scaling.factor'), 4);
  assert.ok(!gl.tensors.some((t) => t.name === 'rope_freqs.weight'));

  const y = LlamaModel.init(byte(VARIANTS[3].cfg), { seed: 1, trainable: false });
  exportGguf(y, at('yarn'), { type: 'f16', tokenizer: tok });
  const gy = readGguf(at('yarn'));
  assert.equal(ggufScalar(gy, 'llama.rope.scaling.type'), 'yarn');
  assert.equal(ggufScalar(gy, 'llama.rope.scaling.factor'), 4);
  assert.equal(ggufScalar(gy, 'llama.rope.scaling.original_context_length'), 24);

  const l3cfg = byte(VARIANTS[0].cfg);
  const l3 = LlamaModel.init(l3cfg, { seed: 1, trainable: false });
  exportGguf(l3, at('l3'), { type: 'f16', tokenizer: tok });
  const g3 = readGguf(at('l3'));
  assert.ok(!g3.metadata.has('llama.rope.scaling.type'), 'llama3 carries no scaling type');
  const rf = g3.read('rope_freqs.weight');
  const want = refLlama3(D16, 10000, 8, 1, 4, 32).map((w, i) => refBase(D16, 10000)[i] / w);
  assertClose('rope_freqs = base / scaled', rf, want, 1e-6);
  assert.equal(rf[0], 1, 'highest frequency untouched');
  assert.ok(Math.abs(rf[D16 / 2 - 1] - 8) < 1e-5, 'lowest frequency divided by the factor');

  const dyn = LlamaModel.init(byte(VARIANTS[2].cfg), { seed: 1, trainable: false });
  assert.throws(() => exportGguf(dyn, at('dyn'), { type: 'f16', tokenizer: tok }), /exportGguf: rope_scaling dynamic \(factor 2\) is dynamic NTK scaling, which GGUF cannot carry/);
  const y2 = LlamaModel.init({ ...byte(VARIANTS[3].cfg), ropeScaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 24, attentionFactor: 1 } }, { seed: 1, trainable: false });
  assert.throws(() => exportGguf(y2, at('y2'), { type: 'f16', tokenizer: tok }), /rope_scaling yarn \(factor 4\) has attention factor 1 .*llama\.cpp applies 1\.138/);
  for (const mm of [lin, y, l3, dyn, y2]) mm.dispose();
});
