#!/usr/bin/env bash
# .gpu/run.sh — the GPU visit, prepared by `pnpm gpu:kit` (scripts/gpu-kit.sh).
# Run from anywhere on the GPU machine: bash .gpu/run.sh     (bash .gpu/run.sh --plan: the stage limits only)
# Needs no Node.js (it unpacks .gpu/node.xz) and no network. Sized for ONE
# device call of at most 600 s: the stages' limits, their kill grace and the
# set-up add to less than TB_BUDGET (default 540 s; --plan prints the sum, and
# the script refuses to start when it is over). In order, correctness first:
#   env        nvidia-smi, the addon's view of the device (allocator included),
#              where libcublasLt was found, python packages
#   tests      the CUDA conformance tests (node --test .gpu/tests/*.mjs)
#   kernels    the kernel benchmark's CUDA GEMM rows (when it can time them)
#   matmul     torch bf16 matmul (cuBLAS) at the GEMM benchmark's shapes
#   plan       Llama-2-7B: planned memory only (bench plan), no device time
#   suite      the visit suite (.gpu/visit-suite.json: the medium base on spam,
#              SmolLM-135M and TinyLlama-1.1B shape rows, PyTorch beside them)
# Every stage writes under a scratch folder (TB_WORK, default a fresh
# /tmp/tunebench-visit.*), which is packed into ONE archive,
# $OUT/visit.tar.gz, after every stage, every 20 s during one (TB_PACK_EVERY), and on
# SIGTERM/SIGINT/SIGHUP; $OUT/summary.txt (provenance, stage statuses, the
# table) is rewritten at the same moments. The device tool returns at most 8
# files from $OUT, at most 2 folders deep: these two (and, when a kill lands
# while packing, one visit.tar.gz.part-*). $OUT defaults to ./gpu-out.
# The table printed last is also visit/table.txt in the archive.
# Without a usable CUDA device it says so and exits 3 after the stages that
# need none (the tests skip with their message; the suite refuses).
# Stage limits (seconds) may be changed: TB_LIMIT_ENV, TB_LIMIT_TESTS,
# TB_LIMIT_KERNELS, TB_LIMIT_MATMUL, TB_LIMIT_PLAN, TB_LIMIT_SUITE.
set -uo pipefail
kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$kit")
cd "$root"

# --- the plan: stage limits, kill grace, set-up allowance, the budget
budget=${TB_BUDGET:-540}
grace=5          # timeout -k: seconds between TERM and KILL for a stage
setup=25         # unpacking node, the addon and the corpora; packing; the table
stage_names=(env tests kernels matmul plan suite)
declare -A limit=(
  [env]=${TB_LIMIT_ENV:-45} [tests]=${TB_LIMIT_TESTS:-180} [kernels]=${TB_LIMIT_KERNELS:-60}
  [matmul]=${TB_LIMIT_MATMUL:-40} [plan]=${TB_LIMIT_PLAN:-10} [suite]=${TB_LIMIT_SUITE:-140}
)
planned=$setup
for s in "${stage_names[@]}"; do planned=$((planned + limit[$s] + grace)); done
print_plan() {
  for s in "${stage_names[@]}"; do printf 'stage\t%s\t%s\n' "$s" "${limit[$s]}"; done
  printf 'grace\t%s\n' "$grace"
  printf 'setup\t%s\n' "$setup"
  printf 'total\t%s\n' "$planned"
  printf 'budget\t%s\n' "$budget"
}
if [[ ${1:-} == --plan ]]; then print_plan; (( planned < budget )); exit; fi
if (( planned >= budget )); then
  echo "run.sh: the stage limits, their kill grace and the set-up add to ${planned} s, not under the budget of ${budget} s (TB_BUDGET): lower a TB_LIMIT_*" >&2
  print_plan >&2
  exit 2
fi
deadline=$((SECONDS + budget))

OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
work=${TB_WORK:-$(mktemp -d /tmp/tunebench-visit.XXXXXX)}
res=$work/visit
mkdir -p "$res"
: > "$res/stages.tsv"
log() { echo "[run.sh $(date -u +%H:%M:%S)] $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# --- packing: ONE archive of $res into $OUT, written beside and renamed, so a
# kill while packing leaves the last whole archive in place
pack() {
  local part="$OUT/visit.tar.gz.part-$BASHPID"
  if have tar && have gzip; then
    tar -C "$work" -czf "$part" visit 2>/dev/null
  else
    python3 -c 'import sys, tarfile
with tarfile.open(sys.argv[1], "w:gz") as t: t.add(sys.argv[2], arcname="visit")' "$part" "$res"
  fi && mv -f "$part" "$OUT/visit.tar.gz" || { rm -f "$part"; echo "run.sh: packing $res into $OUT/visit.tar.gz failed" >&2; }
}
summary() {
  {
    cat "$res/provenance.txt" 2>/dev/null
    echo
    echo "stages (name, status, seconds):"
    sed 's/^/  /' "$res/stages.tsv"
    [[ -f $res/table.txt ]] && { echo; cat "$res/table.txt"; }
    echo
    echo "everything: visit.tar.gz (folder visit/: one log per stage, kernels.json, matmul.json, suite-gpu/)"
  } > "$OUT/summary.txt.part" && mv -f "$OUT/summary.txt.part" "$OUT/summary.txt"
}
save() { pack; summary; }

ticker_pid=
stage_pid=
stage_name=
stop_ticker() {
  [[ -n $ticker_pid ]] || return 0
  kill "$ticker_pid" 2>/dev/null; wait "$ticker_pid" 2>/dev/null
  ticker_pid=
  rm -f "$OUT"/visit.tar.gz.part-* 2>/dev/null
}
on_signal() {
  trap '' TERM INT HUP
  log "received SIG$1: stopping${stage_name:+ stage $stage_name}, packing what there is"
  stop_ticker
  if [[ -n $stage_pid ]]; then
    kill -TERM "$stage_pid" 2>/dev/null  # timeout passes it on to the stage's process group
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$stage_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$stage_pid" 2>/dev/null
    printf '%s\tkilled (SIG%s)\t%s\n' "$stage_name" "$1" "$((SECONDS - stage_t0))" >> "$res/stages.tsv"
  fi
  echo "stopped by SIG$1 at $(date -u +%H:%M:%S)" >> "$res/provenance.txt"
  save
  exit $((128 + $2))
}
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

# stage NAME CMD...: output in $res/NAME.log, its end echoed; status and
# seconds in stages.tsv; the archive repacked every TB_PACK_EVERY (20) s while it runs and
# once after. Its limit is cut to the time left before the deadline.
stage() {
  local name=$1; shift
  local lim=${limit[$name]} left=$((deadline - SECONDS - setup / 2))
  (( left < lim )) && lim=$left
  if (( lim < 5 )); then
    log "stage $name: skipped, ${left} s left of the budget"
    printf '%s\tskipped (no time left)\t0\n' "$name" >> "$res/stages.tsv"
    save
    return
  fi
  log "stage $name (limit ${lim} s)"
  stage_name=$name
  stage_t0=$SECONDS
  # the ticker finishes a pack it has begun before it stops (stop_ticker waits for it)
  (stop=0; trap 'stop=1' TERM
   while (( ! stop )); do sleep "${TB_PACK_EVERY:-20}" & wait $! 2>/dev/null; (( stop )) && { kill $! 2>/dev/null; break; }; pack; done) &
  ticker_pid=$!
  timeout -k "$grace" "$lim" "$@" >"$res/$name.log" 2>&1 &
  stage_pid=$!
  wait "$stage_pid"
  local rc=$?
  stage_pid=
  stop_ticker
  local took=$((SECONDS - stage_t0)) what=ok
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then what="timed out"; elif [[ $rc -ne 0 ]]; then what="exit $rc"; fi
  printf '%s\t%s\t%s\n' "$name" "$what" "$took" >> "$res/stages.tsv"
  stage_name=
  tail -n 8 "$res/$name.log" | sed 's/^/    /'
  log "stage $name: $what in ${took} s"
  save
}

# the table: printed last, and table.txt in the archive
table() {
  node "$kit/table.mjs" "$res" > "$res/table.txt" 2>&1 || echo "(table.mjs failed)" >> "$res/table.txt"
  save
  cat "$res/table.txt"
}

# --- nvidia-smi first, before anything is unpacked
{ echo "== nvidia-smi"; if have nvidia-smi; then nvidia-smi 2>&1; else echo "(nvidia-smi is not installed here)"; fi; } | tee "$res/nvidia-smi.txt"

# --- the tools the kit relies on (xz is optional: python3's lzma stands in)
missing=
for t in bash timeout tar gzip python3 sed tail; do have "$t" || missing="$missing $t"; done
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(cat "$kit/commit.txt" 2>/dev/null || echo unknown)"
  echo "host: $(uname -srm), $(nproc 2>/dev/null || echo '?') cores"
  echo "tools: xz $(have xz && echo yes || echo 'no (python3 lzma instead)'), tar $(have tar && echo yes || echo no), gzip $(have gzip && echo yes || echo 'no (python3 instead)')${missing:+; missing:$missing}"
} > "$res/provenance.txt"
if ! have timeout; then echo "run.sh: 'timeout' (coreutils) is not installed: the stages cannot be time-limited" >&2; save; exit 1; fi
save

