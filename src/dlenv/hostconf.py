"""What the host itself is configured with: its apt sources, pip index and CA bundle.

dlenv's defaults come from here (or from the tools' own built-in defaults), never from
host names written into the project.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import ssl
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dlenv.errors import DlenvError

APT_DIRS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def os_release(root: Path = Path("/")) -> dict[str, str]:
    data: dict[str, str] = {}
    for name in ("etc/os-release", "usr/lib/os-release"):
        path = root / name
        if path.exists():
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    data[key.strip()] = value.strip().strip('"')
            break
    return data


def apt_uris() -> list[str]:
    """The archive URIs of the host's enabled apt sources, in the order apt reads them."""
    files: list[Path] = []
    for entry in APT_DIRS:
        if entry.is_dir():
            files += sorted(p for p in entry.iterdir() if p.suffix in (".list", ".sources"))
        elif entry.exists():
            files.append(entry)
    uris: list[str] = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                if re.search(r"^Enabled:\s*no", stanza, re.M | re.I):
                    continue
                match = re.search(r"^URIs:\s*(.+)$", stanza, re.M)
                if match:
                    uris += match.group(1).split()
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if parts and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if rest:
                        uris.append(rest[0])
    seen: list[str] = []
    for uri in uris:
        if uri not in seen:
            seen.append(uri.rstrip("/"))
    return seen


def debian_mirror() -> str | None:
    """The host's Debian archive (not its security archive), if the host is Debian."""
    if os_release().get("ID") != "debian":
        return None
    for uri in apt_uris():
        if uri.startswith(("http://", "https://")) and not uri.endswith("-security"):
            return uri
    return None


def debian_security_mirror() -> str | None:
    """The host's Debian security archive, if the host is Debian and uses one."""
    if os_release().get("ID") != "debian":
        return None
    return next((u for u in apt_uris() if u.startswith(("http://", "https://")) and u.endswith("-security")), None)


def pip_index() -> str | None:
    """The index-url the host's pip is configured with, if any (else pip's built-in default)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    # pip's own order: site-wide, then the user's, then PIP_CONFIG_FILE; the last one wins.
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"),
             Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    found = None
    for path in files:
        if path.exists():
            parser = configparser.ConfigParser()
            try:
                parser.read(path)
            except configparser.Error:
                continue
            for section in ("global", "install", "download"):
                if parser.has_option(section, "index-url"):
                    found = parser.get(section, "index-url")
    return found


def pip_default_index() -> str:
    """pip's own built-in default index, read from pip rather than written here."""
    try:
        out = subprocess.run(
            ["python3", "-c", "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def ca_bundle(environ: Mapping[str, str] | None = None) -> Path | None:
    """The CA bundle the host trusts (it may include a TLS-intercepting proxy's CA)."""
    environ = os.environ if environ is None else environ
    candidates = [environ.get("SSL_CERT_FILE"), environ.get("PIP_CERT"),
                  ssl.get_default_verify_paths().openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Network:
    """Proxies and CA trust for one run, as data: handed to the processes and requests that go
    out (mmdebstrap, buildx, dockerd, urllib), never written into this process's environment."""

    proxies: tuple[tuple[str, str], ...] = ()   # HTTP(S)_PROXY, NO_PROXY in both spellings
    ca_file: Path | None = None                  # the host's bundle plus an extra CA, if one was given

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a child process: base (default: this process's) with the proxies
        and CA bundle over it."""
        out = dict(os.environ if base is None else base)
        out.update(self.proxies)
        if self.ca_file:
            out["SSL_CERT_FILE"] = str(self.ca_file)
        return out

    def ca(self) -> Path | None:
        """The bundle builds and requests trust."""
        return self.ca_file or ca_bundle()

    def urlopen(self, request: str | urllib.request.Request, timeout: float):
        """urllib's urlopen through these proxies (loopback direct) and this CA bundle."""
        mine = dict(self.proxies)
        bypass = mine.get("NO_PROXY", "")
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        host = urllib.parse.urlsplit(url).hostname or ""
        proxies = {} if _bypassed(host, bypass) else {
            scheme: value for scheme, name in (("http", "HTTP_PROXY"), ("https", "HTTPS_PROXY"))
            if (value := mine.get(name))}
        context = ssl.create_default_context(cafile=str(self.ca()) if self.ca() else None)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies),
                                             urllib.request.HTTPSHandler(context=context))
        return opener.open(request, timeout=timeout)


def _bypassed(host: str, no_proxy: str) -> bool:
    for entry in filter(None, (e.strip() for e in no_proxy.split(","))):
        if entry == "*" or host == entry or host.endswith("." + entry.lstrip(".*")):
            return True
    return False


def network(http: str | None, https: str | None, no: str | None, extra_ca: Path | None,
            environ: Mapping[str, str] | None = None) -> Network:
    """The run's proxies (each already resolved: flag, else matrix.yaml, else the environment)
    and CA bundle. Loopback stays direct (the local registry). An extra CA bundle (a PEM file,
    as config validated it) is appended to the host's in a file of its own: pip's build secret
    and the reachability checks trust it.
    """
    environ = os.environ if environ is None else environ
    given = {"HTTP_PROXY": http, "HTTPS_PROXY": https, "NO_PROXY": no}
    values = {name: value for name, value in given.items() if value}
    if values.get("HTTP_PROXY") or values.get("HTTPS_PROXY"):
        direct = [h for h in values.get("NO_PROXY", "").split(",") if h]
        values["NO_PROXY"] = ",".join(direct + [h for h in LOOPBACK if h not in direct])
    proxies = tuple(pair for name, value in values.items() for pair in ((name, value), (name.lower(), value)))
    if not extra_ca:
        return Network(proxies)
    try:
        extra = extra_ca.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DlenvError(f"CA bundle {extra_ca}: cannot be read ({exc.__class__.__name__})",
                         "give a PEM file (--ca-bundle, proxy.ca_bundle)") from None
    host = ca_bundle(environ)
    text = (host.read_text() if host else "") + "\n" + extra
    # Named by content and kept: `dlenv bake` prints a definition that names this file.
    combined = Path(tempfile.gettempdir()) / f"dlenv-ca-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pem"
    combined.write_text(text)
    return Network(proxies, combined)
