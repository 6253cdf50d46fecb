"""Disk on the engine's data root: measured while a build runs, estimated before the next one.

During a build a sampler reads how much of the data root's filesystem is used, every few
seconds, and keeps the peak growth. At the end the growth per variant built afresh is recorded
in the data root (`disk.json`). Before a build, the variants whose immutable tag the registry
lacks are counted and multiplied by that figure (or, on a machine with no record yet, by the
one measured for this project, docs/benchmarks.md): a plan that cannot fit stops with one line
before anything runs, instead of failing at "no space left on device" twenty minutes in. A
bake that runs out of space all the same (the estimate was low, or --force) stops at once with
the same figures (`Full`): nothing is pushed or promoted, and what finished stays in the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from dlenv.errors import DlenvError

# Peak growth of the data root per variant built afresh, measured on the repository's family
# (docs/benchmarks.md, "Disk"); used until this machine has a record of its own.
DEFAULT_PER_VARIANT = 1_500_000_000
RECORD = "disk.json"
GB = 1e9


@dataclass(frozen=True)
class Estimate:
    need: int            # bytes the build may add at its peak
    free: int            # bytes free on the data root's filesystem
    fresh: int           # variants to build afresh
    per_variant: int
    basis: str           # where per_variant comes from

    @property
    def fits(self) -> bool:
        return self.need <= self.free

    def line(self, root: Path) -> str:
        return (f"the data root {root} has {self.free / GB:.1f} GB free; building {self.fresh} variants afresh "
                f"needs about {self.need / GB:.1f} GB ({self.per_variant / GB:.1f} GB each, {self.basis})")


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def used(root: Path) -> int:
    return shutil.disk_usage(_existing(root)).used


def per_variant(root: Path) -> tuple[int, str]:
    try:
        data = json.loads((root / RECORD).read_text())
        return int(data["per_variant"]), f"measured on this machine by the run of {data['when']}"
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_PER_VARIANT, "the project's measured figure: no run on this machine has recorded one yet"


def estimate(root: Path, fresh: int) -> Estimate:
    each, basis = per_variant(root)
    return Estimate(each * fresh, shutil.disk_usage(_existing(root)).free, fresh, each, basis)


NO_SPACE = "no space left on device"


def full_folder(lines: list[str]) -> Path | None:
    """The folder a build's error says ran out of space (Path("") where it names none), or None
    when it is not that error."""
    text = "\n".join(lines)
    if NO_SPACE not in text.lower():
        return None
    named = re.search(r"(/[^\s:'\"]+)[^\n/]*?: " + NO_SPACE, text, re.IGNORECASE)
    return Path(named.group(1)) if named else Path("")


def mount_of(path: Path) -> Path:
    path = _existing(path.resolve())
    while not os.path.ismount(path):
        path = path.parent
    return path


class Full(DlenvError):
    """A build ran out of space in folder (Path("") when its error named none)."""

    def __init__(self, folder: Path):
        super().__init__(f"no space left on device in {folder or 'the engine'}")
        self.folder = folder

    def explained(self, root: Path, room: Estimate) -> DlenvError:
        """The one line for the user: which folder filled up, what is free there and what the
        build needs (room: disk.estimate for the data root root)."""
        where = self.folder if self.folder.is_absolute() else root
        folder = root if where.is_relative_to(root) else mount_of(where)
        free = shutil.disk_usage(_existing(folder)).free
        return DlenvError(f"the build ran out of space in {folder} ({NO_SPACE}: {where}): {free / GB:.1f} GB free "
                          f"there; building {room.fresh} variants afresh needs about {room.need / GB:.1f} GB "
                          f"({room.per_variant / GB:.1f} GB each, {room.basis})",
                          "free space there and rerun (nothing of the bakes it stopped was pushed or promoted; finished steps "
                          "are kept in the build cache)")


def record(root: Path, growth: int, fresh: int, when: str) -> None:
    """After a build: the peak growth per variant built afresh (kept only when some were). A run
    that built fewer variants than the recorded one leaves the record alone: its growth is mostly
    what any build costs once (a bootstrap, base layers), so per variant it would say far too much
    (one variant once recorded 24 GB, and the next build of a family refused to start)."""
    try:
        recorded = int(json.loads((root / RECORD).read_text())["fresh"])
    except (OSError, ValueError, KeyError, TypeError):
        recorded = 0
    if fresh > 0 and growth > 0 and fresh >= recorded:
        root.mkdir(parents=True, exist_ok=True)
        (root / RECORD).write_text(json.dumps({"per_variant": growth // fresh, "growth": growth, "fresh": fresh,
                                               "when": when}, indent=2) + "\n")


class Sampler:
    """The peak growth of the data root's filesystem while it runs (a thread, every `every` s)."""

    def __init__(self, root: Path, every: float = 2.0):
        self.root = root
        self.every = every
        self.start_used = used(root)
        self.peak = self.start_used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, used(self.root))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.peak = max(self.peak, used(self.root))

    @property
    def growth(self) -> int:
        return self.peak - self.start_used
