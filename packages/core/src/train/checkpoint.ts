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
import { type Tensor, copyInto } from '../tensor.js';
import { parseJson } from '../util/json.js';
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
 * config, same trained parameters, same data). All or nothing: everything
 * is checked before anything is changed, and a refused checkpoint leaves the
 * trainer exactly as it was. */
export function loadCheckpoint(trainer: Trainer, path: string): void {
  const { tensors, metadata } = readSafetensors(path, { category: 'workspace' });
  try {
    if (metadata.format !== FORMAT) throw new Error(`${path}: not a tunebench checkpoint (metadata format is ${JSON.stringify(metadata.format)})`);
    if (metadata.version !== VERSION) throw new Error(`${path}: checkpoint version ${metadata.version} is not supported (this build reads ${VERSION})`);
    let raw: unknown;
    try {
      raw = parseJson(metadata.state ?? '', `${path}: state metadata`);
    } catch {
      throw new Error(`${path}: the checkpoint's state metadata is not valid JSON`);
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${path}: the checkpoint's state metadata is not a JSON object`);
    const state = raw as Record<string, unknown>;
    const problems: string[] = [];
    const count = (k: string): number => {
      const v = state[k];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_STEPS) { problems.push(`state.${k} must be an integer from 0 to ${MAX_STEPS}, got ${JSON.stringify(v)}`); return 0; }
      return v;
    };
    const step = count('step'), optimizerStep = count('optimizerStep');
    if (problems.length === 0 && optimizerStep > step) problems.push(`state.optimizerStep ${optimizerStep} is past state.step ${step}`);
    const rng = state.rng;
    if (!Array.isArray(rng) || rng.length !== 4 || !rng.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32)) {
      problems.push(`state.rng must be the trainer's random state (four 32-bit unsigned integers), got ${JSON.stringify(rng) ?? 'nothing'}`);
    }
    if (problems.length) throw new Error(`${path}: ${problems.join('; ')}`);
    if (JSON.stringify(state.modelConfig) !== JSON.stringify(trainer.model.config)) {
      throw new Error(`${path}: the checkpoint was written for model config ${JSON.stringify(state.modelConfig)}, this model is ${JSON.stringify(trainer.model.config)}`);
    }
    const saved = state.optimizer ?? 'adamw';
    if (saved !== trainer.optimizer.name) {
      throw new Error(`${path}: the checkpoint holds state of optimizer '${String(saved)}', this trainer uses '${trainer.optimizer.name}'`);
    }
    if (state.gradAccumulation !== trainer.config.gradAccumulation) {
      throw new Error(`${path}: the checkpoint used gradAccumulation ${JSON.stringify(state.gradAccumulation)}, this run ${trainer.config.gradAccumulation}`);
    }
    for (const p of trainer.optimizer.params) {
      const src = tensors.get(`model.${p.name}`);
      const same = src && src.dtype === 'f32' && src.shape.length === p.value.shape.length && src.shape.every((d, i) => d === p.value.shape[i]);
      if (!src) problems.push(`model.${p.name} is missing`);
      else if (!same) problems.push(`model.${p.name} is ${src.dtype} [${src.shape.join(', ')}], expected f32 [${p.value.shape.join(', ')}]`);
    }
    if (problems.length) throw new Error(`${path}: ${problems.join('; ')}`);
    const optim = new Map<string, Tensor>();
    for (const [name, t] of tensors) if (name.startsWith('optim.')) optim.set(name.slice('optim.'.length), t);

    // Apply. The data position goes first (its own checks run before it
    // changes anything) and is put back if the optimizer state is refused;
    // the optimizer's loadState checks every tensor before copying any; what
    // follows cannot fail.
    const dataBefore = trainer.data.state();
    try {
      trainer.data.restore(state.data);
    } catch (e) {
      throw new Error(`${path}: state.data: ${(e as Error).message}`);
    }
    try {
      trainer.optimizer.loadState(optim, optimizerStep);
    } catch (e) {
      trainer.data.restore(dataBefore);
      throw new Error(`${path}: ${(e as Error).message}`);
    }
    for (const p of trainer.optimizer.params) copyInto(p.value, tensors.get(`model.${p.name}`)!);
    trainer.restoreProgress(step, rng as [number, number, number, number]);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** Steps a checkpoint may claim (far beyond any run). */
const MAX_STEPS = 1e12;
