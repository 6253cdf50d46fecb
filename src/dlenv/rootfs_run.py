"""Run a variant's checks on a GPU host that has no container engine (HPC node, bare VM).

Standalone on purpose: it needs only Python 3 (standard library), coreutils, tar with xz,
`unshare`, `mount` and `chroot`, and root. dlenv writes a bundle next to this file
(`dlenv smoke --export DIR`): the variant's root filesystem, its checks, the CUDA probe. Here
the rootfs is unpacked and each check runs in it through chroot, in a private mount namespace,
with the driver injected the way the NVIDIA container toolkit does it: device nodes, and the
driver's libraries (libcuda, libnvidia-*) bind-mounted into /usr/local/nvidia/lib64.

    python3 rootfs_run.py BUNDLE [--json OUT] [--donor DIR ...] [--extra 'NAME=COMMAND' ...]

A bundle is one platform's (manifest.json says which): linux/amd64's on an x86_64 host,
linux/arm64's (`<variant>-arm64/`) on an aarch64 one (GH200, GB200, DGX Spark), the driver's
libraries taken from that platform's folders (/usr/lib/aarch64-linux-gnu). `--emulate` runs
another platform's bundle under QEMU, its GPU checks skipped: to try a bundle before the GPU host.

Only 64 MiB may reach some GPU hosts per transfer, and a CUDA runtime image is gigabytes, most
of it libraries such hosts often already have (pip's nvidia-* wheels, a CUDA install). So a
bundle may leave out large files the GPU host has, byte for byte: first list them there,

    python3 rootfs_run.py --inventory /opt/venv/lib/python3.12/site-packages --json have.json

then `dlenv smoke --export DIR --have have.json` leaves those files out of the rootfs (named by
SHA-256 in donated.json), and `--donor DIR` here copies them back in before any check runs.
The rootfs that runs is the image's, file for file: every copied file's hash is checked.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

DRIVER_LIBS = ("libcuda.so*", "libnvidia-ptxjitcompiler.so*", "libnvidia-nvvm.so*", "libnvidia-ml.so*",
               "libcudadebugger.so*", "libnvidia-gpucomp.so*")
# A bundle's platform (its manifest's; bundles from before platforms are linux/amd64's), the CPU
# that runs it, and where Debian and Ubuntu keep that platform's libraries (multiarch).
PLATFORMS = {"linux/amd64": ("x86_64", "x86_64-linux-gnu"), "linux/arm64": ("aarch64", "aarch64-linux-gnu")}
# How `ldconfig -p` marks a library of each platform (an amd64 host may also have i386 driver libraries).
LDCONFIG_ABI = {"linux/amd64": "x86-64", "linux/arm64": "AArch64"}


def driver_libraries(platform: str = "linux/amd64") -> list[str]:
    """The host's driver libraries for platform, wherever its linker finds them."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    dirs = {os.path.dirname(path) for abi, path in re.findall(r"\(([^)]*)\) => (\S*libcuda\.so\S*)", out)
            if LDCONFIG_ABI[platform] in abi.split(",")}
    multiarch = f"/usr/lib/{PLATFORMS[platform][1]}"
    dirs |= {d for d in ("/usr/local/nvidia/lib64", multiarch, "/usr/lib64") if os.path.isdir(d)}
    found = {}
    for folder in sorted(dirs):
        for pattern in DRIVER_LIBS:
            for path in glob.glob(os.path.join(folder, pattern)):
                found.setdefault(os.path.basename(path), os.path.realpath(path))
    return sorted(found.items())


# Smaller files always travel in the bundle: hashing them would cost more than sending them.
MIN_DONATION = 1 << 20


def sha256_of(stream) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def large_files(folders: list[str], sizes: set[int] | None = None) -> dict[str, str]:
    """sha256 -> path of the regular files of at least MIN_DONATION bytes under folders
    (only those of the given sizes, if any), hashed in parallel."""
    paths = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.realpath(os.path.join(dirpath, name))
                if os.path.isfile(path):
                    size = os.path.getsize(path)
                    if size >= MIN_DONATION and (sizes is None or size in sizes):
                        paths[path] = size
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        # No zip(strict=): GPU hosts may have Python 3.9.
        return {digest: path for path, digest in zip(paths, pool.map(sha256, paths))}  # noqa: B905


def inventory(folders: list[str]) -> dict:
    found = large_files(folders)
    return {"folders": folders, "files": {digest: os.path.getsize(path) for digest, path in found.items()}}


