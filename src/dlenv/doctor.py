"""`dlenv doctor [TAG]`: is this host ready to run the family's images on its GPUs, and if not, why.

Each finding says what was checked, what was found and how to fix it; a `fail` is blocking
(exit 1). The facts are gathered first (host, then the image if one is named) and judged by
pure functions, so every verdict is testable without the hardware.

Needs only the standard library and rich, so it also runs on a GPU host where dlenv's other
dependencies are not installed: `PYTHONPATH=src python3 -m dlenv.doctor [TAG]`. Docker is
reached through python-on-whales when it is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from dlenv import engine, gpuarch, lifecycle, registry  # standard library only, like this module
from dlenv.errors import DlenvError

Status = Literal["ok", "warn", "fail", "skip"]
CDI_SPECS = ("/etc/cdi", "/var/run/cdi")
TOOLKIT_CONFIG = Path("/etc/nvidia-container-runtime/config.toml")
NVML_SYMPTOM = "nvidia-smi in a container says `Failed to initialize NVML: Unknown Error`"
DRIVER_SYMPTOM = 'could not select device driver "nvidia" with capabilities: [[gpu]]'


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str       # e.g. 580.159.04
    compute: str      # e.g. 9.0


@dataclass(frozen=True)
class Host:
    docker_error: str = ""            # why Docker cannot be used; "" when it can
    docker_version: str = ""
    runtimes: tuple[str, ...] = ()     # the engine's runtimes (nvidia, runc, ...)
    cgroup_driver: str = ""            # the engine's: systemd or cgroupfs
    cdi_specs: tuple[str, ...] = ()    # CDI specs describing NVIDIA devices
    toolkit: str = ""                  # nvidia-ctk or the runtime hook, where installed
    smi_error: str = ""                # why nvidia-smi gave nothing; "" when it did
    gpus: tuple[Gpu, ...] = ()
    driver_cuda: str = ""              # the newest CUDA the driver supports (nvidia-smi), e.g. 13.0
    cgroup_v2: bool = False
    systemd: int = 0                   # systemd's version, 0 when not running
    no_cgroups: bool | None = None     # no-cgroups in the toolkit's config.toml, if set
    platform: str = ""                 # this host's, as Docker names it (linux/amd64, linux/arm64)


@dataclass(frozen=True)
class Image:
    ref: str
    error: str = ""                    # why the image could not be inspected
    cuda: str = ""                     # CUDA_VERSION
    require_cuda: str = ""             # NVIDIA_REQUIRE_CUDA
    torch: str = ""                    # torch.__version__, if the image has torch
    torch_archs: tuple[str, ...] = field(default=())
    platforms: tuple[str, ...] = ()    # the images the tag's index holds; () where the registry was not read


# The first Docker that pulls zstd-compressed layers (containerd 1.5 and podman do too).
ZSTD_DOCKER = (23,)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def releases() -> dict:
    try:
        return lifecycle.requirements()
    except DlenvError as exc:
        raise SystemExit(f"dlenv doctor: checking an image: {exc}") from None


# --- facts -------------------------------------------------------------------------------------

def _run(cmd: list[str]) -> tuple[int, str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return out.returncode, out.stdout + out.stderr


def _docker():
    """A python-on-whales client of the engine dlenv would use, or why there is none."""
    if not shutil.which("docker"):
        return None, "no docker command on this host"
    try:
        from python_on_whales import DockerClient
    except ImportError:
        return None, "python-on-whales is not installed (pip install python-on-whales)"
    found = engine.find()
    if not found:
        return None, "no Docker engine answers (DOCKER_HOST, /var/run/docker.sock, or dlenv's own)"
    return DockerClient(host=found[0]), ""


def gather_host() -> Host:
    client, docker_error = _docker()
    info = client.system.info() if client else None
    code, smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"])
    gpus, smi_error, driver_cuda = (), "", ""
    if code == 0:
        gpus = tuple(Gpu(*[p.strip() for p in line.split(",")]) for line in smi.strip().splitlines() if line.count(",") == 2)
        if not gpus:
            smi_error = "nvidia-smi lists no GPU"
        _, header = _run(["nvidia-smi"])
        match = re.search(r"CUDA Version:\s*([\d.]+)", header)
        driver_cuda = match.group(1) if match else ""
    else:
        smi_error = "nvidia-smi not found" if code == 127 else " ".join(smi.split())[:160]
    specs = tuple(str(p) for d in CDI_SPECS if os.path.isdir(d) for p in sorted(Path(d).glob("*"))
                  if "nvidia" in p.name)
    toolkit = next((p for p in (shutil.which("nvidia-ctk"), shutil.which("nvidia-container-runtime-hook"),
                                shutil.which("nvidia-container-runtime")) if p), "")
    _, systemctl = _run(["systemctl", "--version"]) if shutil.which("systemctl") else (1, "")
    match = re.match(r"systemd (\d+)", systemctl)
    no_cgroups = None
    if TOOLKIT_CONFIG.exists():
        match_nc = re.search(r"^\s*no-cgroups\s*=\s*(true|false)", TOOLKIT_CONFIG.read_text(), re.M)
        no_cgroups = match_nc.group(1) == "true" if match_nc else None
    return Host(docker_error=docker_error,
                docker_version=(info.server_version or "") if info else "",
                runtimes=tuple(sorted((info.runtimes or {}).keys())) if info else (),
                cgroup_driver=(info.cgroup_driver or "") if info else "",
                cdi_specs=specs, toolkit=toolkit, smi_error=smi_error, gpus=gpus, driver_cuda=driver_cuda,
                cgroup_v2=os.path.exists("/sys/fs/cgroup/cgroup.controllers"),
                systemd=int(match.group(1)) if match and os.path.isdir("/run/systemd/system") else 0,
                no_cgroups=no_cgroups, platform=engine.host_platform())


# torch.cuda.get_arch_list() is empty without a GPU; the compiled-in flags are not.
TORCH_PROBE = ("python -c \"import torch; print(torch.__version__); "
               "print(getattr(torch._C, '_cuda_getArchFlags', lambda: '')() or '')\" 2>/dev/null || true")


def image_platforms(ref: str) -> tuple[str, ...]:
    """The platforms of the images a tag's index holds, read from its registry (a plain image:
    its config's); () where the registry cannot be read from here."""
    try:
        host, repository, reference = registry.split(ref)
        data, _ = registry.manifest(host, repository, reference)
        if "manifests" in data:
            return tuple(registry.index_platforms(data))
        config = json.loads(registry.blob(host, repository, data["config"]["digest"]))
        return (f"{config['os']}/{config['architecture']}",)
    except (OSError, ValueError, KeyError, DlenvError):   # urllib's errors are OSErrors
        return ()


