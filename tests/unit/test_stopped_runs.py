"""What a run says when it cannot go on: a disk that filled up (the folder and the space needed),
buildx's metadata file cut short (one line naming it, exit 2), a mirror that drops connections
(asked again before it is called unreachable), a failing node (where it fetched from)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from dlenv import bake, disk, isolate, reach, retry
from dlenv.errors import ConfigError
from dlenv.hostconf import Network
from helpers import SMALL, expand


def test_no_space_left_is_found_in_a_builds_error_with_the_folder_it_names():
    lines = ["#14 ERROR: failed to copy: write /mnt/data/docker/containerd/ingest/x/data: no space left on device"]
    assert disk.full_folder(lines) == Path("/mnt/data/docker/containerd/ingest/x/data")
    assert disk.full_folder(["ERROR: failed to solve: copy file range failed: no space left on device"]) == Path("")
    assert disk.full_folder(["ERROR: process did not complete successfully: exit code: 3"]) is None


def test_a_full_data_root_is_one_line_with_the_folder_what_is_free_and_what_is_needed(tmp_path):
    room = disk.estimate(tmp_path, 3)
    inside = disk.Full(tmp_path / "docker/buildkit/snapshots/7/fs").explained(tmp_path, room)
    free = shutil.disk_usage(tmp_path).free
    assert f"ran out of space in {tmp_path} " in str(inside)
    assert f"{free / disk.GB:.1f} GB free there" in str(inside)
    assert f"building 3 variants afresh needs about {room.need / disk.GB:.1f} GB" in str(inside)
    assert "\n" not in str(inside)
    # No folder named: the data root is the one to free; one elsewhere: its filesystem.
    assert f"ran out of space in {tmp_path} " in str(disk.Full(Path("")).explained(tmp_path, room))
    elsewhere = disk.Full(Path("/proc/self/no-such-file")).explained(tmp_path, room)
    assert "ran out of space in /proc " in str(elsewhere)


def test_a_metadata_file_cut_short_is_bad_input_naming_the_file_and_its_line(tmp_path):
    whole = json.dumps({"13_0_2-base-debian12": {"containerimage.digest": "sha256:" + "a" * 64}}, indent=2)
    path = tmp_path / "metadata-1.json"
    path.write_text(whole)
    assert bake.read_metadata(path)["13_0_2-base-debian12"]["containerimage.digest"].startswith("sha256:")
    path.write_text(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=r"metadata-1.json:\d+: metadata: buildx's metadata file cannot be read") as err:
        bake.read_metadata(path)
    assert err.value.exit_code == 2
    path.write_text("[]")
    with pytest.raises(ConfigError, match="not an object"):
        bake.read_metadata(path)


class Dropping:
    """A loopback HTTP server that drops the first `drops` connections unanswered."""

    def __init__(self, drops: int):
        self.drops, self.seen = drops, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/simple/pip/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with client:
                client.recv(65536)
                self.seen += 1
                if self.seen > self.drops:
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_DELAY", 0.01)


def test_a_mirror_that_drops_the_first_connections_is_reachable(quick):
    server = Dropping(retry.ATTEMPTS - 1)
    assert reach._url_ok(server.url, Network()) == (True, "HTTP 200")
    assert server.seen == retry.ATTEMPTS
    server.server.close()


def test_a_mirror_that_drops_every_connection_is_unreachable_after_the_bounded_attempts(quick):
    server = Dropping(10 * retry.ATTEMPTS)
    ok, detail = reach._url_ok(server.url, Network())
    assert not ok and detail.endswith(f"after {retry.ATTEMPTS} attempts"), detail
    assert server.seen == retry.ATTEMPTS
    server.server.close()


def test_a_failing_node_says_where_its_apt_and_pip_steps_fetch_from(project):
    plan = expand(project, SMALL)
    assert isolate.sources(plan) == "(its sources: apt http://apt.invalid/debian, pip the default index (PyPI))"


def test_a_docker_client_saying_the_registry_failed_for_a_moment_is_asked_again_and_not_otherwise():
    from dlenv import merge
    moment = ["ERROR: unexpected status from PUT request to http://127.0.0.1:41235/v2/t/manifests/x: 500 Injected",
              "received unexpected HTTP status: 503 Service Unavailable",
              "toomanyrequests: retry later", "read tcp 127.0.0.1:5000: connection reset by peer"]
    for text in moment:
        assert retry.transient_output(text) and merge.momentary(text), text
    for text in ["unexpected status from HEAD request: 404 Not Found", "unauthorized: authentication required",
                 "pushing 127.0.0.1:5000/x@sha256:5003a1: denied"]:
        assert not retry.transient_output(text) and not merge.momentary(text), text
    # imagetools racing itself (buildx 0.29): worth another run of the merge only.
    raced = "failed commit on ref \"index-sha256:6f02\": 400 Bad Request\nunknown: blob unknown to registry"
    assert merge.momentary(raced) and not retry.transient_output(raced)
