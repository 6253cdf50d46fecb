"""Find or start what builds need: a Docker engine with buildx, and a registry to push to.

Order: DOCKER_HOST, the default socket, then dlenv's own private engine. Where none answers and
we run as root on Debian or Ubuntu, dlenv installs Docker + buildx from Debian packages and
starts a private dockerd (containerd image store) and a registry on 127.0.0.1:5000. Everything it
starts is recorded by pid under the state directory, and `down` stops exactly those processes.

A platform the builder does not run natively (linux/arm64 on an x86 host) runs under QEMU:
`emulation` installs Debian's qemu-user-static, mounts binfmt_misc where it is not, and
registers the handler with the F flag (the kernel opens the interpreter once, so containers
need no copy of it); where it cannot, it says why and how to fix it.
"""

from __future__ import annotations

import http.client
import json
import os
import platform as host_info
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dlenv import hostconf, retry
from dlenv.errors import EngineError
from dlenv.registry import base_url, ping

DEFAULT_REGISTRY = "127.0.0.1:5000"
MIN_BUILDX = (0, 13)
# Debian 12's docker.io (20.10) cannot export registry cache or attestations, and Debian 13's
# (26.1) keeps every layer its SBOM scanner read in use until dockerd restarts: on Debian dlenv
# takes these packages from the next Debian release (they install on 12 and 13), tini-static for
# docker-init, which Debian 12's tini package would otherwise hold.
ENGINE_PACKAGES = ["containerd", "docker.io", "docker-cli", "docker-buildx", "docker-compose", "tini-static"]
NEXT_DEBIAN = "forky"
MIN_DOCKER = {"debian": (28,), "ubuntu": (26,)}   # Ubuntu's own docker.io, where it is older than 28
HOST_PACKAGES = ["runc", "iptables", "docker-registry", "mmdebstrap", "ca-certificates"]

Say = Callable[[str], None]


def state_dir() -> Path:
    if os.environ.get("DLENV_STATE"):
        return Path(os.environ["DLENV_STATE"])
    return Path("/var/lib/dlenv") if os.geteuid() == 0 else Path.home() / ".local/state/dlenv"


def run_dir() -> Path:
    # Unix socket paths are limited to 108 bytes; keep the exec root short.
    return Path(os.environ.get("DLENV_RUN", "/run/dlenv" if os.geteuid() == 0 else state_dir() / "run"))


def private_host() -> str:
    return f"unix://{run_dir() / 'docker.sock'}"


@dataclass(frozen=True)
class Engine:
    host: str
    server_version: str
    buildx_version: str


def _docker(host: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ, DOCKER_HOST=host)
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _probe(host: str) -> str | None:
    """The server version behind host, or None if nothing answers there."""
    if host.startswith("unix://") and not Path(host[7:]).exists():
        return None
    try:
        out = _docker(host, "version", "--format", "{{.Server.Version}}", timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def answers(host: str) -> bool:
    """Whether an engine answers at host (after a failure: is it the engine that went away?)."""
    return _probe(host) is not None


def _candidates() -> list[str]:
    hosts = []
    if os.environ.get("DOCKER_HOST"):
        hosts.append(os.environ["DOCKER_HOST"])
    hosts += ["unix:///var/run/docker.sock", private_host()]
    return hosts


def find() -> tuple[str, str] | None:
    for host in _candidates():
        version = _probe(host)
        if version:
            return host, version
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x or 0) for x in match.groups()) if match else (0, 0, 0)


def buildx_version(host: str) -> str:
    try:
        out = _docker(host, "buildx", "version")
    except OSError as exc:
        raise EngineError(f"cannot run the docker client: {exc}", "install the docker CLI") from None
    if out.returncode != 0:
        raise EngineError("docker buildx is not installed",
                          "install the docker-buildx package (buildx >= 0.13)")
    return out.stdout.split()[1] if len(out.stdout.split()) > 1 else out.stdout.strip()


