#!/usr/bin/env bash
# .gpu/run.sh — the GPU visit, prepared by `pnpm gpu:kit` (scripts/gpu-kit.sh).
# Run from the project's root on the GPU machine: bash .gpu/run.sh
# Needs no Node.js (it unpacks .gpu/node.xz) and no network. Writes every
# result under $OUT (default ./gpu-out), one stage after another, each with a
# time limit so that one failure does not eat the visit:
#   env        nvidia-smi, the addon's view of the device, python packages
#   tests      the CUDA conformance tests (node --test .gpu/tests/*.mjs)
#   kernels    the kernel benchmark (pnpm bench:kernels), --quick
#   matmul     torch bf16/fp32 matmul (cuBLAS) at the GEMM benchmark's shapes
#   suite      --suite gpu with the PyTorch peers (results.jsonl as runs finish)
# and prints a short table last (.gpu/table.mjs). Without a usable CUDA
# device it says so and exits 3 after the stages that need none (the tests
# skip with their message; the suite refuses).
# Stage limits (seconds) may be changed: TB_LIMIT_TESTS, TB_LIMIT_KERNELS,
# TB_LIMIT_MATMUL, TB_LIMIT_SUITE.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
: > "$OUT/stages.tsv"
log() { echo "[run.sh $(date -u +%H:%M:%S)] $*"; }

# stage NAME LIMIT CMD...: output in $OUT/NAME.log, its end echoed; status and seconds in stages.tsv
stage() {
  local name=$1 limit=$2; shift 2
  log "stage $name (limit ${limit} s)"
  local t0=$SECONDS rc
  timeout -k 15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - t0)) what=ok
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then what="timed out"; elif [[ $rc -ne 0 ]]; then what="exit $rc"; fi
  printf '%s\t%s\t%s\n' "$name" "$what" "$took" >> "$OUT/stages.tsv"
  tail -n 8 "$OUT/$name.log" | sed 's/^/    /'
  log "stage $name: $what in ${took} s"
}

# --- node, provenance, the environment the stages share
# shellcheck disable=SC1091
source .gpu/use-node.sh >/dev/null || { echo "run.sh: cannot unpack .gpu/node.xz (is xz installed?)"; exit 1; }
export TUNEBENCH_ADDON=$root/.gpu/tunebench.node
export TUNEBENCH_COMMIT
TUNEBENCH_COMMIT=$(cat .gpu/commit.txt 2>/dev/null || echo unknown)
export TUNEBENCH_TORCH_SCRIPT=$root/packages/bench/peers/torch_train.py
export TUNEBENCH_PYTHON=${TUNEBENCH_PYTHON:-python3}
export TUNEBENCH_CACHE=${TUNEBENCH_CACHE:-/tmp/tunebench-cache}
data=/tmp/tunebench-data
mkdir -p "$data/spam" "$data/brown"
[[ -f $data/spam/data/file_list.json ]] || tar -C "$data/spam" -xJf .gpu/data/spam.tar.xz
[[ -n "$(ls "$data/brown" 2>/dev/null)" ]] || tar -C "$data/brown" -xJf .gpu/data/brown.tar.xz
export TUNEBENCH_SPAM_DIR=$data/spam/data TUNEBENCH_BROWN_DIR=$data/brown
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $TUNEBENCH_COMMIT"
  echo "node: $(node --version)"
  echo "host: $(uname -srm), $(nproc) cores"
} > "$OUT/provenance.txt"
cat "$OUT/provenance.txt"

# --- env: is there a device?
env_check() {
  echo "== nvidia-smi"; nvidia-smi || echo "(nvidia-smi failed or is missing)"
  echo "== the addon"; node -e '
    const a = require(process.env.TUNEBENCH_ADDON);
    console.log(JSON.stringify({ cudaCompiled: a.cudaCompiled, info: a.cudaInfo(), opFamilies: a.opFamilies }, null, 1));'
  echo "== python"; "$TUNEBENCH_PYTHON" - <<'PY' || true
import importlib
for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate'):
    try:
        v = importlib.import_module(m).__version__
    except Exception as e:
        v = f'unavailable ({type(e).__name__}: {e})'
    print(f'{m}: {v}')
try:
    import torch
    print('torch.cuda:', torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else '')
except Exception as e:
    print('torch.cuda: unavailable', e)
PY
}
export -f env_check  # timeout runs programs, not functions
stage env 60 bash -c env_check
have_device=$(node -e 'const a = require(process.env.TUNEBENCH_ADDON); process.stdout.write(a.cudaDevices() > 0 ? "yes" : (a.cudaInfo().reason || "no CUDA device"))' 2>&1)
log "CUDA device: $have_device"

# --- tests: they skip with a message where there is no device
stage tests "${TB_LIMIT_TESTS:-120}" env TUNEBENCH_THREADS=4 node --expose-gc --test --test-reporter=spec .gpu/tests/*.mjs

if [[ $have_device != yes ]]; then
  stage suite 60 node .gpu/cli.mjs --suite gpu --out "$OUT/suite-gpu"
  stage matmul 60 "$TUNEBENCH_PYTHON" packages/bench/peers/torch_matmul.py --out "$OUT/matmul.json"
  node .gpu/table.mjs "$OUT" || true
  echo "run.sh: no usable CUDA device here ($have_device): nothing was measured"  # exit 3: no device
  exit 3
fi

# --- kernels: only when the benchmark can time the CUDA kernels (--device);
# its CPU rows are not what this visit is for
if node .gpu/kernels.mjs --help 2>/dev/null | grep -q -- '--device'; then
  stage kernels "${TB_LIMIT_KERNELS:-75}" node .gpu/kernels.mjs --only gemm --no-openblas --device cuda --time 200 --out "$OUT/kernels.json"
else
  log "stage kernels: skipped (this build's kernel benchmark has no --device option: it times CPU kernels only)"
  printf 'kernels\tskipped (CPU-only benchmark)\t0\n' >> "$OUT/stages.tsv"
fi

# --- the cuBLAS reference
stage matmul "${TB_LIMIT_MATMUL:-60}" "$TUNEBENCH_PYTHON" packages/bench/peers/torch_matmul.py --out "$OUT/matmul.json"

# --- the gpu suite with its PyTorch peers (each run appended to results.jsonl as it ends)
stage suite "${TB_LIMIT_SUITE:-330}" node .gpu/cli.mjs --suite gpu --device cuda --out "$OUT/suite-gpu"

# --- the short table, last
node .gpu/table.mjs "$OUT"
