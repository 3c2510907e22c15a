// Per-token cost of a whole-model decode step outside the weight reads:
// generate() with the KV cache on a preset (default tiny), CPU time per token,
// minus the time of the same token's GEMVs alone (every projection and the LM
// head through the decode GEMV, back to back, in one native call:
// decode_gemv_timed).
//
//   pnpm --filter @tunebench/core bench:decode-step
//   pnpm --filter @tunebench/core bench:decode-step -- --preset small --weights int4
import { cpus, loadavg } from 'node:os';
import {
  IntNLinear, LlamaModel, Quant4Linear, Tensor, generate, native, nativeOperand, parseCli, preset, quantize4bit, quantizeIntN,
  type WeightOperand,
} from '../src/index.js';
import { type NativeTensorHandle, nativeFn } from '../src/native.js';

const HELP = `Decode-step overhead: CPU microseconds per generated token beyond its GEMVs.

Usage: pnpm --filter @tunebench/core bench:decode-step [-- options]

Options:
  --preset NAME    model preset (default tiny)
  --weights LIST   f32, int4 (g32, offsets as a merged QA-LoRA model has
                   them), nf4 (default: all three)
  --tokens N       generated tokens per run (default 128)
  --runs N         runs, the median reported (default 5)
  --threads N      kernel threads (default 1)
  --path P         fused (the fused decode step), ops (op by op: generate's
                   fusedDecode false) or both (default)
  --act A          i16 (default) or f32: what the fused step's quantized
                   projections multiply (generate's decodeActivations); the
                   GEMV-only timing uses the same
  -h, --help       this text`;

const opt = parseCli({
  preset: { type: 'string', default: 'tiny' },
  weights: { type: 'string', default: 'f32,int4,nf4' },
  tokens: { type: 'string', default: '128' },
  runs: { type: 'string', default: '5' },
  threads: { type: 'string', default: '1' },
  path: { type: 'string', default: 'both' },
  act: { type: 'string', default: 'i16' },
  help: { type: 'boolean', short: 'h', default: false },
} as const, HELP);

const tokens = Number(opt.tokens), runs = Number(opt.runs);
native.setThreads(Number(opt.threads));
const decodeGemvTimed = nativeFn<(calls: unknown[], passes: number, isa?: string, act?: string) => { kernelS: number[] }>('decode_gemv_timed');
const act = opt.act;
if (act !== 'i16' && act !== 'f32') throw new Error(`--act must be i16 or f32, got '${act}'`);
const median = (a: number[]): number => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
const cpuUs = (): number => { const u = process.cpuUsage(); return u.user + u.system; };

function build(kind: string): LlamaModel {
  const model = LlamaModel.init(preset(opt.preset), { seed: 3, std: 0.1, trainable: false });
  if (kind === 'f32') return model;
  for (const [name, layer] of model.linears()) {
    const w = (layer as unknown as { weight: { value: Tensor } }).weight.value;
    const next = kind === 'int4'
      ? new IntNLinear(name, quantizeIntN(w, { bits: 4, groupSize: 32 }))
      : kind === 'nf4' ? new Quant4Linear(name, quantize4bit(w, { format: 'nf4', blockSize: 64, doubleQuant: true }))
        : null;
    if (!next) throw new Error(`--weights: unknown '${kind}' (f32, int4, nf4)`);
    model.replaceLinear(name, next).dispose();
  }
  return model;
}

console.log(`decode step, preset ${opt.preset}, ${native.getThreads()} thread(s), ${act} activations, ${tokens} tokens x ${runs} runs; ${cpus()[0]?.model ?? ''}`);
console.log(`load average before: ${loadavg().map((v) => v.toFixed(2)).join(' ')}`);
const paths = opt.path === 'both' ? ['fused', 'ops'] : [opt.path];
if (!paths.every((p) => p === 'fused' || p === 'ops')) throw new Error(`--path must be fused, ops or both, got '${opt.path}'`);
const header = ['weights', 'path', 'wall us/token', 'cpu us/token', 'gemv us/token', 'outside gemv (cpu)'];
const rows: string[][] = [];
for (const kind of opt.weights.split(',').map((s) => s.trim()).filter(Boolean)) {
  const model = build(kind);
  try {
    const prompt = [256, 72, 101, 108, 108, 111];
    generate(model, prompt, { maxNewTokens: 8 });
    const cpuOf = new Map<string, number>(), wallOf = new Map<string, number>();
    for (const path of paths) {
    const fusedDecode = path === 'fused';
    const wall: number[] = [], cpu: number[] = [];
    for (let r = 0; r < runs; r++) {
      // decode phase only: time the prefill separately and subtract it
      const c0 = cpuUs();
      const res = generate(model, prompt, { maxNewTokens: tokens, fusedDecode, decodeActivations: act });
      const c1 = cpuUs();
      const pre = generate(model, prompt, { maxNewTokens: 1, fusedDecode, decodeActivations: act });
      const c2 = cpuUs();
      wall.push(1e6 / res.decodeTokensPerSecond);
      cpu.push(((c1 - c0) - (c2 - c1)) / (tokens - 1));
      void pre;
    }
    cpuOf.set(path, median(cpu));
    wallOf.set(path, median(wall));
    }
    // the GEMVs of one token alone: every projection, then the LM head
    const ops: { w: object; out: number; inF: number }[] = [];
    for (const layer of model.linears().values()) {
      const l = layer as unknown as { weight: { value: Tensor; quantized?: WeightOperand }; inFeatures: number; outFeatures: number };
      ops.push({ w: nativeOperand(l.weight.quantized ?? l.weight.value), out: l.outFeatures, inF: l.inFeatures });
    }
    const head = model.parameters().find((p) => p.name === 'lm_head.weight') ?? model.parameters()[0];
    ops.push({ w: nativeOperand(head.value), out: model.config.vocabSize, inF: model.config.hiddenSize });
    const width = Math.max(...ops.map((o) => Math.max(o.inF, o.out)));
    const x = Tensor.from(new Float32Array(width).fill(0.5), [1, width]), y = Tensor.zeros([1, width > model.config.vocabSize ? width : model.config.vocabSize]);
    // one native call runs all of them `tokens` times (no binding cost per GEMV, as in the fused step)
    const calls = ops.map((o) => [x.handle, o.w, y.handle, 1, o.out, o.inF]);
    decodeGemvTimed(calls, 50, undefined, act);
    const g: number[] = [];
    for (let r = 0; r < runs; r++) {
      const c0 = cpuUs();
      decodeGemvTimed(calls, tokens, undefined, act);
      g.push((cpuUs() - c0) / tokens);
    }
    x.dispose(); y.dispose();
    const gm = median(g);
    for (const path of paths) {
      const c = cpuOf.get(path)!;
      rows.push([kind, path, wallOf.get(path)!.toFixed(1), c.toFixed(1), gm.toFixed(1), (c - gm).toFixed(1)]);
      console.log(rows[rows.length - 1].join('\t'));
    }
  } finally {
    model.dispose();
  }
}
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
console.log('');
console.log(header.map((h, i) => h.padStart(widths[i])).join('  '));
for (const r of rows) console.log(r.map((v, i) => v.padStart(widths[i])).join('  '));
console.log(`load average after: ${loadavg().map((v) => v.toFixed(2)).join(' ')}`);
