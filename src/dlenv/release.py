"""Promotion: floating tags move only to digests that passed their smoke checks.

Builds push immutable tags only. For each variant whose checks all passed on every platform of
its index (skipped GPU checks allowed unless the smoke run required a GPU; one tag serves every
platform, so one platform untested or failed holds it back), each floating tag is pointed at the immutable
tag's digest by a registry-side retag: the same manifest bytes under another name, no rebuild.
A variant that failed, or was not tested, keeps its floating tags where they were.

A variant's floating tags move all or none: they move in their fixed order, no signal cuts
the move (interrupt.held), and a retag that fails half way moves the ones already moved back.
Where even that fails (the registry went away), the tags are left split with the new digest on
the first ones; the next run that meets the variant finds them split and moves the rest to the
first one's digest (a digest that passed its checks). Runs on one machine promote to one
repository one at a time (a lock file under the state folder; the second says it waits).

`promote` also runs on its own, in a later job than the build and the smoke checks (the release
pipeline's split): it reads the smoke verdicts from JSON, with the digest each variant was
tested at, and refuses a variant whose immutable tag no longer points at that digest.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dlenv import engine, interrupt, registry, report
from dlenv.errors import ConfigError, DlenvError
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


def blocked(variant: Variant, statuses: dict[str, list[str]]) -> str:
    """Why a variant's floating tags may not move (statuses: platform -> its checks' statuses),
    or "": every platform of its index passed, since one tag serves them all."""
    for platform in variant.platforms:
        why = verdict_of(statuses.get(platform, []))
        if why:
            return why if variant.platforms == (platform,) else f"{why} on {platform}"
    return ""


def promote(plan: Plan, variants: list[Variant], statuses: dict[str, dict[str, list[str]]],
            tested: dict[str, str] | None = None) -> list[Promotion]:
    """Retag the floating tags of every variant whose checks passed on every platform; say why
    for the others.

    statuses: variant -> platform -> its checks' statuses. tested: the digest each variant's
    checks ran on; when given, a variant is promoted only if its immutable tag still points there.
    """
    model = plan.matrix.model
    with lock(model.registry, model.repository):
        return [_one(plan, model.registry, model.repository, v, statuses.get(v.id, {}),
                     None if tested is None else tested.get(v.id, "")) for v in variants]


# The main job promotes from several threads: they take turns here, before the file lock (whose
# flock would make one thread wait on its own process, saying another run holds it).
_PROMOTING = threading.Lock()


@contextmanager
def lock(reg: str, repo: str) -> Iterator[None]:
    """Promotions to one repository from this machine, one at a time; the one that waits says so."""
    with _PROMOTING, _file_lock(reg, repo):
        yield


@contextmanager
def _file_lock(reg: str, repo: str) -> Iterator[None]:
    folder = engine.state_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", f"{reg}/{repo}") + ".promote.lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            report.say(f"dlenv: another dlenv run (pid {holder}) is moving floating tags of {reg}/{repo}: "
                       f"waiting for it ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one(plan: Plan, reg: str, repo: str, variant: Variant, statuses: dict[str, list[str]],
         tested: str | None) -> Promotion:
    try:
        return _promote(plan, reg, repo, variant, statuses, tested)
    except DlenvError as exc:  # reported per variant, the others still promote
        return Promotion(variant.id, False, "", (), str(exc))


def _promote(plan: Plan, reg: str, repo: str, variant: Variant, statuses: dict[str, list[str]],
             tested: str | None) -> Promotion:
    why = blocked(variant, statuses)
    digest = None if why else registry.digest(plan.ref(variant.immutable))
    if not why and digest is None:
        why = f"{plan.ref(variant.immutable)} does not exist: nothing to promote"
    elif not why and tested is not None and tested != digest:
        why = f"checks ran on {tested or 'an unknown digest'}, but {variant.immutable} is now {digest}"
    if why:
        try:
            repaired = repair(plan, reg, repo, variant)
        except DlenvError as exc:
            repaired = f" (whether a run before this one left them split is unknown: {exc.message})"
        return Promotion(variant.id, False, digest or "", (), f"{why}: floating tags left where they were{repaired}")
    assert digest is not None
    move(plan, reg, repo, variant.floating, digest)
    return Promotion(variant.id, True, digest, variant.floating, "")


def _current(plan: Plan, tags: tuple[str, ...]) -> list[str | None]:
    return [registry.digest(plan.ref(tag)) for tag in tags]


def move(plan: Plan, reg: str, repo: str, tags: tuple[str, ...], digest: str) -> None:
    """Point every tag at digest, all or none: in order, uncut by a signal; a retag that fails
    moves the ones already moved back (or, where it cannot, says the next run finishes it)."""
    before = _current(plan, tags)
    moved: list[str] = []
    with interrupt.held():
        try:
            with registry.reading(reg):
                for tag, was in zip(tags, before, strict=True):
                    if was != digest:
                        registry.retag(reg, repo, digest, tag)
                        moved.append(tag)
        except DlenvError as failed:
            back = [(tag, was) for tag, was in zip(tags, before, strict=True) if tag in moved]
            try:
                with registry.reading(reg):
                    for tag, was in reversed(back):
                        if was is None:   # a registry deletes manifests, not tags: a new tag stays
                            raise DlenvError(f"{tag} did not exist before and cannot be taken back")
                        registry.retag(reg, repo, was, tag)
            except DlenvError as stuck:
                raise DlenvError(f"moving {', '.join(tags)} to {digest[:19]} stopped after {len(moved)} of them "
                                 f"({failed.message}) and they could not be moved back ({stuck.message})",
                                 "the next run moves the rest (run it again once the registry answers)") from None
            raise DlenvError(f"moving {', '.join(tags)} to {digest[:19]} failed ({failed.message}); "
                             "floating tags left where they were") from None


def repair(plan: Plan, reg: str, repo: str, variant: Variant) -> str:
    """A variant's floating tags left split by a run that stopped while moving them: the first
    ones name the digest that run moved them to (it passed its checks), so the rest follow it.
    Returns what was done, as a sentence to add to a reason ("" for nothing)."""
    tags = variant.floating
    current = _current(plan, tags)
    lead = current[0] if current else None
    stale = tuple(tag for tag, found in zip(tags, current, strict=True) if lead and found != lead)
    if not stale:
        return ""
    assert lead is not None
    with interrupt.held(), registry.reading(reg):
        for tag in stale:
            registry.retag(reg, repo, lead, tag)
    return (f"; {', '.join(stale)} moved to {lead[:19]} with {tags[0]}: a run before this one stopped "
            "half way through moving them")


Statuses = dict[str, dict[str, list[str]]]   # variant -> platform -> its checks' statuses


def read_verdicts(paths: list[Path]) -> tuple[Statuses, dict[str, str], dict[str, dict[tuple[str, str], list[str]]]]:
    """Statuses per variant and platform, tested digests, and each GPU check's statuses per
    variant and (platform, check), from smoke JSON files.

    Takes what `dlenv smoke --json` and the rootfs runner's `--json` write (a verdict without a
    platform is its file's, and a file without one is linux/amd64's, as before platforms);
    several files (one per shard, platform or GPU runner) add up: a GPU check skipped on a CPU
    runner and passed on a GPU runner counts as run. Two files that tested one variant at
    different digests leave it untested.
    """
    statuses: Statuses = {}
    gpu: dict[str, dict[tuple[str, str], list[str]]] = {}
    digests: dict[str, str] = {}
    conflicts = set()
    for path in paths:
        try:
            data = json.loads(path.read_text())
            tested = data["digests"] if "digests" in data else {data["variant"]: data.get("digest", "")}
            verdicts = [(v["variant"], v.get("platform") or data.get("platform") or "linux/amd64", v["check"],
                         v["status"], bool(v.get("gpu"))) for v in data["verdicts"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Bad input (a truncated or edited file): nothing is promoted from it.
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
            raise ConfigError(str(path), line, "verdicts",
                              f"not a smoke result ({exc.__class__.__name__}: {exc}); pass files written by "
                              "`dlenv smoke --json` or rootfs_run.py --json") from None
        for variant, digest in tested.items():
            if digests.setdefault(variant, digest) != digest:
                conflicts.add(variant)
        for variant, platform, check, status, needs_gpu in verdicts:
            statuses.setdefault(variant, {}).setdefault(platform, []).append(status)
            if needs_gpu:
                gpu.setdefault(variant, {}).setdefault((platform, check), []).append(status)
    for variant in conflicts:
        digests[variant] = ""
    return statuses, digests, gpu


def run(plan: Plan, request: PromoteRequest) -> list[Promotion]:
    """The release stage's front door for a promote job of its own: floating tags move to the
    digests the smoke results (files) tested, for the variants that passed. With require_gpu,
    a variant one of whose GPU checks was skipped in every result is held back."""
    statuses, digests, gpu = read_verdicts(list(request.verdicts))
    model = plan.matrix.model
    with registry.reading(model.registry):
        registry.ping(model.registry)
    held = {vid: f"a GPU check on {skipped[0][0]} was skipped in every result (--require-gpu): floating tags left "
                 "where they were"
            for vid, checks in gpu.items()
            if request.require_gpu and (skipped := [key for key, states in checks.items()
                                                    if all(s == "skipped" for s in states)])}
    promotions = promote(plan, [v for v in plan.variants if v.id not in held], statuses, digests)
    promotions += [Promotion(vid, False, "", (), why) for vid, why in held.items()
                   if any(v.id == vid for v in plan.variants)]
    if request.json:
        report.write_json(request.json, {"image": plan.image, "promotions": [p.to_json() for p in promotions]})
    return promotions
