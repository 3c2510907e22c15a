// The PyTorch peer: packages/bench/peers/torch_train.py trains the identical
// model from our initial weights on our batches with our learning rates, on
// the CPU, when a python3 with torch is present. Files handed over (in a
// scratch directory): weights.bin (f32 values back to back) + weights.json
// ([{name, shape, offset}], offsets in floats), batches.bin (i32
// [steps, 2, B, T]: ids then targets), packing.bin for packed rows (i32
// [steps, 2, B, T]: segment ids then RoPE positions, with --packed), lrs.json,
// lora.json; a 4-bit
// weight (QLoRA) has its absmax in weights.bin and its packed codes in
// quant4.bin, and the script dequantizes it before every matmul.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Device, LlamaConfig } from '@tunebench/core';
import type { PeerInput, PeerOutcome } from './input.js';
import type { MethodSpec } from '../methods.js';

/** The script, next to the package's dist/ and src/. */
export const TORCH_SCRIPT = process.env.TUNEBENCH_TORCH_SCRIPT
  ? resolve(process.env.TUNEBENCH_TORCH_SCRIPT)
  // TUNEBENCH_TORCH_SCRIPT: where a bundled build (the GPU kit) finds it
  : resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'peers', 'torch_train.py');

/** The python to use: TUNEBENCH_PYTHON, else python3 (on the PATH, falling back to /usr/bin/python3 when that one has no torch). */
export function defaultPython(): string {
  return process.env.TUNEBENCH_PYTHON || 'python3';
}

const availability = new Map<string, string | null>();
/** the interpreter that answered for a name ('python3' may fall back to /usr/bin/python3) */
const resolved = new Map<string, string>();

/** null when `python` can import torch; otherwise why not, in words. Asked once per python. */
export function torchUnavailable(python = defaultPython()): string | null {
  if (availability.has(python)) return availability.get(python)!;
  let why: string | null = null;
  const candidates = python === 'python3' && existsSync('/usr/bin/python3') ? ['python3', '/usr/bin/python3'] : [python];
  for (const p of candidates) {
    const r = spawnSync(p, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) { availability.set(python, null); resolved.set(python, p); return null; }
    why = r.error ? `${p}: ${r.error.message}` : `${p} has no torch (${(r.stderr || '').trim().split('\n').pop()})`;
  }
  availability.set(python, why);
  return why;
}

/** Whether the batches are packed rows (all of them, or none: one source drew them). */
function packedInput(input: PeerInput): boolean {
  const n = input.batches.filter((b) => b.segments && b.positions).length;
  if (n !== 0 && n !== input.batches.length) throw new Error(`PyTorch peer: ${n} of ${input.batches.length} batches are packed; expected all or none`);
  return n > 0;
}

