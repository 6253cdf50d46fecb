"""A small client of the registry HTTP API (distribution v2): tags, manifests, sizes.

Used to read what a tag names (`digest`, with the one error policy every stage uses), to report
what was pushed (compressed size = what users download), to retag, and by the tests to read tags
back. Below the engine: it imports nothing that drives one. A registry may carry a path
(host/team): repositories live under it. Credentials come from the Docker client's config, as
`docker login` left them (plain or through a credential helper), and are traded for a token
where the registry asks for one (Bearer). A registry that answers 5xx or 429, is slow past the
timeout or drops the connection is asked again with backoff (retry.py), then the error is raised.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dlenv import retry
from dlenv.errors import DlenvError

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


TIMEOUT = 30   # seconds one request may take before it is given up (and tried again)


def base_url(registry: str) -> str:
    """The registry's base URL: plain HTTP on loopback (dlenv's own registry), HTTPS elsewhere."""
    host = registry.split("/")[0]
    local = host.startswith(("127.", "localhost"))
    return f"{'http' if local else 'https'}://{host}"


def _credentials(host: str) -> tuple[str, str] | None:
    """(user, secret) for host as `docker login` left them: config.json's auths, or a credential helper."""
    config = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    for key, value in data.get("auths", {}).items():
        if key.removeprefix("http://").removeprefix("https://").rstrip("/") == host and value.get("auth"):
            user, _, secret = base64.b64decode(value["auth"]).decode().partition(":")
            return user, secret
    helper = data.get("credHelpers", {}).get(host) or data.get("credsStore")
    if helper:
        try:
            out = subprocess.run([f"docker-credential-{helper}", "get"], input=host, capture_output=True, text=True,
                                 timeout=20)
            found = json.loads(out.stdout) if out.returncode == 0 else {}
        except (OSError, ValueError, subprocess.SubprocessError):
            found = {}
        if found.get("Secret"):
            return found.get("Username", ""), found["Secret"]
    return None


def _basic(user: tuple[str, str]) -> str:
    return f"Basic {base64.b64encode(':'.join(user).encode()).decode()}"


_TOKENS: dict[str, str] = {}


def _bearer(challenge: str, user: tuple[str, str] | None) -> str | None:
    """A token from the auth server a 401's `WWW-Authenticate: Bearer realm=...` names."""
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if "realm" not in params:
        return None
    query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
    key = f"{params['realm']}?{query}"
    if key not in _TOKENS:
        request = urllib.request.Request(f"{params['realm']}?{query}")
        if user:
            request.add_header("Authorization", _basic(user))
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.loads(response.read())
        _TOKENS[key] = f"Bearer {data.get('token') or data.get('access_token')}"
    return _TOKENS[key]


def _open(registry: str, path: str, accept: str = ACCEPT, method: str = "GET", data: bytes | None = None,
          content_type: str | None = None, user: tuple[str, str] | None = None, timeout: float = TIMEOUT):
    """A response for /v2/<the registry's path prefix>/<path>, logged in the way the registry asks."""
    host, _, prefix = registry.partition("/")
    url = path if path.startswith(("http://", "https://")) else f"{base_url(host)}/v2/{prefix + '/' if prefix else ''}{path}"
    user = user or _credentials(host)
    headers = {"Accept": accept, **({"Content-Type": content_type} if content_type else {})}

    auth = _basic(user) if user else None
    for _ in range(2):
        request = urllib.request.Request(url, method=method, data=data, headers=headers)
        if auth:
            request.add_header("Authorization", auth)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "") if exc.code == 401 else ""
            if not challenge.startswith("Bearer") or (auth or "").startswith("Bearer"):
                raise
            auth = _bearer(challenge, user)
    raise AssertionError("unreachable")


