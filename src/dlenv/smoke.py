"""Run each variant's checks in its image and say, per check, passed, failed or skipped.

A variant's checks are inherited along its chain (global, CUDA flavors, recipes). The `docker`
runner starts one container per variant with python-on-whales, GPUs given where the host has
them, and checks/batch.sh runs each check in it with its own time limit; on a host without a
GPU, GPU checks are skipped with that reason, never passed. A variant's checks run once per
platform of its index (`docker run --platform`); on a platform this host runs under QEMU, GPU
checks are skipped with that reason (the GPU needs a host of that platform).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import engine, gpuarch, interrupt, proven, registry, report, rootfs_run
from dlenv.config import CHECKS_DIR, Check, arch
from dlenv.errors import DlenvError
from dlenv.graph import LABEL
from dlenv.options import SmokeRequest
from dlenv.plan import Plan, Variant
from dlenv.rootfs_run import judge  # the one judge, shared with the standalone rootfs runner

Status = Literal["passed", "failed", "skipped"]
CHECKS_MOUNT = "/dlenv-checks"
# The main job tests several variants at once, a runner each (build.schedule): check containers
# are numbered per process, and GPU checks take turns across runners, as their memory and time
# limits assume the GPU is theirs.
_RUNS = itertools.count(1)
_GPU = threading.Lock()


@dataclass(frozen=True)
class Verdict:
    variant: str
    check: str
    status: Status
    seconds: float
    output: str
    gpu: bool
    origin: str
    proven: str = ""   # when this image passed this check before (not run again), else ""
    platform: str = ""  # the image of the variant's index it ran in

    def to_json(self) -> dict:
        return {"variant": self.variant, "platform": self.platform, "check": self.check, "status": self.status,
                "seconds": round(self.seconds, 2), "output": self.output, "gpu": self.gpu, "origin": self.origin,
                **({"proven": self.proven} if self.proven else {})}


def checks_folder(platform: str | None = None, say: Callable[[str], None] = print) -> Path:
    """What /dlenv-checks holds: the batch runner, the CUDA probe (built here, for platform's
    CPU: default this host's), the test kernel's source, the pytorch recipe's torch_checks.py,
    the jupyter recipe's jupyter_checks.py, and gpuarch.py, so checks judge a GPU against an
    architecture list by doctor's own rule."""
    compiler = c_compiler(platform or engine.host_platform(), say)
    folder = Path(tempfile.mkdtemp(prefix="dlenv-checks-"))
    for name in ("kernel.cu", "torch_checks.py", "jupyter_checks.py", "batch.sh"):
        shutil.copy(CHECKS_DIR / name, folder / name)
    shutil.copy(gpuarch.__file__, folder / "gpuarch.py")
    # No vectorizing: Debian 12's aarch64 gcc 12.2 crashes vectorizing the probe's error sum
    # (an internal compiler error in vect_transform_reduction), and the probe gains nothing by it.
    out = subprocess.run([compiler, "-O2", "-fno-tree-vectorize", "-o", str(folder / "cuda_probe"),
                          str(CHECKS_DIR / "cuda_probe.c"), "-ldl", "-lm"], capture_output=True, text=True)
    if out.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise DlenvError(f"building the CUDA probe for {platform or engine.host_platform()} failed: "
                         f"{out.stderr.strip()[-200:]}")
    return folder


def c_compiler(platform: str, say: Callable[[str], None]) -> str:
    """A C compiler of platform's programs: the host's cc for its own platform, else Debian's
    cross compiler (gcc-aarch64-linux-gnu and that platform's C library), installed where missing
    (as root on Debian or Ubuntu, said in one line)."""
    if platform == engine.host_platform():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise DlenvError("no C compiler on this host to build the CUDA probe", "apt-get install gcc")
        return compiler
    cpu = engine.QEMU_CPU.get(platform)
    if cpu is None:
        raise DlenvError(f"dlenv knows no cross compiler for {platform}", f"export {platform} on a {platform} host")
    compiler = f"{cpu}-linux-gnu-gcc"
    if not shutil.which(compiler):
        packages = [f"gcc-{cpu.replace('_', '-')}-linux-gnu", f"libc6-dev-{arch(platform)}-cross"]
        engine.install_tools(packages, f"to build the CUDA probe for {platform} bundles", say=say)
    return compiler


def host_gpus(client: DockerClient) -> str | None:
    """Why GPU checks cannot run here, or None if they can (a GPU and the NVIDIA runtime)."""
    if not shutil.which("nvidia-smi"):
        return "no GPU on this host (nvidia-smi not found)"
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if out.returncode != 0 or "GPU" not in out.stdout:
        return "no GPU on this host (nvidia-smi lists none)"
    runtimes = client.system.info().runtimes or {}
    if "nvidia" not in runtimes and not shutil.which("nvidia-container-runtime-hook"):
        return "the NVIDIA container toolkit is not configured for this engine"
    return None


def image_config(plan: Plan, client: DockerClient, ref: str, digest: str, platform: str) -> dict:
    """platform's image config (Env, Labels, ...): read from the registry where it was pushed
    (the engine inspects only its own platform's), else from the engine's store."""
    if not digest:
        config = client.image.inspect(ref).config
        return {"Env": list(config.env or []), "Labels": config.labels or {}}
    model = plan.matrix.model
    with registry.reading(model.registry):
        config = registry.image_manifest(model.registry, model.repository, digest, platform=platform)["config"]
        return json.loads(registry.blob(model.registry, model.repository, config["digest"])).get("config") or {}


def image_labels(plan: Plan, client: DockerClient, ref: str, digest: str, platform: str) -> dict:
    return image_config(plan, client, ref, digest, platform).get("Labels") or {}


def label_problems(labels: dict, variant: Variant) -> str:
    expected = {f"{LABEL}.variant": variant.id, f"{LABEL}.cuda": variant.cuda, f"{LABEL}.flavor": variant.flavor}
    problems = [f"{k}={labels.get(k)!r}, expected {v!r}" for k, v in expected.items() if labels.get(k) != v]
    problems += [f"{k} missing" for k in ("org.opencontainers.image.revision", "org.opencontainers.image.created",
                                          "org.opencontainers.image.version") if k not in labels]
    return "; ".join(problems)


def available(client: DockerClient, ref: str, platform: str | None = None) -> bool:
    """Whether the image is in the engine, pulling it (platform's) from the registry if need be."""
    try:
        client.image.inspect(ref)
    except DockerException:
        try:
            client.image.pull(ref, quiet=True, platform=platform)
        except DockerException:
            return False
    return True


def missing(ref: str) -> str:
    return f"{ref} is neither in the engine nor in the registry (build it first, or pass its --build-id)"


class DockerRunner:
    def __init__(self, plan: Plan, require_gpu: bool = False, retest: bool = False):
        self.plan = plan
        self.retest = retest
        self.client = DockerClient()
        self.no_gpu = host_gpus(self.client)
        cannot = next(((p, why) for p in plan.platforms if (why := self.gpu_problem(p))), None)
        if require_gpu and cannot:
            raise DlenvError(f"--require-gpu: {cannot[1]}",
                             f"run the {cannot[0]} checks on a {cannot[0]} GPU host with the NVIDIA container toolkit "
                             "(--platform selects), or drop --require-gpu")
        self.folder = checks_folder()
        weakref.finalize(self, shutil.rmtree, self.folder, True)  # the probe and kernel source, once done
        self.digests: dict[str, str] = {}   # variant -> the digest its checks ran on, for promote

    def gpu_problem(self, platform: str) -> str | None:
        """Why GPU checks cannot run on platform here, or None: a GPU and the NVIDIA runtime,
        and the platform this host's CPU runs natively (QEMU reaches no GPU)."""
        host = engine.host_platform()
        if platform != host:
            return f"{platform} runs under QEMU on this {host} host: its GPU checks need a {platform} host with a GPU"
        return self.no_gpu

    def _batch(self, ref: str, variant: Variant, checks: list[Check], platform: str) -> list[Verdict]:
        """The checks that can run here in one container of platform's image (checks/batch.sh),
        each isolated one in a container of its own; GPU checks are skipped where they cannot
        run (gpu_problem), with that reason."""
        no_gpu = self.gpu_problem(platform)
        runnable = [c for c in checks if not (c.gpu and no_gpu)]
        done: dict[int, Verdict] = {}
        for group in [[c for c in runnable if not c.isolated], *([c] for c in runnable if c.isolated)]:
            if group:
                interrupt.check()
                done |= self._container(ref, variant, group, platform)
        return [done[id(c)] if id(c) in done else
                Verdict(variant.id, c.name, "skipped", 0.0, no_gpu, True, c.origin, platform=platform) for c in checks]

    def _container(self, ref: str, variant: Variant, runnable: list[Check], platform: str) -> dict[int, Verdict]:
        """Checks run one after another in one container: id(check) -> its verdict."""
        marker = f"@@dlenv-check-{secrets.token_hex(8)}"
        envs = {"DLENV_CHECKS": str(len(runnable)), "DLENV_MARKER": marker,
                "DLENV_CUDA": variant.cuda, "DLENV_FLAVOR": variant.flavor}
        for i, check in enumerate(runnable, 1):
            envs |= {f"DLENV_CHECK_{i}": check.run, f"DLENV_TIMEOUT_{i}": str(check.timeout)}
        name = f"dlenv-check-{os.getpid()}-{next(_RUNS)}"
        code, ended = 0, ""
        gpu = any(c.gpu for c in runnable)
        try:
            # init: the engine's init runs as PID 1 and passes on the signal `docker run` forwards
            # (a shell as PID 1 ignores it), so a signal to dlenv ends the checks even where they
            # run in a thread beside the bake (main_job), whose `docker run` no exception reaches.
            with _GPU if gpu else contextlib.nullcontext():
                interrupt.check()   # a signal while this waited for its turn on the GPU starts no check
                output = self.client.run(
                    ref, [f"{CHECKS_MOUNT}/batch.sh"], entrypoint="/bin/sh", remove=True, name=name, init=True,
                    volumes=[(str(self.folder), CHECKS_MOUNT, "ro")], envs=envs, platform=platform,
                    gpus="all" if gpu else None)
        except DockerException as exc:
            code, output = exc.return_code, (exc.stdout or "") + (exc.stderr or "")
            ended = f"the check container ended before this check did (exit {code}): {(exc.stderr or '').strip()[-300:]}"
            # A `docker run` that a signal ended between creating its container and starting it
            # leaves it created, never removed (--rm acts once it ran), and its image with it.
            self._remove(name)
        except KeyboardInterrupt:
            # Stopped by a signal: the container goes too (a `docker run` client that is killed
            # leaves its container running).
            self._remove(name)
            raise
        results = batch_results(output or "", marker)
        verdicts = {}
        for n, check in enumerate(runnable, 1):
            if n not in results:
                verdicts[id(check)] = Verdict(variant.id, check.name, "failed", 0.0, ended or "no result", check.gpu,
                                              check.origin, platform=platform)
                continue
            exit_code, seconds, text = results[n]
            status, why = judge(dataclasses.asdict(check), exit_code, text)
            verdicts[id(check)] = Verdict(variant.id, check.name, status, seconds,
                                          f"{why}\n{text}".strip() if why else text, check.gpu, check.origin,
                                          platform=platform)
        return verdicts

    def _remove(self, name: str) -> None:
        with contextlib.suppress(DockerException):
            self.client.container.remove(name, force=True)

    def variant(self, variant: Variant) -> list[Verdict]:
        """The variant's checks on each platform of its index, one after another."""
        digest = pushed_digest(self.plan, variant)
        self.digests[variant.id] = digest
        # By digest where it was pushed: what runs is what a promotion would point at.
        ref = f"{self.plan.image}@{digest}" if digest else self.plan.ref(variant.immutable)
        return [v for platform in variant.platforms for v in self._platform(ref, digest, variant, platform)]

    def _platform(self, ref: str, digest: str, variant: Variant, platform: str) -> list[Verdict]:
        model = self.plan.matrix.model
        kind, checks = ("cpu" if self.gpu_problem(platform) else "gpu"), proven.fingerprint(variant.checks)
        # Before the image is looked for: a proven image need not be in the engine (nor pulled).
        earlier = proven.recall(model.registry, model.repository, digest, kind, checks, platform) \
            if digest and not self.retest else None
        if earlier:
            return [Verdict(**{**v, "proven": earlier["tested_at"]}) for v in earlier["verdicts"]]
        if not available(self.client, ref, platform):
            return [Verdict(variant.id, "image is available", "failed", 0.0, missing(ref), False, "dlenv",
                            platform=platform)]
        verdicts = self._batch(ref, variant, list(variant.checks), platform)
        try:
            problems = label_problems(image_labels(self.plan, self.client, ref, digest, platform), variant)
        except DlenvError as exc:
            problems = str(exc)
        verdicts.append(Verdict(variant.id, "labels are present and match the variant",
                                "failed" if problems else "passed", 0.0, problems, False, "dlenv", platform=platform))
        if digest and not any(v.status == "failed" for v in verdicts):
            try:
                proven.record(model.registry, model.repository, digest, kind, checks, [v.to_json() for v in verdicts],
                              platform)
            except DlenvError:
                pass   # a registry that keeps no record costs a re-test next time, nothing else
        return verdicts


def batch_results(output: str, marker: str) -> dict[int, tuple[int, float, str]]:
    """checks/batch.sh's output: check number -> (exit code, seconds, its output)."""
    results, text = {}, []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0] == marker:
            _, i, code, start, end = fields
            results[int(i)] = (int(code), float(end) - float(start), "\n".join(text).strip())
            text = []
        else:
            text.append(line)
    return results


