"""Split a plan across build machines: `--shard 2/4` builds the second of four parts.

Variants are grouped by what they share below their recipes (OS and CUDA): a group's CUDA base
is built in one job, not in every job that needs it. A group whose estimated peak disk would not
fit one build runner (build.runner_disk) is cut between flavor levels (fit.py): a part above
another takes its parent's pushed image from the registry and runs in a later stage. Parts go
to shards stage by stage, largest first, each to the least loaded shard of its stage where it
fits, weighing a part by its estimated disk; a shard holds parts of one stage only. The split
depends only on the plan (and the sizes it records), so every job of a release computes the same one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dlenv import fit
from dlenv.errors import ConfigError


# The plan stage calls this module (plan.load): what it needs of a plan and its variants is
# said here, so that nothing points back up.
class Variant(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def os(self) -> str: ...
    @property
    def cuda(self) -> str: ...
    @property
    def chain(self) -> tuple[str, ...]: ...
    @property
    def platforms(self) -> tuple[str, ...]: ...
    @property
    def flavor(self) -> str: ...
    @property
    def immutable(self) -> str: ...


P = TypeVar("P", bound="Plan")


class Plan(Protocol):
    @property
    def variants(self) -> Sequence[Variant]: ...
    @property
    def matrix(self) -> Any: ...
    def unselect(self: P, ids: set[str], why: str) -> P: ...
    def pull(self: P, nodes: Mapping[str, str]) -> P: ...

SPEC = re.compile(r"^(\d+)/(\d+)$")
# A group is cut at most between its flavor levels (config.FLAVORS: base, runtime, devel), so a
# release's build jobs run in at most this many stages, each after the one before.
STAGES = 3


@dataclass(frozen=True)
class Shard:
    index: int     # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(text: str) -> Shard:
    match = SPEC.match(text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ConfigError("--shard", None, "shard", f"a shard is I/N with 1 <= I <= N, e.g. 2/4 (got {text!r})")
    return Shard(int(match.group(1)), int(match.group(2)))


def group_key(variant: Variant) -> str:
    return f"{variant.os}-{variant.cuda}"


@dataclass(frozen=True)
class Planned:
    """One shard of a split: its variants (plan order), the stage its build job runs in (0: an
    empty shard), its estimated peak disk and the variants whose pushed images it builds on."""

    variants: list[Variant]
    stage: int
    need: int
    pulled: tuple[str, ...]
    parts: tuple[str, ...]       # the groups (or cut groups) it holds


def runner_disk(plan: Plan) -> int:
    return round(plan.matrix.model.build.runner_disk * fit.GB)


def sizes(plan: Plan) -> dict[str, int]:
    """The compressed sizes build.sizes records (a previous build's --metadata), relative to matrix.yaml."""
    named = plan.matrix.model.build.sizes
    return fit.read_sizes(Path(plan.matrix.file).parent / named) if named else {}


def layout(plan: Plan, count: int) -> list[Planned]:
    """count shards (some may be empty when there are fewer parts than shards)."""
    free = runner_disk(plan)
    estimator = fit.Estimator(plan.variants, sizes(plan))
    groups = _groups(plan)
    parts = [p for key in sorted(groups) for p in fit.cut(estimator, key, groups[key], free)]
    owner = {v.id: i for i, p in enumerate(parts) for v in p.variants}
    stage: list[int] = []
    for p in parts:   # a group's parts come lowest first: what one pulls is already staged
        stage.append(1 + max((stage[owner[x]] for x in p.pulled), default=0))
    held = _assign(parts, stage, owner, count, free)
    order = {v.id: i for i, v in enumerate(plan.variants)}
    out = []
    for indices in held:
        mine = sorted((v for i in indices for v in parts[i].variants), key=lambda v: order[v.id])
        whole = estimator.part("", mine)
        out.append(Planned(mine, 0, whole.need, whole.pulled, tuple(parts[i].key for i in indices)))
    # A shard's stage: one after the shards whose images it pulls (none pulls from its own stage).
    home = {v.id: s for s, planned in enumerate(out) for v in planned.variants}
    staged: dict[int, int] = {}

    def stage_of(s: int) -> int:
        if s not in staged:
            staged[s] = 1 + max((stage_of(home[x]) for x in out[s].pulled), default=0) if out[s].variants else 0
        return staged[s]

    return [Planned(p.variants, stage_of(s), p.need, p.pulled, p.parts) for s, p in enumerate(out)]


def _bins(needs: list[int], free: int) -> int:
    """How many runners needs take, packed first-fit largest first (one over free takes one alone)."""
    bins: list[int] = []
    for need in sorted(needs, reverse=True):
        room = next((i for i, used in enumerate(bins) if used + need <= free), None)
        if room is None:
            bins.append(need)
        else:
            bins[room] += need
    return len(bins)


def _assign(parts: list[fit.Part], stage: list[int], owner: dict[str, int], count: int, free: int) -> list[list[int]]:
    """The parts (indices) of each of count shards. Every stage gets a shard (the first count
    stages, when there are fewer shards), then spare shards go where the most disk per shard
    waits: first until each stage's parts can fit, then until each part has one. A shard holds
    parts of one stage; a part whose stage got none is built with the part it pulls from."""
    stages = sorted(set(stage))
    mine = {k: sorted((i for i in range(len(parts)) if stage[i] == k), key=lambda i: (-parts[i].need, parts[i].key))
            for k in stages}
    total = {k: sum(parts[i].need for i in mine[k]) for k in stages}
    alloc = {k: int(n < count) for n, k in enumerate(stages)}
    spare = count - sum(alloc.values())
    for enough in ({k: _bins([parts[i].need for i in mine[k]], free) for k in stages},
                   {k: len(mine[k]) for k in stages}):
        while spare:
            short = [k for k in stages if 0 < alloc[k] < enough[k]]
            if not short:
                break
            grow = max(short, key=lambda k: (total[k] / alloc[k], -k))
            alloc[grow] += 1
            spare -= 1
    held: list[list[int]] = []
    load: list[int] = []
    placed: dict[int, int] = {}
    for k in stages:
        first = len(held)
        held += [[] for _ in range(alloc[k])]
        load += [0] * alloc[k]
        for i in mine[k]:
            if alloc[k]:
                own = range(first, first + alloc[k])
                target = min([s for s in own if load[s] + parts[i].need <= free] or own, key=lambda s: (load[s], s))
            else:
                target = placed[owner[parts[i].pulled[0]]]
            held[target].append(i)
            load[target] += parts[i].need
            placed[i] = target
    return held + [[] for _ in range(count - len(held))]


def fits(plan: Plan, count: int) -> list[str]:
    """A line per shard with its estimated peak disk, and what cannot fit the runner's disk: a
    part over it even alone (with its figure), or shards over it because count is too small
    (with the count that fits)."""
    free = runner_disk(plan)
    planned = layout(plan, count)
    lines = [f"shard {Shard(i + 1, count)} (stage {p.stage}): {len(p.variants)} variants, about "
             f"{p.need / fit.GB:.1f} GB at its peak" for i, p in enumerate(planned) if p.variants]
    estimator = fit.Estimator(plan.variants, sizes(plan))
    alone = [p for p in planned if len(p.parts) == 1 and p.need > free]
    for p in alone:
        lines.append(f"{p.parts[0]} needs about {p.need / fit.GB:.1f} GB at its peak even alone, over the runner's "
                     f"{free / fit.GB:.1f} GB (build.runner_disk): give its runner more disk")
    over = [i for i, p in enumerate(planned) if p.need > free and p not in alone]
    if over:
        parts = sum(len(fit.cut(estimator, key, vs, free)) for key, vs in _groups(plan).items())
        enough = next((n for n in range(count + 1, parts + 4) if all(
            q.need <= free or len(q.parts) == 1 for q in layout(plan, n))), None)
        lines.append(f"{len(over)} shards are over the runner's {free / fit.GB:.1f} GB with --count {count}"
                     + (f": --count {enough} fits them" if enough else ""))
    return lines


def _groups(plan: Plan) -> dict[str, list[Variant]]:
    groups: dict[str, list[Variant]] = {}
    for variant in plan.variants:
        groups.setdefault(group_key(variant), []).append(variant)
    return groups


def split(plan: Plan, count: int) -> list[list[Variant]]:
    """count lists of variants (some may be empty when there are fewer parts than shards)."""
    return [planned.variants for planned in layout(plan, count)]


def only(plan: P, shard: Shard, whole: Plan | None = None) -> P:
    """The plan with every variant outside shard moved to left_out (as unselected); whole: the
    plan to split, where plan is a narrower view of it (one platform)."""
    planned = layout(whole or plan, shard.count)[shard.index - 1]
    mine = {v.id for v in planned.variants}
    out = plan.unselect({v.id for v in plan.variants if v.id not in mine}, f"in another shard than {shard}")
    if not planned.pulled:
        return out
    by_id = {v.id: v for v in (whole or plan).variants}
    return out.pull({by_id[i].chain[-1]: by_id[i].immutable for i in planned.pulled})


def merges(plan: Plan, count: int) -> dict:
    """GitHub Actions' strategy.matrix of the merge jobs: one entry per non-empty shard."""
    if count < 1:
        raise ConfigError("--count", None, "count", f"at least one job (got {count})")
    # stage: the build jobs of stage 2 run after those of stage 1 (they pull what those pushed);
    # disk: the shard's estimated peak, in GB.
    return {"include": [{"shard": str(Shard(i + 1, count)), "variants": " ".join(v.id for v in part.variants),
                         "count": len(part.variants), "stage": part.stage, "disk": round(part.need / fit.GB, 1)}
                        for i, part in enumerate(layout(plan, count)) if part.variants]}


def matrix(plan: Plan, count: int) -> dict:
    """GitHub Actions' strategy.matrix of the build and smoke jobs: one entry per non-empty shard
    and platform of its variants (each platform is built on a machine of its own), with the
    variants that have that platform. The platforms come in the order the variants list them."""
    order = list(dict.fromkeys(p for v in plan.variants for p in v.platforms))
    out = []
    for entry, part in zip(merges(plan, count)["include"], [p for p in split(plan, count) if p], strict=True):
        for platform in order:
            mine = [v.id for v in part if platform in v.platforms]
            if mine:
                out.append({**entry, "platform": platform, "variants": " ".join(mine), "count": len(mine)})
    return {"include": out}


def stages(plan: Plan, count: int) -> dict[str, str]:
    """The plan job's outputs for the build jobs of each stage: buildK, the matrix of stage K's
    build jobs (an empty include where it has none), and stages, how many stages have shards."""
    entries = matrix(plan, count)["include"]
    out = {f"build{k}": json.dumps({"include": [e for e in entries if e["stage"] == k]}, separators=(",", ":"))
           for k in range(1, STAGES + 1)}
    out["stages"] = str(max((e["stage"] for e in entries), default=0))
    return out
