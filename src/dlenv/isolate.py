"""Which node failed: bake again until what is left builds, as a loop over a `bake(targets)` callable.

bake is fail-fast: the first failing target cancels all others, buildx writes no metadata, and
it names a failing step by whichever target BuildKit deduplicated it under. So on a failure the
loop builds the blamed target's chain one node at a time into the cache (`probe`: cached nodes
take a second); the first node that fails is the culprit. The variant whose own node it is
fails, the variants above it are `not attempted`, and everything else is baked again. If every
node of the chain builds, exporting (or pushing) that one target failed: only its variant fails.

Nothing here drives the engine: the callables do the baking, so the loop is tested by replaying
recorded progress (tests/unit/test_isolate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dlenv import graph
from dlenv.plan import Plan, Variant
from dlenv.results import Result

if TYPE_CHECKING:
    from dlenv.bake import Outcome

    Bake = Callable[[list[str]], Outcome]


def first_failing(chain: list[str], probe: Bake) -> tuple[str, list[str]] | None:
    """Build chain one node at a time (cache only); the first that fails is the culprit, with its
    error lines. None: every node builds, so what failed was exporting the target, not building it.
    """
    for node in chain:
        run = probe([node])
        if not run.ok:
            return node, run.error_lines
    return None


def sources(plan: Plan) -> str:
    """Where a node's apt and pip steps fetch from, for the end of its error: a mirror that
    dropped connections past apt's and pip's own retries is named by what they print, or here."""
    apt = plan.mirrors.apt or plan.mirrors.bootstrap_apt or "the base image's own apt sources"
    return f"(its sources: apt {apt}, pip {plan.mirrors.pypi or 'the default index (PyPI)'})"


def failure(variant: Variant, node: str, lines: list[str]) -> Result:
    if node == variant.node:
        return Result(variant.id, "failed", error="\n".join(lines[-10:]), node=node)
    # The node's own error goes along: a failure below every variant must still be readable.
    return Result(variant.id, "not attempted", error="\n".join([*lines[-10:], f"depends on {node}, which failed"]),
                  node=node)


def isolate(plan: Plan, variants: list[Variant], bake: Bake, probe: Bake, broken: dict[str, list[str]],
            settle: Callable[[Result], None],
            found: Callable[[str], None] = lambda node: None,
            again: Callable[[str], None] = lambda line: None) -> tuple[list[Variant], Outcome | None]:
    """Bake variants' nodes until what is left builds; settle(result) for each variant that fails.

    bake(targets) bakes the variants' targets; probe(targets) bakes into the cache only.
    broken: nodes known to have failed already (e.g. an OS bootstrap), with their error lines.
    found(node) hears each node found failing, before what does not depend on it is baked again.
    again(line) hears a bake that failed naming no step (BuildKit lost its client's session on a
    busy machine: `DeadlineExceeded`), before it is baked once more; what it built is cached.
    Returns the variants the last bake built and its Outcome; ([], None) when none was left to.
    """
    broken = dict(broken)
    remaining = list(variants)
    retried: set[str] = set()
    unnamed = 0   # bakes that failed naming no step
    while True:
        for variant in list(remaining):
            bad = next((n for n in variant.chain if n in broken), None)
            if bad:
                remaining.remove(variant)
                settle(failure(variant, bad, broken[bad]))
        if not remaining:
            return [], None
        run = bake([v.node for v in remaining])
        if run.ok:
            return remaining, run
        if not run.error_target or run.error_target not in plan.nodes:
            unnamed += 1
            if unnamed == 1:
                again((run.error_lines or ["?"])[-1])
                continue
            for variant in remaining:
                settle(Result(variant.id, "failed", error="\n".join(run.error_lines), node="?"))
            return [], None
        # Nodes taken from the registry (an earlier shard's or bake's) are no targets to probe.
        pulled = graph.pulled_below(plan)
        culprit = first_failing([n for n in graph.ancestors(plan, run.error_target) if n not in pulled], probe)
        if culprit is None:
            # The chain builds now: exporting that target failed, or the failure did not repeat.
            # A variant's own export fails only that variant; anything else is not retried forever.
            variant = next((v for v in remaining if v.node == run.error_target), None)
            if variant is None or run.error_target in retried:
                culprit = run.error_target, run.error_lines
            else:
                retried.add(run.error_target)
                remaining.remove(variant)
                settle(Result(variant.id, "failed", error="\n".join(run.error_lines[-10:]), node=variant.node))
                continue
        node, lines = culprit
        broken[node] = [*lines, sources(plan)]
        found(node)
