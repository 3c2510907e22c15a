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
printf '#line 1 "%s"\n' "$cu" > "$inc"
sed -e 's/\([A-Za-z_][A-Za-z0-9_:<>]*\)<<<\(.*\)>>>(/::tbemu::launch_kernel(\1, \2)(/' \
    -e '/extern __shared__/s/__align__([0-9]*) //' \
    -e 's/extern __shared__ \(.*[^ ]\)  *\([A-Za-z_][A-Za-z0-9_]*\)\[\];/\1* const \2 = ::tbemu::dynamic_shared<\1>();/' \
    "$cu" >> "$inc"
launches=$(grep -c '>>>(' "$cu" || true)
rewritten=$(grep -c 'tbemu::launch_kernel(' "$inc" || true)
if [ "$launches" != "$rewritten" ] || grep -q '>>>(\|extern __shared__' "$inc"; then
  echo "cuda_attention_emu.sh: a launch or extern __shared__ in attention.cu was not rewritten (one line each expected)" >&2
  exit 1
fi
flags="-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize-sections=tbemu_shared"
# the emulator's own checks first (the mistakes it must report are printed to selftest.log)
g++ $flags -I "$here/cuda_emu" "$here/cuda_emu/selftest.cc" -o "$out/selftest"
"$out/selftest" 2> "$out/selftest.log" || { cat "$out/selftest.log" >&2; exit 1; }
g++ $flags -I "$here/cuda_emu" -I "$src/cuda" -I "$src" -I "$out" "$here/cuda_attention_emu.cc" -o "$out/emu"
"$out/emu" "$@"
