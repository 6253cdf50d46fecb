"""OS root filesystems made with mmdebstrap from an apt mirror: no container registry needed.

A rootfs is cached under a key made of everything that goes into it (suite, mirror, packages),
so the bake graph's bootstrap node is rebuilt only when one of those changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dlenv.errors import EngineError

BASE_PACKAGES = ("ca-certificates",)


@dataclass(frozen=True)
class RootfsSpec:
    suite: str
    mirror: str
    packages: tuple[str, ...]
    security: str = ""   # the security archive; "" when there is none to use

    def sources(self) -> list[str]:
        """sources.list lines: the release, its updates and (where known) its security fixes.

        None without a mirror: mmdebstrap then uses its own default archive (and, for a stable
        release, its -updates and -security suites), e.g. on an Ubuntu CI runner.
        """
        if not self.mirror:
            return []
        lines = [f"deb {self.mirror} {self.suite} main", f"deb {self.mirror} {self.suite}-updates main"]
        if self.security:
            lines.append(f"deb {self.security} {self.suite}-security main")
        return lines

    @property
    def key(self) -> str:
        data = json.dumps({"sources": self.sources(), "packages": sorted(self.packages), "variant": "minbase"},
                          sort_keys=True)
        return f"{self.suite}-{hashlib.sha256(data.encode()).hexdigest()[:16]}"


def cache_root() -> Path:
    if os.environ.get("DLENV_CACHE"):
        return Path(os.environ["DLENV_CACHE"])
    base = Path("/var/cache/dlenv") if os.geteuid() == 0 else Path.home() / ".cache/dlenv"
    return base


def rootfs_dir(spec: RootfsSpec) -> Path:
    """The folder holding rootfs.tar for spec: the bake context of its bootstrap node."""
    return cache_root() / "rootfs" / spec.key


def ensure_rootfs(spec: RootfsSpec, say=print, env: dict[str, str] | None = None) -> Path:
    """The folder of spec's rootfs.tar, bootstrapped now if the cache does not hold it yet."""
    folder = rootfs_dir(spec)
    if not (folder / "rootfs.tar").exists():
        make_rootfs(spec, folder / "rootfs.tar", say, env)
    return folder


def make_rootfs(spec: RootfsSpec, tar: Path, say=print, env: dict[str, str] | None = None) -> Path:
    """Bootstrap spec into tar now, from the mirror as it is today (env: the run's environment,
    whose proxies reach mmdebstrap's apt)."""
    if not shutil.which("mmdebstrap"):
        from dlenv import engine

        # debian-archive-keyring: on Ubuntu (a CI runner) mmdebstrap needs Debian's keys too.
        engine.install_tools(["mmdebstrap", "debian-archive-keyring"], "OS rows with source: bootstrap", say)
    tar.parent.mkdir(parents=True, exist_ok=True)
    partial = tar.with_name(tar.name + ".partial")
    packages = ",".join(sorted(set(BASE_PACKAGES) | set(spec.packages)))
    source = spec.mirror or "mmdebstrap's default archive"
    say(f"dlenv: bootstrapping {spec.suite} from {source} with mmdebstrap")
    started = time.monotonic()
    env = dict(os.environ if env is None else env)
    # Fixed timestamps in the tarball: the same inputs give the same rootfs layer.
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    out = subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={packages}", "--format=tar",
         "--aptopt=Acquire::Retries \"3\"", spec.suite, str(partial), *spec.sources()],
        capture_output=True, text=True, env=env,
    )
    if out.returncode != 0:
        partial.unlink(missing_ok=True)
        log = cache_root() / f"mmdebstrap-{spec.key}.log"
        log.write_text(out.stderr)
        # The first error says what went wrong; mmdebstrap's last line only that it failed.
        errors = [line for line in out.stderr.splitlines() if line.startswith("E:")] or \
            [line for line in out.stderr.splitlines() if line.strip()][-1:] or ["?"]
        raise EngineError(f"mmdebstrap {spec.suite} from {source} failed: {errors[0]} (log: {log})",
                          "check the apt mirror (mirrors.apt in matrix.yaml)")
    partial.rename(tar)
    say(f"dlenv: {spec.suite} rootfs ready in {time.monotonic() - started:.0f}s ({tar.stat().st_size >> 20} MiB)")
    return tar
