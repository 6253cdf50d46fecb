"""Promotion: floating tags move only to digests that passed their smoke checks.

Builds push immutable tags only. For each variant whose checks all passed (skipped GPU checks
allowed unless the smoke run required a GPU), each floating tag is pointed at the immutable
tag's digest by a registry-side retag: the same manifest bytes under another name, no rebuild.
A variant that failed, or was not tested, keeps its floating tags where they were.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlenv import registry
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


def promote(plan: Plan, variants: list[Variant], statuses: dict[str, list[str]]) -> list[Promotion]:
    """Retag the floating tags of every variant whose checks passed; say why for the others."""
    model = plan.matrix.model
    return [_one(plan, model.registry, model.repository, v, statuses.get(v.id, [])) for v in variants]


def _one(plan: Plan, reg: str, repo: str, variant: Variant, statuses: list[str]) -> Promotion:
    why = verdict_of(statuses)
    if why:
        return Promotion(variant.id, False, "", (), f"{why}: floating tags left where they were")
    try:
        _, digest = registry.manifest(reg, repo, variant.immutable)
    except Exception as exc:  # noqa: BLE001 - reported per variant, the others still promote
        return Promotion(variant.id, False, "", (), f"cannot read {plan.ref(variant.immutable)}: {exc}")
    try:
        for tag in variant.floating:
            registry.retag(reg, repo, digest, tag)
    except Exception as exc:  # noqa: BLE001
        return Promotion(variant.id, False, digest, (), f"retag failed: {exc}")
    return Promotion(variant.id, True, digest, variant.floating, "")