def fill_donated(bundle: str, root: str, donors: list[str]) -> int:
    """Copy the files the bundle left out from the donor folders, by hash; the count copied."""
    listing = os.path.join(bundle, "donated.json")
    if not os.path.exists(listing):
        return 0
    with open(listing) as f:
        donated = json.load(f)
    found = large_files(donors, {d["size"] for d in donated}) if donors else {}
    missing = [d["path"] for d in donated if d["sha256"] not in found]
    if missing:
        raise SystemExit(f"rootfs_run: {len(missing)} files of this image are neither in the bundle nor in the "
                         f"donor folders ({' '.join(donors) or 'none given: --donor DIR'}), e.g. {missing[0]}")
    for d in donated:
        dest = os.path.join(root, d["path"].lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(found[d["sha256"]], dest)
        os.chmod(dest, d["mode"])
        if os.geteuid() == 0:
            os.chown(dest, d["uid"], d["gid"])
    return len(donated)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def platform_problem(platform: str, machine: str) -> str | None:
    """Why a bundle of platform cannot run on a host whose CPU is machine, or None."""
    if platform not in PLATFORMS:
        return f"this bundle is for {platform}, which this runner does not know ({', '.join(PLATFORMS)})"
    cpu = PLATFORMS[platform][0]
    if machine != cpu:
        here = next((p for p, (c, _) in PLATFORMS.items() if c == machine), machine)
        return (f"this bundle is {platform}'s ({cpu}) and this host is {here}: its programs cannot run here; "
                f"export the variant's {here} bundle (dlenv smoke --export) for this host")
    return None


def emulator(platform: str) -> str | None:
    """Why this host cannot run platform's programs under QEMU, or None: binfmt_misc must have
    its handler, with F (the interpreter opened at registration, so it works inside a chroot)."""
    cpu = PLATFORMS[platform][0]
    try:
        with open(f"/proc/sys/fs/binfmt_misc/qemu-{cpu}") as f:
            text = f.read()
    except OSError:
        return f"no qemu-{cpu} handler is registered in binfmt_misc (as root: apt-get install qemu-user-static)"
    flags = next((line.split()[1] for line in text.splitlines() if line.startswith("flags:")), "")
    if not text.startswith("enabled") or "F" not in flags:
        return f"qemu-{cpu} is registered without the F flag (flags: {flags or 'none'}), which a chroot needs"
    return None


def prepare(bundle: str, root: str, donors: list[str], platform: str = "linux/amd64") -> int:
    archive = next(p for p in (os.path.join(bundle, n) for n in ("rootfs.tar.xz", "rootfs.tar.gz", "rootfs.tar"))
                   if os.path.exists(p))
    run(["tar", "-xf", archive, "-C", root, "--no-same-owner"] if os.geteuid() else ["tar", "-xf", archive, "-C", root])
    filled = fill_donated(bundle, root, donors)
    for sub in ("dev", "proc", "sys", "dlenv-checks", "usr/local/nvidia/lib64"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    run(["mount", "--make-rprivate", "/"])
    run(["mount", "--rbind", "/dev", os.path.join(root, "dev")])
    run(["mount", "-t", "proc", "proc", os.path.join(root, "proc")])
    run(["mount", "--rbind", "/sys", os.path.join(root, "sys")])
    run(["mount", "--bind", os.path.join(bundle, "checks"), os.path.join(root, "dlenv-checks")])
    target = os.path.join(root, "usr/local/nvidia/lib64")
    for name, path in driver_libraries(platform):
        dest = os.path.join(target, name)
        open(dest, "a").close()
        run(["mount", "--bind", path, dest])
    with open(os.path.join(root, "etc/ld.so.conf.d/00-nvidia-driver.conf"), "w") as f:
        f.write("/usr/local/nvidia/lib64\n")
    run(["chroot", root, "ldconfig"])
    return filled


def release(root: str) -> bool:
    """Unmount everything under root; True only if nothing is left mounted there."""
    for sub in ("usr/local/nvidia/lib64", "dlenv-checks", "sys", "proc", "dev"):
        subprocess.run(["umount", "-R", "-l", os.path.join(root, sub)], capture_output=True)
    with open("/proc/self/mountinfo") as f:
        return not any(line.split()[4].startswith(root.rstrip("/") + "/") for line in f)


def judge(check: dict, code: int, output: str) -> tuple[str, str]:
    """passed or failed, and why not: exit code first (124 is timeout's), then the output."""
    if code == 124 and check.get("expect_exit", 0) != 124:
        return "failed", f"timed out after {check['timeout']}s"
    if code != check.get("expect_exit", 0):
        return "failed", f"exit {code}, expected {check.get('expect_exit', 0)}"
    if check.get("expect_output") and not re.search(check["expect_output"], output):
        return "failed", f"output does not match {check['expect_output']!r}"
    return "passed", ""


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a dlenv bundle's checks in its rootfs, on this GPU host.")
    parser.add_argument("bundle", nargs="?")
    parser.add_argument("--json", default=None)
    parser.add_argument("--extra", action="append", default=[], help="another check, NAME=COMMAND (needs a GPU)")
    parser.add_argument("--donor", action="append", default=[], metavar="DIR",
                        help="where to find the files the bundle left out (donated.json), by hash")
    parser.add_argument("--emulate", action="store_true",
                        help="run a bundle of another platform under QEMU (binfmt_misc, F flag): its non-GPU checks "
                             "only, the GPU ones skipped (QEMU reaches no GPU); to try a bundle before the GPU host")
    parser.add_argument("--inventory", action="append", default=[], metavar="DIR",
                        help="instead of running: list this host's large files (for `dlenv smoke --have`)")
    args = parser.parse_args()
    if args.inventory:
        text = json.dumps(inventory(args.inventory), indent=1) + "\n"
        if args.json:
            with open(args.json, "w") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
        return 0
    if not args.bundle:
        parser.error("a bundle folder is needed (or --inventory DIR)")
    if os.environ.get("DLENV_IN_NAMESPACE") != "1":
        # Everything mounted below vanishes with this private mount namespace.
        env = dict(os.environ, DLENV_IN_NAMESPACE="1")
        return subprocess.call(["unshare", "--mount", sys.executable, *sys.argv], env=env)
    bundle = os.path.abspath(args.bundle)
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    platform = manifest.get("platform", "linux/amd64")
    problem = platform_problem(platform, os.uname().machine)
    emulated = bool(problem) and args.emulate and platform in PLATFORMS
    if emulated:
        problem = emulator(platform)
        no_gpu = f"{platform} runs under QEMU on this {os.uname().machine} host: its GPU checks need a {platform} host"
    if problem:
        raise SystemExit(f"rootfs_run: {problem}")
    checks = list(manifest["checks"])
    for extra in args.extra:
        name, _, command = extra.partition("=")
        checks.append({"name": name, "run": command, "gpu": True, "timeout": 300, "origin": "--extra"})
    root = tempfile.mkdtemp(prefix="dlenv-rootfs-")
    started = time.monotonic()
    filled = prepare(bundle, root, args.donor, platform)
    prepared = time.monotonic() - started
    if filled:
        print(f"filled {filled} files from the donor folders, each checked by SHA-256")
    env = dict(item.split("=", 1) for item in manifest["env"])
    env.update(DLENV_CUDA=manifest["cuda"], DLENV_FLAVOR=manifest["flavor"])
    verdicts = []
    for check in checks:
        if emulated and check.get("gpu", False):
            verdicts.append({"variant": manifest["variant"], "check": check["name"], "status": "skipped", "seconds": 0.0,
                             "output": no_gpu, "gpu": True, "origin": check.get("origin", "")})
            print(f"skipped {check['name']}  [{no_gpu}]")
            continue
        t = time.monotonic()
        proc = subprocess.run(["chroot", root, "/bin/sh", "-c", f"timeout {check['timeout']} sh -c \"$DLENV_CHECK\" 2>&1"],
                              env=dict(env, DLENV_CHECK=check["run"]), capture_output=True, text=True)
        status, why = judge(check, proc.returncode, proc.stdout)
        output = (f"{why}\n" if why else "") + proc.stdout.strip()
        verdicts.append({"variant": manifest["variant"], "check": check["name"], "status": status,
                         "seconds": round(time.monotonic() - t, 2), "output": output, "gpu": check.get("gpu", False),
                         "origin": check.get("origin", "")})
        last = proc.stdout.strip().splitlines()[-1][:100] if proc.stdout.strip() else ""
        print(f"{status:7} {check['name']}" + (f"  [{last}]" if last else ""))
    result = {"variant": manifest["variant"], "digest": manifest.get("digest", ""), "platform": platform,
              "emulated": emulated,
              "prepare_seconds": round(prepared, 1), "donated_files": filled, "verdicts": verdicts,
              "driver_libraries": [name for name, _ in driver_libraries(platform)]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    # Never remove the tree while /dev or /sys are still bound into it.
    if release(root):
        shutil.rmtree(root, ignore_errors=True)
    return 1 if any(v["status"] == "failed" for v in verdicts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
