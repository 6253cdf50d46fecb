"""What the pytorch recipe's checks run in an image (from /dlenv-checks): torch compiles.

    compile cpu|cuda   torch.compile of a small function (Inductor: C++ on the CPU, Triton on
                       the GPU) matches eager mode, and the compiler really built something
    extension build    where nvcc is (devel), torch.utils.cpp_extension builds a CUDA kernel and
                       imports it (no GPU needed)
    extension run      the same built for this GPU, run on it: squares 1024 floats
    cuda-once          where CUDA came from PyPI, no CUDA library is in the image twice, and
                       torch maps the tree's own (ALLOWED copies aside, listed with the reason)

Each prints one line saying what it did; any failure is an exception (exit 1).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile

CUDA_SOURCE = r"""
__global__ void square_kernel(const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * x[i];
}
torch::Tensor square(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat, "a float tensor on the GPU");
    auto y = torch::empty_like(x);
    int n = x.numel();
    square_kernel<<<(n + 255) / 256, 256>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
    return y;
}
"""


# Copies of CUDA libraries that may stay, by folder (a path suffix) and library, with the reason
# the check prints. Anything else found twice fails it.
ALLOWED = {
    "torchvision.libs": (
        {"libcudart", "libnvjpeg"},
        "torchvision's image.so (GPU JPEG decoding) links these copies by their hashed names through "
        "RUNPATH $ORIGIN/../torchvision.libs; using the image's would mean patching files pip installed"),
    "triton/backends/nvidia/lib/cupti": (
        {"libcupti", "libnvperf_host", "libnvperf_target", "libpcsamplingutil", "libcheckpoint"},
        "Triton's profiler (proton) loads the CUPTI of CUDA 12 it ships from this folder by path "
        "(TRITON_CUPTI_LIB_PATH picks another)"),
}


def stem(name: str) -> str:
    """A shared library's name without versions or a vendoring hash: libcudart.so.13,
    libcudart.faf08d9a.so.13 (torchvision) and libjpeg-6dc8d115.so.62.4.0 (auditwheel) ->
    libcudart, libcudart, libjpeg."""
    return re.sub(r"(?:[.-][0-9a-f]{8})+$", "", name.split(".so")[0])


def libraries(tree: str) -> set[str]:
    """The CUDA libraries a CUDA tree has (their stems)."""
    return {stem(n) for n in os.listdir(os.path.join(tree, "lib64")) if ".so" in n}


def allowed(path: str) -> str | None:
    """Why this copy may stay, or None."""
    folder, name = os.path.split(path)
    for suffix, (stems, why) in ALLOWED.items():
        if folder.endswith("/" + suffix) and stem(name) in stems:
            return why
    return None


def copies(top: str, tree: str, skip: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(copies that ship CUDA twice, allowed copies) among the files under top outside tree and
    skip. A CUDA library is one the tree has or one in a CUDA wheel's nvidia/<name>/lib folder;
    it is shipped twice when it is in more than one place (the tree is one), allowed copies aside.
    Symbolic links are not copies."""
    found: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in (tree, *skip)]
        for name in files:
            path = os.path.join(root, name)
            if ".so" in name and not os.path.islink(path):
                found.setdefault(stem(name), []).append(path)
    in_tree = libraries(tree)
    wheels = {s for s, paths in found.items() if any(re.search(r"/nvidia/[^/]+/lib$", os.path.dirname(p)) for p in paths)}
    twice, kept = [], []
    for s in sorted((in_tree | wheels) & found.keys()):
        others = [p for p in found[s] if not allowed(p)]
        kept += [p for p in found[s] if allowed(p)]
        if len({os.path.dirname(p) for p in others}) + (s in in_tree) > 1:
            twice += others
    return sorted(twice), sorted(kept)


