// QLoRA options: how the frozen base is quantized, plus the LoRA adapter's
// options (@tunebench/lora) and the optimizer. Defaults follow the QLoRA
// paper and bitsandbytes: NF4, blocks of 64, double quantization on.
import { type OptimizerName } from '@tunebench/core';
import { LORA_DEFAULTS, type LoraConfig, loraConfig } from '@tunebench/lora';

export interface QloraConfig extends Omit<LoraConfig, 'init'> {
  /** 4-bit format of the frozen base (default 'nf4') */
  format: 'nf4' | 'fp4';
  /** values per absmax block, a power of two in 32..4096 (default 64) */
  blockSize: number;
  /** double-quantize the absmax (default true) */
  doubleQuant: boolean;
  /** adapter initialisation: PEFT's kaiming A / zero B, gaussian A, or LoftQ
   * (A and B from a rank-r SVD of W - deq(quant(W)), so the adapter starts by
   * cancelling the quantization error) */
  init: 'kaiming' | 'gaussian' | 'loftq';
  /** LoftQ alternations of quantize / SVD (default 1) */
  loftqIters: number;
  /** optimizer of the adapters: 32-bit or 8-bit blockwise AdamW (default 'adamw') */
  optimizer: OptimizerName;
}

export const QLORA_DEFAULTS: Readonly<QloraConfig> = Object.freeze({
  ...LORA_DEFAULTS, init: 'kaiming' as const, format: 'nf4' as const, blockSize: 64, doubleQuant: true, loftqIters: 1, optimizer: 'adamw' as const,
});

export function qloraConfig(opts: Partial<QloraConfig> = {}): QloraConfig {
  const c: QloraConfig = { ...QLORA_DEFAULTS, ...opts };
  const problems: string[] = [];
  if (c.format !== 'nf4' && c.format !== 'fp4') problems.push(`format must be 'nf4' or 'fp4', got ${JSON.stringify(c.format)}`);
  if (!Number.isInteger(c.blockSize) || c.blockSize < 32 || c.blockSize > 4096 || (c.blockSize & (c.blockSize - 1)) !== 0) {
    problems.push(`blockSize must be a power of two from 32 to 4096, got ${c.blockSize}`);
  }
  if (typeof c.doubleQuant !== 'boolean') problems.push(`doubleQuant must be a boolean, got ${JSON.stringify(c.doubleQuant)}`);
  if (c.init !== 'kaiming' && c.init !== 'gaussian' && c.init !== 'loftq') problems.push(`init must be 'kaiming', 'gaussian' or 'loftq', got ${JSON.stringify(c.init)}`);
  if (!Number.isInteger(c.loftqIters) || c.loftqIters < 1 || c.loftqIters > 20) problems.push(`loftqIters must be an integer from 1 to 20, got ${c.loftqIters}`);
  if (c.optimizer !== 'adamw' && c.optimizer !== 'adamw8bit') problems.push(`optimizer must be 'adamw' or 'adamw8bit', got ${JSON.stringify(c.optimizer)}`);
  if (problems.length) throw new Error(`QLoRA config: ${problems.join('; ')}`);
  // the adapter's own checks (r, alpha, dropout, targets, seed)
  loraConfig({ ...c, init: c.init === 'loftq' ? 'kaiming' : c.init });
  return c;
}

/** The LoRA part of a QLoRA config (LoftQ replaces the initial values afterwards). */
export function adapterConfig(c: QloraConfig): LoraConfig {
  return loraConfig({ r: c.r, alpha: c.alpha, dropout: c.dropout, rslora: c.rslora, targets: c.targets, seed: c.seed, init: c.init === 'gaussian' ? 'gaussian' : 'kaiming' });
}
