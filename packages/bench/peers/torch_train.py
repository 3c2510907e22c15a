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

On a GPU (--device cuda): the same steps with bf16 autocast, as tunebench's
CUDA precision (bf16 operands in the matmuls, fp32 accumulation and fp32
master weights; a frozen base is stored bf16), the device synchronised
around every timed phase, and memory reported as torch.cuda.max_memory_allocated
(and _reserved) since before the parameters were made. The stack (--stack):
  peft   transformers' LlamaForCausalLM (sdpa attention) with PEFT LoRA
         adapters: full fine-tuning and LoRA, unpacked rows, dense base;
  plain  this script's own functional model and LoRA (above);
  auto   peft when transformers and peft import and the run is full or LoRA
         on unpacked rows, else plain (the default; on the CPU always plain).
A 4-bit base (QLoRA) on the GPU runs through bitsandbytes' matmul_4bit when
bitsandbytes imports (NF4 requantized by bitsandbytes from the dequantized
weights: blocks of 64, its double quantization), else dequantize-then-matmul.
The JSON says which ("stack").
Without --init (speed rows): random weights ~ N(0, 0.02^2) made on the
device; --lora-rank R adds adapters on every projection (A uniform in
+-1/sqrt(in), B zero), --quant nf4 quantizes the base.
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
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cpu', help='where to train (default cpu); cuda: bf16 autocast')
    p.add_argument('--stack', choices=['auto', 'peft', 'plain'], default='auto',
                   help='on cuda: transformers + PEFT, or this script\'s own model (default auto: peft when importable and applicable)')
    p.add_argument('--lora-rank', type=int, default=None, help='without --init: LoRA adapters of this rank on every projection')
    p.add_argument('--lora-alpha', type=float, default=None, help='with --lora-rank: alpha (default 2 * rank)')
    p.add_argument('--quant', choices=['nf4'], default=None, help='without --init: quantize the frozen base (QLoRA; needs --lora-rank)')
    a = p.parse_args()
    if (a.lora_rank or a.quant) and a.init:
        p.error('--lora-rank and --quant make random adapters and bases; with --init they come from the files')
    if a.quant and not a.lora_rank:
        p.error('--quant needs --lora-rank (a quantized base is frozen)')
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


NF4_TABLE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]  # the NF4 code values (QLoRA paper, appendix E)


