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
# shellcheck disable=SC2086  # EXTRA_PACKAGES is a space separated list
pip install --no-compile --target "$dest" --constraint "$work/constraints.txt" "$@" ${EXTRA_PACKAGES:-}
rm -rf "$work"
