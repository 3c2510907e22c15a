// AdamW with blockwise 8-bit state, the scheme of bitsandbytes' AdamW8bit:
// per trainable parameter of at least ADAMW8BIT_MIN_SIZE elements,
//   exp_avg         [param shape] u8   codes of the signed dynamic map
//   exp_avg.absmax  [ceil(n/256)] f32  one scale per block of 256 elements
//   exp_avg_sq      [param shape] u8   codes of the unsigned dynamic map
//   exp_avg_sq.absmax [ceil(n/256)] f32
// (about 2 bytes per element instead of 8). Smaller parameters keep the fp32
// state of AdamW and take its exact step. All state is `optimizer` memory,
// on the parameter's device (`optimizer_host` CUDA managed memory when paged,
// moved to the GPU for each step and back after it).
import { adamw8bitBlocks, adamw8bitStep, adamwStep, dynamicMap } from '../ops/optim.js';
import type { Device } from '../dtype.js';
import { Tensor } from '../tensor.js';
import type { Parameter } from '../nn/module.js';
import { type AdamWConfig, adamwDefaults, copyOptimizerState, pageState, stateCategory, weightDecayFor } from './adamw.js';
import type { Optimizer } from './optimizer.js';

/** Parameters with fewer elements keep fp32 state (bitsandbytes' min_8bit_size):
 * their state is small, and 8-bit blocks would only cost them accuracy. */
export const ADAMW8BIT_MIN_SIZE = 4096;

type Slot =
  | { kind: 'f32'; m: Tensor; v: Tensor }
  | { kind: 'u8'; m: Tensor; mAbsmax: Tensor; v: Tensor; vAbsmax: Tensor };

function slotTensors(s: Slot): Tensor[] {
  return s.kind === 'f32' ? [s.m, s.v] : [s.m, s.mAbsmax, s.v, s.vAbsmax];
}

export class AdamW8bit implements Optimizer {
  readonly name = 'adamw8bit' as const;
  readonly params: Parameter[];
  readonly config: Required<AdamWConfig>;
  private readonly slots: Slot[] = [];
  /** optimizer steps taken */
  stepCount = 0;

  constructor(params: readonly Parameter[], config: AdamWConfig = {}) {
    this.params = params.filter((p) => p.grad !== null);
    if (this.params.length === 0) throw new Error('AdamW8bit: no trainable parameters (every parameter is frozen)');
    this.config = adamwDefaults(config);
    // fresh codes must decode to 0 whatever the absmax: the index of 0 in each map
    const zeroM = dynamicMap(true).indexOf(0), zeroV = dynamicMap(false).indexOf(0);
    const category = stateCategory('AdamW8bit', this.params, this.config);
    // every allocation is recorded, so a failure part way frees what was made
    const made: Tensor[] = [];
    // on each parameter's device; codes filled with the zero code, on the host first elsewhere than the CPU
    const alloc = (shape: readonly number[], dtype: 'f32' | 'u8', device: Device, zeroCode?: number): Tensor => {
      let t: Tensor;
      if (zeroCode !== undefined && device !== 'cpu') {
        t = Tensor.from(new Uint8Array(shape.reduce((a, b) => a * b, 1)).fill(zeroCode), shape, { dtype, category, device });
      } else {
        t = Tensor.zeros(shape, { dtype, category, device });
        if (zeroCode !== undefined) (t.data() as Uint8Array).fill(zeroCode);
      }
      made.push(t);
      return t;
    };
    try {
      for (const p of this.params) {
        const shape = p.value.shape, device = p.value.device;
        if (p.value.numel < ADAMW8BIT_MIN_SIZE) {
          this.slots.push({ kind: 'f32', m: alloc(shape, 'f32', device), v: alloc(shape, 'f32', device) });
          continue;
        }
        const blocks = [adamw8bitBlocks(p.value.numel)];
        const m = alloc(shape, 'u8', device, zeroM), mAbsmax = alloc(blocks, 'f32', device);
        const v = alloc(shape, 'u8', device, zeroV), vAbsmax = alloc(blocks, 'f32', device);
        this.slots.push({ kind: 'u8', m, mAbsmax, v, vAbsmax });
      }
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
  }

  /** One update of every trainable parameter with the gradients they hold. */
  step(lr: number): void {
    this.stepCount++;
    const [beta1, beta2] = this.config.betas;
    const paged = this.config.paged;
    if (paged) pageState(this.slots.flatMap(slotTensors), 'cuda');
    this.params.forEach((p, i) => {
      const s = this.slots[i];
      const opts = { lr, beta1, beta2, eps: this.config.eps, weightDecay: weightDecayFor(p, this.config), step: this.stepCount };
      if (s.kind === 'f32') adamwStep(p.value, p.grad!, s.m, s.v, opts);
      else adamw8bitStep(p.value, p.grad!, s.m, s.mAbsmax, s.v, s.vAbsmax, opts);
    });
    if (paged) pageState(this.slots.flatMap(slotTensors), 'cpu');
  }

  /** State tensors by name, owned by the optimizer: exp_avg.<param> and
   * exp_avg_sq.<param> (f32 for small parameters, u8 codes otherwise), and for
   * the 8-bit ones exp_avg.absmax.<param> and exp_avg_sq.absmax.<param> (f32). */
  stateTensors(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.params.forEach((p, i) => {
      const s = this.slots[i];
      out.set(`exp_avg.${p.name}`, s.m);
      if (s.kind === 'u8') out.set(`exp_avg.absmax.${p.name}`, s.mAbsmax);
      out.set(`exp_avg_sq.${p.name}`, s.v);
      if (s.kind === 'u8') out.set(`exp_avg_sq.absmax.${p.name}`, s.vAbsmax);
    });
    return out;
  }

  /** Copy state saved by stateTensors() back in; every tensor is checked
   * (dtype and shape) before anything is copied. */
  loadState(tensors: Map<string, Tensor>, stepCount: number): void {
    copyOptimizerState(this.stateTensors(), tensors, stepCount);
    this.stepCount = stepCount;
  }

  /** Bytes of optimizer state held. */
  stateBytes(): number {
    let n = 0;
    for (const s of this.slots) for (const t of slotTensors(s)) n += t.bytes;
    return n;
  }

  dispose(): void {
    for (const s of this.slots) for (const t of slotTensors(s)) t.dispose();
  }
}
