"""A registry that fails for a moment or for good, on loopback: requests are tried again with
backoff and then fail in one line naming the registry; a variant's floating tags move all or
none, a move cut half way is repaired by the next promotion, and promotions to one repository
take turns. The server is a small in-memory registry (manifests by tag and digest) whose
answers a test can turn into 500, 429, a stall or a dropped connection."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dlenv import registry, release, retry
from dlenv.errors import DlenvError
from helpers import expand

MEDIA = "application/vnd.oci.image.manifest.v1+json"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args):   # quiet
        pass

    def _answer(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _fault(self) -> bool:
        """What the test's rule makes of this request; True when it was answered (or dropped)."""
        self.server.seen.append((self.command, self.path))
        fault = self.server.rule(self.command, self.path)
        if fault is None:
            return False
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif isinstance(fault, float):
            time.sleep(fault)
            return False
        else:
            self._answer(fault, b'{"errors": []}', {"Retry-After": "0"} if fault == 429 else {})
        return True

    def do_GET(self):
        if self._fault():
            return
        repo, _, reference = self.path.removeprefix("/v2/").partition("/manifests/")
        digest = self.server.tags.get(reference, reference)
        body = self.server.manifests.get(digest)
        if body is None:
            self._answer(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
        else:
            self._answer(200, body, {"Content-Type": MEDIA, "Docker-Content-Digest": digest})

    do_HEAD = do_GET

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self._fault():
            return
        tag = self.path.rpartition("/manifests/")[2]
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.server.manifests[digest] = body
        self.server.tags[tag] = digest
        self._answer(201, b"", {"Docker-Content-Digest": digest})


class FakeRegistry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.address = f"127.0.0.1:{self.server_address[1]}"
        self.manifests: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        self.seen: list[tuple[str, str]] = []
        self.rule = lambda method, path: None   # -> None, an HTTP status, a stall (seconds) or "drop"

    def image(self, name: str) -> str:
        """A manifest of its own for name; its digest."""
        body = json.dumps({"schemaVersion": 2, "mediaType": MEDIA, "annotations": {"name": name}}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = body
        return digest


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_DELAY", 0.01)   # the backoff's shape, not its seconds, is tested
    httpd = FakeRegistry()
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd
    httpd.shutdown()


def test_500_then_429_then_an_answer_is_retried_to_the_answer(server):
    digest = server.image("a")
    server.tags["t"] = digest
    answers = iter([500, 429])
    server.rule = lambda method, path: next(answers, None)
    assert registry.digest(f"{server.address}/r:t") == digest
    assert len(server.seen) == 3


def test_a_dropped_connection_and_a_stall_past_the_timeout_are_retried(server, monkeypatch):
    monkeypatch.setattr(registry, "TIMEOUT", 0.5)
    digest = server.image("a")
    server.tags["t"] = digest
    answers = iter(["drop", 2.0])
    server.rule = lambda method, path: next(answers, None)
    assert registry.digest(f"{server.address}/r:t") == digest
    assert len(server.seen) == 3


def test_a_registry_that_keeps_failing_is_one_line_naming_it_after_the_bounded_attempts(server):
    server.rule = lambda method, path: 503
    started = time.monotonic()
    with pytest.raises(DlenvError, match=f"the registry {server.address} answered 503 .* after "
                                         f"{retry.ATTEMPTS} attempts") as err:
        registry.digest(f"{server.address}/r:t")
    assert len(server.seen) == retry.ATTEMPTS
    assert "\n" not in str(err.value)
    # Backoff doubles from FIRST_DELAY: the waits add up to FIRST_DELAY * (2^(ATTEMPTS-1) - 1).
    assert time.monotonic() - started >= retry.FIRST_DELAY * (2 ** (retry.ATTEMPTS - 1) - 1)


def test_an_answer_that_is_final_is_not_asked_again(server):
    server.rule = lambda method, path: 403
    with pytest.raises(DlenvError, match="answered 403"):
        registry.digest(f"{server.address}/r:t")
    assert len(server.seen) == 1
    server.seen.clear()
    server.rule = lambda method, path: None
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
    """A plan of one variant with two floating tags on the fake registry; (plan, variant)."""
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
    return [server.tags.get(tag) for tag in variant.floating]


def test_every_floating_tag_moves(server, project):
    plan, variant = family(server, project)
    new = server.image("new")
    server.tags[variant.immutable] = new
    (done,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["passed"]}})
    assert done.promoted and tags_of(server, variant) == [new] * len(variant.floating)


def test_a_retag_that_fails_half_way_moves_the_moved_ones_back(server, project):
    plan, variant = family(server, project)
    old, new = server.image("old"), server.image("new")
    server.tags.update({tag: old for tag in variant.floating}, **{variant.immutable: new})
    last = variant.floating[-1]
    server.rule = lambda method, path: 500 if method == "PUT" and path.endswith("/manifests/" + last) else None
    (held,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["passed"]}})
    assert not held.promoted and "floating tags left where they were" in held.reason
    assert f"after {retry.ATTEMPTS} attempts" in held.reason
    assert tags_of(server, variant) == [old] * len(variant.floating)


def test_a_move_cut_where_nothing_can_be_moved_back_is_finished_by_the_next_run(server, project):
    plan, variant = family(server, project)
    old, new = server.image("old"), server.image("new")
    server.tags.update({tag: old for tag in variant.floating}, **{variant.immutable: new})
    first = variant.floating[0]
    cut = threading.Event()

    def gone_after_the_first_tag(method, path):
        if cut.is_set():
            return 503
        if method == "PUT" and path.endswith("/manifests/" + first):
            cut.set()   # this PUT lands; the registry is gone from the next request on
        return None

    server.rule = gone_after_the_first_tag
    (held,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["passed"]}})
    assert not held.promoted and "the next run moves the rest" in held.reason
    assert tags_of(server, variant) == [new] + [old] * (len(variant.floating) - 1)
    # The next run does not promote this variant (its checks failed this time), yet it finds the
    # tags split and moves the rest to the digest the first one names.
    server.rule = lambda method, path: None
    (again,) = release.promote(plan, [variant], {variant.id: {"linux/amd64": ["failed"]}})
    assert not again.promoted and "a run before this one stopped half way" in again.reason
    assert tags_of(server, variant) == [new] * len(variant.floating)


def test_promotions_to_one_repository_take_turns_and_the_second_says_it_waits(server, project, monkeypatch, capsys):
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
    err = capsys.readouterr().err
    assert "another dlenv run" in " ".join(err.split()) and "waiting for it" in err
