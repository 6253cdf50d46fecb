"""The files checks run from /dlenv-checks, and the pieces of torch_checks.py that need no image."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import tomli

from dlenv.config import CHECKS_DIR, builtin_checks
from dlenv.smoke import checks_folder
from helpers import REPO

spec = importlib.util.spec_from_file_location("torch_checks", CHECKS_DIR / "torch_checks.py")
torch_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(torch_checks)


def test_every_file_a_check_runs_from_dlenv_checks_is_put_there():
    runs = [c.run for slot in builtin_checks().values() for c in slot]
    for recipe in sorted((REPO / "recipes").glob("*.toml")):
        runs += [c["run"] for c in tomli.loads(recipe.read_text()).get("checks", [])]
    named = {m for run in runs for m in re.findall(r"/dlenv-checks/([\w.-]+)", run)}
    assert "torch_checks.py" in named
    folder = checks_folder()
    try:
        assert named <= {p.name for p in folder.iterdir()}
    finally:
        shutil.rmtree(folder)


def test_a_library_is_known_by_its_stem_whatever_the_vendoring_hash():
    assert torch_checks.stem("libcudart.so.13") == "libcudart"
    assert torch_checks.stem("libcudart.faf08d9a.so.13") == "libcudart"               # torchvision.libs
    assert torch_checks.stem("libjpeg-6dc8d115.so.62.4.0") == "libjpeg"               # auditwheel
    assert torch_checks.stem("libgfortran-040039e1-0352e75f.so.5.0.0") == "libgfortran"
    assert torch_checks.stem("libnvrtc-builtins.so.13.0") == "libnvrtc-builtins"      # a dash, no hash


def make_image(root: Path, files: dict[str, str]) -> Path:
    """A tree of empty files (and symbolic links: values starting with '->')."""
    for name, kind in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind.startswith("->"):
            path.symlink_to(kind[2:])
        else:
            path.write_text(kind)
    return root


def test_a_cuda_library_in_a_second_place_is_found_anywhere_and_only_named_copies_are_allowed(tmp_path):
    tree = "usr/local/cuda-13.0/targets/x86_64-linux/lib"
    site = "opt/venv/lib/python3.11/site-packages"
    root = make_image(tmp_path, {
        f"{tree}/libcudart.so.13": "", f"{tree}/libnvjpeg.so.13": "", f"{tree}/libcublas.so.13": "",
        "usr/local/cuda-13.0/lib64": "->targets/x86_64-linux/lib",
        f"{site}/torchvision.libs/libcudart.faf08d9a.so.13": "",         # allowed
        f"{site}/torchvision.libs/libjpeg.b1a87dc0.so.8": "",            # not CUDA
        f"{site}/nvidia/cu13/lib/libcublas.so.13": "",                   # a second cuBLAS
        f"{site}/other.libs/libnvjpeg-0123abcd.so.13": "",               # not allowed in that folder
        f"{site}/nvidia/cu13/lib/libcudart.so.13": f"->/{tree}/libcudart.so.13",   # a link, not a copy
        # Not in the tree, but in a CUDA wheel: Triton's own CUPTI is allowed, a third one is not.
        f"{site}/nvidia/cu13/lib/libcupti.so.13": "",
        f"{site}/triton/backends/nvidia/lib/cupti/libcupti.so.12": "",
        f"{site}/somepkg/lib/libcupti.so.13": "",
        f"{site}/nvidia/cudnn/lib/libcudnn.so.9": "",                    # in one place only
    })
    twice, kept = torch_checks.copies(str(root), str(root / "usr/local/cuda-13.0"))
    assert [os.path.relpath(p, root) for p in twice] == sorted([
        f"{site}/nvidia/cu13/lib/libcublas.so.13", f"{site}/other.libs/libnvjpeg-0123abcd.so.13",
        f"{site}/nvidia/cu13/lib/libcupti.so.13", f"{site}/somepkg/lib/libcupti.so.13"])
    assert [os.path.relpath(p, root) for p in kept] == sorted([
        f"{site}/torchvision.libs/libcudart.faf08d9a.so.13", f"{site}/triton/backends/nvidia/lib/cupti/libcupti.so.12"])
    # Each allowance says why.
    assert "image.so" in torch_checks.allowed(kept[0]) and "proton" in torch_checks.allowed(kept[1])


def test_allowed_copies_alone_are_not_twice(tmp_path):
    tree = "usr/local/cuda-13.0/targets/x86_64-linux/lib"
    site = "opt/venv/lib/python3.11/site-packages"
    root = make_image(tmp_path, {
        f"{tree}/libcudart.so.13": "", "usr/local/cuda-13.0/lib64": "->targets/x86_64-linux/lib",
        f"{site}/nvidia/cu13/lib/libcupti.so.13": "",
        f"{site}/triton/backends/nvidia/lib/cupti/libcupti.so.12": "",
    })
    twice, kept = torch_checks.copies(str(root), str(root / "usr/local/cuda-13.0"))
    assert twice == [] and [os.path.basename(p) for p in kept] == ["libcupti.so.12"]