def pushed_digest(plan: Plan, variant: Variant) -> str:
    """The registry's digest of a variant's immutable tag ("" if it was not pushed: loaded, nothing
    a promotion could use); a registry that cannot be read is an error, as everywhere."""
    return registry.digest(plan.ref(variant.immutable)) or ""


def read_inventory(path: Path) -> set[str]:
    """The hashes in a GPU host's inventory (rootfs_run.py --inventory DIR --json FILE)."""
    try:
        return set(json.loads(path.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DlenvError(f"{path}: not an inventory ({exc.__class__.__name__}: {exc})",
                         "write one on the GPU host: python3 rootfs_run.py --inventory DIR --json FILE") from None


def leave_out(src: IO[bytes], dst: IO[bytes], have: set[str]) -> list[dict]:
    """Copy a rootfs tar stream from src to dst without the large files whose SHA-256 is in
    `have` (the GPU host has them); return what was left out, for donated.json (the rootfs runner
    copies them back by hash). Streams, so a rootfs of many gigabytes never lands on disk whole."""
    donated: list[dict] = []
    by_name: dict[str, dict] = {}
    with tarfile.open(fileobj=src, mode="r|") as tar, \
            tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT) as out:
        for member in tar:
            if member.islnk() and member.linkname in by_name:   # a hard link to a dropped file
                donated.append(dict(by_name[member.linkname], path="/" + member.name.removeprefix("./")))
                continue
            data = tar.extractfile(member) if member.isfile() else None
            if data and have and member.size >= rootfs_run.MIN_DONATION:
                data = io.BytesIO(data.read())   # read once: hashed, then written if the host lacks it
                digest = rootfs_run.sha256_of(data)
                if digest in have:
                    entry = {"path": "/" + member.name.removeprefix("./"), "sha256": digest, "size": member.size,
                             "mode": member.mode, "uid": member.uid, "gid": member.gid}
                    by_name[member.name] = entry
                    donated.append(entry)
                    continue
                data.seek(0)
            out.addfile(member, data)
    return donated


def export_bundle(plan: Plan, variant: Variant, dest: Path, folder: Path, have: set[str] | None = None,
                  platform: str = "linux/amd64") -> Path:
    """A folder the rootfs runner takes to a GPU host: rootfs.tar.xz, manifest.json, checks/,
    and donated.json when `have` (hashes of the GPU host's large files) let files stay behind."""
    client = DockerClient()
    digest = pushed_digest(plan, variant)
    ref = f"{plan.image}@{digest}" if digest else plan.ref(variant.immutable)
    if not available(client, ref, platform):
        raise DlenvError(missing(ref))
    # A platform's own folder; linux/amd64's keeps the name bundles had before platforms.
    bundle = dest / (variant.id if platform == "linux/amd64" else f"{variant.id}-{platform.split('/')[1]}")
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, bundle / "checks", dirs_exist_ok=True)
    shutil.copy(Path(__file__).parent / "rootfs_run.py", bundle / "rootfs_run.py")
    (bundle / "donated.json").unlink(missing_ok=True)
    container = client.container.create(ref, ["/bin/true"], entrypoint="/bin/true", platform=platform)
    # docker export | leave_out | xz: only the compressed rootfs is written.
    try:
        with open(bundle / "rootfs.tar.xz", "wb") as archive:
            export = subprocess.Popen(["docker", "export", container.id], stdout=subprocess.PIPE)
            xz = subprocess.Popen(["xz", "-T0", "-6"], stdin=subprocess.PIPE, stdout=archive)
            donated = leave_out(export.stdout, xz.stdin, have or set())
            xz.stdin.close()
            if export.wait() or xz.wait():
                raise DlenvError(f"exporting {ref} failed (docker export: exit {export.returncode}, xz: exit {xz.returncode})")
    finally:
        client.container.remove(container)
    if donated:
        (bundle / "donated.json").write_text(json.dumps(donated, indent=1) + "\n")
    manifest = {"variant": variant.id, "image": ref, "digest": digest, "platform": platform,
                "cuda": variant.cuda, "flavor": variant.flavor,
                "env": list(image_config(plan, client, ref, digest, platform).get("Env") or []),
                "checks": [{"name": c.name, "run": c.run, "expect_exit": c.expect_exit, "expect_output": c.expect_output,
                            "gpu": c.gpu, "timeout": c.timeout, "origin": c.origin} for c in variant.checks]}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return bundle