def peft_model(torch, F, cfg, P, lora, dev, frozen_dtype):
    """transformers' LlamaForCausalLM with the weights of P (Hugging Face
    names), and PEFT LoRA adapters on lora['targets'] with their A and B from
    P when given. Returns (forward(ids, targets, seg, positions) -> loss, the
    trainable parameters). The loss is computed here from the logits and our
    targets (already shifted), mean over targets != -100, as the plain model."""
    from transformers import LlamaConfig, LlamaForCausalLM
    extras = [k for k in ('modelType', 'headDim', 'qkvBias', 'oBias', 'qkNorm', 'slidingWindow') if cfg.get(k) not in (None, False, 'llama')]
    if extras:
        raise RuntimeError(f'the PEFT stack here builds a plain LlamaForCausalLM; this config sets {extras}')
    V = cfg['vocabSize']
    hf = LlamaConfig(vocab_size=V, hidden_size=cfg['hiddenSize'], intermediate_size=cfg['intermediateSize'],
                     num_hidden_layers=cfg['numLayers'], num_attention_heads=cfg['numHeads'], num_key_value_heads=cfg['numKvHeads'],
                     rms_norm_eps=cfg['rmsNormEps'], rope_theta=cfg['ropeTheta'], max_position_embeddings=cfg['maxPositionEmbeddings'],
                     tie_word_embeddings=cfg['tieWordEmbeddings'], hidden_act='silu', attention_bias=False, mlp_bias=False)
    hf._attn_implementation = 'sdpa'
    with torch.device(dev):
        model = LlamaForCausalLM(hf)
    dense = {n: t for n, t in P.items() if '.lora_' not in n}
    if lora:
        model.to(frozen_dtype)
    missing, unexpected = model.load_state_dict({n: t.detach().to(frozen_dtype if lora else torch.float32) for n, t in dense.items()}, strict=False)
    missing = [m for m in missing if not (cfg['tieWordEmbeddings'] and m == 'lm_head.weight') and 'rotary_emb' not in m]
    if missing or unexpected:
        raise RuntimeError(f'weights do not match LlamaForCausalLM: missing {missing[:3]}, unexpected {unexpected[:3]}')
    for t in dense.values():  # the model holds its own copies now
        t.data = torch.empty(0, device=dev)
    if lora:
        from peft import LoraConfig, get_peft_model
        for p in model.parameters():
            p.requires_grad_(False)
        first = lora['targets'][0]
        r = P[f'{first}.lora_A.weight'].shape[0]
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora['scale'] * r, lora_dropout=0.0, bias='none',
                                                 target_modules=list(lora['targets'])))
        modules = dict(model.named_modules())
        for t in lora['targets']:
            m = modules[f'base_model.model.{t}']
            m.lora_A['default'].weight.data.copy_(P[f'{t}.lora_A.weight'].detach())
            m.lora_B['default'].weight.data.copy_(P[f'{t}.lora_B.weight'].detach())
            for part in ('lora_A', 'lora_B'):
                P[f'{t}.{part}.weight'].data = torch.empty(0, device=dev)
        # PEFT keeps the adapters in fp32 beside a bf16 base (autocast_adapter_dtype)
        for n, p in model.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    params = [p for p in model.parameters() if p.requires_grad]

    def forward(ids, targets, seg=None, positions=None):
        logits = model(input_ids=ids, use_cache=False).logits
        return F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1), ignore_index=-100)
    return forward, params


def dequant4_(q):
    """A 4-bit weight (packed codes, absmax, table, block size, shape) as f32."""
    import torch
    packed, absmax, table, bs, s = q
    n = math.prod(s)
    codes = torch.stack((packed >> 4, packed & 15), dim=1).reshape(-1)[:n].long()
    return (table[codes] * absmax.repeat_interleave(bs)[:n]).reshape(s)


