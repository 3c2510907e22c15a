// The whole model against an independent implementation of the same LLaMA
// written with @tensorflow/tfjs ops: loss and every parameter gradient.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type * as TF from '@tensorflow/tfjs';
import { LlamaModel, type LlamaConfig, Tensor, memory, preset } from '../src/index.js';
import { tfjsLlamaLoss as referenceLoss } from '../src/reference/tfjs_llama.js';
import { relErr, rng, tfjs } from './helpers.js';

async function compareWithTfjs(cfg: LlamaConfig, B: number, T: number, packed = false): Promise<void> {
  const tf = await tfjs();
  const r = rng();
  const model = LlamaModel.init(cfg, { seed: r.seed, std: 0.1 });
  // perturb the norm weights so their gradients are not trivially symmetric
  for (const prm of model.parameters()) {
    if (prm.value.shape.length === 1) {
      const v = prm.value.data() as Float32Array;
      for (let i = 0; i < v.length; i++) v[i] = 1 + 0.2 * r.normal();
    }
  }
  const ids = new Int32Array(B * T), targets = new Int32Array(B * T);
  for (let i = 0; i < ids.length; i++) {
    ids[i] = Math.floor(r.next() * cfg.vocabSize);
    targets[i] = r.next() < 0.2 ? -100 : Math.floor(r.next() * cfg.vocabSize);
  }
  const idsT = Tensor.from(ids, [B, T], { dtype: 'i32' }), tgT = Tensor.from(targets, [B, T], { dtype: 'i32' });
  // packed: random segment lengths per row (1..4 tokens), positions restarting at each
  let packing: { segments: Int32Array; positions: Int32Array } | undefined;
  const extra: { segments?: Tensor; positions?: Tensor } = {};
  if (packed) {
    packing = { segments: new Int32Array(B * T), positions: new Int32Array(B * T) };
    for (let b = 0; b < B; b++) {
      let seg = 0, pos = 0, left = 1 + Math.floor(r.next() * 4);
      for (let t = 0; t < T; t++) {
        if (left === 0) { seg++; pos = 0; left = 1 + Math.floor(r.next() * 4); }
        packing.segments[b * T + t] = seg;
        packing.positions[b * T + t] = pos++;
        left--;
      }
    }
    extra.segments = Tensor.from(packing.segments, [B, T], { dtype: 'i32' });
    extra.positions = Tensor.from(packing.positions, [B, T], { dtype: 'i32' });
  }
  model.zeroGrad();
  const out = model.forward({ ids: idsT, targets: tgT, ...extra });
  const scale = 1 / out.count;
  model.backward(scale);

  const names = model.parameters().map((p) => p.name);
  const vars = new Map<string, TF.Tensor>();
  for (const prm of model.parameters()) vars.set(prm.name, tf.tensor(prm.value.toFloat32(), [...prm.value.shape]));
  const f = (...xs: TF.Tensor[]) => {
    const P = new Map(names.map((n, i) => [n, xs[i]]));
    return referenceLoss(tf, cfg, P, ids, targets, B, T, undefined, packing).mul(scale) as TF.Scalar;
  };
  const { value, grads } = tf.valueAndGrads(f)(names.map((n) => vars.get(n)!));
  const refLoss = (await value.data())[0] / scale;
  const lossErr = Math.abs(out.lossSum - refLoss) / Math.abs(refLoss);
  assert.ok(lossErr < 1e-4, `loss ${out.lossSum} vs tfjs ${refLoss}: relative error ${lossErr} (seed ${r.seed})`);
  let worst = { name: '', err: 0 };
  model.parameters().forEach((prm, i) => {
    const err = relErr(prm.grad!.toFloat32(), grads[i].dataSync());
    if (err > worst.err) worst = { name: prm.name, err };
    assert.ok(err < 1e-4, `gradient of ${prm.name}: relative error ${err.toExponential(2)} (seed ${r.seed})`);
  });
  assert.ok(worst.err > 0, 'gradients were compared');
  idsT.dispose(); tgT.dispose(); extra.segments?.dispose(); extra.positions?.dispose(); model.dispose();
  tf.disposeVariables();
}

test('tiny model (tied, GQA): loss and every gradient match a tfjs implementation', async () => {
  await compareWithTfjs(preset('tiny'), 2, 9);
});

test('untied LM head, 3 layers, MHA: loss and every gradient match tfjs', async () => {
  const cfg: LlamaConfig = { ...preset('tiny'), numLayers: 3, numKvHeads: 4, tieWordEmbeddings: false, vocabSize: 97, ropeTheta: 500000 };
  await compareWithTfjs(cfg, 3, 5);
});

test('packed batch (segments, positions restarting per segment): loss and every gradient match the tfjs reference', async () => {
  await compareWithTfjs(preset('tiny'), 2, 11, true);
});

test('forward without training keeps nothing; a training step frees all activations', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 3 });
  const ids = Tensor.zeros([2, 8], { dtype: 'i32' }), targets = Tensor.zeros([2, 8], { dtype: 'i32' });
  const base = memory.snapshot().cpu.live.activation;
  model.forward({ ids, targets }, { training: false });
  assert.equal(memory.snapshot().cpu.live.activation, base);
  const r = model.forward({ ids, targets });
  assert.ok(memory.snapshot().cpu.live.activation > base, 'training forward keeps activations');
  model.backward(1 / r.count);
  assert.equal(memory.snapshot().cpu.live.activation, base, 'backward releases them');
  assert.throws(() => model.backward(1), /call forward with training first/);
  ids.dispose(); targets.dispose(); model.dispose();
});

test('bad batches are rejected with clear errors', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 4 });
  const ids = Tensor.zeros([2, 8], { dtype: 'i32' });
  assert.throws(() => model.forward({ ids, targets: Tensor.zeros([2, 7], { dtype: 'i32' }) }), /targets must be i32 \[2, 8\]/);
  assert.throws(() => model.forward({ ids: Tensor.zeros([2, 8]), targets: ids }), /ids must be i32 \[B, T\]/);
  const long = Tensor.zeros([1, 300], { dtype: 'i32' });
  assert.throws(() => model.forward({ ids: long, targets: long }), /sequence length 300 exceeds max_position_embeddings 256/);
  const bad = Tensor.from([0, 1, 2, 999], [1, 4], { dtype: 'i32' });
  assert.throws(() => model.forward({ ids: bad, targets: Tensor.zeros([1, 4], { dtype: 'i32' }) }), /id 999 at position 3/);
  model.dispose();
});
