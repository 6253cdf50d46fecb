"""The main job (`nox -s build-matrix`) cold and then again with nothing changed: wall time,
the disk's peak growth (and without the loopback registry's) and when it came, how busy the
CPUs were and what used them, when the first line of progress reached a piped log after the bake started, the
longest the log stayed silent, and where the time went (BuildKit's step times from the build log).

Cold means dlenv's engine is stopped and its data (images, build cache, registry, bootstrap
cache) removed first, as on a fresh machine. `--ref` runs the code of another commit (a git
worktree of it) on the same matrix, for a ratio against today's code in the same run:

    python benchmarks/bench_main_job.py --json out/bench-main-job.json
    python benchmarks/bench_main_job.py --ref 3216d5f --label before --json out/bench-main-job-before.json

It runs alone on the machine: it removes the engine's data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = [Path("/var/lib/dlenv"), Path("/var/cache/dlenv")]
STEP = re.compile(r"^#\d+ (DONE|CACHED) ?([\d.]+)?s?$")


REGISTRY = Path("/var/lib/dlenv/registry")   # the loopback registry's storage: a release's is elsewhere


def used() -> int:
    return shutil.disk_usage("/").used


def registry_used() -> int:
    """Bytes the registry's storage takes on disk (as du counts them)."""
    total = 0
    for folder, _, files in os.walk(REGISTRY):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


def cold(tree: Path) -> None:
    subprocess.run([sys.executable, "-m", "dlenv", "engine", "down"], cwd=tree, capture_output=True,
                   env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"})
    for folder in DATA:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat); idle and iowait are not busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


CGROUPS = {"all": "", "containers": "docker", "build steps": "docker/buildkit"}


def cgroup_cpu() -> dict[str, float]:
    """CPU seconds each group has used (cgroup v1 cpuacct, or v2 cpu.stat): all of the machine,
    the engine's containers (the checks, and BuildKit's steps), BuildKit's steps. A group's count
    keeps what its removed children used."""
    found: dict[str, float] = {}
    for name, path in CGROUPS.items():
        v1 = Path("/sys/fs/cgroup/cpuacct", path, "cpuacct.usage")
        v2 = Path("/sys/fs/cgroup", path, "cpu.stat")
        if v1.exists():
            found[name] = int(v1.read_text()) / 1e9
        elif v2.exists():
            stat = dict(line.split() for line in v2.read_text().splitlines())
            found[name] = int(stat["usage_usec"]) / 1e6
        else:
            found[name] = 0.0
    return found


