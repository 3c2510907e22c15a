// QA-LoRA options: the frozen base's group-wise INT-N quantization plus the
// LoRA adapter's options (@tunebench/lora). The adapters are pooled with
// poolSize = groupSize, so each adapter's weight delta is constant over a
// quantization group and folds into that group's offset (mergeQalora).
//
// Default quantizer 'gptq': the QA-LoRA paper quantizes its base with GPTQ,
// and on the same grid GPTQ's layer output error on calibration inputs is
// lower than RTN's (test/qalora.test.ts measures it), which matters most at
// 2 and 3 bits. GPTQ needs calibration token rows; 'rtn' needs none and
// quantizes while loading.
import { INTN_BITS, INTN_GROUP_SIZES, type IntNBits, type IntNGroupSize, type IntNQuantizer, type OptimizerName } from '@tunebench/core';
import { LORA_DEFAULTS, type LoraConfig, loraConfig } from '@tunebench/lora';

export interface QaloraConfig extends Omit<LoraConfig, 'poolSize'> {
  /** code width of the frozen base: 2, 3, 4 or 8 (default 4) */
  bits: IntNBits;
  /** L: input columns per quantization group, and the adapters' pool size (default 32) */
  groupSize: IntNGroupSize;
  /** 'gptq' (default; needs calibration rows) or 'rtn' */
  quantizer: IntNQuantizer;
  /** GPTQ damping, a fraction of mean(diag H) (default 0.01) */
  damp: number;
  /** optimizer of the adapters (default 'adamw') */
  optimizer: OptimizerName;
}

export const QALORA_DEFAULTS: Readonly<QaloraConfig> = Object.freeze({
  ...LORA_DEFAULTS, bits: 4 as const, groupSize: 32 as const, quantizer: 'gptq' as const, damp: 0.01, optimizer: 'adamw' as const,
});

export function qaloraConfig(opts: Partial<QaloraConfig> = {}): QaloraConfig {
  const c: QaloraConfig = { ...QALORA_DEFAULTS, ...opts };
  if ('poolSize' in (opts as object)) throw new Error('QA-LoRA config: poolSize is not an option; the adapters pool over groupSize');
  const problems: string[] = [];
  if (!INTN_BITS.includes(c.bits)) problems.push(`bits must be one of ${INTN_BITS.join(', ')}, got ${JSON.stringify(c.bits)}`);
  if (!INTN_GROUP_SIZES.includes(c.groupSize)) problems.push(`groupSize must be one of ${INTN_GROUP_SIZES.join(', ')}, got ${JSON.stringify(c.groupSize)}`);
  if (c.quantizer !== 'rtn' && c.quantizer !== 'gptq') problems.push(`quantizer must be 'rtn' or 'gptq', got ${JSON.stringify(c.quantizer)}`);
  if (typeof c.damp !== 'number' || !Number.isFinite(c.damp) || c.damp < 0) problems.push(`damp must be a finite number >= 0, got ${c.damp}`);
  if (c.optimizer !== 'adamw' && c.optimizer !== 'adamw8bit') problems.push(`optimizer must be 'adamw' or 'adamw8bit', got ${JSON.stringify(c.optimizer)}`);
  if (problems.length) throw new Error(`QA-LoRA config: ${problems.join('; ')}`);
  // the adapter's own checks (r, alpha, dropout, targets, seed)
  loraConfig(adapterConfig(c));
  return c;
}

/** The LoRA part of a QA-LoRA config: pooled adapters with poolSize = groupSize. */
export function adapterConfig(c: QaloraConfig): LoraConfig {
  return loraConfig({ r: c.r, alpha: c.alpha, dropout: c.dropout, rslora: c.rslora, targets: c.targets, seed: c.seed, init: c.init, poolSize: c.groupSize });
}