def ensure(start: bool = True, say: Say = print, env: dict[str, str] | None = None) -> Engine:
    """Return a usable engine, starting dlenv's private one where none is reachable (with env:
    the run's proxies, for pulling base images)."""
    found = find()
    if not found:
        if not start:
            raise EngineError("no Docker engine is reachable (DOCKER_HOST, /var/run/docker.sock)",
                              "start one, set DOCKER_HOST, or run `nox -s engine -- up`")
        _start_private(say, env)
        found = find()
        if not found:
            raise EngineError("dlenv started dockerd but it does not answer",
                              f"see {state_dir() / 'dockerd.log'}")
    host, version = found
    os.environ["DOCKER_HOST"] = host
    bx = buildx_version(host)
    if _version_tuple(bx)[:2] < MIN_BUILDX:
        raise EngineError(f"docker buildx {bx} is too old (dlenv needs >= 0.13)",
                          "install a newer docker-buildx package")
    return Engine(host, version, bx)


# --- installing and starting the private engine -------------------------------------------------

def _need_root_debian(what: str) -> None:
    release = hostconf.os_release()
    if os.geteuid() != 0 or release.get("ID") not in ("debian", "ubuntu"):
        raise EngineError(f"no Docker engine is reachable and dlenv cannot {what} here "
                          "(it does that only as root on Debian or Ubuntu)",
                          "start a Docker engine with buildx >= 0.13 and set DOCKER_HOST")


def _apt(*args: str, env_extra: dict | None = None) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", **(env_extra or {}))
    out = subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        raise EngineError(f"apt-get {args[0]} failed: {tail[0]}",
                          "check the host's apt sources and network")


def _installed(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package],
                             capture_output=True, text=True)
    except OSError:   # not a Debian-like host
        return None
    if out.returncode == 0 and out.stdout.startswith("install ok installed"):
        return out.stdout.split()[-1]
    return None


def install_tools(packages: list[str], why: str, say: Say = print) -> None:
    """Install host tools dlenv needs (e.g. mmdebstrap on a CI runner), as root on Debian or Ubuntu."""
    release = hostconf.os_release()
    if os.geteuid() != 0 or release.get("ID") not in ("debian", "ubuntu"):
        raise EngineError(f"{' and '.join(packages)} not installed ({why})",
                          f"apt-get install {' '.join(packages)}, or run dlenv as root on Debian or Ubuntu")
    say(f"dlenv: installing {', '.join(packages)} from the host's apt sources ({why})")
    _apt("update", "-qq")
    _apt("install", "-y", "-qq", "--no-install-recommends", *packages)


def _min_docker() -> tuple[int]:
    return MIN_DOCKER.get(hostconf.os_release().get("ID", ""), MIN_DOCKER["ubuntu"])


def _docker_io_ok() -> bool:
    return bool(_version_tuple(_installed("docker.io") or "0")[:1] >= _min_docker() and _installed("docker-buildx"))


def _docker_ready() -> bool:
    """Debian's docker.io, new enough, with buildx; or a dockerd of another package (docker-ce),
    used as it is and never replaced (its packages conflict with Debian's, which apt would remove)."""
    return _docker_io_ok() or (bool(shutil.which("dockerd")) and not _installed("docker.io"))


def install(say: Say = print) -> None:
    """Install Docker (28 on Debian, from its next release; Ubuntu's own) + buildx + compose, a
    registry and mmdebstrap from Debian packages."""
    _need_root_debian("install an engine")
    release = hostconf.os_release()
    # containerd.io (docker-ce's) brings its own runc, and conflicts with Debian's.
    missing = [p for p in HOST_PACKAGES if not _installed(p) and not (p == "runc" and _installed("containerd.io"))]
    docker_ok = _docker_ready()
    if not missing and docker_ok:
        return
    next_debian = release.get("ID") == "debian" and not docker_ok
    host_side = missing + ([] if docker_ok or next_debian else ["docker.io", "docker-buildx", "docker-compose"])
    if host_side:
        say(f"dlenv: installing {', '.join(host_side)} from the host's apt sources")
    # Never start services from package scripts: dlenv starts its own processes.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        _apt("update", "-qq")
        if host_side:
            _apt("install", "-y", "-qq", "--no-install-recommends", *host_side)
        if next_debian:
            _install_from_next_debian(say)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if not _docker_ready():
        raise EngineError(f"docker.io {_installed('docker.io') or '(none)'} and docker-buildx "
                          f"{_installed('docker-buildx') or '(none)'} installed; dlenv needs docker.io >= "
                          f"{_min_docker()[0]} with docker-buildx", "install them yourself, or set DOCKER_HOST")


