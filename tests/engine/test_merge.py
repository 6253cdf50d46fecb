"""The merge of a release's per-platform builds, against the real engine and registry: each
variant's linux/amd64 and linux/arm64 images, pushed with their provenance under their own
platform tags (as release.yml's build jobs push them), become one index under the immutable tag,
read back through the registry's HTTP API. Small on purpose: FROM scratch images of one file
(no RUN step, so no QEMU), a few seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlenv import merge, registry
from dlenv.options import MergeRequest
from dlenv.tags import platform_tag
from helpers import REGISTRY, RUN, TINY, expand, new_project, write

REPOSITORY = f"test/merge-{RUN}"
STACKS = "  - []\n  - [python]\n"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    text = TINY.format(registry=REGISTRY, repository=REPOSITORY, stacks=STACKS) + \
        "platforms: [linux/amd64, linux/arm64]\n"
    project = new_project(tmp_path_factory.mktemp("merge") / "project", text)
    plan = expand(project, text)
    assert len(plan.variants) == STACKS.count("- [") and all(len(v.platforms) == 2 for v in plan.variants)
    return project, plan


def push_platform(docker, where: Path, ref: str, platform: str, note: str = "") -> None:
    """One platform's image with its provenance, under ref: what a --per-platform build job pushes."""
    write(where / "what", f"{ref} {platform} {note}\n")
    write(where / "Dockerfile", "FROM scratch\nCOPY what /what\n")
    docker.buildx.build(where, platforms=[platform], provenance=True, push=True, tags=[ref])


def images(reference: str) -> tuple[list[str], dict[str, str], list[str]]:
    """The index at reference through the HTTP API: its platforms, platform -> image digest, and
    the image digest each attestation manifest is for."""
    index, _ = registry.manifest(REGISTRY, REPOSITORY, reference)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index["mediaType"]
    found = {f"{e['platform']['os']}/{e['platform']['architecture']}": e["digest"] for e in index["manifests"]
             if e.get("annotations", {}).get("vnd.docker.reference.type") != "attestation-manifest"}
    about = [e["annotations"]["vnd.docker.reference.digest"] for e in index["manifests"]
             if e.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"]
    return registry.index_platforms(index), found, about


def test_per_platform_tags_merge_into_one_index_per_tag_with_every_attestation_and_a_rerun_finishes(
        docker, family, tmp_path):
    project, plan = family
    first, second = plan.variants
    for variant in plan.variants:
        for platform in variant.platforms:
            if variant is second and platform == "linux/arm64":
                continue   # its arm64 build job failed: nothing pushed
            push_platform(docker, tmp_path / variant.id / platform, plan.ref(platform_tag(variant.immutable, platform)),
                          platform)

    done = merge.run(plan, MergeRequest(json=tmp_path / "merge.json"), say=lambda line: None)
    assert [(m.variant, m.merged, m.detail) for m in done] == [
        (first.id, True, "merged"),
        (second.id, False, f"{platform_tag(second.immutable, 'linux/arm64')} does not exist: the linux/arm64 "
                           "build of this variant did not push it")]
    assert registry.digest(plan.ref(second.immutable)) is None   # nothing under its tag to test or promote

    platforms, held, about = images(first.immutable)
    assert sorted(platforms) == sorted(first.platforms)
    for platform in first.platforms:
        # The very image its platform's job pushed (and tested), not a copy.
        _, own, own_about = images(platform_tag(first.immutable, platform))
        assert held[platform] == own[platform] and own_about == [own[platform]]
    assert sorted(about) == sorted(held.values())   # each platform's provenance kept, for its image
    assert done[0].digest == registry.digest(plan.ref(first.immutable)) and done[0].attestations == len(about)

    # The arm64 job run again; the merge run again merges the rest and leaves the merged one alone.
    push_platform(docker, tmp_path / "again", plan.ref(platform_tag(second.immutable, "linux/arm64")), "linux/arm64")
    again = merge.run(plan, MergeRequest(), say=lambda line: None)
    assert [(m.merged, m.detail) for m in again] == [(True, "already merged"), (True, "merged")]
    assert again[0].digest == done[0].digest
    assert sorted(images(second.immutable)[0]) == sorted(second.platforms)


def test_an_immutable_tag_holding_other_images_is_never_moved(docker, family, tmp_path):
    _, plan = family
    variant = plan.variants[0]
    other = registry.digest(plan.ref(variant.immutable))
    assert other, "needs the merge of the test above"
    for platform in variant.platforms:   # a rebuild of the same build id with other contents
        push_platform(docker, tmp_path / platform, plan.ref(platform_tag(variant.immutable, platform)), platform,
                      "rebuilt")
    refused = merge.one(plan, variant)
    assert not refused.merged and "an immutable tag is never moved" in refused.detail
    assert registry.digest(plan.ref(variant.immutable)) == other
