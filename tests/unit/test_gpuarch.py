"""The GPU compatibility rule (dlenv.gpuarch) over real GPUs and the architecture lists of every
torch in recipes/pytorch.toml, and the pytorch recipe's GPU check, which runs that same code."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlenv import gpuarch, smoke
from dlenv.config import load_recipe
from dlenv.rootfs_run import judge
from helpers import REPO

HERE = Path(__file__).parent
H200_FACTS = json.loads((HERE / "h200_torch_facts.json").read_text())["image"]

# torch.cuda.get_arch_list() of each torch the recipe installs ("<TORCH_VERSION>+<index>"), and
# where each list was read.
TORCH_ARCHS = {
    H200_FACTS["torch"]: (tuple(H200_FACTS["torch_archs"]),
                          "read in the built image 13.0.2-runtime-debian12-py-torch on the H200 (h200_torch_facts.json)"),
    "2.10.0+cu128": (("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
                     "PyPI's torch-2.10.0-3-cp311-cp311-manylinux_2_28_x86_64.whl (sha256 ac5bdcbb0743...; "
                     "torch/version.py: 2.10.0+cu128): the CUDA_ARCH_FLAGS string in torch/lib/libtorch_python.so, "
                     "which get_arch_list() returns; pytorch/pytorch#182250 shows the same list"),
    "2.10.0+cu126": (("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
                     "not built here (PyTorch's cu126 index is unreachable): TORCH_CUDA_ARCH_LIST of the CUDA 12.6 "
                     "row in pytorch's .ci/manywheel/build_cuda.sh (5.0;6.0;7.0;7.5;8.0;8.6;9.0, commit 799d09f2), "
                     "and get_arch_list() of 2.11.0+cu126 in pytorch/pytorch#182250"),
}
TORCHES = ("2.11.0+cu130", "2.10.0+cu128", "2.10.0+cu126")

# Every GPU of gpuarch.GPUS and the entry of each torch's list that runs there, in the order of
# TORCHES ("" where none does: `no kernel image is available`).
GPUS = [
    ("Tesla K80", "", "", ""),
    ("Tesla P100", "", "", "sm_60"),
    ("GeForce GTX 1080 Ti", "", "", "sm_60"),
    ("Tesla V100", "", "sm_70", "sm_70"),
    ("Tesla T4", "sm_75", "sm_75", "sm_75"),
    ("GeForce RTX 2080 Ti", "sm_75", "sm_75", "sm_75"),
    ("A100", "sm_80", "sm_80", "sm_80"),
    ("A30", "sm_80", "sm_80", "sm_80"),
    ("A10G", "sm_86", "sm_86", "sm_86"),
    ("RTX A6000", "sm_86", "sm_86", "sm_86"),
    ("GeForce RTX 3090", "sm_86", "sm_86", "sm_86"),
    ("L4", "sm_86", "sm_86", "sm_86"),
    ("L40S", "sm_86", "sm_86", "sm_86"),
    ("RTX 6000 Ada", "sm_86", "sm_86", "sm_86"),
    ("GeForce RTX 4090", "sm_86", "sm_86", "sm_86"),
    ("H100", "sm_90", "sm_90", "sm_90"),
    ("H200", "sm_90", "sm_90", "sm_90"),
    ("GH200", "sm_90", "sm_90", "sm_90"),
    ("B200", "sm_100", "sm_100", ""),
    ("GB200", "sm_100", "sm_100", ""),
    ("B300", "sm_100", "sm_100", ""),
    ("GB300", "sm_100", "sm_100", ""),
    ("GeForce RTX 5090", "sm_120", "sm_120", ""),
    ("RTX PRO 6000 Blackwell", "sm_120", "sm_120", ""),
    ("GB10 (DGX Spark)", "sm_120", "sm_120", ""),
]


def test_every_gpu_of_the_table_is_judged_here():
    assert [g[0] for g in GPUS] == list(gpuarch.GPUS)


def recipe_torches() -> set[str]:
    recipe = load_recipe(REPO / "recipes" / "pytorch.toml", REPO)
    return {f"{dict(row.args)['TORCH_VERSION']}+{row.index}" for row in recipe.compat}


def test_every_torch_of_the_recipe_has_a_recorded_list():
    assert recipe_torches() == set(TORCH_ARCHS) == set(TORCHES)


@pytest.mark.parametrize("name,expected", [(g[0], dict(zip(TORCHES, g[1:], strict=True))) for g in GPUS],
                         ids=[g[0] for g in GPUS])
def test_torch_of_every_row_against_real_gpus(name, expected):
    cc = gpuarch.GPUS[name]
    for torch, entry in expected.items():
        found = gpuarch.kernels(cc, TORCH_ARCHS[torch][0])
        assert (found.kind, found.entry) == (("native", entry) if entry else ("none", "")), (name, torch, found)
        assert found.device == "sm_" + cc.replace(".", "")
        if not entry:
            assert "no kernel image is available" in found.detail


@pytest.mark.parametrize("cc,archs,kind,entry", [
    ("9.0", ["sm_80", "compute_80"], "ptx", "compute_80"),          # no sm_9x: the PTX is JIT-compiled
    ("12.1", ["sm_90", "compute_90", "compute_120"], "ptx", "compute_120"),   # the closest PTX
    ("8.9", ["sm_90", "compute_90"], "none", ""),                    # newer code never runs on an older GPU
    ("9.0", ["sm_86", "sm_90", "compute_90"], "native", "sm_90"),   # native before PTX
    ("8.9", ["sm_80", "sm_86"], "native", "sm_86"),                 # the closest older minor
    ("9.0", ["sm_90a"], "native", "sm_90a"),                         # `a`: its own device...
    ("10.3", ["sm_100a"], "none", ""),                               # ...only
    ("10.3", ["sm_100a", "compute_100"], "ptx", "compute_100"),
    ("10.3", ["sm_100f"], "native", "sm_100f"),                      # `f`: later minors of its major
    ("10.0", ["sm_103f"], "none", ""),                               # not earlier ones
    ("12.0", ["sm_100f"], "none", ""),                               # nor another major
    ("12.1", ["compute_120f"], "ptx", "compute_120f"),
    ("12.0", ["compute_100f"], "none", ""),
    ("10.0", ["compute_90a"], "none", ""),
    ("9.0", ["gfx90a", "sm_90"], "native", "sm_90"),                 # entries that are no CUDA arch are ignored
    ("9.0", [], "none", ""),
])
def test_the_rule(cc, archs, kind, entry):
    found = gpuarch.kernels(cc, archs)
    assert (found.kind, found.entry, found.runs) == (kind, entry, kind != "none")


def test_capability_from_nvidia_smi_or_torch():
    assert gpuarch.capability("12.1") == gpuarch.capability((12, 1)) == (12, 1)
    assert gpuarch.kernels((8, 9), ["sm_86"]) == gpuarch.kernels("8.9", ["sm_86"])


# --- the pytorch recipe's GPU check runs the same code, from /dlenv-checks -------------------

FAKE_TORCH = """
import os
class cuda:
    is_available = staticmethod(lambda: True)
    get_device_name = staticmethod(lambda i: os.environ["FAKE_GPU"])
    get_device_capability = staticmethod(lambda i: tuple(int(x) for x in os.environ["FAKE_CC"].split(".")))
    get_arch_list = staticmethod(lambda: os.environ["FAKE_ARCHS"].split())
