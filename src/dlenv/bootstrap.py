"""OS root filesystems made with mmdebstrap from an apt mirror: no container registry needed.

A rootfs is cached under a key made of everything that goes into it (suite, mirror, packages),
so the bake graph's bootstrap node is rebuilt only when one of those changes. Its folder holds
one tarball per Debian architecture (the bootstrap node's Dockerfile ADDs the one of BuildKit's
TARGETARCH); a foreign architecture is bootstrapped under QEMU (arch-test checks that it can).
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
    # Debian's architectures, a tarball each: those of the node's platforms. Not in the key: one
    # folder, the bake context of a node built for several platforms, holds them all.
    architectures: tuple[str, ...] = ("amd64",)

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
    """The folder holding spec's tarballs: the bake context of its bootstrap node."""
    return cache_root() / "rootfs" / spec.key


def rootfs_tar(spec: RootfsSpec, architecture: str) -> Path:
    """amd64's keeps the name it had before there were platforms (images/os-bootstrap/Dockerfile):
    its layer, and every layer built on it, keep their cache keys."""
    return rootfs_dir(spec) / ("rootfs.tar" if architecture == "amd64" else f"rootfs-{architecture}.tar")


def ensure_rootfs(spec: RootfsSpec, say=print, env: dict[str, str] | None = None) -> Path:
    """The folder of spec's rootfs tarballs, each architecture's bootstrapped now if the cache
    does not hold it yet."""
    for architecture in spec.architectures:
        ensure_architecture(spec, architecture, say, env)
    return rootfs_dir(spec)


def staged(spec: RootfsSpec, architecture: str) -> Path:
    """Where a tarball bootstrapped beside a bake waits, outside its folder, until no bake reads
    that folder: a bake running meanwhile then sees its context folder as it started (BuildKit
    sends a local context whole, a new 200 MB tarball with it)."""
    tar = rootfs_tar(spec, architecture)
    return tar.parent.with_name(f"{tar.parent.name}-{tar.name}")


def ensure_architecture(spec: RootfsSpec, architecture: str, say=print, env: dict[str, str] | None = None) -> Path:
    """spec's tarball for one architecture, bootstrapped now if the cache does not hold it yet."""
    tar = rootfs_tar(spec, architecture)
    return tar if tar.exists() else make_rootfs(spec, architecture, tar, say, env)


def native_architecture() -> str:
    """This host's Debian architecture (amd64, arm64)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def make_rootfs(spec: RootfsSpec, architecture: str, tar: Path, say=print,
                env: dict[str, str] | None = None) -> Path:
    """Bootstrap spec for a Debian architecture into tar now, from the mirror as it is today
    (env: the run's environment, whose proxies reach mmdebstrap's apt)."""
    from dlenv import engine

    if not shutil.which("mmdebstrap"):
        # debian-archive-keyring: on Ubuntu (a CI runner) mmdebstrap needs Debian's keys too.
        engine.install_tools(["mmdebstrap", "debian-archive-keyring"], "OS rows with source: bootstrap", say)
    if architecture != native_architecture():
        # mmdebstrap runs the foreign packages' scripts under QEMU; arch-test tells it that it can.
        if not shutil.which("arch-test"):
            engine.install_tools(["arch-test"], f"mmdebstrap for {architecture} on this host", say)
        try:
            engine.register_emulator(f"linux/{architecture}", say)
        except EngineError as exc:
            raise EngineError(f"cannot bootstrap {spec.suite} for {architecture}: {exc.message}", exc.fix) from None
    tar.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the folder, not in it: the folder is a bake context, maybe in use meanwhile.
    partial = tar.parent.with_name(f"{tar.parent.name}-{tar.name}.partial")
    packages = ",".join(sorted(set(BASE_PACKAGES) | set(spec.packages)))
    source = spec.mirror or "mmdebstrap's default archive"
    say(f"dlenv: bootstrapping {spec.suite} ({architecture}) from {source} with mmdebstrap")
    started = time.monotonic()
    env = dict(os.environ if env is None else env)
    # Fixed timestamps in the tarball: the same inputs give the same rootfs layer.
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    # A foreign bootstrap runs beside the native bakes (build.bootstraps), not niced: the
    # variants built on it are a chain of their own that waits for it.
    out = subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--architectures={architecture}", f"--include={packages}", "--format=tar",
         "--aptopt=Acquire::Retries \"3\"", spec.suite, str(partial), *spec.sources()],
        capture_output=True, text=True, env=env,
    )
    if out.returncode != 0:
        partial.unlink(missing_ok=True)
        log = cache_root() / f"mmdebstrap-{spec.key}-{architecture}.log"
        log.write_text(out.stderr)
        # The first error says what went wrong; mmdebstrap's last line only that it failed.
        errors = [line for line in out.stderr.splitlines() if line.startswith("E:")] or \
            [line for line in out.stderr.splitlines() if line.strip()][-1:] or ["?"]
        raise EngineError(f"mmdebstrap {spec.suite} ({architecture}) from {source} failed: {errors[0]} (log: {log})",
                          "check the apt mirror (mirrors.apt in matrix.yaml)")
    partial.rename(tar)
    say(f"dlenv: {spec.suite} ({architecture}) rootfs ready in {time.monotonic() - started:.0f}s "
        f"({tar.stat().st_size >> 20} MiB)")
    return tar
