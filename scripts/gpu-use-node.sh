# .gpu/use-node.sh — sourced by .gpu/run.sh (or by hand, from anywhere) on the
# GPU machine: puts Node.js on PATH from .gpu/node.xz when the machine has
# none, and defines the two unpackers run.sh uses. xz is not assumed there:
# without it python3's lzma module decompresses (the image has Python 3.12).
#   tb_unxz FILE.xz OUT          decompress one file
#   tb_untar_xz FILE.tar.xz DIR  unpack a tar.xz archive into DIR
tb_unxz() {
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" > "$2.tmp" && mv -f "$2.tmp" "$2"
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' "$1" "$2.tmp" && mv -f "$2.tmp" "$2"
  else
    echo "use-node.sh: cannot decompress $1: neither xz nor python3 is installed" >&2
    return 1
  fi
}
tb_untar_xz() {
  mkdir -p "$2" || return 1
  if command -v xz >/dev/null 2>&1 && command -v tar >/dev/null 2>&1; then
    tar -C "$2" -xJf "$1"
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as t:
    try:
        t.extractall(sys.argv[2], filter="data")
    except TypeError:  # a Python without extraction filters
        t.extractall(sys.argv[2])' "$1" "$2"
  else
    echo "use-node.sh: cannot unpack $1: neither xz (with tar) nor python3 is installed" >&2
    return 1
  fi
}
tb_kit_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! command -v node >/dev/null 2>&1; then
  if [[ ! -x $tb_kit_dir/bin/node || $tb_kit_dir/node.xz -nt $tb_kit_dir/bin/node ]]; then
    mkdir -p "$tb_kit_dir/bin" && tb_unxz "$tb_kit_dir/node.xz" "$tb_kit_dir/bin/node" && chmod +x "$tb_kit_dir/bin/node" \
      || { echo "use-node.sh: cannot unpack $tb_kit_dir/node.xz into $tb_kit_dir/bin/node" >&2; return 1 2>/dev/null || exit 1; }
  fi
  export PATH="$tb_kit_dir/bin:$PATH"
fi
node --version
