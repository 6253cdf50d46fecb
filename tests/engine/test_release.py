"""The release, end to end against the real engine and registry: the rehearsal of release.yml
(plan -> each shard built -> smoke -> promote -> catalog), attestations, the lock, the cache.

The family (tests/release-family.yaml) has two OS releases, so each of two shards builds its own
CUDA base. On the engine dlenv started itself, the rehearsal starts with no images and no build
cache, as a release runner does, and the last test empties it again to show the registry cache
at work (pytest runs this file after those that build the larger families).
"""

from __future__ import annotations

import json

import pytest

from dlenv import engine, lock, merge, registry
from helpers import REGISTRY, REPO, RUN, attestations, dlenv, empty_engine, new_project, run_steps, sh

# A registry with a path, as most hosted ones are (host/team/...): every registry call of the
# pipeline (digests, retags, the catalog, the immutable-tag check) goes through that path.
PREFIXED = f"{REGISTRY}/team-{RUN}"
REPOSITORY = "dlenv-test/release"
CACHE = f"{PREFIXED}/{REPOSITORY}-cache"
RELEASE = (REPO / "tests/release-family.yaml").read_text().replace("registry: 127.0.0.1:5000",
                                                                     f"registry: {PREFIXED}")
VARIANTS = ["13.0.2-base-debian12", "13.0.2-base-debian13"]


def private_engine() -> bool:
    return engine.find() is not None and engine.find()[0] == engine.private_host()


@pytest.fixture(scope="module")
def rehearsed(docker, tmp_path_factory):
    # The rehearsal starts as a release runner does, from nothing: a build that found every step
    # in what earlier tests left exports a registry cache without the steps it never ran (the
    # CUDA fetch stage), and the last test would find them missing.
    if private_engine():
        empty_engine()
    tmp = tmp_path_factory.mktemp("release")
    project = new_project(tmp / "project", RELEASE)
    made = dlenv(project, "lock")
    assert made.returncode == 0, made.stderr[-2000:]
    out = dlenv(project, "rehearse", "--shards", "2", "--workdir", str(tmp / "reh"), "--build-id", "rel")
    return {"project": project, "tmp": tmp, "out": out, "work": tmp / "reh",
            "steps": json.loads((tmp / "reh/rehearsal.json").read_text())}


def test_the_rehearsal_runs_every_step_of_the_release_and_each_passes(rehearsed):
    out, steps = rehearsed["out"], rehearsed["steps"]
    assert out.returncode == 0, out.stderr[-4000:]
    jobs = [f"{e['shard']} {e['platform'].split('/')[1]}" for e in steps["shards"]]
    assert [s["name"] for s in steps["steps"]] == ["plan", *[f"{k} {j}" for j in jobs for k in ("build", "check")],
                                                   *[f"merge {e['shard']}" for e in steps["merges"]],
                                                   *[f"smoke {j}" for j in jobs], "promote", "catalog"]
    assert [e["shard"] for e in steps["merges"]] == ["1/2", "2/2"] and len(jobs) == len(VARIANTS)
    assert all(s["rc"] == 0 for s in steps["steps"]), steps
    # The shards came through $GITHUB_OUTPUT, as in the workflow, one OS (and CUDA base) each.
    assert [s["variants"] for s in steps["shards"]] == VARIANTS
    for index, variant in enumerate(VARIANTS):
        built = json.loads((rehearsed["work"] / f"build-{index}.json").read_text())["variants"]
        assert [(r["variant"], r["status"]) for r in built] == [(variant, "built")]
        bake = json.loads((rehearsed["work"] / f"build-{index}/bake.json").read_text())
        assert not [t for t in bake["target"] if "debian1" in t and variant[-8:] not in t], "another shard's nodes"
        build = next(s for s in steps["steps"] if s["name"] == f"build {jobs[index]}")
        assert all(f in build["argv"] for f in ("--locked", "--per-platform", "--platform"))


