"""What a corporate network does to HTTPS, on this host, for the engine tests: a proxy that
answers CONNECT, terminates TLS with a certificate it mints for the host asked for (signed by its
own throw-away CA) and relays each request to the real server over TLS; and a small HTTPS package
index (PyPI's simple API) as that real server, so nothing leaves the machine."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import secrets
import ssl
import subprocess
import threading
import zipfile
from pathlib import Path

# Hop-by-hop and length headers are the relaying server's own business.
SKIP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length"}


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A throw-away certificate authority: (certificate, key)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def mint(folder: Path, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    """A server certificate for san ('DNS:host' or 'IP:address') signed by ca: (certificate, key).
    With the extensions strict verifiers (rustls in uv, Python 3.13's X509_STRICT) ask for."""
    stem = folder / f"server-{secrets.token_hex(4)}"
    cert, key, csr, ext = (stem.with_suffix(s) for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={san.split(':', 1)[1]}",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                    "-set_serial", str(secrets.randbits(63)), "-days", "1", "-extfile", str(ext), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def wheel(name: str, version: str, module: str, source: str) -> tuple[str, bytes]:
    """A pure-Python wheel holding module/__init__.py: (file name, bytes)."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {f"{module}/__init__.py": source.encode(),
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: dlenv-tests\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}.dist-info/RECORD,,\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for path, data in {**files, f"{dist}.dist-info/RECORD": record.encode()}.items():
            archive.writestr(path, data)
    return f"{dist}-py3-none-any.whl", out.getvalue()


def _serve(server: http.server.HTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


class _IndexHandler(http.server.BaseHTTPRequestHandler):
    server: PackageIndex

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self, head_only: bool = False):
        self.server.requests.append(self.path)
        body = self.server.pages.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if self.path.endswith("/") else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_HEAD(self):   # uv asks before it downloads
        self.do_GET(head_only=True)


class PackageIndex(http.server.ThreadingHTTPServer):
    """PyPI's simple API over HTTPS on loopback, for the wheels given ({project name: (file, bytes)})."""

    daemon_threads = True

    def __init__(self, cert: tuple[Path, Path], wheels: dict[str, tuple[str, bytes]]):
        super().__init__(("127.0.0.1", 0), _IndexHandler)
        self.port = self.server_address[1]
        self.requests: list[str] = []
        self.pages: dict[str, bytes] = {}
        for project, (filename, data) in wheels.items():
            digest = hashlib.sha256(data).hexdigest()
            self.pages[f"/simple/{project}/"] = (f'<html><body><a href="/files/{filename}#sha256={digest}">{filename}</a>'
                                                 "</body></html>").encode()
            self.pages[f"/files/{filename}"] = data
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        _serve(self)


class _Tunnel:
    """What the handler of one intercepted connection needs: the proxy, and the host asked for."""

    def __init__(self, proxy: InterceptingProxy, host: str):
        self.proxy, self.host = proxy, host


class _InterceptedHandler(http.server.BaseHTTPRequestHandler):
    """Requests read from the client inside the TLS the proxy terminated, relayed upstream."""

    protocol_version = "HTTP/1.1"
    server: _Tunnel   # type: ignore[assignment]

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        proxy = self.server.proxy
        address, port = proxy.routes[self.server.host]
        proxy.record(self.command, self.client_address[0], f"{self.server.host}{self.path}")
        upstream = http.client.HTTPSConnection(address, port, context=proxy.upstream_context, timeout=60)
        try:
            upstream.request(self.command, self.path,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in SKIP})
            response = upstream.getresponse()
            body = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in SKIP:
                self.send_header(name, value)
        self.send_header("Content-Length", response.headers.get("Content-Length", "0") if self.command == "HEAD"
                         else str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: InterceptingProxy

    def log_message(self, *args):  # quiet
        pass

    def do_CONNECT(self):
        host, _, _port = self.path.rpartition(":")
        self.server.record("CONNECT", self.client_address[0], self.path)
        self.close_connection = True
        if host not in self.server.routes:   # an open proxy to the world it is not
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            tls = self.server.context_for(host).wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # The client did not trust the minted certificate and hung up: what a container
            # without the proxy's CA does.
            self.server.record("REFUSED", self.client_address[0], f"{host}: {exc.__class__.__name__}")
            return
        self.server.record("INTERCEPTED", self.client_address[0], host)
        try:
            _InterceptedHandler(tls, self.client_address, _Tunnel(self.server, host))
        except (ssl.SSLError, OSError):
            pass   # the client went away mid-request
        finally:
            tls.close()


class InterceptingProxy(http.server.ThreadingHTTPServer):
    """Listens on bind_host:0. For CONNECT to a host in routes ({host: (address, port)}) it presents
    a certificate minted for that host by ca and relays what it decrypts to the route's address,
    trusting upstream_ca there. log: (kind, client address, target)."""

    daemon_threads = True

    def __init__(self, bind_host: str, ca: tuple[Path, Path], folder: Path, routes: dict[str, tuple[str, int]],
                 upstream_ca: Path):
        # Only on the address containers use (the bridge's gateway): no open proxy elsewhere.
        super().__init__((bind_host, 0), _ProxyHandler)
        self.port = self.server_address[1]
        self.ca, self.folder, self.routes = ca, folder, routes
        self.upstream_context = ssl.create_default_context(cafile=str(upstream_ca))
        self.log: list[tuple[str, str, str]] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        _serve(self)

    def context_for(self, host: str) -> ssl.SSLContext:
        with self._lock:
            if host not in self._contexts:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(*mint(self.folder, self.ca, f"DNS:{host}"))
                self._contexts[host] = context
            return self._contexts[host]

    def record(self, kind: str, client: str, target: str) -> None:
        with self._lock:
            self.log.append((kind, client, target))
