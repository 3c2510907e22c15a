#!/bin/sh
# Builds and runs cuda_ops_emu.cc: the simple kernel files of ../src/cuda
# (rmsnorm, rope, swiglu, elementwise, embedding, grad_clip, adamw), each
# compiled as it is with g++ against the CUDA emulator in cuda_emu/ (see
# cuda_emu.h) under AddressSanitizer and UBSan, one object per file (their
# anonymous namespaces reuse names). Only the `<<<...>>>` launch lines and
# `extern __shared__` declarations are rewritten (cuda_emu/rewrite.sh, which
# fails if one is missed).
set -e
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../src"
out="${TMPDIR:-/tmp}/tb_cuda_ops_emu"
mkdir -p "$out"
flags="-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize-sections=tbemu_shared"
g++ $flags -I "$here/cuda_emu" "$here/cuda_emu/selftest.cc" -o "$out/selftest"
"$out/selftest" 2> "$out/selftest.log" || { cat "$out/selftest.log" >&2; exit 1; }
objs=""
for f in rmsnorm rope swiglu elementwise embedding grad_clip adamw; do
  "$here/cuda_emu/rewrite.sh" "$src/cuda/$f.cu" "$out/${f}_cu_host.inc"
  printf '#include "cuda_emu.h"\n#include "%s_cu_host.inc"\n' "$f" > "$out/${f}_cu_host.cc"
  g++ $flags -I "$here/cuda_emu" -I "$src/cuda" -I "$src" -I "$out" -c "$out/${f}_cu_host.cc" -o "$out/$f.o"
  objs="$objs $out/$f.o"
done
g++ $flags -I "$here/cuda_emu" -I "$src/cuda" -I "$src" "$here/cuda_ops_emu.cc" $objs -o "$out/emu"
"$out/emu" "$@"
