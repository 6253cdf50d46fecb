"""A forward proxy and a Debian mirror in one small server, for the engine tests: it records who
asked for what, so a test can prove a build used the mirror and the proxy it was given."""

from __future__ import annotations

import http.server
import select
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

# Hop-by-hop and length headers are the server's own business.
SKIP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length"}
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def relay(handler: http.server.BaseHTTPRequestHandler, url: str, head_only: bool, opener: urllib.request.OpenerDirector,
          timeout: float, keep: Callable[[str], bool] = lambda name: name.lower() not in SKIP,
          extra: dict[str, str] | None = None) -> None:
    """Answer handler's request with url's answer (a GET or HEAD of it through opener): its
    status, the headers keep takes, extra ones, and its body; 502 when url cannot be reached."""
    request = urllib.request.Request(url, method="HEAD" if head_only else "GET")
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        response = exc
    except OSError:
        handler.send_error(502)
        return
    body = b"" if head_only else response.read()
    handler.send_response(response.status if hasattr(response, "status") else response.code)
    for name, value in response.headers.items():
        if keep(name):
            handler.send_header(name, value)
    for name, value in (extra or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", response.headers.get("Content-Length", "0") if head_only else str(len(body)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    if not head_only:
        handler.wfile.write(body)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MirrorProxy

    def log_message(self, *args):  # quiet
        pass

    def do_CONNECT(self):
        host, _, port = self.path.rpartition(":")
        self.server.record("CONNECT", self.client_address[0], self.path, self.headers)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        sockets = [self.connection, upstream]
        try:
            while True:
                ready, _, _ = select.select(sockets, [], [], 60)
                if not ready:
                    break
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()

    def _relay(self, head_only: bool):
        parts = urlsplit(self.path)
        mine = not parts.netloc or parts.netloc == f"{self.server.public_host}:{self.server.port}"
        if mine:
            if not parts.path.startswith("/debian/"):
                self.send_error(404)
                return
            url = self.server.upstream + parts.path[len("/debian"):]
            self.server.record("MIRROR", self.client_address[0], parts.path, self.headers)
        else:
            url = self.path
            self.server.record("PROXY", self.client_address[0], self.path, self.headers)
        relay(self, url, head_only, DIRECT, 60)

    def do_GET(self):
        self._relay(False)

    def do_HEAD(self):
        self._relay(True)


class MirrorProxy(http.server.ThreadingHTTPServer):
    """Listens on public_host:0. As a proxy it forwards GET and tunnels CONNECT; paths under /debian/
    (asked of it directly or through itself) are served from the upstream Debian mirror."""

    daemon_threads = True

    def __init__(self, public_host: str, upstream: str):
        # Only on the address builds use (the bridge's gateway): no open proxy on other interfaces.
        super().__init__((public_host, 0), _Handler)
        self.public_host = public_host
        self.port = self.server_address[1]
        self.upstream = upstream.rstrip("/")
        self.log: list[tuple[str, str, str, str]] = []   # (kind, client address, target, Proxy-Authorization)
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def record(self, kind: str, client: str, target: str, headers) -> None:
        with self._lock:
            self.log.append((kind, client, target, headers.get("Proxy-Authorization", "")))
