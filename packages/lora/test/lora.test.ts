import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ArrayDataSource, ByteTokenizer, DenseLinear, LlamaModel, Tensor, TokenDataSource, type TokenRows, Trainer, disposeBatch, memory, packExamples,
  padExamples, preset,
} from '@tunebench/core';
import { LoraLinear, loraLayers, mergeAndUnload, prepareLora, setActiveAdapter } from '../src/index.js';
import { randomValues, relErr, tfjs } from './helpers.js';

const seed = (Math.random() * 2 ** 31) >>> 0;

function frozenLayer(outF: number, inF: number, dtype: 'f32' | 'bf16' = 'f32'): DenseLinear {
  const w = Tensor.from(randomValues(outF * inF, seed + 1, 0.2), [outF, inF], { dtype, category: 'frozen' });
  return new DenseLinear('model.layers.0.self_attn.q_proj', w, null);
}

function randomizeB(layer: LoraLinear, name = 'default', s = seed + 2): void {
  const b = layer.adapter(name).B.value;
  (b.data() as Float32Array).set(randomValues(b.numel, s, 0.1));
}

test('LoRA layer: y, dx, dA and dB match tfjs', async () => {
  const tf = await tfjs();
  const [N, inF, outF, r, alpha] = [13, 40, 24, 4, 8];
  const layer = new LoraLinear(frozenLayer(outF, inF), seed);
  layer.addAdapter('default', { r, alpha, rslora: false, dropout: 0, init: 'kaiming', seed });
  randomizeB(layer);
  const xv = randomValues(N * inF, seed + 3), dyv = randomValues(N * outF, seed + 4);
  const x = Tensor.from(xv, [N, inF]), dy = Tensor.from(dyv, [N, outF]);
  const y = layer.forward(x);
  const dx = layer.backward(dy);
  const a = layer.adapter('default');
  type TF2 = ReturnType<typeof tf.tensor2d>;
  const W = tf.tensor2d(layer.base.weight.value.toFloat32(), [outF, inF]);
  const reference = (xt: TF2, At: TF2, Bt: TF2) =>
    tf.matMul(xt, W, false, true).add(tf.matMul(tf.matMul(xt, At, false, true), Bt, false, true).mul(alpha / r));
  const dyT = tf.tensor2d(dyv, [N, outF]);
  const f = (...args: ReturnType<typeof tf.tensor>[]) => reference(args[0] as TF2, args[1] as TF2, args[2] as TF2).mul(dyT).sum();
  const xt = tf.tensor2d(xv, [N, inF]), At = tf.tensor2d(a.A.value.toFloat32(), [r, inF]), Bt = tf.tensor2d(a.B.value.toFloat32(), [outF, r]);
  const yRef = reference(xt, At, Bt);
  const [gx, gA, gB] = tf.grads(f)([xt, At, Bt]);
  assert.ok(relErr(y.toFloat32(), yRef.dataSync()) < 1e-5, `y (seed ${seed})`);
  assert.ok(relErr(dx.toFloat32(), gx.dataSync()) < 1e-5, `dx (seed ${seed})`);
  assert.ok(relErr(a.A.grad!.toFloat32(), gA.dataSync()) < 1e-5, `dA (seed ${seed})`);
  assert.ok(relErr(a.B.grad!.toFloat32(), gB.dataSync()) < 1e-5, `dB (seed ${seed})`);
  assert.equal(layer.base.weight.grad, null, 'no gradient for the frozen base');
  for (const t of [x, dy, y, dx]) t.dispose();
  layer.dispose();
});

test('adapter output equals merged output; unmerge restores the base; B = 0 at init', () => {
  const [N, inF, outF] = [9, 32, 16];
  const layer = new LoraLinear(frozenLayer(outF, inF), seed);
  const x = Tensor.from(randomValues(N * inF, seed + 5), [N, inF]);
  const base = layer.forward(x).toFloat32();
  layer.addAdapter('default', { r: 4, alpha: 16, rslora: true, dropout: 0, init: 'gaussian', seed });
  assert.deepEqual(layer.forward(x).toFloat32(), base, 'B starts at zero: the adapter changes nothing');
  randomizeB(layer);
  const adapted = layer.forward(x).toFloat32();
  assert.ok(relErr(adapted, base) > 1e-3, 'the adapter changes the output');
  layer.merge();
  const merged = layer.forward(x).toFloat32();
  assert.ok(relErr(merged, adapted) < 1e-4, `merged vs adapter: ${relErr(merged, adapted)}`);
  layer.unmerge();
  assert.ok(relErr(layer.forward(x).toFloat32(), adapted) < 1e-5);
  layer.active = null;
  assert.ok(relErr(layer.forward(x).toFloat32(), base) < 1e-5, 'unmerge restores the base outputs');
  layer.clearSaved();
  x.dispose(); layer.dispose();
});

