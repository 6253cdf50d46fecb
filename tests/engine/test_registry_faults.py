"""A registry that fails for a moment or for good: requests are tried again with backoff and
then fail in one line naming the registry; a variant's floating tags move all or none, a move
cut half way is repaired by the next promotion, and promotions to one repository take turns.
The registry is a real docker-registry of the test's own (faults.OwnRegistry), reached through
a relay on loopback whose rule turns chosen requests into 500, 429, a stall or a dropped
connection (faults.FaultProxy). Images are put straight into the registry, not through it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults import FaultProxy, OwnRegistry

from dlenv import registry, release, retry
from dlenv.errors import DlenvError
from helpers import expand

MEDIA = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Server:
    own: OwnRegistry
    proxy: FaultProxy

    @property
    def address(self) -> str:
        """Where dlenv is pointed: the relay."""
        return self.proxy.address

    @property
    def seen(self) -> list:
        return self.proxy.log

    def set_rule(self, rule) -> None:
        """rule(method, path) -> None (relay), a status, ("stall", seconds) or "drop"."""
        self.proxy.rule = lambda r: rule(r.method, r.path)

    def put(self, repository: str, tag: str, name: str) -> str:
        """An image of its own for name (a config naming it, no layers) under tag, straight into
        the registry; its manifest digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"name": name}},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        base = f"http://{self.own.address}/v2/{repository}"
        # An upload is started, then finished by one PUT with the digest (the registry's monolithic way).
        with urllib.request.urlopen(urllib.request.Request(f"{base}/blobs/uploads/", data=b"", method="POST"),
                                    timeout=10) as started:
            location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.own.address}{location}"
        urllib.request.urlopen(urllib.request.Request(f"{location}{'&' if '?' in location else '?'}digest={digest}",
                                                      data=config, method="PUT",
                                                      headers={"Content-Type": "application/octet-stream"}),
                               timeout=10).close()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA, "layers": [], "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": len(config)}}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{base}/manifests/{tag}", data=manifest, method="PUT",
                                                           headers={"Content-Type": MEDIA}), timeout=10) as answer:
            return answer.headers["Docker-Content-Digest"]


@pytest.fixture
def server(docker, monkeypatch, tmp_path: Path):
    """docker: the engine's set-up installs the docker-registry the test runs on its own port."""
    monkeypatch.setattr(retry, "FIRST_DELAY", 0.01)   # the backoff's shape, not its seconds, is tested
    own = OwnRegistry(tmp_path / "registry")
    proxy = FaultProxy(own.address)
    yield Server(own, proxy)
    proxy.close()
    own.kill()


def test_500_then_429_then_an_answer_is_retried_to_the_answer(server):
    digest = server.put("r", "t", "a")
    answers = iter([500, 429])
    server.set_rule(lambda method, path: next(answers, None))
    assert registry.digest(f"{server.address}/r:t") == digest
    assert len(server.seen) == 3


def test_a_dropped_connection_and_a_stall_past_the_timeout_are_retried(server, monkeypatch):
    monkeypatch.setattr(registry, "TIMEOUT", 0.5)
    digest = server.put("r", "t", "a")
    answers = iter(["drop", ("stall", 2.0)])
    server.set_rule(lambda method, path: next(answers, None))
    assert registry.digest(f"{server.address}/r:t") == digest
    assert len(server.seen) == 3


def test_a_registry_that_keeps_failing_is_one_line_naming_it_after_the_bounded_attempts(server):
    server.set_rule(lambda method, path: 503)
    started = time.monotonic()
    with pytest.raises(DlenvError, match=f"the registry {server.address} answered 503 .* after "
                                         f"{retry.ATTEMPTS} attempts") as err:
        registry.digest(f"{server.address}/r:t")
    assert len(server.seen) == retry.ATTEMPTS
    assert "\n" not in str(err.value)
    # Backoff doubles from FIRST_DELAY: the waits add up to FIRST_DELAY * (2^(ATTEMPTS-1) - 1).
    assert time.monotonic() - started >= retry.FIRST_DELAY * (2 ** (retry.ATTEMPTS - 1) - 1)


def test_an_answer_that_is_final_is_not_asked_again(server):
    server.set_rule(lambda method, path: 403)
    with pytest.raises(DlenvError, match="answered 403"):
        registry.digest(f"{server.address}/r:t")
    assert len(server.seen) == 1
    server.seen.clear()
    server.set_rule(lambda method, path: None)
    server.put("r", "t", "a")
    assert registry.digest(f"{server.address}/r:absent") is None   # a 404 is an answer too
    assert len(server.seen) == 1


