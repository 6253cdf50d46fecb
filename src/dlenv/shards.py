"""Split a plan across build machines: `--shard 2/4` builds the second of four parts.

Variants are grouped by what they share below their recipes (OS and CUDA): a group's CUDA base
is built in one job, not in every job that needs it. Groups go to shards largest first, each to
the least loaded shard, weighing a group by its distinct layer nodes. The split depends only on
the plan, so every job of a release computes the same one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

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


P = TypeVar("P", bound="Plan")


class Plan(Protocol):
    @property
    def variants(self) -> Sequence[Variant]: ...
    def unselect(self: P, ids: set[str], why: str) -> P: ...

SPEC = re.compile(r"^(\d+)/(\d+)$")


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


def split(plan: Plan, count: int) -> list[list[Variant]]:
    """count lists of variants (some may be empty when there are fewer groups than shards)."""
    groups: dict[str, list[Variant]] = {}
    for variant in plan.variants:
        groups.setdefault(group_key(variant), []).append(variant)
    weight = {key: len({n for v in vs for n in v.chain}) for key, vs in groups.items()}
    shards: list[list[Variant]] = [[] for _ in range(count)]
    load = [0] * count
    for key in sorted(groups, key=lambda k: (-weight[k], k)):
        target = min(range(count), key=lambda i: (load[i], i))
        shards[target].extend(groups[key])
        load[target] += weight[key]
    order = {v.id: i for i, v in enumerate(plan.variants)}
    return [sorted(s, key=lambda v: order[v.id]) for s in shards]


def only(plan: P, shard: Shard) -> P:
    """The plan with every variant outside shard moved to left_out (as unselected)."""
    mine = {v.id for v in split(plan, shard.count)[shard.index - 1]}
    return plan.unselect({v.id for v in plan.variants if v.id not in mine}, f"in another shard than {shard}")


def matrix(plan: Plan, count: int) -> dict:
    """GitHub Actions' strategy.matrix: one entry per non-empty shard."""
    if count < 1:
        raise ConfigError("--count", None, "count", f"at least one job (got {count})")
    parts = split(plan, count)
    return {"include": [{"shard": str(Shard(i + 1, count)), "variants": " ".join(v.id for v in part),
                         "count": len(part)} for i, part in enumerate(parts) if part]}