async function writeInput(dir: string, input: PeerInput): Promise<void> {
  const manifest: { name: string; shape: number[]; offset: number; quant4?: { format: string; blockSize: number; table: number[]; packedOffset: number; packedBytes: number } }[] = [];
  const out = createWriteStream(join(dir, 'weights.bin'));
  const packedParts: Uint8Array[] = [];
  let offset = 0, packedOffset = 0;
  for (const w of input.weights) {
    const q = w.quant4;
    manifest.push({
      name: w.name, shape: w.shape, offset,
      ...(q ? { quant4: { format: q.format, blockSize: q.blockSize, table: [...q.table], packedOffset, packedBytes: q.packed.length } } : {}),
    });
    if (q) { packedParts.push(q.packed); packedOffset += q.packed.length; }
    offset += w.data.length;
    if (!out.write(Buffer.from(w.data.buffer, w.data.byteOffset, w.data.byteLength))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
  if (packedParts.length) writeFileSync(join(dir, 'quant4.bin'), Buffer.concat(packedParts));
  writeFileSync(join(dir, 'weights.json'), JSON.stringify(manifest));
  const n = input.batchSize * input.seqLen;
  const batches = new Int32Array(input.batches.length * 2 * n);
  input.batches.forEach((b, s) => { batches.set(b.ids, 2 * s * n); batches.set(b.targets, (2 * s + 1) * n); });
  writeFileSync(join(dir, 'batches.bin'), Buffer.from(batches.buffer));
  if (packedInput(input)) {
    const packing = new Int32Array(input.batches.length * 2 * n);
    input.batches.forEach((b, s) => { packing.set(b.segments!, 2 * s * n); packing.set(b.positions!, (2 * s + 1) * n); });
    writeFileSync(join(dir, 'packing.bin'), Buffer.from(packing.buffer));
  }
  writeFileSync(join(dir, 'lrs.json'), JSON.stringify(input.lrs));
  if (input.lora) writeFileSync(join(dir, 'lora.json'), JSON.stringify(input.lora));
}

interface TorchJson {
  torchVersion: string; threads: number; losses: number[]; allStepMs: number[]; phasesMs: { forward: number; backward: number; optimizer: number };
  peakRssAboveBaseBytes: number | null; blasInfo?: string; openblasCore?: string;
  /** --device cuda */
  device?: string; cudaDevice?: string; maxMemoryAllocatedBytes?: number; maxMemoryReservedBytes?: number; stack?: string;
}

/** Runs torch_train.py with these arguments; its JSON line, or an error with the end of its stderr. */
async function runScript(python: string, args: string[], env: NodeJS.ProcessEnv): Promise<TorchJson> {
  const child = spawn(resolved.get(python) ?? python, [TORCH_SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const [code] = await once(child, 'close') as [number | null];
  const last = stdout.trim().split('\n').pop() ?? '';
  let r: TorchJson;
  try { r = JSON.parse(last) as TorchJson; } catch { r = null as unknown as TorchJson; }
  if (code !== 0 || !r) throw new Error(`PyTorch peer failed (exit ${code}): ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
  return r;
}

/** The outcome of a script run, on either device. */
function outcomeOf(r: TorchJson, warmup: number): PeerOutcome {
  const cuda = r.device === 'cuda';
  return {
    impl: 'pytorch', losses: r.losses, stepMs: r.allStepMs, timedFrom: warmup, phases: r.phasesMs,
    peakBytes: cuda ? r.maxMemoryAllocatedBytes ?? null : r.peakRssAboveBaseBytes,
    memorySource: cuda
      ? 'torch.cuda.max_memory_allocated (bytes the caching allocator handed out at most)'
      : 'process resident-set high-water mark above its level before the parameters were made',
    detail: cuda
      ? `torch ${r.torchVersion}, ${r.cudaDevice ?? 'cuda'}${r.stack ? `, ${r.stack}` : ''}`
      : `torch ${r.torchVersion}, ${r.threads} thread(s)${r.blasInfo ? `, BLAS ${r.blasInfo}${r.openblasCore ? ` (${r.openblasCore})` : ''}` : ''}`,
    ...(r.stack ? { stack: r.stack } : {}),
  };
}

/** threads: torch.set_num_threads, default 1: Debian's torch runs its GEMMs on
 * OpenBLAS's own pool (a thread per core) whatever this says, and on few cores
 * a second busy OpenMP pool only fights it (docs/benchmarks: 1 thread was the
 * fastest setting on 2 cores). */
/** env: variables set (a string) or removed (undefined) for the python process, e.g.
 * OPENBLAS_CORETYPE or OMP_WAIT_POLICY (bench/train_step.ts compares them). */
/** device cuda: the script trains on the GPU with bf16 autocast (bf16 matmuls,
 * fp32 master weights), through transformers + PEFT when importable, else its
 * own functional model (the stack is recorded); memory is
 * torch.cuda.max_memory_allocated. */
export async function runTorchPeer(input: PeerInput, o: { python?: string; threads?: number; warmup?: number; env?: Record<string, string | undefined>; device?: Device } = {}): Promise<PeerOutcome> {
  const python = o.python ?? defaultPython();
  const why = torchUnavailable(python);
  if (why) throw new Error(`PyTorch peer: ${why}`);
  const dir = mkdtempSync(join(tmpdir(), 'tunebench-torch-'));
  const warmup = Math.min(o.warmup ?? 1, input.batches.length - 1);
  try {
    await writeInput(dir, input);
    const args = [TORCH_SCRIPT, '--config', JSON.stringify(input.cfg), '--batch', String(input.batchSize), '--seq', String(input.seqLen),
      '--warmup', String(warmup), '--steps', String(input.batches.length - warmup), '--threads', String(o.threads ?? 1),
      '--lrs', `@${join(dir, 'lrs.json')}`, '--weight-decay', String(input.weightDecay), '--init', dir];
    if (input.maxGradNorm !== null) args.push('--clip', String(input.maxGradNorm));
    if (input.lora) args.push('--lora', `@${join(dir, 'lora.json')}`);
    if (packedInput(input)) args.push('--packed');
    if (o.device && o.device !== 'cpu') args.push('--device', o.device);
    const env = { ...process.env };
    for (const [k, v] of Object.entries(o.env ?? {})) { if (v === undefined) delete env[k]; else env[k] = v; }
    return outcomeOf(await runScript(python, args.slice(1), env), warmup);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** PyTorch training the shapes of one of our speed rows (random weights of
 * its own, no files): full fine-tuning, LoRA, or QLoRA (bitsandbytes NF4 when
 * installed, else NF4 dequantized before each matmul; the script says which).
 * QA-LoRA has no PyTorch counterpart here. */
export async function runTorchShape(cfg: LlamaConfig, m: MethodSpec, row: { batchSize: number; seqLen: number; steps: number }, o: { device: Device; seed: number; python?: string }): Promise<PeerOutcome> {
  const python = o.python ?? defaultPython();
  const why = torchUnavailable(python);
  if (why) throw new Error(`PyTorch peer: ${why}`);
  const warmup = Math.min(3, Math.floor(row.steps / 4));
  const args = ['--config', JSON.stringify(cfg), '--batch', String(row.batchSize), '--seq', String(row.seqLen),
    '--warmup', String(warmup), '--steps', String(row.steps - warmup), '--seed', String(o.seed), '--lr', String(m.lr), '--device', o.device];
  if (m.name === 'lora' || m.name === 'qlora') args.push('--lora-rank', String(m.r ?? 8), '--lora-alpha', String(m.alpha ?? 2 * (m.r ?? 8)));
  if (m.name === 'qlora') args.push('--quant', 'nf4');
  if (m.name !== 'full' && m.name !== 'lora' && m.name !== 'qlora') throw new Error(`PyTorch peer: no counterpart for method ${m.name}`);
  return outcomeOf(await runScript(python, args, { ...process.env }), warmup);
}
