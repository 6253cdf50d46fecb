"""The registry client against a real HTTP server on loopback that asks for a token, as hosted
registries do (401 + `WWW-Authenticate: Bearer realm=...`), under a path prefix (host/team)."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from dlenv import registry


class TokenRegistry(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str]] = []     # (path, authorization, query)

    def log_message(self, *args):   # quiet
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                           **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        auth = self.headers.get("Authorization", "")
        self.seen.append((url.path, auth, url.query))
        if url.path == "/token":
            expected = "Basic " + base64.b64encode(b"robot:s3cret").decode()
            if auth != expected:
                return self._send(401, {"errors": ["bad login"]})
            return self._send(200, {"token": "tok-" + parse_qs(url.query)["scope"][0]})
        if url.path == "/v2/team/x/tags/list":
            if auth != "Bearer tok-repository:team/x:pull":
                port = self.server.server_address[1]
                challenge = (f'Bearer realm="http://127.0.0.1:{port}/token",service="reg",'
                             'scope="repository:team/x:pull"')
                return self._send(401, {"errors": ["unauthorized"]}, {"WWW-Authenticate": challenge})
            return self._send(200, {"name": "team/x", "tags": ["b", "a"]})
        return self._send(404, {"errors": ["not found"]})


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), TokenRegistry)
    TokenRegistry.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def login(tmp_path, monkeypatch, config: dict) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    registry._TOKENS.clear()


def test_a_login_is_traded_for_a_token_under_the_registrys_path(server, tmp_path, monkeypatch):
    login(tmp_path, monkeypatch, {"auths": {server: {"auth": base64.b64encode(b"robot:s3cret").decode()}}})
    assert registry.tags(f"{server}/team", "x") == ["a", "b"]
    paths = [p for p, _, _ in TokenRegistry.seen]
    assert paths == ["/v2/team/x/tags/list", "/token", "/v2/team/x/tags/list"]
    assert "scope=repository%3Ateam%2Fx%3Apull" in TokenRegistry.seen[1][2]


def test_a_credential_helper_gives_the_login(server, tmp_path, monkeypatch):
    helper = tmp_path / "bin/docker-credential-dlenvtest"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\necho "{\\"Username\\": \\"robot\\", \\"Secret\\": \\"s3cret\\"}"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    login(tmp_path, monkeypatch, {"credsStore": "dlenvtest"})
    assert registry.tags(f"{server}/team", "x") == ["a", "b"]


def test_without_a_login_the_token_server_refuses_and_the_error_is_raised(server, tmp_path, monkeypatch):
    login(tmp_path, monkeypatch, {})
    with pytest.raises(Exception, match="401"):
        registry.tags(f"{server}/team", "x")