def cuda_once() -> None:
    if not os.path.isdir("/usr/local/cuda/python"):
        # NVIDIA's images have no Python metadata of their CUDA: torch brings its own.
        print("CUDA from an image: torch brings its own CUDA libraries, not checked")
        return
    tree = os.path.realpath("/usr/local/cuda")
    twice, kept = copies("/", tree, skip=("/proc", "/sys", "/dev", "/dlenv-checks"))
    assert not twice, "CUDA libraries shipped twice: " + ", ".join(twice)
    import torch  # noqa: F401 - what importing maps is the point
    import torchvision.io  # noqa: F401 - loads image.so, which maps torchvision's allowed copies
    cuda = libraries(tree)
    mapped = {line.split()[-1] for line in open("/proc/self/maps") if line.split()[-1].startswith("/")}
    loaded = [p for p in mapped if stem(os.path.basename(p)) in cuda]
    ours = [p for p in loaded if os.path.realpath(p).startswith(tree + "/")]
    foreign = sorted(p for p in loaded if p not in ours and not allowed(p))
    assert ours, "importing torch mapped no CUDA library of the image"
    assert not foreign, "torch loaded CUDA libraries from outside the image's tree: " + ", ".join(foreign)
    by_reason: dict[str, list[str]] = {}
    for path in kept:
        by_reason.setdefault(allowed(path), []).append(path)
    allowances = "; ".join(f"{os.path.dirname(paths[0])}: {', '.join(sorted({stem(os.path.basename(p)) for p in paths}))} "
                           f"({sum(os.path.getsize(p) for p in paths) / 1e6:.1f} MB): {why}"
                           for why, paths in by_reason.items()) or "none"
    print(f"no CUDA library twice; {len(ours)} CUDA libraries mapped by torch, all from {tree}. Allowed: {allowances}")


def compile_check(device: str) -> None:
    # Fresh caches: a kernel compiled by an earlier run must not stand in for this one.
    cache = tempfile.mkdtemp(prefix="dlenv-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    # One kernel: compile it in this process. Inductor's pool of compile workers (each a Python
    # that imports torch) costs more CPU than the kernel, beside the other checks and builds.
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    import torch

    def f(x, y):
        return torch.sin(x) * y + torch.cos(y).sum()

    x, y = torch.randn(4096, device=device), torch.randn(4096, device=device)
    err = float((torch.compile(f, fullgraph=True)(x, y) - f(x, y)).abs().max())
    built = glob.glob(f"{cache}/**/*.so", recursive=True) + glob.glob(f"{cache}/**/*.cubin", recursive=True)
    assert built, f"torch.compile left no compiled kernel in {cache}"
    assert err < 1e-3, f"compiled and eager results differ by {err}"
    if device == "cpu":
        how = f"Inductor C++ with {shutil.which('g++')}"
    else:
        import triton
        how = f"Triton {triton.__version__} on {torch.cuda.get_device_name(0)}"
    print(f"torch.compile on {device}: {how}; {len(built)} compiled files; max error {err:.1e}")


def extension(run: bool) -> None:
    if not shutil.which("nvcc"):
        print("no nvcc in this image (take the devel flavor to build CUDA extensions): nothing built")
        return
    import torch
    from torch.utils.cpp_extension import load_inline

    if not run:
        # Without a GPU, cpp_extension cannot pick an architecture: build for the oldest one this
        # torch was built for, plus its PTX, which runs wherever this torch runs.
        archs = sorted(int(a[3:]) for a in torch._C._cuda_getArchFlags().split() if a.startswith("sm_"))
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{archs[0] // 10}.{archs[0] % 10}+PTX"
    folder = tempfile.mkdtemp(prefix="dlenv-extension-")
    module = load_inline("dlenv_square", cpp_sources="torch::Tensor square(torch::Tensor x);",
                         cuda_sources=CUDA_SOURCE, functions=["square"], build_directory=folder)
    what = os.environ.get("TORCH_CUDA_ARCH_LIST") or "this GPU"
    if not run:
        print(f"CUDA extension built by {shutil.which('nvcc')} for {what} and imported: {module.__file__}")
        return
    x = torch.arange(1024, dtype=torch.float32, device="cuda")
    y = module.square(x)
    torch.cuda.synchronize()
    assert torch.equal(y.cpu(), x.cpu() ** 2), "the extension's kernel squared wrong"
    print(f"CUDA extension built for {torch.cuda.get_device_name(0)} ran: 1024 squares right")


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["compile", ("cpu" | "cuda") as device]:
            compile_check(device)
        case ["extension", ("build" | "run") as step]:
            extension(step == "run")
        case ["cuda-once"]:
            cuda_once()
        case _:
            sys.exit(__doc__)
