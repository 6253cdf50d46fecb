"""A small client of the registry HTTP API (distribution v2): tags, manifests, sizes.

Used to report what was pushed (compressed size = what users download) and by the tests to
read tags back. Credentials come from the Docker client's config, as `docker login` left them.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from dlenv.engine import registry_url

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def _auth(registry: str) -> str | None:
    config = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        auths = json.loads(config.read_text()).get("auths", {})
    except (OSError, ValueError):
        return None
    host = registry.split("/")[0]
    for key, value in auths.items():
        if key.removeprefix("http://").removeprefix("https://").rstrip("/") == host and value.get("auth"):
            return f"Basic {value['auth']}"
    return None


def _request(registry: str, path: str, accept: str = ACCEPT, method: str = "GET", data: bytes | None = None,
             content_type: str | None = None, user: tuple[str, str] | None = None) -> tuple[bytes, dict]:
    headers = {"Accept": accept}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(f"{registry_url(registry)}/v2/{path}", method=method, data=data, headers=headers)
    auth = f"Basic {base64.b64encode(':'.join(user).encode()).decode()}" if user else _auth(registry)
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read(), dict(response.headers)


def _get(registry: str, path: str, accept: str = ACCEPT, user: tuple[str, str] | None = None) -> tuple[dict, dict]:
    body, headers = _request(registry, path, accept, user=user)
    return (json.loads(body) if body else {}), headers


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


def image_manifest(registry: str, repository: str, reference: str,
                   user: tuple[str, str] | None = None) -> dict:
    """The linux/amd64 image manifest behind reference, following an index if there is one."""
    data, _ = manifest(registry, repository, reference, user)
    if "manifests" in data:
        for entry in data["manifests"]:
            platform = entry.get("platform", {})
            if platform.get("architecture") in ("amd64", None) and platform.get("os") in ("linux", None) \
                    and entry.get("annotations", {}).get("vnd.docker.reference.type") != "attestation-manifest":
                return image_manifest(registry, repository, entry["digest"], user)
    return data


def retag(registry: str, repository: str, digest: str, tag: str, user: tuple[str, str] | None = None) -> None:
    """Point tag at the manifest digest, in the registry itself: the same bytes, no rebuild, no pull."""
    body, headers = _request(registry, f"{repository}/manifests/{digest}", user=user)
    _request(registry, f"{repository}/manifests/{tag}", method="PUT", data=body,
             content_type=headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json"), user=user)


def compressed_size(registry: str, repository: str, reference: str) -> int:
    data = image_manifest(registry, repository, reference)
    return sum(layer.get("size", 0) for layer in data.get("layers", [])) + data.get("config", {}).get("size", 0)


def blob(registry: str, repository: str, digest: str, user: tuple[str, str] | None = None) -> bytes:
    request = urllib.request.Request(f"{registry_url(registry)}/v2/{repository}/blobs/{digest}")
    auth = f"Basic {base64.b64encode(':'.join(user).encode()).decode()}" if user else _auth(registry)
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()