test('prepareLora: all-linear targets, trainable count r*(in+out), memory categories, merge-and-unload', () => {
  const cfg = preset('tiny');
  const before = memory.snapshot().cpu.live;
  const model = LlamaModel.init(cfg, { seed: 1, dtype: 'bf16', trainable: false });
  const frozenBytes = memory.snapshot().cpu.live.frozen - before.frozen;
  const r = 8;
  const res = prepareLora(model, { r, alpha: 16 });
  let expected = 0;
  for (const l of model.linears().values()) expected += r * (l.inFeatures + l.outFeatures);
  assert.equal(res.trainableParameters, expected);
  assert.equal(res.targets.length, cfg.numLayers * 7);
  const live = memory.snapshot().cpu.live;
  assert.equal(live.frozen - before.frozen, frozenBytes, 'base weights stay frozen');
  assert.equal(live.trainable - before.trainable, 4 * expected, 'A and B are trainable f32');
  assert.equal(live.grad - before.grad, 4 * expected);
  mergeAndUnload(model);
  assert.equal(loraLayers(model).length, 0, 'no adapter layer left');
  assert.ok([...model.linears().values()].every((l) => l instanceof DenseLinear));
  assert.equal(memory.snapshot().cpu.live.trainable, before.trainable);
  model.dispose();
});

test('targets: a list, a pattern, and an unknown name that lists the modules', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 1, trainable: false });
  const res = prepareLora(model, { targets: ['q_proj', 'v_proj'] });
  assert.deepEqual(res.targets, ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj']);
  assert.throws(() => prepareLora(model, { targets: ['qkv'] }, 'b'), /unknown module\(s\) 'qkv'; the model's linear modules are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj/);
  const res2 = prepareLora(model, { targets: /layers\.1\.mlp/ }, 'mlp1');
  assert.equal(res2.targets.length, 3);
  const trained = LlamaModel.init(preset('tiny'));
  assert.throws(() => prepareLora(trained, {}), /base model must be frozen/);
  trained.dispose();
  assert.throws(() => prepareLora(model, { r: 0 }), /r must be a positive integer/);
  model.dispose();
});

test('LoRA fine-tuning of a frozen bf16 model lowers the loss; only A and B change', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 2, dtype: 'bf16', trainable: false });
  prepareLora(model, { r: 8, alpha: 16 });
  const rows = Array.from({ length: 4 }, (_, r) => {
    const ids = new Int32Array(16), targets = new Int32Array(16);
    for (let t = 0; t < 16; t++) { ids[t] = (r * 31 + t) % 259; targets[t] = (r * 31 + t + 1) % 259; }
    return { ids, targets };
  });
  const frozenBefore = model.embed.value.data().slice(0);
  const trainer = new Trainer(model, new ArrayDataSource(rows, 4, 0, false), { schedule: { kind: 'constant', lr: 1e-2, warmupSteps: 0, totalSteps: 30 } });
  const first = trainer.trainStep().loss;
  let last = first;
  for (let i = 0; i < 29; i++) last = trainer.trainStep().loss;
  assert.ok(last < first * 0.8, `loss ${first} -> ${last}`);
  assert.deepEqual(model.embed.value.data(), frozenBefore, 'the frozen embedding did not move');
  trainer.dispose(); model.dispose();
});

test('a mixed-adapter batch equals running each row with its own adapter', () => {
  const model = LlamaModel.init(preset('tiny'), { seed: 3, trainable: false });
  prepareLora(model, { r: 4, seed: 1 }, 'alice');
  prepareLora(model, { r: 8, seed: 2, targets: ['q_proj', 'down_proj'] }, 'bob');
  for (const l of loraLayers(model)) for (const name of l.adapters.keys()) randomizeB(l, name, name.length * 17 + l.name.length);
  const T = 10, rowsAdapters = ['alice', 'bob', null, 'bob'];
  const B = rowsAdapters.length;
  const idv = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % 259);
  const tgv = Int32Array.from({ length: B * T }, (_, i) => (i * 5 + 1) % 259);
  const ids = Tensor.from(idv, [B, T], { dtype: 'i32' }), targets = Tensor.from(tgv, [B, T], { dtype: 'i32' });
  // mixed: per-row adapters, one pass; per-row loss via the losses of single rows
  for (const l of loraLayers(model)) l.setRowAdapters(rowsAdapters.map((a) => (a !== null && l.adapters.has(a) ? a : null)), T);
  const mixed = model.forward({ ids, targets }, { training: false }).lossSum;
  for (const l of loraLayers(model)) l.setRowAdapters(null);
  let separate = 0;
  rowsAdapters.forEach((a, row) => {
    setActiveAdapter(model, null);
    if (a !== null) for (const l of loraLayers(model)) l.active = l.adapters.has(a) ? a : null;
    const i1 = Tensor.from(idv.subarray(row * T, (row + 1) * T), [1, T], { dtype: 'i32' });
    const t1 = Tensor.from(tgv.subarray(row * T, (row + 1) * T), [1, T], { dtype: 'i32' });
    separate += model.forward({ ids: i1, targets: t1 }, { training: false }).lossSum;
    i1.dispose(); t1.dispose();
  });
  assert.ok(Math.abs(mixed - separate) / Math.abs(separate) < 1e-5, `mixed ${mixed} vs separate ${separate}`);
  ids.dispose(); targets.dispose(); model.dispose();
});

