# What an image holds, for the catalog (src/dlenv/catalog.py): prints one JSON object.
# Run as `docker run --rm --entrypoint /bin/sh IMAGE -c "$(cat inventory.sh)"`. POSIX sh and
# coreutils only: images without the python recipe have no Python at all.
#   os:              PRETTY_NAME of /etc/os-release
#   cuda_runtime:    the CUDA runtime library's version (cudart), "" if there is none
#   debian_packages: how many dpkg packages are installed
#   python:          null, or {"version", "packages": {name: version}, "torch_archs": [...]} of
#                    /opt/venv's Python; torch_archs: the CUDA architectures torch was built for
#                    (empty without torch), which the catalog page judges GPUs by
set -u

# A JSON string: the values are names and versions, but a quote or backslash must not break it.
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

os_name=$( (. /etc/os-release && printf '%s' "${PRETTY_NAME:-}") 2>/dev/null)

# CUDA from wheels keeps the wheels' metadata (images/cuda-pip); NVIDIA's images name the
# library file after its full version (libcudart.so.12.6.77).
cudart=""
# (nvidia_cuda_runtime-13.0.96 for CUDA 13, nvidia_cuda_runtime_cu12-12.8.90 for CUDA 12).
for d in /usr/local/cuda/python/nvidia_cuda_runtime-*.dist-info /usr/local/cuda/python/nvidia_cuda_runtime_cu*-*.dist-info; do
    [ -d "$d" ] || continue
    cudart=${d%.dist-info}
    cudart=${cudart##*-}
done
if [ -z "$cudart" ]; then
    for f in /usr/local/cuda/lib64/libcudart.so.*.*.* /usr/local/cuda/targets/*/lib/libcudart.so.*.*.*; do
        [ -f "$f" ] && cudart=${f##*/libcudart.so.} && break
    done
fi

debs=$(dpkg-query -W -f '${db:Status-Abbrev}\n' 2>/dev/null | grep -c '^ii')

python=null
if [ -x /opt/venv/bin/python ]; then
    # The first distribution of a name on sys.path is the one `import` finds.
    python=$(/opt/venv/bin/python - <<'EOF'
import importlib.metadata
import json
import platform

packages = {}
for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name:
        packages.setdefault(name, dist.version)
packages = dict(sorted(packages.items(), key=lambda item: item[0].lower()))
archs = []
if "torch" in packages:
    import torch
    # The compiled-in list, as doctor reads it: get_arch_list() is empty without a GPU.
    archs = (getattr(torch._C, "_cuda_getArchFlags", lambda: "")() or "").split()
print(json.dumps({"version": platform.python_version(), "packages": packages, "torch_archs": archs}))
EOF
) || exit 1
fi

printf '{"os": %s, "cuda_runtime": %s, "debian_packages": %s, "python": %s}\n' \
    "$(json_str "$os_name")" "$(json_str "$cudart")" "${debs:-0}" "$python"