def main():
    args = parse_args()
    import contextlib
    import torch
    import torch.nn.functional as F

    cuda = args.device == 'cuda'
    if cuda and not torch.cuda.is_available():
        sys.exit('--device cuda: torch sees no CUDA device')
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bnb = None
    if cuda:
        try:
            import bitsandbytes as bnb  # noqa: F811
        except Exception as e:  # not installed, or no kernels for this GPU
            log(f'bitsandbytes unavailable ({type(e).__name__}: {e}); a 4-bit base is dequantized before each matmul')
            bnb = None

    cfg = json_arg(args.config)
    lora = json_arg(args.lora) if args.lora else None
    lora_targets = set(lora['targets']) if lora else set()
    random_lora = args.lora_rank is not None
    V, C, I = cfg['vocabSize'], cfg['hiddenSize'], cfg['intermediateSize']
    L, Hq, Hkv = cfg['numLayers'], cfg['numHeads'], cfg['numKvHeads']
    eps, theta, tied = cfg['rmsNormEps'], cfg['ropeTheta'], cfg['tieWordEmbeddings']
    D = cfg.get('headDim') or C // Hq
    # architecture switches (src/nn/config.ts): projection biases, per-head q/k norms, a sliding window
    qkv_bias, o_bias, qk_norm = bool(cfg.get('qkvBias')), bool(cfg.get('oBias')), bool(cfg.get('qkNorm'))
    window = cfg.get('slidingWindow') or 0
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
            *([(f'{pre}.self_attn.q_proj.bias', (Hq * D,)), (f'{pre}.self_attn.k_proj.bias', (Hkv * D,)),
               (f'{pre}.self_attn.v_proj.bias', (Hkv * D,))] if qkv_bias else []),
            *([(f'{pre}.self_attn.o_proj.bias', (C,))] if o_bias else []),
            *([(f'{pre}.self_attn.q_norm.weight', (D,)), (f'{pre}.self_attn.k_norm.weight', (D,))] if qk_norm else []),
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
    if random_lora:
        lora_targets = {n[:-len('.weight')] for n, s in shapes if len(s) == 2 and '_proj.' in n}
        alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank
        lora = {'scale': alpha / args.lora_rank, 'targets': sorted(lora_targets)}
    elif lora:
        linears = {n[:-len('.weight')] for n, s in shapes if len(s) == 2 and '_proj.' in n}
        unknown = sorted(lora_targets - linears)
        if unknown:
            sys.exit(f'--lora names projections this model does not have: {unknown}')

    # the level before any parameter exists: memory is counted above it
    hwm_reset = reset_high_water()
    rss_base = rss_high_water()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # a frozen base is stored bf16 on the GPU (as tunebench's); on the CPU f32 (its values are bf16's)
    frozen_dtype = torch.bfloat16 if cuda else torch.float32

    def quantize_nf4(w, bs):
        """(packed codes, absmax, table, block size, shape) of w: NF4 in blocks of bs, nearest code, two codes a byte (even element high)."""
        n = w.numel()
        flat_w = w.reshape(-1)
        pad = (-n) % bs
        if pad:
            flat_w = torch.cat((flat_w, flat_w.new_zeros(pad)))
        blocks = flat_w.view(-1, bs)
        absmax = blocks.abs().amax(dim=1).clamp_min(1e-12)
        table = torch.tensor(NF4_TABLE, dtype=torch.float32, device=w.device)
        codes = torch.empty(blocks.shape, dtype=torch.uint8, device=w.device)
        for i in range(0, blocks.shape[0], 1 << 16):  # in slices: a 7B projection at once would not fit
            x = blocks[i:i + (1 << 16)] / absmax[i:i + (1 << 16), None]
            codes[i:i + (1 << 16)] = (x[..., None] - table).abs().argmin(dim=-1).to(torch.uint8)
        codes = codes.reshape(-1)[:n]
        if n % 2:
            codes = torch.cat((codes, codes.new_zeros(1)))
        packed = (codes[0::2] << 4) | codes[1::2]
        return (packed, absmax, table, bs, tuple(w.shape))
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
                Q[name] = (torch.from_numpy(packed_all[po:po + pb].copy()).to(dev), torch.from_numpy(flat[off:off + blocks].copy()).to(dev),
                           torch.tensor(q4['table'], dtype=torch.float32, device=dev), bs, s)
                continue
            if off + n > flat.size:
                sys.exit(f'{args.init}/weights.bin is too short for {name}')
            w = torch.from_numpy(flat[off:off + n].copy()).reshape(s).to(dev)
            P[name] = torch.nn.Parameter(w if not lora else w.to(frozen_dtype), requires_grad=not lora)
        for t in sorted(lora_targets):
            for part in ('lora_A', 'lora_B'):
                name = f'{t}.{part}.weight'
                e = manifest.get(name)
                if e is None:
                    sys.exit(f'{args.init}/weights.json has no {name} (named by --lora)')
                n, off = math.prod(e['shape']), e['offset']
                if off + n > flat.size:
                    sys.exit(f'{args.init}/weights.bin is too short for {name}')
                P[name] = torch.nn.Parameter(torch.from_numpy(flat[off:off + n].copy()).reshape(e['shape']).to(dev))
                shapes.append((name, tuple(e['shape'])))
        extra = set(manifest) - {n for n, _ in shapes}
        if extra:
            sys.exit(f'{args.init}/weights.json names tensors this model does not have: {sorted(extra)}')
        raw = np.fromfile(os.path.join(args.init, 'batches.bin'), dtype=np.int32)
        if raw.size != total_steps * 2 * B * T:
            sys.exit(f'{args.init}/batches.bin holds {raw.size} ints, expected {total_steps}*2*{B}*{T}')
        raw = torch.from_numpy(raw.copy()).reshape(total_steps, 2, B, T).long().to(dev)
        if args.packed:
            pk = np.fromfile(os.path.join(args.init, 'packing.bin'), dtype=np.int32)
            if pk.size != total_steps * 2 * B * T:
                sys.exit(f'{args.init}/packing.bin holds {pk.size} ints, expected {total_steps}*2*{B}*{T}')
            pk = torch.from_numpy(pk.copy()).reshape(total_steps, 2, B, T).long().to(dev)
            batches = [(raw[s, 0], raw[s, 1], pk[s, 0], pk[s, 1]) for s in range(total_steps)]
        else:
            batches = [(raw[s, 0], raw[s, 1], None, None) for s in range(total_steps)]
    else:
        frozen = random_lora
        for name, s in list(shapes):
            w = (torch.zeros(s, device=dev) if name.endswith('.bias') else torch.ones(s, device=dev)) if len(s) == 1 else torch.randn(s, device=dev) * 0.02
            if args.quant and len(s) == 2 and name[:-len('.weight')] in lora_targets:
                Q[name] = quantize_nf4(w.to(torch.bfloat16).float(), 64)
                del w
                continue
            P[name] = torch.nn.Parameter(w.to(frozen_dtype) if frozen else w, requires_grad=not frozen)
        if random_lora:
            r = args.lora_rank
            for t in sorted(lora_targets):
                out_f, in_f = next(s for n, s in shapes if n == f'{t}.weight')
                bound = 1.0 / math.sqrt(in_f)
                P[f'{t}.lora_A.weight'] = torch.nn.Parameter((torch.rand(r, in_f, device=dev) * 2 - 1) * bound)
                P[f'{t}.lora_B.weight'] = torch.nn.Parameter(torch.zeros(out_f, r, device=dev))
                shapes += [(f'{t}.lora_A.weight', (r, in_f)), (f'{t}.lora_B.weight', (out_f, r))]
        batches = []
        for _ in range(total_steps):
            seq = torch.randint(0, min(V, 256), (B, T + 1), device=dev)
            batches.append((seq[:, :T].contiguous(), seq[:, 1:].contiguous(), None, None))
    params = [P[n] for n, _ in shapes if n in P and P[n].requires_grad]
    scale = lora['scale'] if lora else 0.0

    # bitsandbytes 4-bit weights (QLoRA on the GPU): NF4 requantized from the dequantized values
    BNB = {}
    if cuda and bnb is not None and Q:
        for w in list(Q):
            dense = dequant4_(Q[w]).to(torch.bfloat16)
            BNB[w] = bnb.functional.quantize_4bit(dense, blocksize=Q[w][3], quant_type='nf4', compress_statistics=True)
            del dense
            del Q[w]

    def proj(x, name):
        w = f'{name}.weight'
        if w in BNB:
            qw, qs = BNB[w]
            y = bnb.matmul_4bit(x.to(torch.bfloat16), qw.t(), quant_state=qs)
        else:
            y = F.linear(x, dequant4_(Q[w]) if w in Q else P[w])
        if f'{name}.bias' in P:
            y = y + P[f'{name}.bias']
        if name in lora_targets:
            y = y + scale * F.linear(F.linear(x, P[f'{name}.lora_A.weight']), P[f'{name}.lora_B.weight'])
        return y

    # -------------------------------------------------------------- the model
    inv_freq = (1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))).to(dev)  # float32, as HF

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
            pos = torch.arange(T, dtype=torch.float32, device=dev)
            freqs = torch.outer(pos, inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[None, None], emb.sin()[None, None]    # [1, 1, T, D]
        else:  # per-token positions (HF position_ids): one table per row
            freqs = positions.to(torch.float32)[..., None] * inv_freq   # [B, T, D/2]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[:, None], emb.sin()[:, None]          # [B, 1, T, D]
        if seg is None and 0 < window < T:  # causal within the last `window` positions
            idx = torch.arange(T, device=dev)
            allowed = ((idx[:, None] >= idx[None, :]) & (idx[:, None] - idx[None, :] < window))[None, None]
            mask = None if sdpa else torch.zeros(allowed.shape, device=dev).masked_fill(~allowed, float('-inf'))
        elif seg is None:
            allowed = None  # plain causal
            mask = None if sdpa else torch.full((T, T), float('-inf'), device=dev).triu(1)
        else:
            # packed rows: key s is visible to query t iff s <= t and same segment
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            if 0 < window < T:
                causal = causal & ~torch.ones(T, T, dtype=torch.bool, device=dev).tril(-window)
            allowed = (seg[:, None, :, None] == seg[:, None, None, :]) & causal   # [B, 1, T, T]
            mask = None if sdpa else torch.zeros(allowed.shape, device=dev).masked_fill(~allowed, float('-inf'))
        x = F.embedding(ids, P['model.embed_tokens.weight'])            # [B, T, C]
        for i in range(L):
            pre = f'model.layers.{i}'
            h = rms(x, P[f'{pre}.input_layernorm.weight'])
            q = proj(h, f'{pre}.self_attn.q_proj').view(B, T, Hq, D)
            k = proj(h, f'{pre}.self_attn.k_proj').view(B, T, Hkv, D)
            if qk_norm:  # RMSNorm of each head before RoPE
                q, k = rms(q, P[f'{pre}.self_attn.q_norm.weight']), rms(k, P[f'{pre}.self_attn.k_norm.weight'])
            q, k = q.transpose(1, 2), k.transpose(1, 2)
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
        return F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1), ignore_index=-100)

    # ------------------------------------------------------------ the stack
    quantized = bool(Q or BNB)
    want_peft = cuda and args.stack in ('auto', 'peft')
    stack = 'plain'
    why_plain = 'cpu' if not cuda else 'asked' if args.stack == 'plain' else None
    if want_peft:
        if quantized:
            why_plain = 'a 4-bit base'
        elif batches and batches[0][2] is not None:
            why_plain = 'packed rows'
        else:
            try:
                forward, params = peft_model(torch, F, cfg, P, lora, dev, frozen_dtype)
                stack = 'peft'
            except Exception as e:  # not installed, or an API it does not know
                if args.stack == 'peft':
                    raise
                why_plain = f'{type(e).__name__}: {e}'
                log(f'transformers + PEFT unavailable ({why_plain}); the script\'s own model trains')
    if stack == 'peft':
        import transformers
        import peft
        stack_label = f'transformers {transformers.__version__} LlamaForCausalLM (sdpa)' + (f' + PEFT {peft.__version__} LoRA' if lora else '')
    else:
        four = ('bitsandbytes matmul_4bit (NF4 requantized by bitsandbytes)' if BNB else 'NF4 dequantized before each matmul') if quantized else None
        stack_label = 'this script\'s functional LLaMA' + (' + its own LoRA' if lora else '') + (f', {four}' if four else '') \
            + (f' (not PEFT: {why_plain})' if cuda and why_plain else '')
    if cuda:
        stack_label += ', bf16 autocast, fp32 master weights'
    amp = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

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
        sync()
        t0 = now()
        with amp():
            loss = forward(ids, targets, seg, positions)
        sync()
        t1 = now()
        loss.backward()
        sync()
        t2 = now()
        if args.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
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
        'parameters': sum(p.numel() for p in P.values()) + sum(math.prod(q[4]) for q in Q.values()) + sum(q[1].shape.numel() for q in BNB.values()),
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
        'device': args.device,
        'stack': stack_label,
        **({'cudaDevice': torch.cuda.get_device_name(), 'maxMemoryAllocatedBytes': torch.cuda.max_memory_allocated(),
            'maxMemoryReservedBytes': torch.cuda.max_memory_reserved(), 'cudaVersion': torch.version.cuda} if cuda else {}),
    }))


if __name__ == '__main__':
    main()