def build_kernel(plan: Plan, devel: Variant, folder: Path, platform: str = "linux/amd64",
                 say: Callable[[str], None] = print) -> Path:
    """Compile kernel.cu with a devel variant's own nvcc, platform's (under QEMU where this host
    does not run it), for a GPU host that cannot take the devel rootfs."""
    client = DockerClient()
    ref = plan.ref(devel.immutable)
    if not available(client, ref, platform):
        raise DlenvError(missing(ref))
    engine.register_emulator(platform, say)
    out = f"kernel-{devel.cuda}"
    client.run(ref, ["-c", f"nvcc -o {CHECKS_MOUNT}/{out} {CHECKS_MOUNT}/kernel.cu"], platform=platform,
               entrypoint="/bin/sh", remove=True, volumes=[(str(folder), CHECKS_MOUNT, "rw")])
    return folder / out


def junit(verdicts: list[Verdict]) -> str:
    suites = ET.Element("testsuites", name="dlenv smoke")
    for variant, platform in dict.fromkeys((v.variant, v.platform) for v in verdicts):
        mine = [v for v in verdicts if (v.variant, v.platform) == (variant, platform)]
        suite = ET.SubElement(suites, "testsuite", name=f"{variant} ({platform})" if platform else variant,
                              tests=str(len(mine)),
                              failures=str(sum(v.status == "failed" for v in mine)),
                              skipped=str(sum(v.status == "skipped" for v in mine)),
                              time=f"{sum(v.seconds for v in mine):.2f}")
        for v in mine:
            case = ET.SubElement(suite, "testcase", classname=suite.get("name"), name=v.check, time=f"{v.seconds:.2f}")
            if v.status == "failed":
                ET.SubElement(case, "failure", message=(v.output.splitlines() or ["failed"])[0]).text = v.output
            elif v.status == "skipped":
                ET.SubElement(case, "skipped", message=v.output)
            if v.output and v.status == "passed":
                ET.SubElement(case, "system-out").text = v.output
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


