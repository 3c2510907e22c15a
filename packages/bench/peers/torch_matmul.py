#!/usr/bin/python3
"""The GPU GEMM reference of tunebench: torch.matmul (cuBLAS) timed at the
kernel benchmark's GEMM shapes (packages/core/src/bench/kernels.ts
sweepKernelCases: a LLaMA block's projections at hidden H, intermediate
8H/3 rounded up to 256, `--tokens` rows), in bf16 (fp32 accumulation, as
cuBLAS does for bf16) and in fp32 with TF32 off, for the "at least 0.7x
cuBLAS" target of the CUDA GEMM.

  python3 packages/bench/peers/torch_matmul.py --out matmul.json

Each product is timed with CUDA events over --iters launches after --warmup
ones (median of --repeats such batches). Writes one JSON object (to --out, and
as the last line of stdout): device, torch and CUDA versions, and per shape
and dtype: ms, TFLOP/s. Exits 2 without a CUDA device.
"""
import argparse
import json
import math
import statistics
import sys


def shapes(tokens, hidden):
    """(name, M, N, K, transA, transB) as the kernel benchmark's GEMM section."""
    out = []
    for H in hidden:
        I = math.ceil(8 * H / 3 / 256) * 256  # kernels.ts: Math.ceil((8 * H) / 3 / 256) * 256
        out += [
            (f'H={H} attn proj fwd x.W^T', tokens, H, H, False, True),
            (f'H={H} mlp up fwd x.W^T', tokens, I, H, False, True),
            (f'H={H} mlp down fwd h.W^T', tokens, H, I, False, True),
            (f'H={H} mlp down dX dY.W', tokens, I, H, False, False),
            (f'H={H} mlp down dW dY^T.h', H, I, tokens, True, False),
        ]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tokens', type=int, default=4096, help='rows of the activations (default 4096, as the kernel benchmark)')
    p.add_argument('--hidden', default='256,512,1024,2048,4096', help='hidden sizes (default 256,512,1024,2048,4096)')
    p.add_argument('--dtypes', default='bf16,fp32', help='bf16 and/or fp32 (TF32 off)')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--out', help='write the JSON here too')
    a = p.parse_args()
    import torch
    if not torch.cuda.is_available():
        print('torch_matmul: no CUDA device (torch.cuda.is_available() is False)', file=sys.stderr)
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dt = {'bf16': torch.bfloat16, 'fp32': torch.float32}
    rows = []
    for name, M, N, K, tA, tB in shapes(a.tokens, [int(h) for h in a.hidden.split(',') if h]):
        for dname in [d for d in a.dtypes.split(',') if d]:
            d = dt[dname]
            # stored as the kernel stores them: A [M, K] or [K, M] when transposed, B [K, N] or [N, K]
            A = torch.randn((K, M) if tA else (M, K), device='cuda', dtype=d)
            B = torch.randn((N, K) if tB else (K, N), device='cuda', dtype=d)
            opA = A.t() if tA else A
            opB = B.t() if tB else B
            C = torch.empty((M, N), device='cuda', dtype=d)
            for _ in range(a.warmup):
                torch.matmul(opA, opB, out=C)
            times = []
            for _ in range(a.repeats):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for _ in range(a.iters):
                    torch.matmul(opA, opB, out=C)
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) / a.iters)
            ms = statistics.median(times)
            rows.append({'name': name, 'M': M, 'N': N, 'K': K, 'transA': tA, 'transB': tB, 'dtype': dname,
                         'ms': ms, 'tflops': 2 * M * N * K / ms / 1e9})
            print(f'{name:32s} {M}x{N}x{K} {dname:5s} {ms:8.4f} ms {rows[-1]["tflops"]:8.1f} TFLOP/s', file=sys.stderr)
            del A, B, C
    out = {
        'device': torch.cuda.get_device_name(), 'capability': '.'.join(map(str, torch.cuda.get_device_capability())),
        'torch': torch.__version__, 'cuda': torch.version.cuda, 'tf32': False,
        'timing': f'CUDA events, median of {a.repeats} batches of {a.iters} launches after {a.warmup} warm-ups',
        'rows': rows,
    }
    if a.out:
        with open(a.out, 'w') as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