def test_promoted_tags_name_the_tested_digests_and_the_catalog_lists_them(rehearsed):
    catalog = json.loads((rehearsed["work"] / "catalog/catalog.json").read_text())
    images = {e["id"]: e for e in catalog["images"]}
    assert sorted(images) == VARIANTS
    for index, variant in enumerate(VARIANTS):
        tested = json.loads((rehearsed["work"] / f"smoke-{index}.json").read_text())["digests"][variant]
        _, floating = registry.manifest(PREFIXED, REPOSITORY, variant)
        assert floating == tested == images[variant]["digest"]
        assert images[variant]["tag"] == f"{variant}-rel"
        assert images[variant]["size"] > 10_000_000 and images[variant]["cuda_runtime"].startswith("13.0")
    assert "Debian GNU/Linux 13" in images["13.0.2-base-debian13"]["os_name"]
    page = (rehearsed["work"] / "catalog/catalog.md").read_text()
    assert all(f"`{v}`" in page for v in VARIANTS)


def test_each_image_carries_provenance_and_an_sbom_of_what_is_in_it(rehearsed, docker):
    for variant in VARIANTS:
        index, _ = registry.manifest(PREFIXED, REPOSITORY, f"{variant}-rel")
        kinds = [e.get("annotations", {}).get("vnd.docker.reference.type") for e in index["manifests"]]
        assert kinds.count("attestation-manifest") == 1, kinds
        found = list(attestations(PREFIXED, REPOSITORY, f"{variant}-rel"))
        sboms = [json.loads(statement) for kind, statement in found if kind == "https://spdx.dev/Document"]
        assert len(sboms) == 1 and sboms[0]["predicateType"] == "https://spdx.dev/Document", variant
        statement = sboms[0]
        # BuildKit bound the SBOM to the image it describes.
        assert statement["subject"][0]["digest"]["sha256"] in json.dumps(index)
        purls = [ref["referenceLocator"] for package in statement["predicate"]["packages"]
                 for ref in package.get("externalRefs", []) if ref.get("referenceType") == "purl"]
        libc = [p for p in purls if p.startswith("pkg:deb/debian/libc6@")]
        assert libc and any(p.startswith("pkg:pypi/nvidia-cuda-runtime@13.0") for p in purls)
        # The SBOM agrees with the image: the libc6 version dpkg reports inside it.
        inside = sh(docker, f"{PREFIXED}/{REPOSITORY}:{variant}-rel", "dpkg-query -W -f '${Version}' libc6")
        assert libc[0].split("@")[1].split("?")[0] == inside.strip()
        # Provenance: no build arg holds a password here, so mode=max, which records the build's steps.
        provenance = [statement for kind, statement in found if "slsa.dev/provenance" in kind]
        assert len(provenance) == 1 and b'"buildConfig"' in provenance[0], variant


def test_a_missing_or_stale_lock_stops_a_locked_build_before_anything_is_pushed(rehearsed, tmp_path):
    project = rehearsed["project"]
    path = lock.path_for(project / "matrix.yaml")
    good = path.read_text()
    before = registry.tags(PREFIXED, REPOSITORY)
    try:
        path.unlink()
        out = dlenv(project, "build", "--locked", "--build-id", "nolock", "--workdir", str(tmp_path / "w1"))
        assert out.returncode == 1 and "no lock file" in out.stderr and "nox -s lock" in out.stderr
        # An apt mirror that moved since the lock: a package version the mirror no longer gives.
        data = json.loads(good)
        packages = data["rootfs"]["debian12"]["linux/amd64"]["packages"]
        packages[:] = [p if not p.startswith("libc6=") else "libc6=2.0-old" for p in packages]
        path.write_text(json.dumps(data))
        out = dlenv(project, "build", "--locked", "--build-id", "stale", "--workdir", str(tmp_path / "w2"))
        assert out.returncode == 1, out.stderr[-2000:]
        assert "debian12 linux/amd64: 1 packages differ from the lock (libc6 2.0-old ->" in " ".join(out.stderr.split())
        assert registry.tags(PREFIXED, REPOSITORY) == before
        checked = dlenv(project, "lock", "--check")
        assert checked.returncode == 1 and "libc6 2.0-old ->" in " ".join(checked.stderr.split())
    finally:
        path.write_text(good)
    assert dlenv(project, "lock", "--check").returncode == 0