def _request(registry: str, path: str, accept: str = ACCEPT, method: str = "GET", data: bytes | None = None,
             content_type: str | None = None, user: tuple[str, str] | None = None,
             timeout: float | None = None) -> tuple[bytes, dict]:
    """The body and headers of one request, asked again (retry.py) while the registry answers
    5xx or 429, stalls past the timeout or drops the connection. Every request dlenv makes is
    safe to repeat: reads, and PUTs of content named by its digest."""
    def once() -> tuple[bytes, dict]:
        with _open(registry, path, accept, method, data, content_type, user, timeout or TIMEOUT) as response:
            return response.read(), dict(response.headers)

    return retry.call(once)


def _get(registry: str, path: str, accept: str = ACCEPT, user: tuple[str, str] | None = None) -> tuple[dict, dict]:
    body, headers = _request(registry, path, accept, user=user)
    return (json.loads(body) if body else {}), headers


def ping(registry: str) -> None:
    """Return when the registry answers its API root (a 401 counts: it is there and wants a
    login); raise urllib's error, after retries, when it does not."""
    def once() -> None:
        try:
            urllib.request.urlopen(f"{base_url(registry)}/v2/", timeout=TIMEOUT).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise

    retry.call(once)


def tags(registry: str, repository: str, user: tuple[str, str] | None = None) -> list[str]:
    try:
        data, _ = _get(registry, f"{repository}/tags/list", "application/json", user=user)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return sorted(data.get("tags") or [])


def manifest(registry: str, repository: str, reference: str,
             user: tuple[str, str] | None = None) -> tuple[dict, str]:
    """The manifest (or index) for a tag or digest, and its digest."""
    data, headers = _get(registry, f"{repository}/manifests/{reference}", user=user)
    return data, headers.get("Docker-Content-Digest", "")


@contextmanager
def reading(registry: str) -> Iterator[None]:
    """A registry that cannot be read, as one DlenvError with its fix (what every reader here says)."""
    try:
        yield
    except urllib.error.HTTPError as exc:
        raise DlenvError(f"the registry {registry} answered {exc.code} {exc.reason} for {exc.url}"
                         f"{retry.attempts(exc)}", "check the registry and its login (docker login)") from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, refused or dropped connections
        raise DlenvError(f"cannot reach the registry {registry}{retry.attempts(exc)}: "
                         f"{exc or exc.__class__.__name__}",
                         "start it (`dlenv engine up`) or name the right one with --registry") from None
    except ValueError as exc:  # an answer that is not JSON
        raise DlenvError(f"the registry {registry} answered something unreadable: {exc}",
                         "check that the registry speaks the distribution v2 API") from None


def split(ref: str) -> tuple[str, str, str]:
    """host/repository:tag or host/repository@digest -> (host, repository, tag or digest)."""
    name, at, pinned = ref.partition("@")
    if not at:
        name, colon, tag = ref.rpartition(":")
        if not colon or "/" in tag:
            raise ValueError(f"{ref}: no tag")
        pinned = tag
    host, _, repository = name.partition("/")
    return host, repository, pinned


def digest(ref: str) -> str | None:
    """The manifest (or index) digest ref names; None when the registry has no such tag.

    The one policy for "what is behind this tag": absent is None, and a registry that cannot be
    read (unreachable, refused, no digest header) is a DlenvError, never taken for absent.
    """
    host, repository, reference = split(ref)
    with reading(host):
        try:
            _, found = manifest(host, repository, reference)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
    if not found:
        raise DlenvError(f"the registry {host} named no digest for {ref}",
                         "use a registry that sends Docker-Content-Digest (distribution does)")
    return found


def _attestation(entry: dict) -> bool:
    return entry.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"


def index_platforms(index: dict) -> list[str]:
    """os/architecture of each image an index holds, in its order (attestations aside); a plain
    image manifest names none."""
    return [f"{p.get('os')}/{p.get('architecture')}" for entry in index.get("manifests", [])
            if (p := entry.get("platform")) and not _attestation(entry) and p.get("os") != "unknown"]


