"""Does a GPU run code built for a list of CUDA architectures? The one rule doctor, the smoke
checks and the catalog use.

Standard library only: doctor runs on bare GPU hosts, and this file is copied into the checks
folder (/dlenv-checks) so the pytorch recipe's GPU check imports this same code inside the image.

For a device of compute capability X.y, looking at entries like torch.cuda.get_arch_list()'s:
- native code: `sm_Xz` with the same major X and z <= y (a cubin runs on every later minor of its
  major: CUDA Programming Guide, "Binary Compatibility"). `sm_XYa` (architecture-specific, CUDA
  12.0+) runs on X.Y only. `sm_XYf` (family-specific, CUDA 12.9+) runs on the same major with
  minor >= Y, like a plain cubin: NVIDIA's "Blackwell and CUDA 12.9 Introduce Family-Specific
  Architecture Features" (developer.nvidia.com blog, 2025): sm_100f runs on 10.0 and 10.3, sm_120f
  on 12.0 and 12.1, neither on another major.
- else PTX: `compute_AB` with A.B <= X.y is JIT-compiled by the driver at first use (slow start,
  then native speed); `compute_ABa` only on A.B itself, `compute_ABf` only within major A.
- else nothing runs: CUDA kernels fail with `no kernel image is available for execution`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["native", "ptx", "none"]
ENTRY = re.compile(r"^(sm|compute)_(\d+)(\d)([af]?)$")

# GPU models people run the images on -> compute capability (NVIDIA's "CUDA GPUs" page,
# developer.nvidia.com/cuda-gpus), oldest architecture first. The catalog page offers these in its
# "which tag for my machine" helper; on a real host doctor reads the capability from nvidia-smi.
GPUS = {
    "Tesla K80": "3.7",
    "Tesla P100": "6.0",
    "GeForce GTX 1080 Ti": "6.1",
    "Tesla V100": "7.0",
    "Tesla T4": "7.5",
    "GeForce RTX 2080 Ti": "7.5",
    "A100": "8.0",
    "A30": "8.0",
    "A10G": "8.6",
    "RTX A6000": "8.6",
    "GeForce RTX 3090": "8.6",
    "L4": "8.9",
    "L40S": "8.9",
    "RTX 6000 Ada": "8.9",
    "GeForce RTX 4090": "8.9",
    "H100": "9.0",
    "H200": "9.0",
    "GH200": "9.0",
    "B200": "10.0",
    "GB200": "10.0",
    "B300": "10.3",
    "GB300": "10.3",
    "GeForce RTX 5090": "12.0",
    "RTX PRO 6000 Blackwell": "12.0",
    "GB10 (DGX Spark)": "12.1",
}


@dataclass(frozen=True)
class Kernels:
    device: str     # sm_XY of the device
    kind: Kind
    entry: str      # the list entry that serves the device ("" when none does)
    detail: str     # one sentence saying why

    @property
    def runs(self) -> bool:
        return self.kind != "none"


def capability(value: str | tuple[int, int]) -> tuple[int, int]:
    """(major, minor) from "8.9" (nvidia-smi's compute_cap) or (8, 9) (torch's)."""
    if isinstance(value, str):
        major, minor = value.strip().split(".")
        return int(major), int(minor)
    return int(value[0]), int(value[1])


def _serves(entry: str, device: tuple[int, int]) -> tuple[str, int] | None:
    """("sm"/"compute", the entry's minor) when the entry's code runs on the device, else None."""
    match = ENTRY.match(entry)
    if not match:
        return None     # not a CUDA architecture (e.g. a ROCm gfx entry)
    kind, major, minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if suffix == "a":
        ok = (major, minor) == device
    elif suffix == "f" or kind == "sm":
        ok = major == device[0] and minor <= device[1]
    else:
        ok = (major, minor) <= device
    return (kind, major * 10 + minor) if ok else None


def kernels(device: str | tuple[int, int], archs: list[str] | tuple[str, ...]) -> Kernels:
    """Which of `archs` runs on `device`, native code before PTX, the closest first."""
    cc = capability(device)
    name = f"sm_{cc[0]}{cc[1]}"
    served = [(entry, found) for entry in archs if (found := _serves(entry, cc))]
    native = max((e for e in served if e[1][0] == "sm"), key=lambda e: e[1][1], default=None)
    if native:
        entry = native[0]
        how = "is in the list" if entry == name else f"code runs on {name} (same major, binary compatible)"
        return Kernels(name, "native", entry, f"{entry} {how}")
    ptx = max((e for e in served if e[1][0] == "compute"), key=lambda e: e[1][1], default=None)
    if ptx:
        return Kernels(name, "ptx", ptx[0], f"no native code for {name}; {ptx[0]} PTX is JIT-compiled at first use")
    return Kernels(name, "none", "", f"nothing in ({' '.join(archs) or 'an empty list'}) runs on {name}: CUDA "
                   "kernels fail with `no kernel image is available`")
