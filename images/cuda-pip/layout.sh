#!/bin/sh
# Lay the nvidia/<name>/ trees of the wheels installed in $1 out like NVIDIA's toolkit, in
# the root folder $2 (later copied onto the image below, whose root is $3: default /), for
# the architecture TARGETARCH:
#   /usr/local/cuda-X.Y/{bin,nvvm,...}, targets/<arch>/{include,lib},
#   include -> targets/<arch>/include, lib64 -> targets/<arch>/lib, /usr/local/cuda -> cuda-X.Y
# CUDA 13 wheels share nvidia/cu13/, CUDA 12 wheels use nvidia/<component>/: both are roots.
# Files the base image already has, byte for byte, are dropped: a flavor's layer holds only
# what it adds.
set -eu
src=$1 out=$2 below=${3:-/}
below=${below%/}
mm=${CUDA_VERSION%.*}                    # 13.0.2 -> 13.0
case $TARGETARCH in
    amd64) arch=x86_64-linux ;;
    arm64) arch=sbsa-linux ;;
    *) echo "layout.sh: unsupported architecture $TARGETARCH" >&2; exit 1 ;;
esac
cuda=/usr/local/cuda-$mm                 # where it ends up (and where the base may have it)
T=$out$cuda
TD=$T/targets/$arch

if [ -L "$below/usr/local/cuda" ] && [ "$(readlink "$below/usr/local/cuda")" != "cuda-$mm" ]; then
    echo "layout.sh: the base already has $(readlink "$below/usr/local/cuda"), not cuda-$mm" >&2; exit 1
fi

mkdir -p "$TD/include" "$TD/lib" "$out/etc/ld.so.conf.d"
ln -sfn "targets/$arch/include" "$T/include"
ln -sfn "targets/$arch/lib" "$T/lib64"
ln -sfn "cuda-$mm" "$out/usr/local/cuda"

found=0
for root in "$src"/nvidia/*/; do
    [ -d "$root" ] || continue
    found=1
    for d in "$root"*; do
        name=${d##*/}
        case $name in
            include) dst=$TD/include ;;
            lib|lib64) dst=$TD/lib ;;
            __pycache__) continue ;;
            *) [ -d "$d" ] || continue; dst=$T/$name ;;   # bin, nvvm, share, ...
        esac
        mkdir -p "$dst"
        # Hard links: the wheels' folder is deleted after this script, so no second copy is written.
        cp -alf "$d"/. "$dst"/
    done
done
[ "$found" = 1 ] || { echo "layout.sh: no nvidia/*/ folder in $src" >&2; exit 1; }
find "$T" \( -name __init__.py -o -name __pycache__ \) -exec rm -rf {} +

# The wheels stay visible to Python: their metadata and their nvidia/<root>/<dir> folders
# (links into this tree) in $cuda/python. An environment with that folder on its path (the
# python recipe's venv) sees them as installed, so e.g. torch reuses them instead of pulling
# a second copy of CUDA.
py=$T/python
mkdir -p "$py"
cp -a "$src"/*.dist-info "$py"/
for root in "$src"/nvidia/*/; do
    name=${root%/}; name=${name##*/}
    for d in "$root"*; do
        [ -d "$d" ] || continue
        case ${d##*/} in
            include) to=targets/$arch/include ;;
            lib|lib64) to=targets/$arch/lib ;;
            __pycache__) continue ;;
            *) to=${d##*/} ;;
        esac
        mkdir -p "$py/nvidia/$name"
        ln -sfn "../../../$to" "$py/nvidia/$name/${d##*/}"
    done
done

# Keep only what the base image lacks (dependencies of this flavor's components may be
# components of an earlier flavor).
if [ -d "$below$cuda" ]; then
    (cd "$T" && find . -type f) | while IFS= read -r f; do
        if cmp -s "$T/$f" "$below$cuda/$f"; then rm "$T/$f"; fi
    done
    find "$T" -depth -mindepth 1 -type d -empty -delete
fi

# devel: unversioned names (libcudart.so -> libcudart.so.13) so `-lcudart` links, also for
# libraries an earlier flavor installed.
if [ "${FLAVOR:-}" = devel ]; then
    mkdir -p "$TD/lib"
    for f in "$TD"/lib/lib*.so.* "$below$cuda/targets/$arch/lib"/lib*.so.*; do
        [ -f "$f" ] || continue
        n=${f##*/}
        so=${n%%.so.*}.so
        [ -e "$TD/lib/$so" ] || [ -e "$below$cuda/targets/$arch/lib/$so" ] || ln -s "$n" "$TD/lib/$so"
    done
fi

# The dynamic linker finds the libraries without LD_LIBRARY_PATH (which ssh sessions and
# `env -i` lose); /usr/local/nvidia is where the container toolkit may put driver libraries.
echo "$cuda/targets/$arch/lib" > "$out/etc/ld.so.conf.d/cuda-$(echo "$mm" | tr . -).conf"
printf '%s\n' /usr/local/nvidia/lib /usr/local/nvidia/lib64 > "$out/etc/ld.so.conf.d/nvidia.conf"

# What this flavor installed, for people and smoke tests.
mkdir -p "$T/dlenv"
for d in "$src"/*.dist-info; do
    python3 -c 'import sys; from email.parser import HeaderParser as P
m = P().parsestr(open(sys.argv[1] + "/METADATA").read()); print(m["Name"] + "==" + m["Version"])' "$d"
done | sort > "$T/dlenv/packages-${FLAVOR:-base}.txt"
