// The 'lora' method plugin: LoRA adapters on every linear layer of a frozen
// bf16 base, optionally training the embeddings (registered by methods.ts).
import { makeOptimizer } from '@tunebench/core';
import { prepareLora, saveAdapter } from '@tunebench/lora';
import type { MethodPlugin, MethodSpec } from '../methods.js';
import { loadBase } from '../tasks/pretrain.js';
import { frozenRandom, optimizerOption, optimizerStateBytes, optionOf, positiveInteger, validateOptimizer } from './helpers.js';

const LORA_OPTIONS = ['optimizer', 'trainEmbeddings'];

function loraTrainsEmbeddings(s: MethodSpec): boolean {
  return optionOf(s, 'trainEmbeddings') === true;
}

export const loraMethod: MethodPlugin = {
  name: 'lora',
  describe: 'LoRA on every linear layer: frozen bf16 base, trainable A (r x in) and B (out x r)',
  tokens: ['lora8', 'lora64', 'lora<r>'],
  parse: (t) => {
    const m = /^lora-?r?(\d+)$/.exec(t);
    if (!m) return null;
    const r = Number(m[1]);
    return { name: 'lora', r, alpha: 2 * r, lr: 2e-3, label: `lora-r${r}` };
  },
  validate: (s) => {
    const unknown = Object.keys(s.options ?? {}).filter((k) => !LORA_OPTIONS.includes(k));
    const te = optionOf(s, 'trainEmbeddings');
    return [
      ...(unknown.length ? [`options: unknown key(s) ${unknown.join(', ')} (known: ${LORA_OPTIONS.join(', ')})`] : []),
      ...(positiveInteger(s.r) ? [] : ['r must be a positive integer']),
      ...(s.alpha === undefined || (typeof s.alpha === 'number' && s.alpha > 0) ? [] : ['alpha must be a positive number']),
      ...validateOptimizer(s),
      ...(te === undefined || typeof te === 'boolean' ? [] : [`options.trainEmbeddings must be true or false, got ${JSON.stringify(te)}`]),
    ];
  },
  settings: (s) => ({
    r: s.r!, alpha: s.alpha ?? 2 * s.r!, ...(optimizerOption(s) === 'adamw' ? {} : { optimizer: optimizerOption(s) }),
    ...(loraTrainsEmbeddings(s) ? { trainEmbeddings: true } : {}),
  }),
  prepare: (dir, s, seed) => {
    const model = loadBase(dir, { trainable: false });
    try {
      prepareLora(model, { r: s.r, alpha: s.alpha ?? 2 * s.r!, seed, trainEmbeddings: loraTrainsEmbeddings(s) });
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  },
  shapeModel: (cfg, s, seed) => frozenRandom(cfg, seed, (m) => { prepareLora(m, { r: s.r, alpha: s.alpha ?? 2 * s.r!, seed, trainEmbeddings: loraTrainsEmbeddings(s) }); }),
  planMethod: (s) => ({ adapterRank: s.r, optimizerBytes: optimizerStateBytes(optimizerOption(s)), trainsEmbeddings: loraTrainsEmbeddings(s) }),
  optimizer: (s, weightDecay) => makeOptimizer(optimizerOption(s), { weightDecay }),
  adapterRank: (s) => s.r,
  peerUnsupported: (_peer, s) => (loraTrainsEmbeddings(s) ? 'the peers train adapters only (no trainEmbeddings)' : null),
  save: (model, _spec, dir) => saveAdapter(model, dir),
};