def test_backoff_doubles_and_retry_after_is_honoured_up_to_the_cap():
    assert retry.delay(0) == retry.FIRST_DELAY and retry.delay(2) == 4 * retry.FIRST_DELAY
    assert retry.delay(10) == retry.MAX_DELAY
    asked = urllib.error.HTTPError("u", 429, "slow down", {"Retry-After": "3"}, None)
    assert retry.delay(0, asked) == 3
    too_long = urllib.error.HTTPError("u", 429, "slow down", {"Retry-After": "3600"}, None)
    assert retry.delay(0, too_long) == retry.MAX_DELAY


# --- promotion: all or none per variant -------------------------------------------------------

def family(server, project):
    """A plan of one variant with two floating tags on the test's registry (through its relay); (plan, variant)."""
    text = f"""
        registry: {server.address}
        repository: team/x
        os:
          debian12: {{source: bootstrap, suite: bookworm}}
        cuda:
          "13.0.2": {{source: pip}}
        flavors: [base]
        stacks:
          - []
    """
    plan = expand(project, text)
    (variant,) = plan.variants
    assert len(variant.floating) >= 2, "the test needs a variant with several floating tags"
    return plan, variant


def tags_of(server, variant) -> list[str | None]:
    return [server.own.tag("team/x", tag) for tag in variant.floating]


def test_every_floating_tag_moves(server, project):
    plan, variant = family(server, project)
    new = server.put("team/x", variant.immutable, "new")
    (done,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["passed"]}})
    assert done.promoted and tags_of(server, variant) == [new] * len(variant.floating)


def test_a_retag_that_fails_half_way_moves_the_moved_ones_back(server, project):
    plan, variant = family(server, project)
    old = [server.put("team/x", tag, "old") for tag in variant.floating][0]
    server.put("team/x", variant.immutable, "new")
    last = variant.floating[-1]
    server.set_rule(lambda method, path: 500 if method == "PUT" and path.endswith("/manifests/" + last) else None)
    (held,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["passed"]}})
    assert not held.promoted and "floating tags left where they were" in held.reason
    assert f"after {retry.ATTEMPTS} attempts" in held.reason
    assert tags_of(server, variant) == [old] * len(variant.floating)


def test_a_move_cut_where_nothing_can_be_moved_back_is_finished_by_the_next_run(server, project):
    plan, variant = family(server, project)
    old = [server.put("team/x", tag, "old") for tag in variant.floating][0]
    new = server.put("team/x", variant.immutable, "new")
    first = variant.floating[0]
    cut = threading.Event()

    def gone_after_the_first_tag(method, path):
        if cut.is_set():
            return 503
        if method == "PUT" and path.endswith("/manifests/" + first):
            cut.set()   # this PUT lands; the registry is gone from the next request on
        return None

    server.set_rule(gone_after_the_first_tag)
    (held,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["passed"]}})
    assert not held.promoted and "the next run moves the rest" in held.reason
    assert tags_of(server, variant) == [new] + [old] * (len(variant.floating) - 1)
    # The next run does not promote this variant (its checks failed this time), yet it finds the
    # tags split and moves the rest to the digest the first one names.
    server.set_rule(lambda method, path: None)
    (again,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["failed"]}})
    assert not again.promoted and "a run before this one stopped half way" in again.reason
    assert tags_of(server, variant) == [new] * len(variant.floating)


HOLDER = """
import sys, time
from dlenv import release
with release.lock(sys.argv[1], sys.argv[2]):
    print("inside", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def test_promotions_to_one_repository_take_turns_and_the_second_says_it_waits(server, project, monkeypatch, capsys):
    monkeypatch.setenv("DLENV_STATE", str(project / "state"))
    plan, variant = family(server, project)
    model = plan.matrix.model
    # Another run: a process of its own holds the lock for a moment.
    other = subprocess.Popen([sys.executable, "-c", HOLDER, model.registry, model.repository, "1.0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "inside"
        started = time.monotonic()
        with release.lock(model.registry, model.repository):
            waited = time.monotonic() - started
    finally:
        other.wait(10)
    assert waited >= 0.5
    err = " ".join(capsys.readouterr().err.split())
    assert f"another dlenv run (pid {other.pid})" in err and "waiting for it" in err


def test_promotions_from_threads_of_one_run_take_turns_without_a_word(server, project, monkeypatch, capsys):
    # The main job promotes from several checkers: they wait for each other, not for "another run".
    monkeypatch.setenv("DLENV_STATE", str(project / "state"))
    plan, variant = family(server, project)
    model = plan.matrix.model
    inside, leave = threading.Event(), threading.Event()

    def first():
        with release.lock(model.registry, model.repository):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    assert inside.wait(10)
    threading.Timer(0.5, leave.set).start()
    started = time.monotonic()
    with release.lock(model.registry, model.repository):
        waited = time.monotonic() - started
    holder.join()
    assert waited >= 0.4
    assert "another dlenv run" not in " ".join(capsys.readouterr().err.split())