def cpu_split(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """CPU seconds of the run: BuildKit's steps (RUN, under QEMU too), the checks' containers,
    and the rest (the engine exporting, compressing, pushing and unpacking; the registry; the
    bootstraps; dlenv)."""
    used = {name: end[name] - start[name] for name in CGROUPS}
    return {"build steps": round(used["build steps"]),
            "checks": round(used["containers"] - used["build steps"]),
            "engine, registry, bootstraps, dlenv": round(used["all"] - used["containers"])}


def run(tree: Path, args: list[str], log: Path) -> dict:
    """One main job; its stderr timestamped line by line into log."""
    start_used, peak = used(), used()
    peak_at = 0.0
    cpu_start, groups_start = cpu_times(), cgroup_cpu()
    # The same without the registry's growth: on a release runner the registry is another machine.
    start_registry = registry_used()
    peak_engine = start_used - start_registry
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_engine, peak_at
        ticks = 0
        while not stop.wait(2):
            now = used()
            if now > peak:
                peak, peak_at = now, time.monotonic() - started
            ticks += 1
            if ticks % 5 == 0:   # walking the registry's files every 10 s
                peak_engine = max(peak_engine, now - registry_used())

    started = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    first_progress = None
    bake_started = None
    last_line, silence = 0.0, 0.0
    env = {"PYTHONPATH": str(tree / "src"), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "HOME": "/root"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dlenv", "build", *args], cwd=tree, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            now = time.monotonic() - started
            out.write(f"{now:8.1f} {line}")
            silence, last_line = max(silence, now - last_line), now
            if bake_started is None and line.startswith("building ") and "variants" in line:
                bake_started = now
            elif bake_started is not None and first_progress is None and line.strip():
                first_progress = now - bake_started
        code = proc.wait()
    seconds = time.monotonic() - started
    stop.set()
    sampler.join()
    peak = max(peak, used())
    peak_engine = max(peak_engine, used() - registry_used())
    busy, total = (end - begin for end, begin in zip(cpu_times(), cpu_start, strict=True))
    return {"exit": code, "seconds": round(seconds, 1), "cpu_busy": round(busy / total, 3) if total else None,
            "cpu_seconds": cpu_split(groups_start, cgroup_cpu()),
            "peak_at_s": round(peak_at, 1), "peak_growth_bytes": peak - start_used,
            "peak_growth_without_registry_bytes": peak_engine - (start_used - start_registry),
            "registry_growth_bytes": registry_used() - start_registry,
            "longest_silence_s": round(silence, 1),
            "first_progress_after_bake_start_s": None if first_progress is None else round(first_progress, 1)}


def step_times(build_log: Path) -> dict[str, float]:
    """Seconds per kind of BuildKit step (RUN, exporting, ...), summed over the log."""
    names: dict[str, str] = {}
    totals: dict[str, float] = {}
    if not build_log.exists():
        return totals
    for line in build_log.read_text(errors="replace").splitlines():
        if line.startswith("### bake"):   # each bake numbers its steps from #1
            names.clear()
            continue
        if re.match(r"^#\d+ (ERROR|CANCELED)", line):
            names.pop(line[1:].split(" ", 1)[0], None)
            continue
        match = re.match(r"^#(\d+) \[[^\]]*\] (\S+)", line) or re.match(r"^#(\d+) (exporting|importing|resolve)", line)
        if match:
            names.setdefault(match.group(1), match.group(2))
            continue
        match = re.match(r"^#(\d+) DONE ([\d.]+)s$", line)
        if match and match.group(1) in names:
            kind = names.pop(match.group(1))
            totals[kind] = round(totals.get(kind, 0.0) + float(match.group(2)), 1)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=None, help="run this commit's code (a worktree); default: this checkout")
    parser.add_argument("--label", default="now", help="a name for the run in the JSON")
    parser.add_argument("--matrix", default="matrix.yaml")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-cold", action="store_true", help="keep the engine's data (a warm run)")
    parser.add_argument("--build-id", default=None, help="pass this build id (e.g. an earlier run's, for a no-op)")
    parser.add_argument("--extra", action="append", default=[], metavar="ARG",
                        help="one more argument for `dlenv build` (e.g. --extra=--bake-jobs=2); repeatable")
    options = parser.parse_args()
    tree = ROOT
    if options.ref:
        tree = Path(tempfile.mkdtemp(prefix="dlenv-bench-tree-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), options.ref],
                       check=True, capture_output=True)
    work = ROOT / "out" / f"bench-main-job-{options.label}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    given = (["--build-id", options.build_id] if options.build_id else []) + options.extra
    args = ["--matrix", options.matrix, *given, "--workdir", str(work / "w1"), "--metadata", str(work / "first.json")]
    if not options.no_cold:
        cold(tree)
    first = run(tree, args, work / "first.log")
    first["steps"] = step_times(work / "w1" / "build.log")
    again = run(tree, ["--matrix", options.matrix, *given, "--workdir", str(work / "w2"), "--metadata",
                       str(work / "second.json")], work / "second.log")
    result = {"label": options.label, "ref": options.ref or "HEAD", "cold": first, "no_op": again,
              "disk_free_after": shutil.disk_usage("/").free}
    text = json.dumps(result, indent=2)
    print(text)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(text + "\n")
    if options.ref:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
