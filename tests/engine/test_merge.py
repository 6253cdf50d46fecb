"""The merge of a release's per-platform builds, against the real engine and registry: each
variant's linux/amd64 and linux/arm64 images, pushed with their provenance under their own
platform tags (as release.yml's build jobs push them), become one index under the immutable tag,
read back through the registry's HTTP API. Small on purpose: FROM scratch images of one file
(no RUN step, so no QEMU), a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faults import FaultProxy, Request

from dlenv import lock, merge, registry
from dlenv import plan as planmod
from dlenv.errors import DlenvError
from dlenv.options import MergeRequest, PlanRequest
from dlenv.tags import platform_tag
from helpers import REGISTRY, REPO, RUN, TINY, dlenv, expand, new_project, write

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


def test_the_rehearsal_builds_each_platform_apart_merges_and_promotes_one_index_per_tag(docker, tmp_path):
    """release.yml on this machine for the smallest family on two platforms: a build and checks
    per platform (linux/arm64 under QEMU) under platform tags, a merge, the checks per platform
    on the merged tag, then promotion and the catalog of both platforms."""
    repository = f"{REPOSITORY}-rehearsed"
    platforms = ["linux/amd64", "linux/arm64"]
    text = TINY.format(registry=REGISTRY, repository=repository, stacks="  - []\n") + \
        f"platforms: {json.dumps(platforms)}\n"
    project = new_project(tmp_path / "project", text)
    # Locked to the bootstraps this machine has (made now if an earlier test has not): the
    # repository's lock goes stale whenever the Debian archive publishes an update, and `dlenv
    # lock` would bootstrap linux/arm64 again under QEMU (179 s here, 411 s before). The images
    # come from its lock.
    plan = planmod.load(PlanRequest(matrix=project / "matrix.yaml", root=project))
    rootfs = {("debian12", p): lock.bootstrapped(plan, "debian12", p, say=lambda line: None) for p in platforms}
    lock.write(lock.path_for(project / "matrix.yaml"), lock.Lock(lock.read(REPO / "matrix.lock.json").images, rootfs))
    out = dlenv(project, "rehearse", "--shards", "1", "--workdir", str(tmp_path / "reh"), "--build-id", "reh")
    steps = json.loads((tmp_path / "reh/rehearsal.json").read_text())
    arches = [p.split("/")[1] for p in platforms]
    assert [s["name"] for s in steps["steps"]] == [
        "plan", *[f"{k} 1/1 {a}" for a in arches for k in ("build", "check")], "merge 1/1",
        *[f"smoke 1/1 {a}" for a in arches], "promote", "catalog"], out.stderr[-3000:]
    assert out.returncode == 0 and all(s["rc"] == 0 for s in steps["steps"]), out.stdout[-4000:] + out.stderr[-3000:]

    variant = "13.0.2-base-debian12"
    index, digest = registry.manifest(REGISTRY, repository, f"{variant}-reh")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    found = {f"{e['platform']['os']}/{e['platform']['architecture']}": e["digest"] for e in index["manifests"]
             if e.get("annotations", {}).get("vnd.docker.reference.type") != "attestation-manifest"}
    about = [e["annotations"]["vnd.docker.reference.digest"] for e in index["manifests"]
             if e.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"]
    assert sorted(found) == platforms and sorted(about) == sorted(found.values())
    for platform in platforms:   # the image each platform's job pushed and checked
        own, _ = registry.manifest(REGISTRY, repository, platform_tag(f"{variant}-reh", platform))
        assert found[platform] in [e["digest"] for e in own["manifests"]]
    # Promoted to the merged index; the catalog gives each platform's image.
    assert registry.digest(f"{REGISTRY}/{repository}:{variant}") == digest
    (entry,) = json.loads((tmp_path / "reh/catalog/catalog.json").read_text())["images"]
    assert entry["digest"] == digest and [(i["platform"], i["digest"]) for i in entry["images"]] == [
        (p, found[p]) for p in platforms]


def test_a_registry_refusing_the_index_for_a_moment_is_asked_again_and_for_good_is_one_error(docker, tmp_path):
    """The index PUT answered 500 once: the merge's imagetools create runs again and the index
    lands. Answered 500 every time: one DlenvError after the bounded attempts, nothing tagged."""
    source = f"{REGISTRY}/{REPOSITORY}:source"
    push_platform(docker, tmp_path, source, "linux/amd64")
    refused: list[Request] = []

    def index_put(request: Request) -> bool:
        return request.method == "PUT" and "image.index" in request.headers.get("content-type", "")

    def once(request: Request):
        if index_put(request) and not refused:
            refused.append(request)
            return 500
        return None

    proxy = FaultProxy(REGISTRY, once)
    merge.create(f"{proxy.address}/{REPOSITORY}:again", [f"{proxy.address}/{REPOSITORY}:source"])
    assert len(refused) == 1 and refused[0].outcome == "500"
    assert registry.digest(f"{REGISTRY}/{REPOSITORY}:again") == registry.digest(source)
    proxy.rule = lambda request: 500 if index_put(request) else None
    with pytest.raises(DlenvError) as failed:
        merge.create(f"{proxy.address}/{REPOSITORY}:never", [f"{proxy.address}/{REPOSITORY}:source"])
    assert "after 4 attempts" in failed.value.message and "500" in failed.value.message, failed.value.message
    assert registry.digest(f"{REGISTRY}/{REPOSITORY}:never") is None
