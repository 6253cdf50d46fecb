"""Reading and judging images per platform: the registry's image manifest of the platform asked
for (a real HTTP server on loopback holds a two-platform index with an attestation), doctor's
verdict of this host's platform against the tag's and of the arm64 machines' GPUs, and the
rootfs runner refusing a bundle of another platform."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dlenv import doctor, gpuarch, registry, rootfs_run
from dlenv.doctor import Gpu, Host, Image
from dlenv.errors import DlenvError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image(arch: str) -> tuple[dict[str, bytes], dict]:
    """An image for linux/arch (its config and manifest by digest) and its index entry."""
    config = json.dumps({"os": "linux", "architecture": arch, "rootfs": {"diff_ids": []}}).encode()
    layer_size = {"amd64": 3000, "arm64": 2000}[arch]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_IMAGE,
                           "config": {"digest": _digest(config), "size": len(config)},
                           "layers": [{"digest": _digest(arch.encode()), "size": layer_size}]}).encode()
    entry = {"mediaType": OCI_IMAGE, "digest": _digest(manifest), "size": len(manifest),
             "platform": {"os": "linux", "architecture": arch}}
    return {_digest(config): config, _digest(manifest): manifest}, entry


def _family() -> dict[str, bytes]:
    """Content by digest or tag: `both` (amd64, arm64 and an attestation), `amd64only`, `plain`."""
    blobs: dict[str, bytes] = {}
    entries = {}
    for arch in ("amd64", "arm64"):
        found, entries[arch] = _image(arch)
        blobs |= found
    attestation = {"mediaType": OCI_IMAGE, "digest": _digest(b"att"), "size": 3,
                   "platform": {"os": "unknown", "architecture": "unknown"},
                   "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
    for tag, held in (("both", [entries["amd64"], entries["arm64"], attestation]), ("amd64only", [entries["amd64"]])):
        blobs[tag] = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": held}).encode()
    blobs["plain"] = blobs[entries["arm64"]["digest"]]
    return blobs


CONTENT = _family()


class Registry(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        kind, _, reference = self.path.removeprefix("/v2/team/x/").partition("/")
        body = CONTENT.get(reference)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        media = json.loads(body).get("mediaType", "application/json") if kind == "manifests" else "application/json"
        self.send_response(200)
        for key, value in {"Content-Type": media, "Content-Length": str(len(body)),
                           "Docker-Content-Digest": _digest(body)}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_image_manifest_of_each_platform_and_its_size(server):
    index, _ = registry.manifest(server, "team/x", "both")
    assert registry.index_platforms(index) == ["linux/amd64", "linux/arm64"]
    for platform in ("linux/amd64", "linux/arm64"):
        found = registry.image_manifest(server, "team/x", "both", platform=platform)
        config = json.loads(registry.blob(server, "team/x", found["config"]["digest"]))
        assert f"{config['os']}/{config['architecture']}" == platform
        assert registry.compressed_size(server, "team/x", "both", platform) == \
            sum(layer["size"] for layer in found["layers"]) + found["config"]["size"]
    # Without a platform: linux/amd64's, as before there were platforms.
    assert registry.image_manifest(server, "team/x", "both") == \
        registry.image_manifest(server, "team/x", "both", platform="linux/amd64")


def test_a_platform_the_index_lacks_is_an_error_naming_what_it_holds(server):
    with pytest.raises(DlenvError, match="has no linux/arm64 image") as err:
        registry.image_manifest(server, "team/x", "amd64only", platform="linux/arm64")
    assert "linux/amd64" in err.value.message
    # A plain image manifest is the image, whatever is asked.
    assert registry.image_manifest(server, "team/x", "plain", platform="linux/amd64")["layers"]


def test_doctor_reads_the_tags_platforms_and_judges_this_host_against_them(server):
    assert doctor.image_platforms(f"{server}/team/x:both") == ("linux/amd64", "linux/arm64")
    assert doctor.image_platforms(f"{server}/team/x:plain") == ("linux/arm64",)
    assert doctor.image_platforms(f"{server}/team/x:absent") == ()
    grace = Host(platform="linux/arm64")
    ok = doctor.judge_platform(grace, Image("r/x:both", platforms=("linux/amd64", "linux/arm64")))
    assert ok.status == "ok"
    wrong = doctor.judge_platform(grace, Image("r/x:old", platforms=("linux/amd64",)))
    assert wrong.status == "fail" and "no linux/arm64 image" in wrong.detail and "linux/arm64" in wrong.fix
    assert doctor.judge_platform(grace, Image("r/x:t")).status == "skip"
    # judge_image says it first, for a host that knows its platform.
    assert doctor.judge_image(grace, Image("r/x:old", platforms=("linux/amd64",)), doctor.releases())[0] == wrong


ARM64_GPUS = {"GH200": "9.0", "GB200": "10.0", "GB10 (DGX Spark)": "12.1"}


def test_the_arm64_machines_gpus_are_judged_by_the_one_rule():
    assert {name: gpuarch.GPUS[name] for name in ARM64_GPUS} == ARM64_GPUS
    # torch 2.11.0+cu130's compiled-in list (tests/unit/h200_torch_facts.json was read on an H200).
    archs = json.loads((Path(__file__).parent / "h200_torch_facts.json").read_text())["image"]["torch_archs"]
    table = doctor.releases()
    for name, compute in ARM64_GPUS.items():
        host = Host(gpus=(Gpu(name, "580.95.05", compute),), driver_cuda="13.0", platform="linux/arm64")
        image = Image("r/x:t", cuda="13.0.2", require_cuda="cuda>=13.0", torch="2.11.0+cu130", torch_archs=tuple(archs),
                      platforms=("linux/amd64", "linux/arm64"))
        found = {f.check: f for f in doctor.judge_image(host, image, table)}
        expected = gpuarch.kernels(compute, archs)
        assert found[f"{name} vs torch 2.11.0+cu130"].status == {"native": "ok", "ptx": "warn", "none": "fail"}[
            expected.kind], name
        assert found[f"{name} vs CUDA 13.0"].status == "ok", found[f"{name} vs CUDA 13.0"]
        assert found["image platform vs this host"].status == "ok"


def test_the_rootfs_runner_knows_each_platforms_cpu_and_libraries():
    assert rootfs_run.platform_problem("linux/amd64", "x86_64") is None
    assert rootfs_run.platform_problem("linux/arm64", "aarch64") is None
    problem = rootfs_run.platform_problem("linux/arm64", "x86_64")
    assert "linux/arm64's (aarch64)" in problem and "this host is linux/amd64" in problem
    assert "does not know" in rootfs_run.platform_problem("linux/riscv64", "riscv64")


def test_the_rootfs_runner_refuses_a_bundle_of_another_platform_before_it_mounts_anything(tmp_path):
    here = os.uname().machine
    other = next(p for p, (cpu, _) in rootfs_run.PLATFORMS.items() if cpu != here)
    (tmp_path / "manifest.json").write_text(json.dumps({"variant": "v", "platform": other, "checks": [], "env": []}))
    out = subprocess.run([sys.executable, rootfs_run.__file__, str(tmp_path)], capture_output=True, text=True,
                         env=dict(os.environ, DLENV_IN_NAMESPACE="1"), timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == f"rootfs_run: {rootfs_run.platform_problem(other, here)}"
