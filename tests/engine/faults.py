"""Faults on loopback for the reliability tests (test_reliability.py).

- OwnRegistry: a docker-registry of the test's own on a free loopback port, with its own storage;
  stopped by its pid (killed, as a crash would) and started again on the same port and storage.
  dlenv's shared registry is never touched.
- FaultProxy: an HTTP relay on loopback in front of a registry (matrix.yaml's `registry:` names
  the proxy). Each request is read up to its headers (and, for a manifest PUT, its body, whose
  digest the log keeps), then a rule of the test decides: relay it, answer it with a status
  (500, 429, ...), drop the connection, stall, or hold it until an event. Every request goes to
  the registry on a connection of its own (`Connection: close`), so each one meets the rule.
- Dropper: a plain HTTP(S) relay of a package source (a PyPI simple index, a Debian mirror) on
  the address containers reach (the bridge's gateway) that drops connections as told.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netserver import relay

from dlenv import engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRegistry:
    """A registry process of the test: address 127.0.0.1:<port>, storage under folder."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = folder / "config.yml"
        self.config.write_text("version: 0.1\nlog: {level: warn}\n"
                               f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
                               f"http:\n  addr: {self.address}\n")
        self.log = folder / "registry.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not engine.registry_answers(self.address, 1):
            assert time.monotonic() < deadline, f"the test's registry did not start: {self.log.read_text()[-500:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        """Killed by its pid, as a crash or an OOM kill would end it."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tag(self, repository: str, tag: str) -> str | None:
        """The digest tag names here, read directly (not through any proxy)."""
        request = urllib.request.Request(f"http://{self.address}/v2/{repository}/manifests/{tag}", method="HEAD",
                                         headers={"Accept": ", ".join(ACCEPT)})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


ACCEPT = ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
          "application/vnd.docker.distribution.manifest.list.v2+json",
          "application/vnd.docker.distribution.manifest.v2+json")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]          # lower-case names
    number: int                      # 1 for the proxy's first request, ...
    body_digest: str = ""            # sha256 of a manifest PUT's body: the manifest it puts
    outcome: str = ""                # the status relayed, or what the rule did instead
    at: float = field(default_factory=time.monotonic)

    @property
    def by_dlenv(self) -> bool:
        """Asked by dlenv's own client (registry.py), not by the engine's push."""
        return self.headers.get("user-agent", "").startswith("Python-urllib")

    @property
    def manifest_tag(self) -> str:
        """The tag or digest of a manifest request, else ''."""
        head, sep, tail = self.path.partition("/manifests/")
        return tail.split("?")[0] if sep else ""


# What a rule returns: None to relay; an int to answer with that status; "drop" to close the
# connection unanswered; ("stall", seconds) to relay after a pause; ("hold", event[, seconds]) to
# relay once event is set (or after seconds, 60 by default), unless the client has gone by then.
Action = None | int | str | tuple


class FaultProxy:
    """An HTTP relay on 127.0.0.1:<port> to backend (host:port), each request judged by rule."""

    def __init__(self, backend: str, rule: Callable[[Request], Action] = lambda r: None):
        self.backend = backend
        self.rule = rule
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._count = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._open = False
        self._server.close()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            self._relay(client)
        except OSError:
            pass
        finally:
            client.close()

    def _relay(self, client: socket.socket) -> None:
        client.settimeout(120)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
            if not data.split(b" ", 1)[0].isalpha():
                # Not HTTP (the engine tries TLS first): answer as a plain HTTP server does, at
                # once, so the client falls back to plain HTTP for a loopback registry.
                client.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                return
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "PUT" and "/manifests/" in path and "content-length" in headers:
            length = int(headers["content-length"])
            while len(rest) < length:
                chunk = client.recv(65536)
                if not chunk:
                    return
                rest += chunk
        with self._lock:
            self._count += 1
            request = Request(method, path, headers, self._count)
            if method == "PUT" and "/manifests/" in path and "content-length" in headers:
                request.body_digest = "sha256:" + hashlib.sha256(rest[:int(headers["content-length"])]).hexdigest()
            self.log.append(request)
        action = self.rule(request)
        if isinstance(action, int):
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the test"}]}'
            extra = "Retry-After: 1\r\n" if action == 429 else ""
            client.sendall(f"HTTP/1.1 {action} Injected\r\nContent-Type: application/json\r\n{extra}"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            request.outcome = str(action)
            return
        if action == "drop":
            request.outcome = "dropped"
            client.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(action, tuple) and action[0] == "stall":
            time.sleep(action[1])
        elif isinstance(action, tuple) and action[0] == "hold":
            action[1].wait(action[2] if len(action) > 2 else 60)
            if _gone(client):   # the client died while held: its request never reaches the registry
                request.outcome = "client gone"
                return
        host, _, port = self.backend.partition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            request.outcome = "backend down: dropped"
            client.shutdown(socket.SHUT_RDWR)
            return
        with upstream:
            kept = [line for line in lines[1:] if line.split(":", 1)[0].strip().lower() not in
                    ("connection", "keep-alive", "proxy-connection")]
            upstream.sendall(("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + rest)
            self._pipe(client, upstream, request)

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket, request: Request) -> None:
        """Bytes both ways until the registry has answered and hung up."""
        sockets = [client, upstream]
        first = True
        while True:
            ready, _, _ = select.select(sockets, [], [], 300)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if s is upstream:
                    if not data:
                        return
                    if first:
                        request.outcome = data.split(b" ", 2)[1].decode("latin-1")
                        first = False
                    client.sendall(data)
                elif data:
                    upstream.sendall(data)
                else:
                    sockets = [upstream]   # the client sent all it will; the answer still comes


def _gone(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        return client.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        client.setblocking(True)


class _DropHandler(http.server.BaseHTTPRequestHandler):
    server: Dropper

    def log_message(self, *args):   # quiet
        pass

    def do_GET(self, head_only: bool = False):
        server = self.server
        with server.lock:
            server.asked[self.path] = server.asked.get(self.path, 0) + 1
            dropped = server.drop(self.path, server.asked[self.path])
            server.log.append((self.path, "dropped" if dropped else "relayed"))
        if dropped:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        # Never from a cache: every run meets the faults (pip keeps index pages for minutes).
        relay(self, server.upstream + self.path[len(server.prefix):], head_only, server.opener, 120,
              keep=lambda name: name.lower() in ("content-type", "last-modified", "etag"),
              extra={"Cache-Control": "no-store"})

    def do_HEAD(self):
        self.do_GET(head_only=True)


class Dropper(http.server.ThreadingHTTPServer):
    """Serves prefix/... from upstream/... on host:0 (HTTPS with tls=(cert, key)), dropping a
    request's connection unanswered where drop(path, how many times that path was asked) says."""

    daemon_threads = True

    def __init__(self, host: str, prefix: str, upstream: str, drop: Callable[[str, int], bool],
                 tls: tuple[Path, Path] | None = None):
        super().__init__((host, 0), _DropHandler)
        self.port = self.server_address[1]
        self.prefix, self.upstream, self.drop = prefix.rstrip("/"), upstream.rstrip("/"), drop
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}{self.prefix}"
        self.asked: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        # To upstream directly (the host's own trust and network), never through a test proxy.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def dropped(self) -> int:
        return sum(1 for _, what in self.log if what == "dropped")