def download_debs(packages: list[str], dest: Path, suite: str | None = None,
                  architecture: str | None = None) -> list[Path]:
    """Debian packages downloaded into dest from the host's Debian mirror, with a private apt
    configuration (the host's own sources and apt state stay untouched): from suite (default:
    the host's release), for architecture (default: the host's, e.g. arm64 for another's)."""
    mirror = hostconf.debian_mirror()
    if not mirror:
        raise EngineError("cannot find the host's Debian mirror in its apt sources",
                          f"download {' '.join(packages)} yourself")
    suite = suite or hostconf.os_release().get("VERSION_CODENAME", "")
    apt = dest / ".apt"
    (apt / "lists/partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb{f' [arch={architecture}]' if architecture else ''} {mirror} {suite} main\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache::Archives={apt}"]
    if architecture:
        opts += ["-o", f"APT::Architecture={architecture}", "-o", f"APT::Architectures={architecture}"]
    try:
        _apt(*opts, "update", "-qq")
        out = subprocess.run(["apt-get", *opts, "download", *packages], cwd=dest, capture_output=True, text=True)
        if out.returncode != 0:
            raise EngineError(f"downloading {' '.join(packages)} failed: {out.stderr.strip()[-200:]}",
                              "check the host's network and apt mirror")
    finally:
        shutil.rmtree(apt, ignore_errors=True)
    return sorted(dest.glob("*.deb"))


