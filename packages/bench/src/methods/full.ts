// The 'full' method plugin: every weight trains (registered by methods.ts).
import { makeOptimizer, saveHfModel } from '@tunebench/core';
import type { MethodPlugin } from '../methods.js';
import { loadBase } from '../tasks/pretrain.js';
import { randomModel } from '../device.js';
import { optimizerOption, optimizerStateBytes, validateOptimizer } from './helpers.js';

export const fullMethod: MethodPlugin = {
  name: 'full',
  describe: 'full fine-tuning: every weight trains (AdamW on fp32 masters; options.optimizer adamw8bit for 8-bit state)',
  tokens: ['full', 'full-8bit'],
  parse: (t) => (t === 'full' ? { name: 'full', lr: 3e-4, label: 'full' }
    : t === 'full-8bit' ? { name: 'full', lr: 3e-4, label: 'full-8bit', options: { optimizer: 'adamw8bit' } } : null),
  validate: (s) => validateOptimizer(s),
  settings: (s): Record<string, string> => (optimizerOption(s) === 'adamw' ? {} : { optimizer: optimizerOption(s) }),
  prepare: (dir) => loadBase(dir, { trainable: true }),
  shapeModel: (cfg, _s, seed) => randomModel(cfg, { trainable: true, seed }),
  planMethod: (s) => ({ trainsBase: true, optimizerBytes: optimizerStateBytes(optimizerOption(s)) }),
  optimizer: (s, weightDecay) => makeOptimizer(optimizerOption(s), { weightDecay }),
  save: (model, _spec, dir) => saveHfModel(model, dir, { dtype: 'bf16' }),
};
