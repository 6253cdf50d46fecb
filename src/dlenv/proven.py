"""What was already proven: smoke verdicts recorded beside the image they were run on.

A variant whose image (by digest) already passed the same checks (the same check definitions
and check files) on the same platform of its index and the same kind of runner (with or
without a GPU) is not tested again. The record is an OCI artifact in the image's own
repository, under a tag derived from the image's digest
(`sha256-<hex>.smoke-<arch>-<kind>-<checks>`, the OCI referrers tag scheme, which every
registry serves), whose one layer is the verdicts as JSON: the next run, a later release job
and any runner that can read the registry find it. Only a run where nothing failed is recorded.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import urllib.error

from dlenv import config, registry
from dlenv.config import CHECKS_DIR, Check
from dlenv.errors import DlenvError

ARTIFACT = "application/vnd.dlenv.smoke.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}   # "{}"


def fingerprint(checks: tuple[Check, ...]) -> str:
    """What the checks are: their definitions and the files they run (the CUDA probe's source,
    kernels, helper scripts). A change to any of them makes every image untested again."""
    h = hashlib.sha256()
    for check in checks:
        h.update(json.dumps(dataclasses.asdict(check), sort_keys=True).encode())
    for path in sorted(p for p in CHECKS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def tag(digest: str, kind: str, checks: str, platform: str) -> str:
    return f"{digest.replace(':', '-')}.smoke-{config.arch(platform)}-{kind}-{checks}"


def recall(host: str, repository: str, digest: str, kind: str, checks: str, platform: str) -> dict | None:
    """The recorded verdicts of platform's image of the index digest, or None when it was not
    proven this way."""
    with registry.reading(host):
        try:
            found, _ = registry.manifest(host, repository, tag(digest, kind, checks, platform))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        layer = next((entry for entry in found.get("layers", []) if entry.get("mediaType") == ARTIFACT), None)
        if not layer:
            return None
        try:
            return json.loads(registry.blob(host, repository, layer["digest"]))
        except ValueError:
            return None   # a record that cannot be read proves nothing: test again


def record(host: str, repository: str, digest: str, kind: str, checks: str, verdicts: list[dict],
           platform: str) -> None:
    """Record that platform's image of the index digest passed (nothing failed) these checks on
    this kind of runner."""
    if any(v["status"] == "failed" for v in verdicts):
        raise DlenvError("only a run where nothing failed is recorded as proven")
    data = json.dumps({"digest": digest, "platform": platform, "kind": kind, "checks": checks, "verdicts": verdicts,
                       "tested_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
                      sort_keys=True).encode()
    with registry.reading(host):
        registry.push_blob(host, repository, b"{}", EMPTY["mediaType"])
        layer = registry.push_blob(host, repository, data, ARTIFACT)
        subject, media_type = registry.raw_manifest(host, repository, digest)
        registry.put_manifest(host, repository, tag(digest, kind, checks, platform), {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": ARTIFACT, "config": EMPTY, "layers": [layer],
            "subject": {"mediaType": media_type, "digest": digest, "size": len(subject)},
            "annotations": {"org.opencontainers.image.created": json.loads(data)["tested_at"]}})
