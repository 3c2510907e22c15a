// dev only: teacher-forced self-agreement of our decode with 'i8' against 'i16' (and f32), SmolLM-135M decode shape
import { FusedDecoder, KVCache, generate, native } from '@tunebench/core';
import { decodePrompt, decodeShapeModel } from './src/decode_rows.js';
native.setThreads(1);
for (const bits of [8, 4] as const) {
  const model = decodeShapeModel('smollm-135m', { kind: 'intn', bits, groupSize: 32 });
  const prompt = decodePrompt(32);
  const base = generate(model, prompt, { maxNewTokens: 128, decodeActivations: 'f32' });
  const seq = [...prompt, ...base.tokens.slice(0, -1)];
  const res: string[] = [];
  for (const act of ['i16', 'i8'] as const) {
    const cache = new KVCache(model.config, 1, seq.length);
    const d = FusedDecoder.create(model, cache, { activations: act })!;
    let same = 0;
    seq.forEach((t, i) => { const next = d.step(t); if (i >= prompt.length - 1 && next === base.tokens[i - prompt.length + 1]) same++; });
    d.dispose(); cache.dispose();
    res.push(`${act} ${same}/128`);
  }
  console.log(`INT${bits}: teacher-forced agreement with our f32 greedy tokens: ${res.join(', ')}`);
  model.dispose();
}
