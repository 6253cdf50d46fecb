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


def ca_bundle() -> Path | None:
    """The CA bundle the host trusts (it may include a TLS-intercepting proxy's CA)."""
    candidates = [os.environ.get("SSL_CERT_FILE"), os.environ.get("PIP_CERT"),
                  ssl.get_default_verify_paths().openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def use_network(http: str | None, https: str | None, no: str | None,
                extra_ca: Path | None) -> tuple[tuple[str, str], ...]:
    """Make proxies and an extra CA bundle this process's own, and return the proxy build args.

    Each proxy comes from the argument (command line or matrix.yaml) or else the environment.
    They are put in this process's environment, so urllib (reachability, the registry API),
    mmdebstrap and docker use them too, with loopback kept direct (the local registry). An
    extra CA bundle is appended to the host's in a file that SSL_CERT_FILE then names: pip's
    build secret (ca_bundle()) and the reachability checks trust it.
    """
    given = {"HTTP_PROXY": http, "HTTPS_PROXY": https, "NO_PROXY": no}
    args = []
    for name, value in given.items():
        value = value or os.environ.get(name) or os.environ.get(name.lower())
        if value:
            args += [(name, value), (name.lower(), value)]
            os.environ[name] = os.environ[name.lower()] = value
    if os.environ.get("HTTP_PROXY") or os.environ.get("HTTPS_PROXY"):
        direct = [h for h in os.environ.get("NO_PROXY", "").split(",") if h]
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(direct + [h for h in LOOPBACK if h not in direct])
    if extra_ca:
        try:
            extra = extra_ca.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise DlenvError(f"CA bundle {extra_ca}: cannot be read ({exc.__class__.__name__})",
                             "give a PEM file (--ca-bundle, proxy.ca_bundle)") from None
        if "-----BEGIN CERTIFICATE-----" not in extra:
            raise DlenvError(f"CA bundle {extra_ca}: no PEM certificate in it", "give a PEM file of CA certificates")
        host = ca_bundle()
        text = (host.read_text() if host else "") + "\n" + extra
        # Named by content and kept: `dlenv bake` prints a definition that names this file.
        combined = Path(tempfile.gettempdir()) / f"dlenv-ca-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pem"
        combined.write_text(text)
        os.environ["SSL_CERT_FILE"] = str(combined)
    return tuple(args)
