// Checkpoints: everything a run needs to continue exactly where it stopped,
// in one safetensors file written atomically (temp file + rename), so a crash
// never leaves a half-written checkpoint in place of a good one.
//
//   tensors   model.<param>                   trained parameters (f32)
//             optim.<name>                    the optimizer's stateTensors():
//               adamw: exp_avg.<param>, exp_avg_sq.<param> (f32)
//               adamw8bit: the same names (u8 codes, or f32 for small
//               params) plus exp_avg.absmax.<param>, exp_avg_sq.absmax.<param>
//   metadata  format = "tunebench-checkpoint", version = "1",
//             state = JSON { step, optimizer, optimizerStep, schedule,
//                            gradAccumulation, maxGradNorm, modelConfig, rng, data }
// `optimizer` is the optimizer's name; checkpoints from before it was
// recorded have none and are read as 'adamw' (the only optimizer then).
// Frozen parameters are not saved: they come from the base model.
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { Tensor } from '../tensor.js';
import type { Trainer } from './trainer.js';

const FORMAT = 'tunebench-checkpoint';
const VERSION = '1';

export function saveCheckpoint(trainer: Trainer, path: string): void {
  const tensors = new Map<string, Tensor>();
  for (const p of trainer.optimizer.params) tensors.set(`model.${p.name}`, p.value);
  for (const [name, t] of trainer.optimizer.stateTensors()) tensors.set(`optim.${name}`, t);
  const state = {
    step: trainer.step,
    optimizer: trainer.optimizer.name,
    optimizerStep: trainer.optimizer.stepCount,
    schedule: trainer.config.schedule,
    gradAccumulation: trainer.config.gradAccumulation,
    maxGradNorm: trainer.config.maxGradNorm,
    modelConfig: trainer.model.config,
    rng: trainer.rng.state(),
    data: trainer.data.state(),
  };
  writeSafetensors(path, tensors, { metadata: { format: FORMAT, version: VERSION, state: JSON.stringify(state) } });
}

/** Restores a checkpoint into a trainer built the same way (same model
 * config, same trained parameters, same data). */
export function loadCheckpoint(trainer: Trainer, path: string): void {
  const { tensors, metadata } = readSafetensors(path, { category: 'workspace' });
  try {
    if (metadata.format !== FORMAT) throw new Error(`${path}: not a tunebench checkpoint (metadata format is ${JSON.stringify(metadata.format)})`);
    if (metadata.version !== VERSION) throw new Error(`${path}: checkpoint version ${metadata.version} is not supported (this build reads ${VERSION})`);
    let state: {
      step: number; optimizer?: string; optimizerStep: number; modelConfig: unknown; rng: [number, number, number, number]; data: unknown;
      gradAccumulation: number;
    };
    try {
      state = JSON.parse(metadata.state ?? '');
    } catch {
      throw new Error(`${path}: the checkpoint's state metadata is not valid JSON`);
    }
    if (JSON.stringify(state.modelConfig) !== JSON.stringify(trainer.model.config)) {
      throw new Error(`${path}: the checkpoint was written for model config ${JSON.stringify(state.modelConfig)}, this model is ${JSON.stringify(trainer.model.config)}`);
    }
    const saved = state.optimizer ?? 'adamw';
    if (saved !== trainer.optimizer.name) {
      throw new Error(`${path}: the checkpoint holds state of optimizer '${saved}', this trainer uses '${trainer.optimizer.name}'`);
    }
    if (state.gradAccumulation !== trainer.config.gradAccumulation) {
      throw new Error(`${path}: the checkpoint used gradAccumulation ${state.gradAccumulation}, this run ${trainer.config.gradAccumulation}`);
    }
    const problems: string[] = [];
    for (const p of trainer.optimizer.params) {
      const src = tensors.get(`model.${p.name}`);
      if (!src) problems.push(`model.${p.name} is missing`);
      else if (src.dtype !== 'f32' || src.numel !== p.value.numel) problems.push(`model.${p.name} is ${src.dtype} [${src.shape.join(', ')}], expected f32 [${p.value.shape.join(', ')}]`);
    }
    if (problems.length) throw new Error(`${path}: ${problems.join('; ')}`);
    const optim = new Map<string, Tensor>();
    for (const [name, t] of tensors) if (name.startsWith('optim.')) optim.set(name.slice('optim.'.length), t);
    trainer.optimizer.loadState(optim, state.optimizerStep);
    for (const p of trainer.optimizer.params) (p.value.data() as Float32Array).set(tensors.get(`model.${p.name}`)!.data() as Float32Array);
    trainer.data.restore(state.data);
    trainer.restoreProgress(state.step, state.rng);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}
