"""registry.digest, the one reader of "the digest behind this tag", against a real HTTP server on
loopback: a tag that exists gives its digest, one that does not gives None, and a registry that
cannot be read is one DlenvError with its fix, never taken for an absent tag."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dlenv import registry
from dlenv.errors import DlenvError

DIGEST = "sha256:" + "ab" * 32
MANIFESTS = "/v2/team/x/manifests/"


class Registry(BaseHTTPRequestHandler):
    def log_message(self, *args):   # quiet
        pass

    def do_GET(self):
        tag = self.path.removeprefix(MANIFESTS)
        code, headers = {"present": (200, {"Docker-Content-Digest": DIGEST}), "nodigest": (200, {}),
                         "private": (403, {})}.get(tag, (404, {}))
        body = json.dumps({"schemaVersion": 2} if code == 200 else {"errors": [{"code": "MANIFEST_UNKNOWN"}]}).encode()
        self.send_response(code)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_tag_that_exists_gives_its_digest_and_one_that_does_not_gives_none(server):
    assert registry.digest(f"{server}/team/x:present") == DIGEST
    assert registry.digest(f"{server}/team/x@{DIGEST}") is None   # the server knows tags only
    assert registry.digest(f"{server}/team/x:absent") is None


def test_a_registry_that_refuses_is_an_error_with_the_login_fix(server):
    with pytest.raises(DlenvError, match=f"the registry {server} answered 403") as err:
        registry.digest(f"{server}/team/x:private")
    assert "docker login" in err.value.fix


def test_a_registry_without_digests_is_an_error(server):
    with pytest.raises(DlenvError, match="named no digest") as err:
        registry.digest(f"{server}/team/x:nodigest")
    assert "Docker-Content-Digest" in err.value.fix


def test_an_unreachable_registry_is_an_error_with_the_fix():
    with socket.socket() as s:   # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DlenvError, match=f"cannot reach the registry 127.0.0.1:{port}") as err:
        registry.digest(f"127.0.0.1:{port}/team/x:present")
    assert "--registry" in err.value.fix


@pytest.mark.parametrize("ref, parts", [
    ("127.0.0.1:5000/team/x:1.0-a", ("127.0.0.1:5000", "team/x", "1.0-a")),
    (f"host.invalid/x@{DIGEST}", ("host.invalid", "x", DIGEST)),
])
def test_a_reference_splits_into_host_repository_and_tag_or_digest(ref, parts):
    assert registry.split(ref) == parts


def test_a_reference_without_a_tag_is_refused():
    with pytest.raises(ValueError):
        registry.split("127.0.0.1:5000/team/x")
