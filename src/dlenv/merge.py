"""Merge: each variant's immutable tag becomes one image index of every platform's image.

A release builds each platform on a machine of its own (`--per-platform`: the immutable tag +
-ARCH, tags.platform_tag). The merge job of a shard then puts, under each variant's immutable
tag, one index that holds every platform's image with its attestations, by `docker buildx
imagetools create` from the platform tags pinned by digest (registry side: nothing is pulled or
rebuilt). It can run again at any point: a tag that already holds exactly those images is left
as it is, so a rerun after a merge that stopped finishes the rest; a tag that holds other images
is refused (an immutable tag never moves); a variant one of whose platform tags is missing (that
platform's job failed) is not merged, so it has no immutable tag to test or promote.
"""

from __future__ import annotations

import subprocess
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass

from dlenv import engine, registry, report, retry
from dlenv.errors import DlenvError
from dlenv.options import MergeRequest
from dlenv.plan import Plan, Variant
from dlenv.tags import platform_tag


@dataclass(frozen=True)
class Merged:
    """What the merge did for one variant's tag."""

    variant: str
    tag: str                              # the immutable tag, now the index (when merged)
    merged: bool                          # the tag holds every platform's image
    digest: str                           # the index's digest ("" when not merged)
    images: tuple[tuple[str, str], ...]   # (platform, image manifest digest), the variant's order
    attestations: int                     # attestation manifests the index holds
    detail: str                           # "merged", "already merged", or why not

    def line(self) -> str:
        if not self.merged:
            return f"not merged {self.tag}: {self.detail}"
        held = ", ".join(f"{p} {d[:19]}" for p, d in self.images)
        return f"{self.detail} {self.tag} = {self.digest[:19]}: {held}, {self.attestations} attestations"

    def to_json(self) -> dict:
        return {"variant": self.variant, "tag": self.tag, "merged": self.merged, "digest": self.digest,
                "images": dict(self.images), "attestations": self.attestations, "detail": self.detail}


def _attestation(entry: dict) -> bool:
    return entry.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"


def contents(reg: str, repo: str, reference: str) -> tuple[str, dict[str, str], int] | None:
    """(digest, platform -> image manifest digest, attestation count) of what reference names;
    None when absent. A plain image manifest is one image of unknown platform ("")."""
    with registry.reading(reg):
        try:
            data, digest = registry.manifest(reg, repo, reference)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
    if "manifests" not in data:
        return digest, {"": digest}, 0
    images: dict[str, str] = {}
    for entry in data["manifests"]:
        if not _attestation(entry):
            found = entry.get("platform") or {}
            images.setdefault(f"{found.get('os')}/{found.get('architecture')}", entry["digest"])
    return digest, images, sum(_attestation(e) for e in data["manifests"])


def sources(plan: Plan, variant: Variant) -> tuple[list[tuple[str, str, str]], str]:
    """(platform, platform tag's digest, its image's digest) for each platform of variant, or
    ([], why not) where a platform's tag is missing or holds another platform."""
    reg, repo = plan.matrix.model.registry, plan.matrix.model.repository
    out = []
    for platform in variant.platforms:
        tag = platform_tag(variant.immutable, platform)
        found = contents(reg, repo, tag)
        if found is None:
            return [], f"{tag} does not exist: the {platform} build of this variant did not push it"
        digest, images, _ = found
        image = images.get(platform) or (images[""] if list(images) == [""] else "")
        if not image:
            return [], f"{tag} holds {', '.join(images)}, not {platform}: built on the wrong machine?"
        out.append((platform, digest, image))
    return out, ""


class _Refused(Exception):
    """A failed `imagetools create`, its last line kept for the one the user reads."""

    def __init__(self, line: str, again: bool):
        super().__init__(line)
        self.again = again


def momentary(stderr: str) -> bool:
    """Whether a failed `imagetools create` is worth another attempt: the registry failed for a
    moment, or buildx 0.29's imagetools raced itself (two copies of one manifest, the index pushed
    before one of them landed: "blob unknown to registry"). The same command again copies what
    is missing: everything is content-addressed."""
    return "unknown to registry" in stderr or retry.transient_output(stderr)


def create(target: str, refs: list[str]) -> None:
    """`docker buildx imagetools create`: one index under target of the images of refs (their
    attestations kept), asked again (retry.py) where the registry failed for a moment; a
    DlenvError with buildx's last line where it fails for good."""
    def once() -> None:
        out = subprocess.run(["docker", "buildx", "imagetools", "create", "--tag", target, *refs],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            lines = [line.strip() for line in out.stderr.splitlines() if line.strip()] or [f"exit {out.returncode}"]
            # buildx's ERROR line (the status), then the registry's own words on the last line.
            said = [line for line in lines if line.startswith("ERROR")][-1:] + lines[-1:]
            raise _Refused("; ".join(dict.fromkeys(said))[-400:], momentary(out.stderr))

    try:
        retry.call(once, lambda exc: isinstance(exc, _Refused) and exc.again)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DlenvError(f"docker buildx imagetools create {target}: {exc}",
                         "check the docker client and buildx (nox -s engine -- status)") from None
    except _Refused as exc:
        raise DlenvError(f"docker buildx imagetools create {target} failed{retry.attempts(exc)}: {exc}",
                         "check the registry and its login (docker login), then run the merge again") from None


def one(plan: Plan, variant: Variant, make: Callable[[str, list[str]], None] = create) -> Merged:
    """Merge one variant's platform tags into its immutable tag (see the module's docstring)."""
    reg, repo = plan.matrix.model.registry, plan.matrix.model.repository
    found, why = sources(plan, variant)
    if why:
        return Merged(variant.id, variant.immutable, False, "", (), 0, why)
    wanted = {platform: image for platform, _, image in found}
    images = tuple((p, wanted[p]) for p in variant.platforms)
    detail = "already merged"
    now = contents(reg, repo, variant.immutable)
    if now is None:
        make(plan.ref(variant.immutable), [f"{plan.image}@{digest}" for _, digest, _ in found])
        detail = "merged"
        now = contents(reg, repo, variant.immutable)
        if now is None:
            raise DlenvError(f"{plan.ref(variant.immutable)} is still missing after imagetools create",
                             "check that the registry keeps what it is sent")
    digest, held, attestations = now
    if held != wanted:
        return Merged(variant.id, variant.immutable, False, "", images, attestations,
                      f"it already holds other images ({', '.join(f'{p} {d[:19]}' for p, d in held.items())}): an "
                      "immutable tag is never moved (build again with another --build-id or --build-suffix)")
    return Merged(variant.id, variant.immutable, True, digest, images, attestations, detail)


def run(plan: Plan, request: MergeRequest, say: Callable[[str], None] = print) -> list[Merged]:
    """The merge's front door: every variant of plan (a shard, loaded without --per-platform)
    merged, or not with why, one line per tag as it goes."""
    engine.ensure(say=say)
    out = []
    for variant in plan.variants:
        try:
            done = one(plan, variant)
        except DlenvError as exc:   # said for this tag; the others are merged still
            done = Merged(variant.id, variant.immutable, False, "", (), 0, exc.message)
        say(done.line())
        out.append(done)
    if request.json:
        report.write_json(request.json, {"image": plan.image, "merged": [m.to_json() for m in out]})
    return out