def test_a_locked_base_image_is_used_by_digest_after_its_tag_moves_upstream(rehearsed, docker, tmp_path):
    # A public base image that a registry mirror serves: the loopback registry plays both.
    hub = f"dlenv-hub-{RUN}:1"
    mirrored = f"{REGISTRY}/library/{hub}"
    # Copied registry-side, index and attestations with it (the images are not in the engine's
    # store: the main job removes them once pushed and tested).
    merge.create(mirrored, [f"{PREFIXED}/{REPOSITORY}:{VARIANTS[0]}-rel"])   # bookworm
    matrix = RELEASE.replace(f"repository: {REPOSITORY}", f"repository: {REPOSITORY}-pinned").replace(
        "  debian12: {source: bootstrap, suite: bookworm}\n  debian13: {source: bootstrap, suite: trixie}\n",
        f"  hubos: {{source: image, image: \"{hub}\", family: debian}}\n")
    project = new_project(tmp_path / "project", matrix)
    made = dlenv(project, "lock", "--add-missing", "--registry-mirror", REGISTRY)   # no lock yet: all of it
    assert made.returncode == 0, made.stderr[-2000:]
    pinned = lock.read(lock.path_for(project / "matrix.yaml")).images[hub]
    # Upstream rebuilds the tag (here: another Debian release under the same name).
    merge.create(mirrored, [f"{PREFIXED}/{REPOSITORY}:{VARIANTS[1]}-rel"])
    _, now = registry.manifest(REGISTRY, f"library/dlenv-hub-{RUN}", "1")
    assert now != pinned
    checked = dlenv(project, "lock", "--check", "--registry-mirror", REGISTRY)
    assert checked.returncode == 1 and f"{hub}: moved upstream" in checked.stderr
    # A release's plan job adds what the lock lacks; it never moves a locked base.
    again = dlenv(project, "lock", "--add-missing", "--registry-mirror", REGISTRY)
    assert again.returncode == 0 and lock.read(lock.path_for(project / "matrix.yaml")).images[hub] == pinned
    out = dlenv(project, "build", "--locked", "--registry-mirror", REGISTRY, "--build-id", "pin", "--no-promote",
                "--workdir", str(tmp_path / "w"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"docker-image://{mirrored}@{pinned}" in (tmp_path / "w/bake.json").read_text()
    release = sh(docker, f"{PREFIXED}/{REPOSITORY}-pinned:13.0.2-base-hubos-pin", ". /etc/os-release; echo $VERSION_CODENAME")
    assert release.strip() == "bookworm"   # the locked base, not what the tag names now


def cache_keys(tag: str) -> set[str]:
    """The keys of the steps the registry cache holds under tag (its cache config's records)."""
    manifest, _ = registry.manifest(PREFIXED, f"{REPOSITORY}-cache", tag)
    config = json.loads(registry.blob(PREFIXED, f"{REPOSITORY}-cache", manifest["config"]["digest"]))
    return {record["digest"] for record in config["records"]}


def test_a_shard_rebuilt_on_a_machine_without_its_build_cache_finds_its_steps_in_the_registry_cache(
        rehearsed, docker, tmp_path):
    if not private_engine():
        pytest.skip("prunes the build cache: only on the engine dlenv started itself")
    nodes = ["rootfs-debian12", "os-debian12", "13_0_2-base-debian12"]   # shard 1/2's
    assert {*nodes, "13_0_2-base-debian13"} <= set(registry.tags(PREFIXED, f"{REPOSITORY}-cache"))
    exported = {node: cache_keys(node) for node in nodes}
    empty_engine()
    out = dlenv(rehearsed["project"], "build", "--shard", "1/2", "--cache", CACHE, "--build-id", "fresh",
                "--no-promote", "--workdir", str(tmp_path / "w"))
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "w/build.log").read_text().splitlines()
    for node in nodes:
        assert any(f"importing cache manifest from {CACHE}:{node}" in line for line in log), node
    assert not [line for line in log if "failed to configure registry cache importer" in line]
    steps = run_steps(tmp_path / "w/build.log")
    assert steps, "the log shows no build steps at all"
    # The engine held nothing: a step not run again came from the registry.
    assert any(steps.values()), "no step came from the registry cache"
    # The rebuild keyed every step as the release did (its own export under the same tags lists
    # the same keys): each was in the registry cache to be taken. BuildKit does not take every one
    # where a bake's targets share the steps below (moby/buildkit#4674): in some rebuilds the CUDA
    # node's steps run again; benchmarks/bench_registry_cache.py counts how often.
    assert {node: cache_keys(node) for node in nodes} == exported