test('dropout applies to the adapter input in training only', () => {
  const layer = new LoraLinear(frozenLayer(8, 16), seed);
  layer.addAdapter('default', { r: 4, alpha: 4, rslora: false, dropout: 0.5, init: 'kaiming', seed });
  randomizeB(layer);
  const x = Tensor.from(randomValues(4 * 16, seed + 9), [4, 16]);
  layer.training = false;
  const e1 = layer.forward(x).toFloat32(), e2 = layer.forward(x).toFloat32();
  assert.deepEqual(e1, e2, 'eval is deterministic');
  layer.training = true;
  const t1 = layer.forward(x).toFloat32();
  assert.ok(relErr(t1, e1) > 1e-4, 'training output differs (dropout)');
  layer.clearSaved(); x.dispose(); layer.dispose();
});

test('activation checkpointing with LoRA dropout: the recomputed forward replays the dropout masks, losses and adapter gradients are bit-identical', () => {
  const run = (mode: 'off' | 'block' | 'every:2') => {
    const model = LlamaModel.init({ ...preset('tiny'), numLayers: 3 }, { seed: 3, dtype: 'bf16', trainable: false });
    prepareLora(model, { r: 4, alpha: 8, dropout: 0.2, seed: 9 });
    model.checkpointing = mode;
    const rows = Array.from({ length: 4 }, (_, r) => ({
      ids: Int32Array.from({ length: 24 }, (_, t) => (r * 31 + t) % 259), targets: Int32Array.from({ length: 24 }, (_, t) => (r * 31 + t + 1) % 259),
    }));
    const trainer = new Trainer(model, new ArrayDataSource(rows, 2, 1), { schedule: { kind: 'constant', lr: 1e-2, warmupSteps: 0, totalSteps: 3 }, seed: 1 });
    const losses = [trainer.trainStep().loss, trainer.trainStep().loss, trainer.trainStep().loss];
    const adapters = loraLayers(model).flatMap((l) => [...l.adapters.values()].flatMap((a) => [Float32Array.from(a.A.value.data() as Float32Array), Float32Array.from(a.B.value.data() as Float32Array)]));
    trainer.dispose(); model.dispose();
    return { losses, adapters };
  };
  const off = run('off');
  for (const mode of ['block', 'every:2'] as const) {
    const ck = run(mode);
    assert.deepEqual(ck.losses, off.losses, `${mode}: losses`);
    ck.adapters.forEach((a, i) => assert.ok(a.every((v, j) => Object.is(v, off.adapters[i][j])), `${mode}: adapter tensor ${i} after 3 steps`));
  }
});

test('packed prompt/completion rows: loss and every LoRA A/B gradient equal the same examples padded one per row', () => {
  // The same examples in both batches, so the loss (mean over the batch's
  // targets) has the same denominator; only float32 summation order differs
  // (see core's packing.test.ts): 1e-5 relative is the contract.
  const tok = new ByteTokenizer();
  const examples = Array.from({ length: 9 }, (_, i) => ({ prompt: `${'ab'.repeat(i * 3)} ${i}?`, completion: ` ${'yes'.repeat(1 + (i % 3))}` }));
  const model = LlamaModel.init(preset('tiny'), { seed: 21, trainable: false });
  prepareLora(model, { r: 4, alpha: 8, seed: 21 });
  let k = 0;  // B starts at zero, which would make every A gradient zero: give it values
  for (const l of loraLayers(model)) {
    const b = l.adapter(l.active!).B.value.data() as Float32Array;
    for (let i = 0; i < b.length; i++) b[i] = 0.05 * Math.sin(++k);
  }
  const grads = (rows: TokenRows) => {
    const batch = new TokenDataSource(rows, { batchSize: rows.numRows, shuffle: false }).next();
    model.zeroGrad();
    const r = model.forward(batch, { training: true });
    model.backward(1 / r.count);
    disposeBatch(batch);
    return { loss: r.lossSum / r.count, g: new Map(model.parameters().filter((p) => p.grad).map((p) => [p.name, p.grad!.toFloat32()])) };
  };
  const packed = packExamples(tok, examples, 64), padded = padExamples(tok, examples, 64);
  assert.ok(packed.numRows < padded.numRows);
  const p = grads(packed), q = grads(padded);
  assert.ok(Math.abs(p.loss - q.loss) <= 1e-5 * q.loss, `loss ${p.loss} vs ${q.loss}`);
  assert.equal(q.g.size, 2 * 7 * model.config.numLayers, 'A and B of every projection train');
  for (const [name, g] of q.g) {
    assert.ok(g.some((x) => x !== 0), `${name} has a gradient`);
    const err = relErr(p.g.get(name)!, g);
    assert.ok(err <= 1e-5, `${name}: packed vs padded relative error ${err.toExponential(2)}`);
  }
  model.dispose();
});
