#!/usr/bin/python3
"""The PyTorch peer of tunebench: training steps (forward, backward, AdamW)
of a LLaMA with exactly tunebench's architecture and numerics (fp32), full
fine-tuning or LoRA, timed on the CPU.

Launched through the bench package's PyTorch peer (src/peers/pytorch.ts), by
the suite runner and by the training-step benchmark (bench/train_step.ts). They pass
the model config (so the shapes live in one place) and, with --init, the
initial weights and the token batches tunebench trained on, the learning rate
of every step and the clipping, so that the per-step losses of the two
implementations can be compared: same math, so they must agree closely.

  /usr/bin/python3 peers/torch_train.py --config '{"vocabSize": 259, ...}'
  /usr/bin/python3 peers/torch_train.py --help

Prints progress on stderr and exactly one JSON object on the last line of
stdout: tokens/s, ms/step, the phase split, per-step losses, peak memory
(resident-set high-water mark above the level before the parameters were
made), and provenance (torch version, threads, the BLAS and OpenBLAS core).

Architecture (src/nn/llama.ts):
  x = embed(ids)
  per layer: h = rms(x); q, k, v = h Wq^T, h Wk^T, h Wv^T (no bias);
             rope(q), rope(k) (HF rotate-half, inv_freq in float32);
             a = causal softmax(q k^T / sqrt(D)) v, kv heads repeated (GQA);
             packed rows (--packed): query t attends key s only if s <= t
             and both carry the same segment id, and RoPE takes each
             token's position from the batch (restarting per example);
             x = x + a Wo^T; h = rms(x); x = x + (silu(h Wg^T) * h Wu^T) Wd^T
  loss = cross_entropy(rms(x) W_head^T, targets), mean over targets != -100
  W_head = embed when tieWordEmbeddings.
  LoRA (--lora): each named projection gains y += scale * (x A^T) B^T, with
  A (r x in) and B (out x r) read from --init as <linear>.lora_A.weight and
  <linear>.lora_B.weight; only A and B train.
  QLoRA: a weights.json entry with "quant4" is a frozen 4-bit weight (packed
  codes in quant4.bin, fp32 absmax per block in weights.bin, the 16-value
  table in the entry); it is dequantized before every matmul, the way
  bitsandbytes runs a 4-bit layer on the CPU.
Optimizer: torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8,
weight_decay=--weight-decay), foreach left at its default; the learning rate
of each step from --lrs; optional torch.nn.utils.clip_grad_norm_ (--clip).
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True,
                   help='model config as JSON (LlamaConfig field names, as in src/nn/config.ts), or @FILE to read it from a file')
    p.add_argument('--batch', type=int, default=8, help='sequences per step (default 8)')
    p.add_argument('--seq', type=int, default=256, help='tokens per sequence (default 256)')
    p.add_argument('--steps', type=int, default=10, help='timed steps (default 10)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first (default 2)')
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (default 2)')
    p.add_argument('--seed', type=int, default=0, help='torch.manual_seed for weights and batches (default 0)')
    p.add_argument('--lr', type=float, default=1e-3, help='learning rate of every step (default 1e-3) unless --lrs')
    p.add_argument('--lrs', metavar='@FILE|LIST',
                   help='the learning rate of each step (warmup + steps values), comma-separated or a JSON list in FILE')
    p.add_argument('--weight-decay', type=float, default=0.01, help='AdamW weight decay (default 0.01)')
    p.add_argument('--clip', type=float, default=None, help='clip the global gradient norm to this (default: no clipping)')
    p.add_argument('--lora', metavar='JSON|@FILE',
                   help='LoRA: {"scale": alpha/r, "targets": ["model.layers.0.self_attn.q_proj", ...]}; needs --init')
    p.add_argument('--init', metavar='DIR',
                   help='read weights.bin (f32 values back to back), weights.json ([{name, shape, offset}], offsets in '
                        'floats) and batches.bin (i32 [warmup+steps, 2, B, T]: ids, targets) from DIR')
    p.add_argument('--packed', action='store_true',
                   help='with --init: packed rows; read packing.bin (i32 [warmup+steps, 2, B, T]: segment ids, '
                        'RoPE positions) from DIR: attention stays inside a segment, positions restart per example')
    a = p.parse_args()
    for k in ('batch', 'seq', 'steps', 'threads'):
        if getattr(a, k) < 1:
            p.error(f'--{k} must be >= 1')
    if a.warmup < 0:
        p.error('--warmup must be >= 0')
    if a.lora and not a.init:
        p.error('--lora needs --init (the adapter weights come from there)')
    return a


def json_arg(text):
    if text.startswith('@'):
        with open(text[1:]) as f:
            return json.load(f)
    return json.loads(text)


def rss_high_water():
    """Resident-set high-water mark in bytes (Linux)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    return 0