def _install_from_next_debian(say: Say) -> None:
    work = Path(tempfile.mkdtemp(prefix="dlenv-apt-"))
    try:
        try:
            debs = [str(p) for p in download_debs(ENGINE_PACKAGES, work, suite=NEXT_DEBIAN)]
        except EngineError as exc:
            raise EngineError(exc.message, "install docker.io >= 28 and docker-buildx yourself") from None
        say(f"dlenv: installing Docker from Debian {NEXT_DEBIAN} (the host's apt sources do not update it): "
            f"{', '.join(Path(d).name for d in debs)}")
        # apt, not dpkg: it takes their dependencies from the host's sources, and removes an older
        # tini that tini-static replaces.
        try:
            _apt("install", "-y", "-qq", "--no-install-recommends", *debs)
        except EngineError as exc:
            raise EngineError(exc.message, "install docker.io >= 28 and docker-buildx yourself") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pidfile(name: str) -> Path:
    return state_dir() / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our own child that has exited (else it lingers as a zombie).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _read_pid(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    log = open(state_dir() / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    _pidfile(name).write_text(f"{proc.pid}\n")
    return proc.pid


def _start_private(say: Say, env: dict[str, str] | None = None) -> None:
    # Debian's Docker, where older, is upgraded; another package's is used as it is.
    if not shutil.which("docker-registry") or not _docker_ready():
        install(say)
    else:
        _need_root_debian("start an engine")
    state, run = state_dir(), run_dir()
    state.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    config = state / "daemon.json"
    # The containerd image store is what lets the docker driver export registry cache and
    # attestations; loopback registries are plain HTTP.
    config.write_text(json.dumps({
        "features": {"containerd-snapshotter": True},
        "insecure-registries": ["127.0.0.1:5000", "localhost:5000"],
    }, indent=2) + "\n")
    if not _read_pid("dockerd"):
        _spawn("dockerd", ["dockerd", "--config-file", str(config), "--data-root", str(state / "docker"),
                           "--exec-root", str(run / "exec"), "--host", private_host(),
                           "--pidfile", str(run / "dockerd.pid")], env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _probe(private_host()):
            say(f"dlenv: started a private Docker engine at {private_host()} "
                f"(stop it with `nox -s engine -- down`)")
            return
        if not _read_pid("dockerd"):
            break
        time.sleep(0.5)
    raise EngineError("the private dockerd did not start", f"see {state / 'dockerd.log'}")


# --- the registry ------------------------------------------------------------------------------

def registry_answers(registry: str, timeout: float = 5) -> bool:
    try:
        urllib.request.urlopen(f"{base_url(registry)}/v2/", timeout=timeout)
        return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # it is there; it wants a login
    except (OSError, ValueError):
        return False


def up(say: Say = print) -> Engine:
    """`dlenv engine up`: the engine and dlenv's own registry, started where they do not run."""
    found = ensure(say=say)
    ensure_registry(DEFAULT_REGISTRY, say=say)
    return found


def ensure_registry(registry: str, say: Say = print) -> None:
    """Make sure the push target answers; start dlenv's own registry for the default address."""
    if registry_answers(registry):
        return
    if registry.split("/")[0] != DEFAULT_REGISTRY:
        try:   # one that answers 5xx or 429 for a moment, or drops the connection, is asked again
            ping(registry)
            return
        except (OSError, http.client.HTTPException) as exc:
            answered = f" (it answered {exc.code} {exc.reason}{retry.attempts(exc)})" \
                if isinstance(exc, urllib.error.HTTPError) else ""
            raise EngineError(f"registry {registry} is unreachable{answered}",
                              "start it, log in, or set `registry:` in matrix.yaml / --registry") from None
    if not shutil.which("docker-registry"):
        install(say)
    state = state_dir()
    (state / "registry").mkdir(parents=True, exist_ok=True)
    config = state / "registry/config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {state / 'registry/data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {DEFAULT_REGISTRY}\n"
    )
    if not _read_pid("registry"):
        _spawn("registry", ["docker-registry", "serve", str(config)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if registry_answers(registry, timeout=1):
            say(f"dlenv: started a registry at {DEFAULT_REGISTRY} (stop it with `nox -s engine -- down`)")
            return
        time.sleep(0.3)
    raise EngineError(f"the registry at {DEFAULT_REGISTRY} did not start",
                      f"see {state / 'registry.log'} (is port 5000 taken?)")


def down(say: Say = print) -> list[str]:
    """Stop the processes dlenv started (by their recorded pids) and nothing else."""
    stopped = []
    for name in ("registry", "dockerd"):
        pid = _read_pid(name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
        _pidfile(name).unlink(missing_ok=True)
    say("dlenv: stopped " + (", ".join(stopped) if stopped else "nothing (dlenv had started nothing)"))
    return stopped


def status() -> dict[str, str]:
    found = find()
    handlers = [f"{name} ({found_handler['flags'] or 'no flags'})" for name, found_handler in
                ((f"qemu-{cpu}", handler(p)) for p, cpu in QEMU_CPU.items() if p != host_platform()) if found_handler]
    return {
        "engine": f"{found[0]} (server {found[1]})" if found else "none reachable",
        "builder platforms": ", ".join(builder_platforms(found[0])) if found else "-",
        "emulation (binfmt_misc)": ", ".join(handlers) or "none registered",
        "dockerd started by dlenv": str(_read_pid("dockerd") or "no"),
        "registry started by dlenv": str(_read_pid("registry") or "no"),
        "default registry": f"{DEFAULT_REGISTRY} ({'up' if registry_answers(DEFAULT_REGISTRY, 2) else 'down'})",
    }


# --- other platforms, under QEMU -----------------------------------------------------------------

# What qemu and the kernel's handler call each platform's CPU (Debian's qemu-user-static names
# its handler files /usr/lib/binfmt.d/qemu-<cpu>.conf).
QEMU_CPU = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
QEMU_PACKAGE = "qemu-user-static"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d")


@dataclass(frozen=True)
class Unreachable:
    """A platform the engine cannot build or run here, why, and what would fix it."""

    platform: str
    detail: str
    fix: str


def host_platform() -> str:
    """This host's platform, as Docker names it (linux/amd64, linux/arm64)."""
    machine = host_info.machine()
    return next((p for p, cpu in QEMU_CPU.items() if cpu == machine), f"linux/{machine}")


def builder_platforms(docker_host: str | None = None, builder: str | None = None) -> tuple[str, ...]:
    """The platforms `docker buildx inspect` says the builder runs; () where it says nothing."""
    docker_host = docker_host or os.environ.get("DOCKER_HOST") or (find() or ("",))[0]
    try:
        out = _docker(docker_host, "buildx", "inspect", *([builder] if builder else []))
    except (OSError, subprocess.TimeoutExpired):
        return ()
    found: list[str] = []
    for line in out.stdout.splitlines():
        if line.startswith("Platforms:"):
            found += [p.strip().rstrip("*") for p in line.partition(":")[2].split(",") if p.strip()]
    return tuple(dict.fromkeys(found))


def handler(platform: str) -> dict[str, str] | None:
    """The binfmt_misc handler registered for platform's CPU (its interpreter and flags), or None."""
    try:
        text = (BINFMT / f"qemu-{QEMU_CPU[platform]}").read_text()
    except (OSError, KeyError):
        return None
    fields = dict(line.partition(" ")[::2] for line in text.splitlines() if " " in line)
    if not text.startswith("enabled"):
        return None
    return {"interpreter": fields.get("interpreter", ""), "flags": fields.get("flags:", "")}


def emulation(platforms: list[str] | tuple[str, ...], say: Say = print, builder: str | None = None) -> list[Unreachable]:
    """Make the builder run each of platforms, natively or under QEMU; the ones it cannot, each
    with why and the fix (a build leaves those platforms out as unreachable).

    Where the builder lacks a platform and the engine is on this host, dlenv registers QEMU for
    it (as root on Debian or Ubuntu) and says so in one line.
    """
    have = builder_platforms(builder=builder)
    local = builder is None and os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")
    out = []
    for platform in platforms:
        if platform in have or (local and platform == host_platform()):
            continue
        if not local:
            out.append(Unreachable(platform, f"builder {builder or os.environ.get('DOCKER_HOST')} does not run "
                                   f"{platform} (`docker buildx inspect` lists {', '.join(have) or 'none'})",
                                   f"give it a {platform} node, or register QEMU on its host (as root: apt-get "
                                   f"install {QEMU_PACKAGE}; qemu-{QEMU_CPU.get(platform, '?')} with the F flag)"))
            continue
        # Registered while the engine runs, the platform is missing from `docker buildx inspect`
        # until the engine restarts (BuildKit lists its emulators at start), yet its steps run at
        # once: the kernel runs them through the handler (tests/engine/test_emulation.py).
        try:
            register_emulator(platform, say)
        except EngineError as exc:
            out.append(Unreachable(platform, exc.message, exc.fix or ""))
    return out


def register_emulator(platform: str, say: Say) -> None:
    """This host runs platform's programs: natively, or with qemu-user-static installed,
    binfmt_misc mounted and platform's handler registered with F (what a build's RUN steps and
    mmdebstrap's package scripts need); an EngineError with the fix where it cannot."""
    if platform == host_platform():
        return
    cpu = QEMU_CPU.get(platform)
    if cpu is None:
        raise EngineError(f"dlenv knows no emulator for {platform}", f"build {platform} on a {platform} host")
    found = handler(platform)
    if found and "F" in found["flags"]:
        return
    why = f"to run {platform} on this {host_platform()} host"
    fix = (f"run dlenv as root on Debian or Ubuntu (it installs {QEMU_PACKAGE}, mounts binfmt_misc and registers "
           f"qemu-{cpu} with the F flag), do that yourself, or build {platform} on a {platform} host")
    if os.geteuid() != 0:
        raise EngineError(f"{platform} needs QEMU on this {host_platform()} host, and registering it needs root", fix)
    conf = BINFMT_CONF / f"qemu-{cpu}.conf"
    done = []
    if not conf.exists():
        try:
            install_tools([QEMU_PACKAGE], why, say=lambda _line: None)
        except EngineError as exc:
            raise EngineError(exc.message, fix) from None
        done.append(f"installed {QEMU_PACKAGE}")
    if not (BINFMT / "register").exists():
        out = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if out.returncode != 0:
            raise EngineError(f"{platform} needs QEMU on this {host_platform()} host, and binfmt_misc cannot be mounted "
                              f"here: {out.stderr.strip()[-160:]}", "run dlenv on a host, or in a privileged container, "
                              f"where it can; or register qemu-{cpu} with the F flag on the host: {fix}")
        done.append(f"mounted binfmt_misc at {BINFMT}")
    if found:
        # Registered without F: containers would look for the interpreter in their own filesystem.
        (BINFMT / f"qemu-{cpu}").write_text("-1")
    # Debian's handler line (name, ELF magic and mask, interpreter), with F: the kernel opens the
    # interpreter now, so it works in every container.
    fields = conf.read_text().strip().split(":")
    fields[-1] = fields[-1] if "F" in fields[-1] else fields[-1] + "F"
    try:
        (BINFMT / "register").write_text(":".join(fields))
    except OSError as exc:
        raise EngineError(f"registering qemu-{cpu} failed: {exc}", fix) from None
    done.append(f"registered qemu-{cpu} ({fields[-1]}) from {conf}" + (" again, with F" if found else ""))
    say(f"dlenv: {platform} runs under QEMU on this {host_platform()} host: {', '.join(done)}")