@dataclass(frozen=True)
class SmokeReport:
    image: str
    verdicts: tuple[Verdict, ...] = ()
    digests: dict[str, str] = dataclasses.field(default_factory=dict)   # variant -> the digest tested
    bundles: tuple[Path, ...] = ()                                      # with --export

    @property
    def failed(self) -> bool:
        return any(v.status == "failed" for v in self.verdicts)

    def to_json(self) -> dict:
        return {"image": self.image, "digests": self.digests, "verdicts": [v.to_json() for v in self.verdicts]}


def run(plan: Plan, request: SmokeRequest, say: Callable[[str], None],
        tested: Callable[[Variant], None] = lambda variant: None) -> SmokeReport:
    """The smoke stage's front door: every variant's checks in its image (or, with --export, a
    bundle per variant for a GPU host without an engine); JUnit and JSON where asked.

    Variants are checked side by side (check_jobs), each in containers of its own.
    tested(variant): each variant once its checks ended (the main job removes its image then),
    from the thread that checked it."""
    # The engine the build used (dlenv's own, where it started one), or one line saying there is none.
    engine.ensure(start=False, say=say)
    if request.export:
        return SmokeReport(plan.image, bundles=tuple(export(plan, request.export, request.have, say)))
    runner = DockerRunner(plan, request.require_gpu, request.retest)

    def one(variant: Variant) -> list[Verdict]:
        interrupt.check()   # the main job tests beside its bake: a signal there stops the tests here too
        mine = runner.variant(variant)
        for platform in variant.platforms:
            on = [v for v in mine if v.platform == platform]
            say(f"{variant.id} ({platform}): " + ", ".join(f"{n} {s}" for s in ("passed", "failed", "skipped")
                                                           if (n := sum(v.status == s for v in on))))
        tested(variant)
        return mine

    pool = ThreadPoolExecutor(request.check_jobs or os.cpu_count() or 1, thread_name_prefix="check")
    try:
        verdicts = [v for mine in pool.map(one, plan.variants) for v in mine]   # in the plan's order
    finally:
        pool.shutdown(cancel_futures=True)   # a failure or a signal starts no other variant's checks
    result = SmokeReport(plan.image, tuple(verdicts), dict(runner.digests))
    if request.junit:
        request.junit.parent.mkdir(parents=True, exist_ok=True)
        request.junit.write_text(junit(verdicts))
    if request.json:
        report.write_json(request.json, result.to_json())
    return result


def export(plan: Plan, dest: Path, have_file: Path | None, say: Callable[[str], None]) -> list[Path]:
    """A bundle per variant and platform (rootfs, checks built for that platform's CPU,
    rootfs_run.py) for a GPU host without an engine."""
    have = read_inventory(have_file) if have_file else None
    folders: dict[str, Path] = {}
    try:
        for platform in plan.platforms:
            folders[platform] = checks_folder(platform, say)
        for devel in (v for v in plan.variants if v.flavor == "devel" and not v.stack):
            for platform in devel.platforms:
                kernel = build_kernel(plan, devel, folders[platform], platform, say)
                say(f"compiled {kernel.name} for {platform} with {devel.id}'s nvcc")
        bundles = []
        for variant in plan.variants:
            for platform in variant.platforms:
                bundle = export_bundle(plan, variant, dest, folders[platform], have, platform)
                size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
                donor = " --donor DIR" if (bundle / "donated.json").exists() else ""
                say(f"{bundle} ({platform}): {report.human_size(size)} "
                    f"(run: python3 {bundle.name}/rootfs_run.py {bundle.name}{donor})")
                bundles.append(bundle)
        return bundles
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