def reset_high_water():
    """Sets the high-water mark to the current resident set; False where the kernel does not allow it."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def main():
    args = parse_args()
    import torch
    import torch.nn.functional as F

    cfg = json_arg(args.config)
    lora = json_arg(args.lora) if args.lora else None
    lora_targets = set(lora['targets']) if lora else set()
    V, C, I = cfg['vocabSize'], cfg['hiddenSize'], cfg['intermediateSize']
    L, Hq, Hkv = cfg['numLayers'], cfg['numHeads'], cfg['numKvHeads']
    eps, theta, tied = cfg['rmsNormEps'], cfg['ropeTheta'], cfg['tieWordEmbeddings']
    D = C // Hq
    n_rep = Hq // Hkv
    B, T = args.batch, args.seq
    if T > cfg['maxPositionEmbeddings']:
        sys.exit(f'--seq {T} exceeds maxPositionEmbeddings {cfg["maxPositionEmbeddings"]}')

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------ parameters
    # Hugging Face names, as modelTensorShapes in src/nn/llama.ts (order irrelevant).
    shapes = [('model.embed_tokens.weight', (V, C))]
    for i in range(L):
        pre = f'model.layers.{i}'
        shapes += [
            (f'{pre}.input_layernorm.weight', (C,)),
            (f'{pre}.self_attn.q_proj.weight', (Hq * D, C)),
            (f'{pre}.self_attn.k_proj.weight', (Hkv * D, C)),
            (f'{pre}.self_attn.v_proj.weight', (Hkv * D, C)),
            (f'{pre}.self_attn.o_proj.weight', (C, Hq * D)),
            (f'{pre}.mlp.gate_proj.weight', (I, C)),
            (f'{pre}.mlp.up_proj.weight', (I, C)),
            (f'{pre}.mlp.down_proj.weight', (C, I)),
            (f'{pre}.post_attention_layernorm.weight', (C,)),
        ]
    shapes.append(('model.norm.weight', (C,)))
    if not tied:
        shapes.append(('lm_head.weight', (V, C)))
    total_steps = args.warmup + args.steps
    if args.lrs:
        lrs = json_arg(args.lrs) if args.lrs.startswith('@') else [float(x) for x in args.lrs.split(',')]
        if len(lrs) != total_steps:
            sys.exit(f'--lrs gives {len(lrs)} learning rates for {total_steps} steps')
    else:
        lrs = [args.lr] * total_steps
    if lora:
        linears = {n[:-len('.weight')] for n, s in shapes if len(s) == 2 and '_proj.' in n}
        unknown = sorted(lora_targets - linears)
        if unknown:
            sys.exit(f'--lora names projections this model does not have: {unknown}')

    # the level before any parameter exists: memory is counted above it
    hwm_reset = reset_high_water()
    rss_base = rss_high_water()
    P = {}
    Q = {}  # frozen 4-bit weights: (packed codes, absmax, table, block size, shape)
    packed_all = None
    if args.init:
        import numpy as np
        flat = np.fromfile(os.path.join(args.init, 'weights.bin'), dtype=np.float32)
        with open(os.path.join(args.init, 'weights.json')) as f:
            manifest = {e['name']: e for e in json.load(f)}
        for name, s in shapes:
            e = manifest.get(name)
            if e is None:
                sys.exit(f'{args.init}/weights.json has no {name}')
            if tuple(e['shape']) != s:
                sys.exit(f'{args.init}/weights.json: {name} is {e["shape"]}, the config implies {list(s)}')
            n, off = math.prod(s), e['offset']
            q4 = e.get('quant4')
            if q4:
                bs = q4['blockSize']
                blocks = (n + bs - 1) // bs
                if packed_all is None:
                    packed_all = np.fromfile(os.path.join(args.init, 'quant4.bin'), dtype=np.uint8)
                po, pb = q4['packedOffset'], q4['packedBytes']
                if off + blocks > flat.size or po + pb > packed_all.size or pb != (n + 1) // 2:
                    sys.exit(f'{args.init}: the 4-bit weight {name} is truncated')
                Q[name] = (torch.from_numpy(packed_all[po:po + pb].copy()), torch.from_numpy(flat[off:off + blocks].copy()),
                           torch.tensor(q4['table'], dtype=torch.float32), bs, s)
                continue
            if off + n > flat.size:
                sys.exit(f'{args.init}/weights.bin is too short for {name}')
            P[name] = torch.nn.Parameter(torch.from_numpy(flat[off:off + n].copy()).reshape(s), requires_grad=not lora)
        for t in sorted(lora_targets):
            for part in ('lora_A', 'lora_B'):
                name = f'{t}.{part}.weight'
                e = manifest.get(name)
                if e is None:
                    sys.exit(f'{args.init}/weights.json has no {name} (named by --lora)')
                n, off = math.prod(e['shape']), e['offset']
                if off + n > flat.size:
                    sys.exit(f'{args.init}/weights.bin is too short for {name}')
                P[name] = torch.nn.Parameter(torch.from_numpy(flat[off:off + n].copy()).reshape(e['shape']))
                shapes.append((name, tuple(e['shape'])))
        extra = set(manifest) - {n for n, _ in shapes}
        if extra:
            sys.exit(f'{args.init}/weights.json names tensors this model does not have: {sorted(extra)}')
        raw = np.fromfile(os.path.join(args.init, 'batches.bin'), dtype=np.int32)
        if raw.size != total_steps * 2 * B * T:
            sys.exit(f'{args.init}/batches.bin holds {raw.size} ints, expected {total_steps}*2*{B}*{T}')
        raw = torch.from_numpy(raw.copy()).reshape(total_steps, 2, B, T).long()
        if args.packed:
            pk = np.fromfile(os.path.join(args.init, 'packing.bin'), dtype=np.int32)
            if pk.size != total_steps * 2 * B * T:
                sys.exit(f'{args.init}/packing.bin holds {pk.size} ints, expected {total_steps}*2*{B}*{T}')
            pk = torch.from_numpy(pk.copy()).reshape(total_steps, 2, B, T).long()
            batches = [(raw[s, 0], raw[s, 1], pk[s, 0], pk[s, 1]) for s in range(total_steps)]
        else:
            batches = [(raw[s, 0], raw[s, 1], None, None) for s in range(total_steps)]
    else:
        for name, s in shapes:
            w = torch.ones(s) if len(s) == 1 else torch.randn(s) * 0.02
            P[name] = torch.nn.Parameter(w)
        batches = []
        for _ in range(total_steps):
            seq = torch.randint(0, V, (B, T + 1))
            batches.append((seq[:, :T].contiguous(), seq[:, 1:].contiguous(), None, None))
    params = [P[n] for n, _ in shapes if n in P and P[n].requires_grad]
    scale = lora['scale'] if lora else 0.0

    def dequant4(q):
        packed, absmax, table, bs, s = q
        n = math.prod(s)
        codes = torch.stack((packed >> 4, packed & 15), dim=1).reshape(-1)[:n].long()
        return (table[codes] * absmax.repeat_interleave(bs)[:n]).reshape(s)

    def proj(x, name):
        w = f'{name}.weight'
        y = F.linear(x, dequant4(Q[w]) if w in Q else P[w])
        if name in lora_targets:
            y = y + scale * F.linear(F.linear(x, P[f'{name}.lora_A.weight']), P[f'{name}.lora_B.weight'])
        return y

    # -------------------------------------------------------------- the model
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))  # float32, as HF

    def rms(x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + eps))

    def rotate_half(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat((-x2, x1), dim=-1)

    sdpa = getattr(F, 'scaled_dot_product_attention', None)
    attention_impl = 'F.scaled_dot_product_attention(is_causal=True)' if sdpa else 'explicit masked softmax'

    def forward(ids, targets, seg=None, positions=None):
        if positions is None:
            pos = torch.arange(T, dtype=torch.float32)
            freqs = torch.outer(pos, inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[None, None], emb.sin()[None, None]    # [1, 1, T, D]
        else:  # per-token positions (HF position_ids): one table per row
            freqs = positions.to(torch.float32)[..., None] * inv_freq   # [B, T, D/2]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[:, None], emb.sin()[:, None]          # [B, 1, T, D]
        if seg is None:
            allowed = None  # plain causal
            mask = None if sdpa else torch.full((T, T), float('-inf')).triu(1)
        else:
            # packed rows: key s is visible to query t iff s <= t and same segment
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            allowed = (seg[:, None, :, None] == seg[:, None, None, :]) & causal   # [B, 1, T, T]
            mask = None if sdpa else torch.zeros(allowed.shape).masked_fill(~allowed, float('-inf'))
        x = F.embedding(ids, P['model.embed_tokens.weight'])            # [B, T, C]
        for i in range(L):
            pre = f'model.layers.{i}'
            h = rms(x, P[f'{pre}.input_layernorm.weight'])
            q = proj(h, f'{pre}.self_attn.q_proj').view(B, T, Hq, D).transpose(1, 2)
            k = proj(h, f'{pre}.self_attn.k_proj').view(B, T, Hkv, D).transpose(1, 2)
            v = proj(h, f'{pre}.self_attn.v_proj').view(B, T, Hkv, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if n_rep > 1:  # HF repeat_kv: query head j reads kv head j // n_rep
                k = k[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hq, T, D)
                v = v[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hq, T, D)
            if sdpa and allowed is not None:
                a = sdpa(q, k, v, attn_mask=allowed)  # boolean mask: True = attend
            elif sdpa:
                a = sdpa(q, k, v, is_causal=True)
            else:
                s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D) + mask
                a = torch.matmul(torch.softmax(s, dim=-1, dtype=torch.float32), v)
            a = a.transpose(1, 2).reshape(B, T, Hq * D)
            x = x + proj(a, f'{pre}.self_attn.o_proj')
            h = rms(x, P[f'{pre}.post_attention_layernorm.weight'])
            m = F.silu(proj(h, f'{pre}.mlp.gate_proj')) * proj(h, f'{pre}.mlp.up_proj')
            x = x + proj(m, f'{pre}.mlp.down_proj')
        hf = rms(x, P['model.norm.weight'])
        head = P['model.embed_tokens.weight'] if tied else P['lm_head.weight']
        logits = F.linear(hf, head)
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), ignore_index=-100)

    opt = torch.optim.AdamW(params, lr=lrs[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    foreach = opt.param_groups[0].get('foreach')

    # ---------------------------------------------------------------- timing
    now = time.perf_counter
    phases = {'forward': 0.0, 'backward': 0.0, 'optimizer': 0.0}
    losses = []
    step_ms = []
    all_step_ms = []
    for s in range(total_steps):
        ids, targets, seg, positions = batches[s]
        for g in opt.param_groups:
            g['lr'] = lrs[s]
        t0 = now()
        loss = forward(ids, targets, seg, positions)
        t1 = now()
        loss.backward()
        t2 = now()
        if args.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = now()
        losses.append(loss.item())
        all_step_ms.append((t3 - t0) * 1e3)
        if not math.isfinite(losses[-1]):
            log(f'torch step {s + 1}: the loss is {losses[-1]}; stopping')
            break
        if s >= args.warmup:
            phases['forward'] += t1 - t0
            phases['backward'] += t2 - t1
            phases['optimizer'] += t3 - t2
            step_ms.append((t3 - t0) * 1e3)
        log(f'torch step {s + 1}/{total_steps}{" (warmup)" if s < args.warmup else ""}: '
            f'loss {losses[-1]:.5f}, {(t3 - t0) * 1e3:.1f} ms')

    import resource
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    peak_rss = rss_high_water()
    timed = max(len(step_ms), 1)
    total = max(sum(step_ms) / 1e3, 1e-9)
    tokens = B * T
    ms_step = total / timed * 1e3

    # ------------------------------------------------------------ provenance
    blas = {}
    try:
        ob = ctypes.CDLL('libopenblas.so.0')  # the instance torch's libblas.so.3 forwards to
        ob.openblas_get_corename.restype = ctypes.c_char_p
        ob.openblas_get_config.restype = ctypes.c_char_p
        blas = {'openblasCore': ob.openblas_get_corename().decode(), 'openblasConfig': ob.openblas_get_config().decode(),
                'openblasThreads': ob.openblas_get_num_threads()}
    except OSError as e:
        blas = {'openblasError': str(e)}
    config_lines = torch.__config__.show().splitlines()
    cap = next((l.split(':', 1)[1].strip() for l in config_lines if 'CPU capability usage' in l), '')
    blas_info = next((l.split('BLAS_INFO=', 1)[1].split(',', 1)[0] for l in config_lines if 'BLAS_INFO=' in l), '')

    print(json.dumps({
        'impl': 'torch',
        'torchVersion': torch.__version__,
        'threads': torch.get_num_threads(),
        'interopThreads': torch.get_num_interop_threads(),
        'cpuCapability': cap,
        'blasInfo': blas_info,
        **blas,
        'envOpenblasCoretype': os.environ.get('OPENBLAS_CORETYPE'),
        'attention': attention_impl,
        'adamwForeach': foreach,
        'batch': B, 'seq': T, 'tokensPerStep': tokens, 'steps': args.steps, 'warmup': args.warmup,
        'parameters': sum(p.numel() for p in P.values()),
        'trainableParameters': sum(p.numel() for p in params),
        'lora': bool(lora),
        'tokensPerS': tokens * len(step_ms) / total,
        'msPerStep': ms_step,
        'msPerStepMin': min(step_ms) if step_ms else None,
        'stepMs': step_ms,
        'allStepMs': all_step_ms,
        'phasesMs': {k: v / timed * 1e3 for k, v in phases.items()},
        'losses': losses,
        'maxRssBytes': max_rss,
        'peakRssAboveBaseBytes': peak_rss - rss_base if hwm_reset else None,
        'init': 'file' if args.init else f'torch.manual_seed({args.seed})',
    }))


if __name__ == '__main__':
    main()
