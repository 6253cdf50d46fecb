"""Pinned bases: every external input of the family resolved to a digest, in a lock file.

`dlenv lock` (`nox -s lock`) writes `<matrix>.lock.json` next to the matrix. Builds read it:
base images (nvidia/cuda, OS images) are pulled by digest, so an upstream tag rebuilt with new
driver requirements, or deleted after its end of life, changes nothing here; each bootstrapped
OS rootfs is compared with the package versions it was locked with. A missing or stale entry is
reported with its fix; `--locked` (the release pipeline) makes any of them an error.

Per platform: an image's digest is its index's, which pins the image of every platform (the
lock says where one the plan needs is missing from it); each OS bootstrap is locked per platform
(version 2; a version 1 file, from before platforms, is read as linux/amd64's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dlenv import bootstrap, config, registry
from dlenv.errors import ConfigError, DlenvError
from dlenv.options import LockRequest
from dlenv.plan import Plan
from dlenv.rootfs_run import sha256

VERSION = 2
READS = (1, 2)
FIX = "run `nox -s lock` and commit the lock file"
# Version 1 locked one bootstrap per OS, before a family had platforms: it was this one's.
V1_PLATFORM = "linux/amd64"


@dataclass(frozen=True)
class RootfsLock:
    suite: str
    packages: tuple[str, ...]       # name=version, sorted
    sha256: str                     # of rootfs.tar

    def to_json(self) -> dict:
        # Not the mirror: it is this host's choice (its own apt sources), not part of the base.
        return {"suite": self.suite, "sha256": self.sha256, "packages": list(self.packages)}


@dataclass(frozen=True)
class Lock:
    images: dict[str, str]                       # upstream image name -> manifest (index) digest
    rootfs: dict[tuple[str, str], RootfsLock]    # (OS name in matrix.yaml, platform) -> its bootstrap

    def to_json(self) -> dict:
        by_os: dict[str, dict] = {}
        for (os_key, platform), found in sorted(self.rootfs.items()):
            by_os.setdefault(os_key, {})[platform] = found.to_json()
        return {"version": VERSION, "images": dict(sorted(self.images.items())), "rootfs": by_os}


@dataclass(frozen=True)
class Problem:
    what: str       # the image or OS concerned
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def path_for(matrix_file: str | Path) -> Path:
    path = Path(matrix_file)
    return path.with_name(f"{path.stem}.lock.json")


def read(path: Path) -> Lock | None:
    """The lock at path, None if there is none; a malformed one is a config error."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") not in READS:
            raise ValueError(f"version {data.get('version')!r}, this dlenv reads versions "
                             f"{', '.join(map(str, READS))}")
        images = {str(k): str(v) for k, v in data["images"].items()}
        for name, digest in images.items():
            if not digest.startswith("sha256:") or len(digest) != 71:
                raise ValueError(f"images.{name} is not a sha256 digest")
        by_platform = {k: ({V1_PLATFORM: v} if data["version"] == 1 else v) for k, v in data["rootfs"].items()}
        rootfs = {(str(k), str(p)): RootfsLock(v["suite"], tuple(v["packages"]), v["sha256"])
                  for k, platforms in by_platform.items() for p, v in platforms.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        raise ConfigError(str(path), line, "lock", f"not a dlenv lock file ({exc}); {FIX}") from None
    return Lock(images, rootfs)


def write(path: Path, lock: Lock) -> None:
    path.write_text(json.dumps(lock.to_json(), indent=2) + "\n")


def dpkg_packages(tar: Path) -> tuple[str, ...]:
    """name=version of every package installed in a rootfs tarball."""
    with tarfile.open(tar) as archive:
        member = next(m for m in archive.getmembers() if m.name.lstrip("./") == "var/lib/dpkg/status")
        text = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status", "").endswith(" installed"):
            out.append(f"{fields['Package']}={fields['Version']}")
    return tuple(sorted(out))


def resolve_image(ref: str, env: dict[str, str] | None = None,
                  platforms: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """(digest, "") of what ref names now, or (None, why not); env: the run's proxies. An index
    that lacks one of platforms is not resolved: the digest would pin no image for it."""
    try:
        out = subprocess.run(["docker", "buildx", "imagetools", "inspect", "--format", "{{json .Manifest}}", ref],
                             capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    try:
        found = json.loads(out.stdout) if out.returncode == 0 else {}
    except ValueError:
        found = {}
    digest = str(found.get("digest", ""))
    if digest.startswith("sha256:"):
        # A plain image manifest does not say its platform: only an index can lack one.
        missing = [p for p in platforms if "manifests" in found and p not in registry.index_platforms(found)]
        if missing:
            return None, f"its index {digest[:19]} has no image for {', '.join(missing)}"
        return digest, ""
    last = [line for line in out.stderr.strip().splitlines() if line.strip()][-1:] or ["no digest"]
    return None, last[0].rsplit(": ", 1)[-1][:160]


def _rootfs_nodes(plan: Plan) -> dict[str, str]:
    """OS name -> its bootstrap node, for the OS rows of the plan that are bootstrapped."""
    return {v.os: v.chain[0] for v in plan.variants if plan.nodes[v.chain[0]].kind == "rootfs"}


def _bootstraps(plan: Plan) -> list[tuple[str, str]]:
    """(OS name, platform) of every bootstrap the plan builds on."""
    return sorted((os_key, p) for os_key, name in _rootfs_nodes(plan).items() for p in plan.nodes[name].platforms)


def _images(plan: Plan) -> dict[str, tuple[str, tuple[str, ...]]]:
    """upstream image name -> the reference to pull it by (through a registry mirror, if set),
    and the platforms the plan needs of it."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for n in plan.nodes.values():
        if n.upstream and n.base_image:
            needed = out.get(n.upstream, (n.base_image, ()))[1]
            out[n.upstream] = (n.base_image, tuple(sorted({*needed, *n.platforms})))
    return out


def _rootfs_lock(suite: str, tar: Path) -> RootfsLock:
    return RootfsLock(suite, dpkg_packages(tar), sha256(str(tar)))


def bootstrapped(plan: Plan, os_key: str, platform: str, say=print) -> RootfsLock:
    """What the build will use: the cached rootfs (bootstrapped now if there is none)."""
    spec = plan.nodes[_rootfs_nodes(plan)[os_key]].rootfs
    assert spec is not None
    tar = bootstrap.ensure_architecture(spec, config.arch(platform), say, plan.network.env())
    return _rootfs_lock(spec.suite, tar)


def make(plan: Plan, say=print, keep: bool = True, besides: Lock | None = None) -> tuple[Lock, list[Problem]]:
    """Resolve the bases of the plan now: the lock to write, and what could not be resolved.

    Each rootfs is bootstrapped afresh (the cache may be older than the mirror); keep: it then
    replaces the cached one, so that builds use what the lock describes. besides: resolve only
    what that lock lacks, and keep what it has.
    """
    have = besides or Lock({}, {})
    images: dict[str, str] = dict(have.images)
    problems = []
    for name, (ref, platforms) in sorted(_images(plan).items()):
        if name in have.images:
            continue
        digest, why = resolve_image(ref, plan.network.env(), platforms)
        if digest:
            images[name] = digest
        else:
            through = f" through {ref}" if ref != name else ""
            problems.append(Problem(name, f"not resolved{through}: {why}; set mirrors.registry to a mirror that has it"))
    rootfs = dict(have.rootfs)
    for os_key, platform in _bootstraps(plan):
        if (os_key, platform) in have.rootfs:
            continue
        spec = plan.nodes[_rootfs_nodes(plan)[os_key]].rootfs
        assert spec is not None
        architecture = config.arch(platform)
        bootstrap.cache_root().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=bootstrap.cache_root()) as tmp:
            tar = bootstrap.make_rootfs(spec, architecture, Path(tmp) / "rootfs.tar", say, plan.network.env())
            rootfs[(os_key, platform)] = _rootfs_lock(spec.suite, tar)
            if keep:
                bootstrap.rootfs_dir(spec).mkdir(parents=True, exist_ok=True)
                os.replace(tar, bootstrap.rootfs_tar(spec, architecture))
    return Lock(images, rootfs), problems


def pin(plan: Plan, lock: Lock | None, lock_file: Path) -> tuple[Plan, list[Problem]]:
    """The plan with its base images pulled by their locked digests, and the bases the lock lacks."""
    if lock is None:
        return plan, [Problem(str(lock_file), f"no lock file: bases are pulled by tag; {FIX}")]
    problems = []
    nodes = dict(plan.nodes)
    for name, node in plan.nodes.items():
        if node.upstream and node.base_image:
            digest = lock.images.get(node.upstream)
            if digest:
                nodes[name] = dataclasses.replace(node, base_image=f"{node.base_image}@{digest}")
            else:
                problems.append(Problem(node.upstream, f"not in {lock_file.name}: pulled by tag; {FIX}"))
    for os_key, platform in _bootstraps(plan):
        if (os_key, platform) not in lock.rootfs:
            problems.append(Problem(f"{os_key} {platform}", f"its bootstrap is not in {lock_file.name}; {FIX}"))
    return dataclasses.replace(plan, nodes=nodes), problems


def differences(locked: RootfsLock, now: RootfsLock) -> str | None:
    """What changed between two bootstraps of one OS, in a line; None if the packages are the same."""
    old, new = dict(p.split("=", 1) for p in locked.packages), dict(p.split("=", 1) for p in now.packages)
    changed = [f"{n} {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]
    changed += [f"+{n}" for n in sorted(new.keys() - old.keys())] + [f"-{n}" for n in sorted(old.keys() - new.keys())]
    if not changed:
        return None
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return f"{len(changed)} packages differ from the lock ({', '.join(changed[:3])}{more})"


def verify_rootfs(plan: Plan, lock: Lock, say=print,
                  only: Callable[[str, str], bool] = lambda node, platform: True) -> list[Problem]:
    """Bootstrap (or reuse) each OS rootfs of the plan and compare its packages with the lock;
    only(bootstrap node, platform): those to compare now."""
    problems = []
    nodes = _rootfs_nodes(plan)
    for os_key, platform in _bootstraps(plan):
        if (os_key, platform) in lock.rootfs and only(nodes[os_key], platform):
            diff = differences(lock.rootfs[(os_key, platform)], bootstrapped(plan, os_key, platform, say))
            if diff:
                problems.append(Problem(f"{os_key} {platform}", f"{diff}: the apt mirror moved since the lock; "
                                                                f"{FIX}, or point mirrors.apt at a dated snapshot"))
    return problems


def compare(old: Lock, new: Lock) -> list[Problem]:
    """What moved upstream since old was written (for `lock --check`)."""
    problems = [Problem(name, f"moved upstream: locked {old.images[name][:19]}, now {digest[:19]}")
                for name, digest in sorted(new.images.items()) if name in old.images and old.images[name] != digest]
    problems += [Problem(name, "not in the lock") for name in sorted(new.images.keys() - old.images.keys())]
    for (os_key, platform), now in sorted(new.rootfs.items()):
        if (os_key, platform) not in old.rootfs:
            problems.append(Problem(f"{os_key} {platform}", "its bootstrap is not in the lock"))
        elif diff := differences(old.rootfs[(os_key, platform)], now):
            problems.append(Problem(f"{os_key} {platform}", diff))
    return problems


@dataclass(frozen=True)
class LockReport:
    path: Path
    checked: bool                      # --check: nothing written
    moved: tuple[Problem, ...] = ()    # --check: what moved upstream
    unresolved: tuple[Problem, ...] = ()
    lock: Lock | None = None           # what was written
    added: tuple[str, ...] = ()        # --add-missing: the entries it added


def pinned(plan: Plan, strict: bool, say=print) -> tuple[Plan, Lock | None, list[Problem]]:
    """The plan with its bases pulled by locked digests, the lock, and what it lacks (strict: an
    error before anything is built)."""
    path = path_for(plan.matrix.file)
    found = read(path)
    plan, problems = pin(plan, found, path)
    if problems and strict:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DlenvError(f"--locked: {problems[0]}{more}", FIX)
    return plan, found, problems


def update(plan: Plan, request: LockRequest, say=print) -> LockReport:
    """The lock's front door: write the plan's bases into the lock file, or (check) report what
    moved upstream since it was written."""
    path = path_for(plan.matrix.file)
    old = read(path)
    if request.check:
        if old is None:
            raise DlenvError(f"no lock file {path}", FIX)
        new, unresolved = make(plan, say, keep=False)
        return LockReport(path, True, tuple(compare(old, new)), tuple(unresolved))
    new, unresolved = make(plan, say, besides=old if request.add_missing else None)
    if old is not None and not request.add_missing:
        # A base that cannot be resolved from here, or that a partial plan (--select, --shard)
        # does not use, keeps its entry.
        partial = any(left.reason == "unselected" for left in plan.left_out)
        keep = {p.what for p in unresolved}
        new = Lock({**{k: v for k, v in old.images.items() if partial or k in keep}, **new.images},
                   {**(old.rootfs if partial else {}), **new.rootfs})
    added = sorted(set(new.images) - set(old.images if old else {})) + \
        [f"{os_key} {platform}" for os_key, platform in sorted(set(new.rootfs) - set(old.rootfs if old else {}))]
    write(path, new)
    return LockReport(path, False, (), tuple(unresolved), new, tuple(added))
