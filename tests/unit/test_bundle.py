"""Bundles for GPU hosts that take little per transfer: large files the host already has stay
behind (named by hash) and the rootfs runner copies them back, byte for byte."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from dlenv import rootfs_run, smoke

BIG = rootfs_run.MIN_DONATION


def make_rootfs(tmp_path, big: bytes, other: bytes):
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/libbig.so.1").write_bytes(big)
    os.chmod(tree / "usr/lib/libbig.so.1", 0o755)
    os.link(tree / "usr/lib/libbig.so.1", tree / "usr/lib/libbig-hardlink.so.1")
    (tree / "usr/lib/libother.so.1").write_bytes(other)    # large, but the host lacks it
    (tree / "etc").mkdir()
    (tree / "etc/small.conf").write_text("small\n")
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname=".")
    return archive


def test_large_files_the_host_has_stay_behind_and_come_back_by_hash(tmp_path):
    big, other = os.urandom(BIG + 10), os.urandom(BIG + 20)
    archive = make_rootfs(tmp_path, big, other)
    donor = tmp_path / "donor/nvidia/lib"
    donor.mkdir(parents=True)
    (donor / "libbig-renamed.so").write_bytes(big)            # same bytes, any name
    (donor / "unrelated.bin").write_bytes(os.urandom(BIG))
    have = rootfs_run.inventory([str(tmp_path / "donor")])
    assert len(have["files"]) == len(list(donor.iterdir()))

    slim = tmp_path / "slim.tar"
    with open(archive, "rb") as src, open(slim, "wb") as dst:
        donated = smoke.leave_out(src, dst, set(have["files"]))
    assert sorted(d["path"] for d in donated) == ["/usr/lib/libbig-hardlink.so.1", "/usr/lib/libbig.so.1"]
    with tarfile.open(slim) as tar:
        names = {m.name.removeprefix("./") for m in tar}
    assert "usr/lib/libbig.so.1" not in names and "usr/lib/libother.so.1" in names and "etc/small.conf" in names
    assert slim.stat().st_size < len(big) + len(other) + 64 * 1024

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "donated.json").write_text(json.dumps(donated))
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(slim) as tar:
        tar.extractall(root, filter="tar")
    assert rootfs_run.fill_donated(str(bundle), str(root), [str(tmp_path / "donor")]) == 2
    assert (root / "usr/lib/libbig.so.1").read_bytes() == big
    assert (root / "usr/lib/libbig-hardlink.so.1").read_bytes() == big
    assert (root / "usr/lib/libbig.so.1").stat().st_mode & 0o777 == 0o755
    assert (root / "usr/lib/libother.so.1").read_bytes() == other


def test_a_left_out_file_no_donor_has_stops_the_run_naming_it(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "donated.json").write_text(json.dumps([{"path": "/usr/lib/libgone.so", "sha256": "0" * 64,
                                                       "size": BIG, "mode": 0o644, "uid": 0, "gid": 0}]))
    donor = tmp_path / "donor"
    donor.mkdir()
    (donor / "x").write_bytes(os.urandom(BIG))
    with pytest.raises(SystemExit, match="1 files of this image are neither in the bundle nor in the donor"):
        rootfs_run.fill_donated(str(bundle), str(tmp_path / "root"), [str(donor)])


def test_a_bundle_without_donated_files_needs_no_donor(tmp_path):
    assert rootfs_run.fill_donated(str(tmp_path), str(tmp_path / "root"), []) == 0


def test_without_an_inventory_the_stream_is_copied_whole(tmp_path):
    big, other = os.urandom(BIG + 10), os.urandom(BIG + 20)
    archive = make_rootfs(tmp_path, big, other)
    copy = tmp_path / "copy.tar"
    with open(archive, "rb") as src, open(copy, "wb") as dst:
        assert smoke.leave_out(src, dst, set()) == []
    with tarfile.open(archive) as a, tarfile.open(copy) as b:
        assert [(m.name, m.size, m.linkname) for m in a] == [(m.name, m.size, m.linkname) for m in b]
        assert b.extractfile("./usr/lib/libbig.so.1").read() == big