def image_manifest(registry: str, repository: str, reference: str,
                   user: tuple[str, str] | None = None, platform: str = "linux/amd64") -> dict:
    """platform's image manifest behind reference, following an index if there is one (a plain
    image manifest is the image, whatever its platform)."""
    data, _ = manifest(registry, repository, reference, user)
    if "manifests" not in data:
        return data
    want_os, _, want_arch = platform.partition("/")
    for entry in data["manifests"]:
        found = entry.get("platform", {})
        if found.get("architecture") in (want_arch, None) and found.get("os") in (want_os, None) \
                and not _attestation(entry):
            return image_manifest(registry, repository, entry["digest"], user, platform)
    raise DlenvError(f"{registry}/{repository}:{reference} has no {platform} image "
                     f"(its index holds {', '.join(index_platforms(data)) or 'none'})",
                     "pick a tag built for that platform (nox -s list shows each variant's platforms)")


def raw_manifest(registry: str, repository: str, reference: str,
                 user: tuple[str, str] | None = None) -> tuple[bytes, str]:
    """The manifest's bytes as the registry keeps them, and their media type."""
    body, headers = _request(registry, f"{repository}/manifests/{reference}", user=user)
    return body, headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json")


def retag(registry: str, repository: str, digest: str, tag: str, user: tuple[str, str] | None = None) -> None:
    """Point tag at the manifest digest, in the registry itself: the same bytes, no rebuild, no pull."""
    body, media_type = raw_manifest(registry, repository, digest, user)
    _request(registry, f"{repository}/manifests/{tag}", method="PUT", data=body, content_type=media_type, user=user)


def compressed_size(registry: str, repository: str, reference: str, platform: str = "linux/amd64") -> int:
    """What a pull of platform's image downloads: its layers and config, compressed."""
    return _pulled(image_manifest(registry, repository, reference, platform=platform))


def images(registry: str, repository: str, reference: str,
           user: tuple[str, str] | None = None) -> dict[str, tuple[str, int]]:
    """platform -> (its image manifest's digest, what a pull of it downloads: layers and config,
    compressed), for each image behind reference: every entry of an index (attestations aside),
    or the one image a plain manifest is (its platform read from its config)."""
    data, found = manifest(registry, repository, reference, user)
    if "manifests" not in data:
        config = json.loads(blob(registry, repository, data["config"]["digest"], user))
        return {f"{config.get('os')}/{config.get('architecture')}": (found, _pulled(data))}
    out = {}
    for entry in data["manifests"]:
        p = entry.get("platform") or {}
        if _attestation(entry) or p.get("os") == "unknown":
            continue
        image, _ = manifest(registry, repository, entry["digest"], user)
        out[f"{p.get('os')}/{p.get('architecture')}"] = (entry["digest"], _pulled(image))
    return out


def _pulled(image: dict) -> int:
    return sum(layer.get("size", 0) for layer in image.get("layers", [])) + image.get("config", {}).get("size", 0)


def blob(registry: str, repository: str, digest: str, user: tuple[str, str] | None = None) -> bytes:
    return _request(registry, f"{repository}/blobs/{digest}", "*/*", user=user, timeout=4 * TIMEOUT)[0]


def push_blob(registry: str, repository: str, data: bytes, media_type: str) -> dict:
    """Upload data as a blob (monolithic: POST, then PUT with its digest); its descriptor."""
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    location = _request(registry, f"{repository}/blobs/uploads/", "*/*", method="POST", data=b"")[1]["Location"]
    upload = location if location.startswith("http") else f"{base_url(registry.partition('/')[0])}{location}"
    _request(registry, f"{upload}{'&' if '?' in upload else '?'}digest={found}", "*/*", method="PUT", data=data,
             content_type="application/octet-stream", timeout=2 * TIMEOUT)
    return {"mediaType": media_type, "digest": found, "size": len(data)}


def put_manifest(registry: str, repository: str, tag: str, manifest_: dict) -> str:
    """Put an OCI manifest under tag; its digest."""
    body = json.dumps(manifest_, separators=(",", ":"), sort_keys=True).encode()
    _request(registry, f"{repository}/manifests/{tag}", method="PUT", data=body,
             content_type=manifest_["mediaType"])
    return "sha256:" + hashlib.sha256(body).hexdigest()