# --- node, the addon, provenance, the environment the stages share
# shellcheck disable=SC1091
if ! source "$kit/use-node.sh" > "$res/use-node.log" 2>&1; then
  cat "$res/use-node.log"
  echo "run.sh: cannot unpack $kit/node.xz (use-node.sh above)" >&2; save; exit 1
fi
export TUNEBENCH_COMMIT
TUNEBENCH_COMMIT=$(cat "$kit/commit.txt" 2>/dev/null || echo unknown)
if [[ -f $kit/tunebench.node ]]; then
  export TUNEBENCH_ADDON=$kit/tunebench.node
elif [[ -f $kit/tunebench.node.xz ]]; then
  mkdir -p "$kit/bin"
  [[ -f $kit/bin/tunebench.node && ! $kit/tunebench.node.xz -nt $kit/bin/tunebench.node ]] \
    || tb_unxz "$kit/tunebench.node.xz" "$kit/bin/tunebench.node" \
    || { echo "run.sh: cannot unpack $kit/tunebench.node.xz" >&2; save; exit 1; }
  export TUNEBENCH_ADDON=$kit/bin/tunebench.node
else
  echo "run.sh: no addon in $kit (tunebench.node or tunebench.node.xz)" >&2; save; exit 1
fi
export TUNEBENCH_TORCH_SCRIPT=$root/packages/bench/peers/torch_train.py
export TUNEBENCH_PYTHON=${TUNEBENCH_PYTHON:-python3}
export TUNEBENCH_CACHE=${TUNEBENCH_CACHE:-/tmp/tunebench-cache}
# the PyTorch peers: no network there, so no hub look-ups
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
data=/tmp/tunebench-data
mkdir -p "$data/spam" "$data/brown"
if [[ -f $kit/data/spam.tar.xz ]]; then
  [[ -f $data/spam/data/file_list.json ]] || tb_untar_xz "$kit/data/spam.tar.xz" "$data/spam" || echo "run.sh: cannot unpack the SpamAssassin data" >&2
  export TUNEBENCH_SPAM_DIR=$data/spam/data
fi
if [[ -f $kit/data/brown.tar.xz ]]; then
  [[ -n "$(ls "$data/brown" 2>/dev/null)" ]] || tb_untar_xz "$kit/data/brown.tar.xz" "$data/brown" || echo "run.sh: cannot unpack the Brown corpus" >&2
  export TUNEBENCH_BROWN_DIR=$data/brown
fi

# cuBLASLt (the reference rows): the addon opens it with dlopen by soname, so
# its folder goes on LD_LIBRARY_PATH unless the loader finds it already: the
# CUDA toolkit's lib64, else the nvidia-cublas wheel or torch's lib
cublaslt_dir() {
  if have ldconfig && ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so'; then echo "(the loader's cache)"; return; fi
  local d
  for d in ${CUDA_HOME:+"$CUDA_HOME/lib64"} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    compgen -G "$d/libcublasLt.so*" >/dev/null && { echo "$d"; return; }
  done
  "$TUNEBENCH_PYTHON" - 2>/dev/null <<'PY'
import glob, os
found = []
try:
    import nvidia  # the nvidia-* wheels (nvidia-cublas) share this namespace package
    for base in list(getattr(nvidia, '__path__', [])):
        found += glob.glob(os.path.join(base, '**', 'libcublasLt.so*'), recursive=True)
except Exception:
    pass
try:
    import importlib.util
    spec = importlib.util.find_spec('torch')
    if spec and spec.origin:
        found += glob.glob(os.path.join(os.path.dirname(spec.origin), 'lib', 'libcublasLt.so*'))
except Exception:
    pass
# the runtime's major version first (.so.13), then any
found.sort(key=lambda p: (not p.endswith('.so.13'), p))
if found:
    print(os.path.dirname(found[0]))
