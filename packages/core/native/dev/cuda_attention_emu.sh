#!/bin/sh
# Builds and runs cuda_attention_emu.cc: ../src/cuda/attention.cu itself,
# compiled with g++ against the CUDA emulator in cuda_emu/ (see cuda_emu.h),
# under AddressSanitizer and UBSan. The only changes to the kernel source are
# line-for-line rewrites of its `<<<...>>>` launches and `extern __shared__`
# declarations (checked to be complete); a `#line` keeps diagnostics on the
# real file. Pass --quick to skip the largest cases.
set -e
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../src"
out="${TMPDIR:-/tmp}/tb_cuda_attention_emu"
mkdir -p "$out"
cu="$src/cuda/attention.cu"
inc="$out/attention_cu_host.inc"
"$here/cuda_emu/rewrite.sh" "$cu" "$inc"
flags="-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize-sections=tbemu_shared"
# the emulator's own checks first (the mistakes it must report are printed to selftest.log)
g++ $flags -I "$here/cuda_emu" "$here/cuda_emu/selftest.cc" -o "$out/selftest"
"$out/selftest" 2> "$out/selftest.log" || { cat "$out/selftest.log" >&2; exit 1; }
g++ $flags -I "$here/cuda_emu" -I "$src/cuda" -I "$src" -I "$out" "$here/cuda_attention_emu.cc" -o "$out/emu"
"$out/emu" "$@"