def gather_image(ref: str) -> Image:
    client, error = _docker()
    if not client:
        return Image(ref, error=f"cannot inspect the image: {error}")
    from python_on_whales.exceptions import DockerException
    try:
        try:
            config = client.image.inspect(ref).config
        except DockerException:
            client.image.pull(ref, quiet=True)
            config = client.image.inspect(ref).config
        env = dict(e.split("=", 1) for e in config.env or [])
        out = client.run(ref, ["-c", TORCH_PROBE], entrypoint="/bin/sh", remove=True)
    except DockerException as exc:
        return Image(ref, error=" ".join((exc.stderr or str(exc)).split())[-200:])
    lines = out.strip().splitlines()
    return Image(ref, cuda=env.get("CUDA_VERSION", ""), require_cuda=env.get("NVIDIA_REQUIRE_CUDA", ""),
                 torch=lines[0] if lines else "", torch_archs=tuple(lines[1].split()) if len(lines) > 1 else (),
                 platforms=image_platforms(ref))


# --- verdicts ----------------------------------------------------------------------------------

def judge_host(host: Host) -> list[Finding]:
    out = []
    if host.docker_error:
        out.append(Finding("Docker engine", "fail", host.docker_error,
                           "install Docker and start it (or run `dlenv engine up`), or set DOCKER_HOST; without an "
                           "engine the images still run through `rootfs_run.py` (docs/smoke.md)"))
    elif host.docker_version and version(host.docker_version) < ZSTD_DOCKER:
        out.append(Finding("Docker engine", "warn",
                           f"Docker {host.docker_version} cannot pull zstd-compressed layers, which the family's "
                           "images use by default (build.compression)",
                           "install Docker 23 or newer (Docker's own packages); a family built with "
                           "build.compression: gzip also pulls here"))
    else:
        out.append(Finding("Docker engine", "ok", f"Docker {host.docker_version}"))
    if host.smi_error:
        out.append(Finding("NVIDIA driver and GPU", "fail", f"no GPU visible: {host.smi_error}",
                           "install the NVIDIA driver (nvidia-smi must list the GPU) on this host"))
    else:
        names = ", ".join(f"{g.name} (compute {g.compute})" for g in host.gpus)
        out.append(Finding("NVIDIA driver and GPU", "ok",
                           f"driver {host.gpus[0].driver} (CUDA {host.driver_cuda or '?'}); {names}"))
    if not host.docker_error:
        if "nvidia" in host.runtimes or host.cdi_specs:
            how = "runtime `nvidia`" if "nvidia" in host.runtimes else "CDI " + ", ".join(host.cdi_specs)
            out.append(Finding("NVIDIA container toolkit", "ok", f"the engine can hand GPUs to containers ({how})"))
        elif host.toolkit:
            out.append(Finding("NVIDIA container toolkit", "fail",
                               f"installed ({host.toolkit}) but not configured for this engine: `{DRIVER_SYMPTOM}`",
                               "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"))
        else:
            out.append(Finding("NVIDIA container toolkit", "fail",
                               f"not installed: `docker run --gpus` fails with `{DRIVER_SYMPTOM}`",
                               "install nvidia-container-toolkit, then `nvidia-ctk runtime configure --runtime=docker` "
                               "and restart Docker"))
    out.append(_nvml_risk(host))
    return out


