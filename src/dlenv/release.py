"""Promotion: floating tags move only to digests that passed their smoke checks.

Builds push immutable tags only. For each variant whose checks all passed (skipped GPU checks
allowed unless the smoke run required a GPU), each floating tag is pointed at the immutable
tag's digest by a registry-side retag: the same manifest bytes under another name, no rebuild.
A variant that failed, or was not tested, keeps its floating tags where they were.

`promote` also runs on its own, in a later job than the build and the smoke checks (the release
pipeline's split): it reads the smoke verdicts from JSON, with the digest each variant was
tested at, and refuses a variant whose immutable tag no longer points at that digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dlenv import engine, registry, report
from dlenv.errors import DlenvError
from dlenv.options import PromoteRequest
from dlenv.plan import Plan, Variant


@dataclass(frozen=True)
class Promotion:
    variant: str
    promoted: bool
    digest: str
    tags: tuple[str, ...]
    reason: str

    def to_json(self) -> dict:
        return {"variant": self.variant, "promoted": self.promoted, "digest": self.digest,
                "tags": list(self.tags), "reason": self.reason}


def verdict_of(statuses: list[str]) -> str:
    if not statuses:
        return "not smoke-tested"
    if "failed" in statuses:
        return "failed its smoke checks"
    return ""


def promote(plan: Plan, variants: list[Variant], statuses: dict[str, list[str]],
            tested: dict[str, str] | None = None) -> list[Promotion]:
    """Retag the floating tags of every variant whose checks passed; say why for the others.

    tested: the digest each variant's checks ran on; when given, a variant is promoted only if
    its immutable tag still points there.
    """
    model = plan.matrix.model
    return [_one(plan, model.registry, model.repository, v, statuses.get(v.id, []),
                 None if tested is None else tested.get(v.id, "")) for v in variants]


def _one(plan: Plan, reg: str, repo: str, variant: Variant, statuses: list[str], tested: str | None) -> Promotion:
    why = verdict_of(statuses)
    if why:
        return Promotion(variant.id, False, "", (), f"{why}: floating tags left where they were")
    try:
        digest = registry.digest(plan.ref(variant.immutable))
    except DlenvError as exc:  # reported per variant, the others still promote
        return Promotion(variant.id, False, "", (), str(exc))
    if digest is None:
        return Promotion(variant.id, False, "", (), f"{plan.ref(variant.immutable)} does not exist: nothing to promote")
    if tested is not None and tested != digest:
        return Promotion(variant.id, False, digest, (),
                         f"checks ran on {tested or 'an unknown digest'}, but {variant.immutable} is now {digest}: "
                         "floating tags left where they were")
    try:
        for tag in variant.floating:
            registry.retag(reg, repo, digest, tag)
    except Exception as exc:  # noqa: BLE001
        return Promotion(variant.id, False, digest, (), f"retag failed: {exc}")
    return Promotion(variant.id, True, digest, variant.floating, "")


def read_verdicts(paths: list[Path]) -> tuple[dict[str, list[str]], dict[str, str], dict[str, dict[str, list[str]]]]:
    """Statuses, tested digests, and each GPU check's statuses per variant, from smoke JSON files.

    Takes what `dlenv smoke --json` and the rootfs runner's `--json` write; several files (one
    per shard or GPU runner) add up: a GPU check skipped on a CPU runner and passed on a GPU
    runner counts as run. Two files that tested one variant at different digests leave it
    untested.
    """
    statuses: dict[str, list[str]] = {}
    gpu: dict[str, dict[str, list[str]]] = {}
    digests: dict[str, str] = {}
    conflicts = set()
    for path in paths:
        try:
            data = json.loads(path.read_text())
            tested = data["digests"] if "digests" in data else {data["variant"]: data.get("digest", "")}
            verdicts = [(v["variant"], v["check"], v["status"], bool(v.get("gpu"))) for v in data["verdicts"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DlenvError(f"{path}: not a smoke result ({exc.__class__.__name__}: {exc})",
                             "pass files written by `dlenv smoke --json` or rootfs_run.py --json") from None
        for variant, digest in tested.items():
            if digests.setdefault(variant, digest) != digest:
                conflicts.add(variant)
        for variant, check, status, needs_gpu in verdicts:
            statuses.setdefault(variant, []).append(status)
            if needs_gpu:
                gpu.setdefault(variant, {}).setdefault(check, []).append(status)
    for variant in conflicts:
        digests[variant] = ""
    return statuses, digests, gpu


def run(plan: Plan, request: PromoteRequest) -> list[Promotion]:
    """The release stage's front door for a promote job of its own: floating tags move to the
    digests the smoke results (files) tested, for the variants that passed. With require_gpu,
    a variant one of whose GPU checks was skipped in every result is held back."""
    statuses, digests, gpu = read_verdicts(list(request.verdicts))
    model = plan.matrix.model
    if not engine.registry_answers(model.registry):
        raise DlenvError(f"registry {model.registry} is unreachable",
                         "promote against the registry the variants were pushed to (--registry)")
    held = {vid: "a GPU check was skipped in every result (--require-gpu): floating tags left where they were"
            for vid, checks in gpu.items()
            if request.require_gpu and any(all(s == "skipped" for s in states) for states in checks.values())}
    promotions = promote(plan, [v for v in plan.variants if v.id not in held], statuses, digests)
    promotions += [Promotion(vid, False, "", (), why) for vid, why in held.items()
                   if any(v.id == vid for v in plan.variants)]
    if request.json:
        report.write_json(request.json, {"image": plan.image, "promotions": [p.to_json() for p in promotions]})
    return promotions
