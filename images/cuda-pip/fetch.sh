#!/bin/sh
# pip-install the cuda-toolkit extras in $COMPONENTS (version $CUDA_VERSION) and
# $EXTRA_PACKAGES into the folder $1. Every nvidia-* package is pinned to the release of
# that toolkit: the components' own dependencies (e.g. nvcc -> nvidia-cuda-runtime) are
# unpinned in their metadata and would otherwise pull the newest 13.x.
set -eu
dest=$1
# A component PyPI has for some architectures only comes as NAME@ARCH[,ARCH...] (components.toml
# `only`): it is kept where the architecture being built (BuildKit's TARGETARCH) is one of them.
wanted=
for component in ${COMPONENTS:-}; do
    case $component in
        *@*) case ",${component#*@}," in *",${TARGETARCH:?},"*) wanted="$wanted ${component%%@*}" ;; esac ;;
        *) wanted="$wanted $component" ;;
    esac
done
COMPONENTS=${wanted# }
# This stage runs on the build machine's own platform (the Dockerfile's fetch stage): for
# another one, pip picks that platform's wheels by their tags: every manylinux tag up to the
# glibc of the build platform's OS, which is the target's (one OS layer, built for both). pip
# does not widen a --platform tag to the older glibc versions itself.
case $TARGETARCH in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "fetch.sh: unsupported architecture $TARGETARCH" >&2; exit 1 ;;
esac
cross=
if [ "$machine" != "$(uname -m)" ]; then
    cross="--only-binary=:all: $(python3 -c 'import platform, sys
major, minor = map(int, platform.libc_ver()[1].split(".")[:2])
for m in range(17, minor + 1): print(f"--platform manylinux_{major}_{m}_{sys.argv[1]}")
print(f"--platform manylinux2014_{sys.argv[1]}")' "$machine" | tr '\n' ' ')"
fi
export PIP_ROOT_USER_ACTION=ignore   # pip runs as root on purpose: a throw-away stage
work=$(mktemp -d)
# No cache: pip's would keep a third copy of the wheels (they are installed, then laid out).
pip() {
    cmd=$1; shift
    python3 -m pip "$cmd" --disable-pip-version-check --no-input --no-cache-dir \
        ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} "$@"
}
pip download --no-deps --dest "$work" "cuda-toolkit==$CUDA_VERSION"
python3 - "$work" "$COMPONENTS" > "$work/constraints.txt" <<'PY'
import glob, sys, zipfile
from email.parser import HeaderParser
work, wanted = sys.argv[1], sys.argv[2].split()
whl = zipfile.ZipFile(glob.glob(work + "/cuda_toolkit-*.whl")[0])
meta = HeaderParser().parsestr(whl.read(next(
    n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode())
extras = [e for e in meta.get_all("Provides-Extra") or [] if e != "all"]
missing = [c for c in wanted if c not in extras]
if missing:
    sys.exit("cuda-toolkit %s has no extra %s; it has: %s"
             % (meta["Version"], " ".join(missing), " ".join(extras)))
print("\n".join(sorted({r.split(";")[0].strip() for r in meta.get_all("Requires-Dist") or []})))
PY
set --
if [ -n "${COMPONENTS:-}" ]; then
    set -- "cuda-toolkit[$(echo $COMPONENTS | tr ' ' ,)]==$CUDA_VERSION"
fi
# shellcheck disable=SC2086  # EXTRA_PACKAGES and cross are space separated lists
pip install --no-compile --target "$dest" --constraint "$work/constraints.txt" $cross "$@" ${EXTRA_PACKAGES:-}
rm -rf "$work"