def _nvml_risk(host: Host) -> Finding:
    name = "cgroup v2 and NVML in containers"
    if not host.cgroup_v2:
        if host.no_cgroups:
            return Finding(name, "warn", "cgroup v1, but no-cgroups = true in the toolkit's config.toml: containers get "
                           "no device cgroup for the GPU", f"set no-cgroups = false in {TOOLKIT_CONFIG}")
        return Finding(name, "ok", "cgroup v1: devices are granted through the device cgroup")
    if host.cdi_specs:
        return Finding(name, "ok", "cgroup v2 with CDI: device access survives a systemd reload")
    if host.docker_error:
        return Finding(name, "skip", "cgroup v2; no container engine to judge")
    if host.cgroup_driver == "cgroupfs" or not host.systemd:
        return Finding(name, "ok", f"cgroup v2, engine cgroup driver {host.cgroup_driver or 'unknown'}")
    detail = (f"cgroup v2 with systemd {host.systemd} managing the engine's cgroups: after `systemctl daemon-reload` a "
              f"running container can lose its GPU ({NVML_SYMPTOM}); restarting it recovers")
    fix = ("use CDI (`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`, then `--device nvidia.com/gpu=all`), or "
           "set `\"exec-opts\": [\"native.cgroupdriver=cgroupfs\"]` in /etc/docker/daemon.json; on old "
           "libnvidia-container: kernel parameter systemd.unified_cgroup_hierarchy=false and no-cgroups = false in "
           f"{TOOLKIT_CONFIG}")
    return Finding(name, "warn", detail, fix)


def judge_platform(host: Host, image: Image) -> Finding:
    """Does the tag hold an image for this host's platform (GH200, GB200 and DGX Spark are arm64)?"""
    name = "image platform vs this host"
    if not image.platforms:
        return Finding(name, "skip", f"the platforms of {image.ref} could not be read from its registry")
    held = ", ".join(image.platforms)
    if host.platform in image.platforms:
        return Finding(name, "ok", f"{image.ref} holds a {host.platform} image ({held})")
    return Finding(name, "fail", f"{image.ref} holds no {host.platform} image, only {held}: what runs here is "
                   "emulated at best (no GPU), else `exec format error`",
                   f"pick a tag built for {host.platform} (the catalog's platform filter; `nox -s list` shows each "
                   "variant's platforms)")


