"""Tags and labels: what a variant is called in the registry and what it says about itself.

The build id comes from git (commit date and sha), so the same commit always yields the same
tags and labels: the bake definition is byte-identical and a rebuild pushes nothing new.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class BuildInfo:
    """What identifies one build of the family: the commit and when it was made."""

    build: str      # e.g. 20261129-2a642d1
    date: str       # 20261129
    sha: str        # short sha, or "local" outside git
    revision: str   # full sha, or "" outside git
    epoch: int      # commit time: SOURCE_DATE_EPOCH and the `created` label
    source: str     # repository URL for org.opencontainers.image.source ("" if unknown)

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(root: Path, *args: str) -> str | None:
    try:
        # safe.directory: run as root (sudo, in CI) in a checkout another user owns, git would
        # refuse, and the build id would silently differ from the other jobs' of the same commit.
        out = subprocess.run(["git", "-c", f"safe.directory={root}", "-C", str(root), *args],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_info(root: Path, override: str | None = None, source: str | None = None, suffix: str = "") -> BuildInfo:
    """override replaces the build id; suffix is appended to it (a scheduled rebuild of a commit)."""
    revision = _git(root, "rev-parse", "HEAD") or ""
    epoch = int(_git(root, "log", "-1", "--format=%ct") or 0)
    date = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y%m%d") if epoch else "00000000"
    sha = revision[:7] or "local"
    if revision:
        # A dirty tree gets its own id, derived from its changes: an immutable tag never names
        # two different trees.
        status = _git(root, "status", "--porcelain") or ""
        if status:
            digest = hashlib.sha256((_git(root, "diff", "HEAD") or "").encode())
            for name in sorted((_git(root, "ls-files", "--others", "--exclude-standard") or "").splitlines()):
                digest.update(name.encode())
                try:
                    digest.update((root / name).read_bytes())
                except OSError:
                    pass
            sha += "-d" + digest.hexdigest()[:6]
    remote = source or _git(root, "remote", "get-url", "origin") or ""
    remote = re.sub(r"^git@([^:]+):", r"https://\1/", remote).removesuffix(".git")
    remote = re.sub(r"//[^/@]+@", "//", remote)  # never a token from a remote URL
    build = (override or f"{date}-{sha}") + suffix
    return BuildInfo(build, date, sha, revision, epoch, remote)


def render(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


def valid_tag(tag: str) -> bool:
    return bool(TAG.match(tag))


def platform_tag(tag: str, platform: str) -> str:
    """The tag one platform's image is pushed under before the merge: linux/arm64 ->
    TAG-arm64. A release builds each platform on its own machine, then `dlenv merge` joins the
    platform tags of a variant into one index under TAG."""
    return f"{tag}-{platform.rsplit('/', 1)[-1]}"