"""


@pytest.fixture(scope="module")
def checks_folder():
    folder = smoke.checks_folder()
    yield folder
    shutil.rmtree(folder)


def test_the_checks_folder_carries_the_rule(checks_folder):
    assert filecmp.cmp(checks_folder / "gpuarch.py", gpuarch.__file__, shallow=False)


@pytest.mark.parametrize("name,cc,torch,passes", [
    ("L4", "8.9", "2.11.0+cu130", True),
    ("GB10", "12.1", "2.11.0+cu130", True),
    ("GB300", "10.3", "2.10.0+cu128", True),
    ("Tesla P100", "6.0", "2.11.0+cu130", False),
    ("B200", "10.0", "2.10.0+cu126", False),
])
def test_the_recipes_gpu_check(checks_folder, tmp_path, name, cc, torch, passes):
    """The check's own program, with /dlenv-checks where dlenv put it and a stand-in torch that
    answers like one on that GPU (a CPU host has no torch.cuda to ask)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(textwrap.dedent(FAKE_TORCH))
    check = next(c for c in load_recipe(REPO / "recipes" / "pytorch.toml", REPO).checks
                 if c.gpu and "compute capability" in c.name)
    python, flag, program = shlex.split(check.run)
    assert (python, flag) == ("python", "-c") and smoke.CHECKS_MOUNT in program
    out = subprocess.run([sys.executable, "-c", program.replace(smoke.CHECKS_MOUNT, str(checks_folder))],
                         capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path), FAKE_GPU=name, FAKE_CC=cc,
                                  FAKE_ARCHS=" ".join(TORCH_ARCHS[torch][0])))
    status, why = judge(dataclasses.asdict(check), out.returncode, out.stdout + out.stderr)
    assert status == ("passed" if passes else "failed"), (why, out.stdout, out.stderr)
    if not passes:
        assert "no kernel image is available" in out.stderr
