#!/bin/sh
# Builds and runs cuda_gemm_emu.cc: the loader code of ../src/cuda/gemm.cu
# (from `constexpr int BM` to set_table, and the decode row fetchers) is cut
# out into a generated include, then compiled with g++ and host shims.
set -e
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../src"
out="${TMPDIR:-/tmp}/tb_cuda_gemm_emu"
mkdir -p "$out"
{
  sed -n '/^constexpr int BM = /,/^__device__ __forceinline__ void set_table(Quant4Loader/p' "$src/cuda/gemm.cu"
  sed -n '/^constexpr int kDecodeWarps/,/^template <class W>$/p' "$src/cuda/gemm.cu" | sed '$d'
} > "$out/gemm_cu_loaders.inc"
g++ -std=c++17 -O1 -g -fsanitize=address,undefined -I "$src" -I "$out" "$here/cuda_gemm_emu.cc" -o "$out/emu"
"$out/emu"
