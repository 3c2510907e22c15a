#!/bin/sh
# Usage: rewrite.sh KERNEL.cu OUT.inc
# Writes OUT.inc: KERNEL.cu with its `<<<...>>>` launch lines and its
# `extern __shared__` declarations rewritten for the CUDA emulator (see
# cuda_emu.h), everything else unchanged, after a `#line` so diagnostics name
# the real file. Fails if a launch or an extern __shared__ was not rewritten
# (each must sit on one line). A template kernel must be launched with its
# template arguments written out: the emulator cannot deduce them.
set -e
cu="$1"
inc="$2"
printf '#line 1 "%s"\n' "$cu" > "$inc"
sed -e 's/\([A-Za-z_][A-Za-z0-9_:<>]*\)<<<\(.*\)>>>(/::tbemu::launch_kernel(\1, \2)(/' \
    -e '/extern __shared__/s/__align__([0-9]*) //' \
    -e 's/extern __shared__ \(.*[^ ]\)  *\([A-Za-z_][A-Za-z0-9_]*\)\[\];/\1* const \2 = ::tbemu::dynamic_shared<\1>();/' \
    "$cu" >> "$inc"
launches=$(grep -c '>>>(' "$cu" || true)
rewritten=$(grep -c 'tbemu::launch_kernel(' "$inc" || true)
if [ "$launches" != "$rewritten" ] || grep -q '>>>(\|extern __shared__' "$inc"; then
  echo "rewrite.sh: a launch or extern __shared__ in $cu was not rewritten (one line each expected)" >&2
  exit 1
fi
