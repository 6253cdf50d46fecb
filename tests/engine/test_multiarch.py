"""One tag, two platforms, on this amd64 host (linux/arm64 under QEMU, as dlenv sets it up):
the smallest chain (tests/helpers.py's TINY family: CUDA 13.0.2 base from PyPI on bootstrapped
Debian 12) built for linux/amd64 and linux/arm64, pushed as one image index, smoke-tested per
platform, and promoted only once both platforms passed; its arm64 bundle for a GPU host without
Docker (smoke --export) holds aarch64 checks and runs under QEMU (rootfs_run.py --emulate).
One variant on purpose: the arm64 rootfs and the arm64 RUN steps run under emulation
(docs/benchmarks.md has the figures)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from dlenv import registry
from helpers import REGISTRY, RUN, TINY, dlenv, new_project

REPOSITORY = f"test/multiarch-{RUN}"
PLATFORMS = ["linux/amd64", "linux/arm64"]
FAMILY = TINY.format(registry=REGISTRY, repository=REPOSITORY, stacks="  - []") + f"platforms: {json.dumps(PLATFORMS)}\n"
VARIANT = "13.0.2-base-debian12"


@pytest.fixture(scope="module")
def built(docker, tmp_path_factory):
    """Built and pushed, not promoted (that comes from the smoke results, below)."""
    tmp = tmp_path_factory.mktemp("multiarch")
    project = new_project(tmp / "project", FAMILY)
    out = dlenv(project, "build", "--no-promote", "--build-id", "multi", "--workdir", str(tmp / "w"),
                "--metadata", str(tmp / "build.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = json.loads((tmp / "build.json").read_text())["variants"]
    return {"project": project, "tmp": tmp, "result": result}


def test_the_pushed_tag_is_an_index_of_one_image_per_platform_with_attestations(built):
    result = built["result"]
    assert result["variant"] == VARIANT and result["status"] == "built", result
    # Read back through the registry's HTTP API, not through dlenv's own reader.
    index, digest = registry.manifest(REGISTRY, REPOSITORY, f"{VARIANT}-multi")
    assert digest == result["digest"] and "manifests" in index
    images = [e for e in index["manifests"] if e["platform"]["os"] != "unknown"]
    attested = [e for e in index["manifests"] if e["platform"]["os"] == "unknown"]
    assert sorted(f"{e['platform']['os']}/{e['platform']['architecture']}" for e in images) == PLATFORMS
    # An attestation manifest (provenance, SBOM) for each image, naming it.
    assert sorted(e["annotations"]["vnd.docker.reference.digest"] for e in attested) == sorted(e["digest"] for e in images)
    for entry in images:
        image, _ = registry.manifest(REGISTRY, REPOSITORY, entry["digest"])
        config = json.loads(registry.blob(REGISTRY, REPOSITORY, image["config"]["digest"]))
        assert config["architecture"] == entry["platform"]["architecture"]
        # The build result names each platform's image and what a pull of it downloads.
        platform = f"linux/{config['architecture']}"
        assert result["platforms"][platform] == {
            "digest": entry["digest"], "size": sum(x["size"] for x in image["layers"]) + image["config"]["size"]}


def test_each_platform_is_smoke_tested_and_promotion_waits_for_both(built, docker):
    project, tmp = built["project"], built["tmp"]
    out = dlenv(project, "smoke", "--build-id", "multi", "--json", str(tmp / "smoke.json"),
                "--junit", str(tmp / "smoke.xml"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    smoked = json.loads((tmp / "smoke.json").read_text())
    verdicts = smoked["verdicts"]
    by = {p: [v for v in verdicts if v["platform"] == p] for p in PLATFORMS}
    assert {v["platform"] for v in verdicts} == set(PLATFORMS)
    # The same checks on each platform; the non-GPU ones passed on arm64 too, in an aarch64 container.
    assert [v["check"] for v in by["linux/amd64"]] == [v["check"] for v in by["linux/arm64"]]
    arm = by["linux/arm64"]
    assert [v["check"] for v in arm if not v["gpu"] and v["status"] != "passed"] == []
    # A GPU check on arm64 is skipped on this host with its reason, never passed.
    gpu = [v for v in arm if v["gpu"]]
    assert gpu and all(v["status"] == "skipped" and "runs under QEMU" in v["output"] for v in gpu)
    index = smoked["digests"][VARIANT]
    image = f"{REGISTRY}/{REPOSITORY}@{index}"
    try:
        assert docker.run(image, ["uname", "-m"], platform="linux/arm64", remove=True).strip() == "aarch64"
        assert docker.run(image, ["uname", "-m"], platform="linux/amd64", remove=True).strip() == "x86_64"
    finally:
        docker.image.remove(image, force=True)   # the registry keeps it; the engine's store need not
    assert {s.split('"')[1] for s in (tmp / "smoke.xml").read_text().split("<testsuite ")[1:]} == \
        {f"{VARIANT} ({p})" for p in PLATFORMS}

    # Only linux/amd64's results: the floating tags stay where they were (nowhere yet).
    amd64_only = tmp / "amd64.json"
    amd64_only.write_text(json.dumps({**smoked, "verdicts": by["linux/amd64"]}))
    held = dlenv(project, "promote", "--build-id", "multi", str(amd64_only), "--json", str(tmp / "held.json"))
    assert held.returncode == 1, held.stdout + held.stderr
    (promotion,) = json.loads((tmp / "held.json").read_text())["promotions"]
    assert not promotion["promoted"] and "not smoke-tested on linux/arm64" in promotion["reason"]
    assert registry.digest(f"{REGISTRY}/{REPOSITORY}:{VARIANT}") is None
    # Both platforms' results: the floating tags move to the tested index.
    moved = dlenv(project, "promote", "--build-id", "multi", str(tmp / "smoke.json"))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert registry.digest(f"{REGISTRY}/{REPOSITORY}:{VARIANT}") == index



EM_AARCH64 = 183   # the ELF header's e_machine for aarch64


@pytest.mark.skipif(os.geteuid() != 0, reason="rootfs_run.py mounts and chroots: root only (CI runs as root)")
def test_the_arm64_bundle_carries_aarch64_checks_and_runs_under_qemu_with_gpu_checks_skipped(built):
    project, tmp = built["project"], built["tmp"]
    out = dlenv(project, "smoke", "--build-id", "multi", "--platform", "linux/arm64", "--export", str(tmp / "bundles"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # --platform linux/arm64: only that platform's bundle, in the folder export_bundle names.
    bundle = tmp / "bundles" / f"{VARIANT}-arm64"
    assert sorted(p.name for p in (tmp / "bundles").iterdir()) == [bundle.name]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["platform"] == "linux/arm64"
    with open(bundle / "checks/cuda_probe", "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF" and struct.unpack_from("<H", header, 18)[0] == EM_AARCH64

    # A bundle of another platform is refused without --emulate, before anything is mounted.
    refused = subprocess.run([sys.executable, bundle / "rootfs_run.py", bundle], capture_output=True, text=True)
    assert refused.returncode != 0 and "linux/arm64's (aarch64)" in refused.stderr
    ran = subprocess.run([sys.executable, bundle / "rootfs_run.py", bundle, "--emulate", "--json", tmp / "arm64.json"],
                         capture_output=True, text=True, timeout=1800)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    result = json.loads((tmp / "arm64.json").read_text())
    assert result["platform"] == "linux/arm64" and result["emulated"] is True
    verdicts = {v["check"]: v for v in result["verdicts"]}
    assert list(verdicts) == [c["name"] for c in manifest["checks"]]
    # The non-GPU checks ran in the aarch64 rootfs and passed; the GPU ones are skipped with why.
    assert [c["name"] for c in manifest["checks"] if not c["gpu"] and verdicts[c["name"]]["status"] != "passed"] == []
    gpu = [verdicts[c["name"]] for c in manifest["checks"] if c["gpu"]]
    assert gpu and all(v["status"] == "skipped" and "runs under QEMU" in v["output"] for v in gpu)