PY
}
cublaslt=$(cublaslt_dir)
if [[ -z $cublaslt ]]; then
  cublaslt="not found (the cuBLASLt reference rows will be missing)"
elif [[ $cublaslt != "(the loader's cache)" ]]; then
  export LD_LIBRARY_PATH="$cublaslt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
{
  echo "node: $(node --version)"
  echo "addon: $TUNEBENCH_ADDON"
  echo "libcublasLt: $cublaslt"
  echo "budget: ${budget} s; planned ${planned} s"
} >> "$res/provenance.txt"
cat "$res/provenance.txt"
save

# --- env: is there a device?
env_check() {
  cat "$res/nvidia-smi.txt"
  echo "== the addon"; node -e '
    const a = require(process.env.TUNEBENCH_ADDON);
    console.log(JSON.stringify({ cudaCompiled: a.cudaCompiled, info: a.cudaInfo(), opFamilies: a.opFamilies }, null, 1));'
  echo "== libcublasLt: $cublaslt (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
  echo "== python (HF_HUB_OFFLINE=$HF_HUB_OFFLINE TRANSFORMERS_OFFLINE=$TRANSFORMERS_OFFLINE)"; "$TUNEBENCH_PYTHON" - <<'PY' || true
import ctypes, importlib
for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate'):
    try:
        v = importlib.import_module(m).__version__
    except Exception as e:
        v = f'unavailable ({type(e).__name__}: {e})'
        if m == 'bitsandbytes':
            v += '; the QLoRA peer dequantizes the NF4 base before each matmul'
    print(f'{m}: {v}')
try:
    import torch
    print('torch.cuda:', torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else '')
except Exception as e:
    print('torch.cuda: unavailable', e)
for so in ('libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so'):
    try:
        ctypes.CDLL(so)
        print(f'dlopen {so}: ok')
        break
    except OSError as e:
        print(f'dlopen {so}: {e}')
PY
}
export -f env_check  # timeout runs programs, not functions
export res cublaslt
stage env bash -c env_check
have_device=$(node -e 'const a = require(process.env.TUNEBENCH_ADDON); process.stdout.write(a.cudaDevices() > 0 ? "yes" : (a.cudaInfo().reason || "no CUDA device"))' 2>&1)
log "CUDA device: $have_device"

# --- tests: they skip with a message where there is no device
stage tests env TUNEBENCH_THREADS=4 node --expose-gc --test --test-reporter=spec "$kit"/tests/*.mjs

if [[ $have_device != yes ]]; then
  stage matmul "$TUNEBENCH_PYTHON" packages/bench/peers/torch_matmul.py --dtypes bf16 --out "$res/matmul.json"
  stage plan node "$kit/cli.mjs" plan --model llama-2-7b --methods full,lora16,qlora16,qalora4-r16 --batch 8 --seq 1024
  # --device cuda: refused at once with the reason (never trained on the host's CPU)
  stage suite node "$kit/cli.mjs" --suite "$kit/visit-suite.json" --device cuda --out "$res/suite-gpu"
  table
  echo "run.sh: no usable CUDA device here ($have_device): nothing was measured"
  exit 3
fi

# --- kernels: only when the benchmark can time the CUDA kernels (--device);
# its CPU rows are not what this visit is for
if node "$kit/kernels.mjs" --help 2>/dev/null | grep -q -- '--device'; then
  stage kernels node "$kit/kernels.mjs" --only gemm --no-openblas --device cuda --time 200 --out "$res/kernels.json"
else
  log "stage kernels: skipped (this build's kernel benchmark has no --device option: it times CPU kernels only)"
  printf 'kernels\tskipped (CPU-only benchmark)\t0\n' >> "$res/stages.tsv"
fi

# --- the cuBLAS reference (bf16: the target's dtype)
stage matmul "$TUNEBENCH_PYTHON" packages/bench/peers/torch_matmul.py --dtypes bf16 --out "$res/matmul.json"

# --- Llama-2-7B: planned only (host arithmetic, no device time)
stage plan node "$kit/cli.mjs" plan --model llama-2-7b --methods full,lora16,qlora16,qalora4-r16 --batch 8 --seq 1024

# --- the visit suite with its PyTorch peers (each run appended to results.jsonl as it ends)
stage suite node "$kit/cli.mjs" --suite "$kit/visit-suite.json" --device cuda --out "$res/suite-gpu"

# --- the short table, last
table
