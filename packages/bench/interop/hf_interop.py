#!/usr/bin/env python3
"""Hugging Face interop check, the Python half (transformers + peft + torch).

Driven by packages/bench/bench/hf_interop.ts, which prepares WORK:
  WORK/ours/            a LlamaForCausalLM directory written by tunebench
  WORK/ours_adapter/    a PEFT LoRA adapter written by tunebench for it
  WORK/ids.json         {"batch": B, "seq": T, "ids": [...]} (B*T token ids)
  WORK/ours_logits.bin  f32 [B, T, V]: tunebench's logits of ours/ on ids
  WORK/ours_lora_logits.bin  the same with the adapter

This script
  1. loads ours/ with transformers and ours_adapter/ with peft, and compares
     their logits with tunebench's (our files in their libraries), and
  2. builds a model of the same config in transformers (seeded random
     weights), saves it to WORK/theirs/ with save_pretrained, adds a PEFT LoRA
     adapter (r 4, alpha 8, every projection, B made non-zero), saves it to
     WORK/theirs_adapter/, and writes their logits to WORK/theirs_logits.bin
     and WORK/theirs_lora_logits.bin, for tunebench to load and compare
     (their files in ours).
It prints one JSON object on the last line of stdout.

  python3 packages/bench/interop/hf_interop.py WORK
"""
import json
import os
import sys


def max_rel(a, b):
    import torch
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    import numpy as np
    import torch
    import transformers
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    with open(os.path.join(work, 'ids.json')) as f:
        spec = json.load(f)
    B, T = spec['batch'], spec['seq']
    ids = torch.tensor(spec['ids'], dtype=torch.long).reshape(B, T)
    out = {'transformers': transformers.__version__, 'peft': peft.__version__, 'torch': torch.__version__}

    # 1. our files in their libraries
    model = LlamaForCausalLM.from_pretrained(os.path.join(work, 'ours'), torch_dtype=torch.float32, attn_implementation='eager')
    model.eval()
    V = model.config.vocab_size
    with torch.no_grad():
        logits = model(ids).logits.float()
    ours = torch.from_numpy(np.fromfile(os.path.join(work, 'ours_logits.bin'), dtype=np.float32).reshape(B, T, V))
    out['oursInTransformers'] = max_rel(logits, ours)
    lora = PeftModel.from_pretrained(model, os.path.join(work, 'ours_adapter'))
    lora.eval()
    with torch.no_grad():
        lora_logits = lora(ids).logits.float()
    ours_lora = torch.from_numpy(np.fromfile(os.path.join(work, 'ours_lora_logits.bin'), dtype=np.float32).reshape(B, T, V))
    out['oursAdapterInPeft'] = max_rel(lora_logits, ours_lora)
    out['adapterChangesLogits'] = max_rel(lora_logits, logits)

    # 2. their files, for us
    cfg = LlamaConfig.from_pretrained(os.path.join(work, 'ours'))
    theirs = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            if p.dim() == 1:
                p.uniform_(0.8, 1.2)   # norms away from 1, so a swapped norm would show
    theirs.save_pretrained(os.path.join(work, 'theirs'), safe_serialization=True)
    with torch.no_grad():
        np.asarray(theirs(ids).logits.float().numpy(), dtype=np.float32).tofile(os.path.join(work, 'theirs_logits.bin'))
    targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
    pm = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, bias='none', task_type='CAUSAL_LM'))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if 'lora_B' in n:
                p.normal_(0, 0.02)
    pm.eval()
    pm.save_pretrained(os.path.join(work, 'theirs_adapter'), safe_serialization=True)
    with torch.no_grad():
        np.asarray(pm(ids).logits.float().numpy(), dtype=np.float32).tofile(os.path.join(work, 'theirs_lora_logits.bin'))
    out['theirsWritten'] = True
    print(json.dumps(out))


if __name__ == '__main__':
    main()