def judge_image(host: Host, image: Image, table: dict) -> list[Finding]:
    if image.error:
        return [Finding(f"image {image.ref}", "skip", image.error)]
    out = [judge_platform(host, image)] if host.platform else []
    mm = ".".join(image.cuda.split(".")[:2])
    release = table["release"].get(mm)
    if not image.cuda:
        return [*out, Finding("image CUDA", "skip", f"{image.ref} sets no CUDA_VERSION: not a CUDA image")]
    if not host.gpus:
        out.append(Finding("driver vs the image's CUDA", "skip", f"CUDA {image.cuda} image; no GPU driver to compare"))
    elif release is None:
        out.append(Finding("driver vs the image's CUDA", "warn", f"CUDA {mm} is not in doctor's table",
                           f"add it to {lifecycle.RELEASES.name}"))
    else:
        driver = host.gpus[0].driver
        wanted = re.search(r"cuda>=([\d.]+)", image.require_cuda)
        compat = table["major"].get(mm.split(".")[0], {}).get("minor_compat_driver", release["min_driver"])
        if version(driver) >= version(release["min_driver"]):
            out.append(Finding("driver vs the image's CUDA", "ok",
                               f"driver {driver} >= {release['min_driver']}, which CUDA {mm} needs"
                               + (f" ({image.require_cuda})" if image.require_cuda else "")))
        elif version(driver) >= version(compat) and not (
                wanted and host.driver_cuda and version(host.driver_cuda) < version(wanted.group(1))):
            out.append(Finding("driver vs the image's CUDA", "warn",
                               f"driver {driver} is older than {release['min_driver']} (CUDA {mm}); it runs through "
                               "minor-version compatibility, without PTX JIT",
                               f"upgrade the driver to {release['min_driver']} or newer"))
        else:
            out.append(Finding("driver vs the image's CUDA", "fail",
                               f"driver {driver} (CUDA {host.driver_cuda or '?'}) is too old for CUDA {mm}: the container "
                               f"toolkit refuses the image ({image.require_cuda or 'cuda>=' + mm} unsatisfied)",
                               f"upgrade the driver to {release['min_driver']} or newer, or pick an older CUDA tag"))
        for gpu in host.gpus:
            cc = version(gpu.compute)
            if cc < version(release["min_compute"]):
                out.append(Finding(f"{gpu.name} vs CUDA {mm}", "fail",
                                   f"compute capability {gpu.compute} is older than CUDA {mm} supports "
                                   f"({release['min_compute']}+)", "pick a tag of an older CUDA (e.g. 12.x)"))
            # Past the newest architecture, the release's cubins still run within its major.
            elif cc > version(release["max_compute"]) and not gpuarch.kernels(
                    gpu.compute, ["sm_" + release["max_compute"].replace(".", "")]).runs:
                out.append(Finding(f"{gpu.name} vs CUDA {mm}", "warn",
                                   f"compute capability {gpu.compute} is newer than CUDA {mm} has native code for "
                                   f"({release['max_compute']}); kernels need PTX JIT", "pick a tag of a newer CUDA"))
            else:
                out.append(Finding(f"{gpu.name} vs CUDA {mm}", "ok", f"compute capability {gpu.compute} is supported"))
    if image.torch and not image.torch_archs:
        out.append(Finding(f"torch {image.torch}", "skip", "the image's torch names no CUDA architectures (a CPU build?)"))
    elif image.torch:
        for gpu in host.gpus:
            found = gpuarch.kernels(gpu.compute, image.torch_archs)
            status, fix = {"native": ("ok", ""), "ptx": ("warn", "pick a torch build for this GPU (a newer CUDA tag)"),
                           "none": ("fail", "pick a tag whose torch supports this GPU")}[found.kind]
            out.append(Finding(f"{gpu.name} vs torch {image.torch}", status, f"torch: {found.detail}", fix))
    return out


# --- command -----------------------------------------------------------------------------------

def report(findings: list[Finding], host: Host, image: Image | None, json_path: str | None) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colour = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
    table = Table(title="dlenv doctor" + (f": {image.ref}" if image else ""), show_lines=True)
    for column in ("check", "status", "found", "fix"):
        table.add_column(column, overflow="fold")
    for f in findings:
        table.add_row(escape(f.check), f"[{colour[f.status]}]{f.status}[/]", escape(f.detail), escape(f.fix))
    Console(stderr=True, width=None if sys.stderr.isatty() else 160).print(table)
    blocking = [f for f in findings if f.status == "fail"]
    if json_path:
        data = {"host": asdict(host), "image": asdict(image) if image else None,
                "findings": [asdict(f) for f in findings], "blocking": len(blocking)}
        text = json.dumps(data, indent=2) + "\n"
        if json_path == "-":
            sys.stdout.write(text)
        else:
            Path(json_path).write_text(text)
    return 1 if blocking else 0


def run(tag: str | None, json_path: str | None) -> int:
    host = gather_host()
    findings = judge_host(host)
    image = gather_image(tag) if tag else None
    if image:
        findings += judge_image(host, image, releases())
    return report(findings, host, image, json_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dlenv doctor", description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="an image reference to check this host against")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the findings as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    return run(args.image, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
