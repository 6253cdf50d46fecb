"""linux/arm64 on this amd64 host, under QEMU as dlenv sets it up: an arm64 image built FROM
scratch around Debian's static arm64 busybox runs a RUN step in BuildKit and a container, both as
aarch64; the bootstrap node's Dockerfile gives each platform its own rootfs. Small on purpose:
one .deb, a few layers, seconds."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

from dlenv import bootstrap, engine
from helpers import REPO, RUN, write


def test_an_arm64_image_builds_and_runs_after_dlenvs_setup(docker, tmp_path: Path):
    said: list[str] = []
    assert engine.emulation(["linux/amd64", "linux/arm64"], say=said.append) == []
    assert len(said) <= 1, said   # one line where it set something up, none where it was already there
    assert "F" in engine.handler("linux/arm64")["flags"]
    assert "qemu-aarch64" in engine.status()["emulation (binfmt_misc)"]
    # Where QEMU came after the engine started (a new machine), `docker buildx inspect` does not
    # list linux/arm64 yet: what follows builds and runs it all the same.

    # Debian's arm64 busybox, fetched with a private apt configuration: the host's apt is untouched.
    debs = engine.download_debs(["busybox-static"], tmp_path, architecture="arm64")
    assert [d.name.rsplit("_", 1)[-1] for d in debs] == ["arm64.deb"]
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp_path / "deb")], check=True)
    context = tmp_path / "context"
    context.mkdir()
    (tmp_path / "deb/bin/busybox").rename(context / "busybox")
    write(context / "Dockerfile", """
        FROM scratch
        COPY busybox /bin/busybox
        RUN ["/bin/busybox", "sh", "-c", "/bin/busybox uname -m > /built-on"]
        ENTRYPOINT ["/bin/busybox"]
        """)
    tag = f"dlenv-test/emulation:{RUN}"
    docker.buildx.build(context, platforms=["linux/arm64"], load=True, tags=[tag])
    try:
        assert docker.image.inspect(tag).architecture == "arm64"
        assert docker.run(tag, ["cat", "/built-on"], platform="linux/arm64", remove=True).strip() == "aarch64"
        assert docker.run(tag, ["uname", "-m"], platform="linux/arm64", remove=True).strip() == "aarch64"
    finally:
        docker.image.remove(tag, force=True)


def test_the_bootstrap_node_takes_each_platforms_own_rootfs(docker, tmp_path: Path):
    """images/os-bootstrap for both platforms in one build, from a folder as bootstrap.py lays it
    out (a stand-in tarball per architecture, naming it): each image holds its own."""
    spec = bootstrap.RootfsSpec("bookworm", "", (), architectures=("amd64", "arm64"))
    context = tmp_path / "context"
    context.mkdir()
    for architecture in spec.architectures:
        (tmp_path / "which").write_text(architecture)
        with tarfile.open(context / bootstrap.rootfs_tar(spec, architecture).name, "w") as tar:
            tar.add(tmp_path / "which", "which")
    docker.buildx.build(context, file=REPO / "images/os-bootstrap/Dockerfile", platforms=["linux/amd64", "linux/arm64"],
                        output={"type": "oci", "dest": str(tmp_path / "oci.tar")})
    with tarfile.open(tmp_path / "oci.tar") as oci:
        def blob(digest: str) -> bytes:
            return oci.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}").read()

        top = json.loads(oci.extractfile("index.json").read())["manifests"][0]["digest"]
        found = {}
        for entry in json.loads(blob(top))["manifests"]:
            if entry["platform"]["os"] == "linux":
                layer = json.loads(blob(entry["digest"]))["layers"][0]["digest"]
                with tarfile.open(fileobj=io.BytesIO(blob(layer))) as fs:
                    found[entry["platform"]["architecture"]] = fs.extractfile("which").read().decode()
    assert found == {a: a for a in spec.architectures}
