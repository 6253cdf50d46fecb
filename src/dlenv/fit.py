"""A release shard's peak disk, estimated before anything runs, and the OS x CUDA groups that
would not fit one build runner (build.runner_disk) split between flavor levels.

A variant's own share of the disk is its compressed size less that of the nearest variant below
it in its chain (the sizes a previous build recorded: build.sizes), times the peak disk one
compressed byte cost when a shard was measured (PEAK_PER_BYTE); a variant without a recorded
size counts disk.DEFAULT_PER_VARIANT, the project's measured peak per variant. A part's estimate
is what any shard's build costs (SHARD_OVERHEAD), the shares of its variants and, for each
parent another part built and pushed, the shares of that parent's whole chain (its layers are
pulled and unpacked).

A group that does not fit is cut between flavor levels (base, runtime, devel: each CUDA flavor is
built on the one before it), lowest first, keeping adjacent levels together while they fit. A
part above another takes its parent from the registry by the parent's immutable tag, so it runs
in a later stage. Everything here depends only on the plan and the recorded sizes, so every job
of a release computes the same split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dlenv import disk
from dlenv.errors import ConfigError

# Measured with dlenv's docker driver on a runner's disk (benchmarks/bench_shard_disk.py,
# docs/benchmarks.md "A release shard's disk"): the base level of CUDA 12.8.1 on Debian 12 peaked
# at 2.8 GB for 0.25 GB compressed (the bootstrap, the SBOM scanner and the build cache's own
# files: SHARD_OVERHEAD), its runtime level (two torch images) passed 20 GB for about 5 GB
# compressed: the compressed blobs, the layers unpacked in the image store and the build cache's
# snapshots. Both are lower bounds: that run was stopped before its peak.
SHARD_OVERHEAD = 2_000_000_000
PEAK_PER_BYTE = 4.0
GB = 1e9


class Variant(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def flavor(self) -> str: ...
    @property
    def chain(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Part:
    key: str                           # the group, and its flavors where the group was cut
    variants: tuple[Variant, ...]
    need: int                          # estimated peak bytes
    pulled: tuple[str, ...]            # ids of the variants (built elsewhere) whose images it pulls


def read_sizes(path: Path) -> dict[str, int]:
    """variant id -> compressed bytes, from a build's --metadata JSON ({"variants": [{variant, size}]})."""
    try:
        data = json.loads(path.read_text())
        return {r["variant"]: int(r["size"]) for r in data["variants"] if r.get("size")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(str(path), None, "build.sizes", f"not a build's --metadata JSON: {exc}") from None


class Estimator:
    """Shares of the disk for the variants of one plan (sizes: variant id -> compressed bytes)."""

    def __init__(self, variants: Sequence[Variant], sizes: Mapping[str, int]):
        self.by_node = {v.chain[-1]: v for v in variants}
        self.share: dict[str, int] = {}
        for v in variants:
            below = self.below(v)
            if v.id in sizes and (below is None or below.id in sizes):
                self.share[v.id] = round(PEAK_PER_BYTE * max(0, sizes[v.id] - (sizes[below.id] if below else 0)))
            else:
                self.share[v.id] = disk.DEFAULT_PER_VARIANT

    def below(self, v: Variant) -> Variant | None:
        """The nearest variant below v in its chain, if any."""
        return next((self.by_node[n] for n in reversed(v.chain[:-1]) if n in self.by_node), None)

    def whole(self, v: Variant) -> int:
        """What pulling v's image costs: the shares of every variant of its chain."""
        return sum(self.share[self.by_node[n].id] for n in v.chain if n in self.by_node)

    def pulled(self, variants: Sequence[Variant]) -> list[Variant]:
        """The variants outside `variants` whose images these build on: the topmost one of each chain."""
        ids = {v.id for v in variants}
        out: dict[str, Variant] = {}
        for v in variants:
            outside = next((self.by_node[n] for n in reversed(v.chain) if n in self.by_node
                            and self.by_node[n].id not in ids), None)
            if outside:
                out.setdefault(outside.id, outside)
        return list(out.values())

    def part(self, key: str, variants: Sequence[Variant]) -> Part:
        pulled = self.pulled(variants)
        need = SHARD_OVERHEAD + sum(self.share[v.id] for v in variants) + sum(self.whole(p) for p in pulled)
        return Part(key, tuple(variants), need, tuple(p.id for p in pulled))


def cut(estimator: Estimator, key: str, variants: Sequence[Variant], free: int) -> list[Part]:
    """A group as one part if it fits free bytes, else cut between flavor levels (lowest first,
    adjacent levels together while they fit). A level that cannot fit alone stays one part."""
    levels: dict[str, list[Variant]] = {}
    for v in variants:
        levels.setdefault(v.flavor, []).append(v)
    # A flavor's level: how many variants lie below its CUDA node (base 0, runtime 1, devel 2).
    order = sorted(levels, key=lambda f: min(len(v.chain) for v in levels[f]))
    parts: list[list[str]] = [[order[0]]]
    for flavor in order[1:]:
        together = [v for f in (*parts[-1], flavor) for v in levels[f]]
        if estimator.part(key, together).need <= free:
            parts[-1].append(flavor)
        else:
            parts.append([flavor])
    if len(parts) == 1:
        return [estimator.part(key, variants)]
    return [estimator.part(f"{key}:{'+'.join(fs)}", [v for f in fs for v in levels[f]]) for fs in parts]
