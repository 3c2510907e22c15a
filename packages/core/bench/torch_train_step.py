#!/usr/bin/python3
"""PyTorch reference for bench/train_step.ts: one full fine-tuning step
(forward, backward, AdamW over every parameter) of a LLaMA with exactly
tunebench's architecture and numerics (fp32), timed on the CPU.

Normally launched by train_step.ts, which passes the model config from
src/nn/config.ts (so the shapes live in one place) and, with --init, the
same initial weights and token batches it trained on, so the per-step losses
of the two implementations can be compared.

  /usr/bin/python3 bench/torch_train_step.py --config '{"vocabSize": 259, ...}'
  /usr/bin/python3 bench/torch_train_step.py --help

Prints progress on stderr and exactly one JSON object on the last line of
stdout: tokens/s, ms/step, the phase split, per-step losses, and provenance
(torch version, threads, the BLAS and OpenBLAS core it used).

Architecture (src/nn/llama.ts):
  x = embed(ids)
  per layer: h = rms(x); q, k, v = h Wq^T, h Wk^T, h Wv^T (no bias);
             rope(q), rope(k) (HF rotate-half, inv_freq in float32);
             a = causal softmax(q k^T / sqrt(D)) v, kv heads repeated (GQA);
             x = x + a Wo^T; h = rms(x); x = x + (silu(h Wg^T) * h Wu^T) Wd^T
  loss = cross_entropy(rms(x) W_head^T, targets), mean over targets != -100
  W_head = embed when tieWordEmbeddings.
Optimizer: torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0.01), foreach left at its default.
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
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--init', metavar='DIR',
                   help='read weights.bin (f32 values back to back), weights.json ([{name, shape, offset}], offsets in '
                        'floats) and batches.bin (i32 [warmup+steps, 2, B, T]: ids, targets) from DIR')
    a = p.parse_args()
    for k in ('batch', 'seq', 'steps', 'threads'):
        if getattr(a, k) < 1:
            p.error(f'--{k} must be >= 1')
    if a.warmup < 0:
        p.error('--warmup must be >= 0')
    return a


def main():
    args = parse_args()
    import torch
    import torch.nn.functional as F

    cfg_text = args.config
    if cfg_text.startswith('@'):
        with open(cfg_text[1:]) as f:
            cfg_text = f.read()
    cfg = json.loads(cfg_text)
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

    P = {}
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
            if off + n > flat.size:
                sys.exit(f'{args.init}/weights.bin is too short for {name}')
            P[name] = torch.nn.Parameter(torch.from_numpy(flat[off:off + n].copy()).reshape(s))
        extra = set(manifest) - {n for n, _ in shapes}
        if extra:
            sys.exit(f'{args.init}/weights.json names tensors this model does not have: {sorted(extra)}')
        raw = np.fromfile(os.path.join(args.init, 'batches.bin'), dtype=np.int32)
        if raw.size != total_steps * 2 * B * T:
            sys.exit(f'{args.init}/batches.bin holds {raw.size} ints, expected {total_steps}*2*{B}*{T}')
        raw = torch.from_numpy(raw.copy()).reshape(total_steps, 2, B, T).long()
        batches = [(raw[s, 0], raw[s, 1]) for s in range(total_steps)]
    else:
        for name, s in shapes:
            w = torch.ones(s) if len(s) == 1 else torch.randn(s) * 0.02
            P[name] = torch.nn.Parameter(w)
        batches = []
        for _ in range(total_steps):
            seq = torch.randint(0, V, (B, T + 1))
            batches.append((seq[:, :T].contiguous(), seq[:, 1:].contiguous()))
    params = [P[n] for n, _ in shapes]

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

    def forward(ids, targets):
        pos = torch.arange(T, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]        # [1, 1, T, D]
        mask = None if sdpa else torch.full((T, T), float('-inf')).triu(1)
        x = F.embedding(ids, P['model.embed_tokens.weight'])            # [B, T, C]
        for i in range(L):
            pre = f'model.layers.{i}'
            h = rms(x, P[f'{pre}.input_layernorm.weight'])
            q = F.linear(h, P[f'{pre}.self_attn.q_proj.weight']).view(B, T, Hq, D).transpose(1, 2)
            k = F.linear(h, P[f'{pre}.self_attn.k_proj.weight']).view(B, T, Hkv, D).transpose(1, 2)
            v = F.linear(h, P[f'{pre}.self_attn.v_proj.weight']).view(B, T, Hkv, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if n_rep > 1:  # HF repeat_kv: query head j reads kv head j // n_rep
                k = k[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hq, T, D)
                v = v[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hq, T, D)
            if sdpa:
                a = sdpa(q, k, v, is_causal=True)
            else:
                s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D) + mask
                a = torch.matmul(torch.softmax(s, dim=-1, dtype=torch.float32), v)
            a = a.transpose(1, 2).reshape(B, T, Hq * D)
            x = x + F.linear(a, P[f'{pre}.self_attn.o_proj.weight'])
            h = rms(x, P[f'{pre}.post_attention_layernorm.weight'])
            m = F.silu(F.linear(h, P[f'{pre}.mlp.gate_proj.weight'])) * F.linear(h, P[f'{pre}.mlp.up_proj.weight'])
            x = x + F.linear(m, P[f'{pre}.mlp.down_proj.weight'])
        hf = rms(x, P['model.norm.weight'])
        head = P['model.embed_tokens.weight'] if tied else P['lm_head.weight']
        logits = F.linear(hf, head)
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), ignore_index=-100)

    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    foreach = opt.param_groups[0].get('foreach')

    # ---------------------------------------------------------------- timing
    now = time.perf_counter
    phases = {'forward': 0.0, 'backward': 0.0, 'optimizer': 0.0}
    losses = []
    step_ms = []
    for s in range(total_steps):
        ids, targets = batches[s]
        t0 = now()
        loss = forward(ids, targets)
        t1 = now()
        loss.backward()
        t2 = now()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = now()
        losses.append(loss.item())
        if s >= args.warmup:
            phases['forward'] += t1 - t0
            phases['backward'] += t2 - t1
            phases['optimizer'] += t3 - t2
            step_ms.append((t3 - t0) * 1e3)
        log(f'torch step {s + 1}/{total_steps}{" (warmup)" if s < args.warmup else ""}: '
            f'loss {losses[-1]:.5f}, {(t3 - t0) * 1e3:.1f} ms')

    import resource
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    total = sum(step_ms) / 1e3
    tokens = B * T
    ms_step = total / args.steps * 1e3

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
        'parameters': sum(p.numel() for p in params),
        'tokensPerS': tokens * args.steps / total,
        'msPerStep': ms_step,
        'msPerStepMin': min(step_ms),
        'stepMs': step_ms,
        'phasesMs': {k: v / args.steps * 1e3 for k, v in phases.items()},
        'losses': losses,
        'maxRssBytes': max_rss,
        'init': 'file' if args.init else f'torch.manual_seed({args.seed})',
    }))


if __name__ == '__main__':
    main()
