// Learning-rate schedules, as transformers' get_constant_schedule_with_warmup
// and get_cosine_schedule_with_warmup compute them: linear warmup from 0 over
// `warmupSteps` optimizer steps, then constant, or a half cosine down to
// minLrRatio * lr at `totalSteps`.

export interface ScheduleConfig {
  kind: 'constant' | 'cosine';
  /** peak learning rate */
  lr: number;
  warmupSteps: number;
  /** optimizer steps in the whole run (cosine reaches its floor there) */
  totalSteps: number;
  /** cosine floor as a fraction of lr; default 0 */
  minLrRatio?: number;
}

export function validateSchedule(s: ScheduleConfig): void {
  if (s.kind !== 'constant' && s.kind !== 'cosine') throw new Error(`schedule: kind must be 'constant' or 'cosine', got '${String(s.kind)}'`);
  if (!(Number.isFinite(s.lr) && s.lr >= 0)) throw new Error(`schedule: lr must be a finite number >= 0, got ${s.lr}`);
  if (!Number.isInteger(s.warmupSteps) || s.warmupSteps < 0) throw new Error(`schedule: warmupSteps must be an integer >= 0, got ${s.warmupSteps}`);
  if (!Number.isInteger(s.totalSteps) || s.totalSteps < 1) throw new Error(`schedule: totalSteps must be an integer >= 1, got ${s.totalSteps}`);
  const r = s.minLrRatio ?? 0;
  if (!(r >= 0 && r <= 1)) throw new Error(`schedule: minLrRatio must be in [0, 1], got ${r}`);
}

/** Learning rate for the optimizer step `step` (0-based). */
export function learningRate(s: ScheduleConfig, step: number): number {
  if (step < s.warmupSteps) return s.lr * (step / Math.max(1, s.warmupSteps));
  if (s.kind === 'constant') return s.lr;
  const progress = Math.min(1, (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps));
  const floor = s.minLrRatio ?? 0;
  return s.lr * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}
