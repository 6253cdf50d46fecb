"""Where a build's disk goes, and how long its bake takes: another commit's code against this
checkout's, same run, same selection, every step built afresh.

For each side (the commit --ref, checked out in a git worktree, then this working tree) the
side's own code renders the bake file of the selection (amd64); every node is baked with
`no-cache` (each step runs again and writes new snapshots; apt and pip cache mounts stay as they
are), each variant is exported to the engine's store as dlenv does and pushed to a registry of
the benchmark's own (a docker-registry on 127.0.0.1:5055 with a folder of its own), one variant
after another. The filesystem's used bytes are sampled every second for the peak growth; after
the pushes, the growth is broken down by where it lies under the engine's data root:

- the containerd content store (compressed blobs: what the exports wrote and the pushes read),
- containerd's overlayfs snapshots, split into the build cache (`docker buildx du --verbose`:
  the records this side created, by the step that made them: the CUDA fetch stage's wheels and
  laid-out tree, the CUDA layer copied from it, apt and pip steps, the rest; and the growth of
  the cache mounts: apt's, pip's) and the rest, which is the variants' images unpacked
  (confirmed by what removing them frees),
- the registry's storage.

Then the side's images are removed, its own build-cache records are pruned by their ids (no
other record is touched) and its registry is deleted, so the next side starts from the same
disk. Each side holds the engine's lock (/tmp/dlenv-engine.lock) while it builds and cleans up.

    python benchmarks/bench_disk.py --ref HEAD --json out/bench-disk.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from dlenv import buildcache
from dlenv.errors import DlenvError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/var/lib/dlenv")
CONTAINERD = DATA / "docker/containerd/daemon"
PLACES = {"content": CONTAINERD / "io.containerd.content.v1.content",
          "snapshots": CONTAINERD / "io.containerd.snapshotter.v1.overlayfs",
          "buildkit": DATA / "docker/buildkit"}
REGISTRY = "127.0.0.1:5055"
REPOSITORY = "dlenv-bench/disk"
LOCK = "/tmp/dlenv-engine.lock"
WORKTREE = Path("/work/benchtree-disk")
# The selection: the CUDA 13.0.2 runtime chain on Debian 12 with the python stack and devtools,
# and base's python + devtools beside it (apt steps that may run side by side).
SELECT = ("cuda=13.0.2 os=debian12 flavor=runtime", "13.0.2-base-debian12-py-dev")
SKIP = ("recipe=jupyter", "recipe=ssh", "recipe=pytorch")
# What the side's code says about the selection (run with the side's own src on the path).
RENDER = """
import json, sys
from pathlib import Path
from dlenv import bootstrap, graph, plan as P
from dlenv.options import PlanRequest
root = Path.cwd()
args = json.loads(sys.argv[1])
pl = P.load(PlanRequest(matrix=root / "matrix.yaml", root=root, select=tuple(args["select"]),
                        skip=tuple(args["skip"]), platform=("linux/amd64",), build_id=args["build_id"]))
for node in pl.nodes.values():
    if node.kind == "rootfs" and node.rootfs:
        bootstrap.ensure_rootfs(node.rootfs, lambda line: print(line, file=sys.stderr), pl.network.env())
s = pl.matrix.model.build
d = graph.definition(pl, "push", graph.secrets(pl),
                     graph.Options(compression=s.compression, compression_level=s.compression_level))
print(json.dumps({"definition": d, "variants": [[v.id, v.node] for v in pl.variants]}))
"""
VERTEX = re.compile(r"^#(\d+) \[([^\] ]+)[^\]]*\] (.*)$")
DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s$")
EXPORT = re.compile(r"^#(\d+) exporting to image$")
GB = 1e9


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True).stdout


def du(path: Path) -> int:
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sx", "--block-size=1", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out.strip() else 0


def used() -> int:
    return shutil.disk_usage(DATA).used


def records() -> dict[str, dict]:
    """The build cache's records: id -> {size, type, description}."""
    return {i: {"size": r.size, "type": r.kind, "description": r.description}
            for i, r in buildcache.records().items()}


def kind(description: str) -> str:
    """Which part of the graph a build-cache record belongs to."""
    if "fetch.sh" in description and "layout.sh" not in description:
        return "CUDA fetch: installed wheels"
    if "layout.sh" in description:
        return "CUDA fetch: laid-out tree"
    if "COPY --from=fetch" in description:
        return "CUDA layer (copied from fetch)"
    if "python3-pip" in description and "python3-venv" not in description:
        return "CUDA fetch: pip (apt)"
    if "apt-get" in description:
        return "other apt steps"
    if "pip install" in description:
        return "other pip steps"
    return "rest (rootfs, config, small steps)"


def mount_kind(description: str) -> str:
    if "/root/.cache" in description:
        return "cache mount: pip (/root/.cache)"
    if "/var/cache/apt" in description or "/var/lib/apt" in description:
        return "cache mount: apt"
    return "cache mount: other"


class Peak:
    """The filesystem's peak growth while it runs (sampled every second)."""

    def __init__(self) -> None:
        self.start = self.peak = used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1):
            self.peak = max(self.peak, used())

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, used())


def start_registry(folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True)
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem:\n    rootdirectory: {folder}/data\n"
                      f"http:\n  addr: {REGISTRY}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "registry.log", "w"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"the benchmark's registry on {REGISTRY} did not start (see {folder / 'registry.log'})")


def bake(tree: Path, file: Path, targets: list[str], log: Path) -> tuple[float, dict[str, float], list[dict]]:
    """Bake targets of file in tree; (wall seconds, step seconds by kind, every step with its seconds)."""
    env = dict(os.environ, BUILDX_BAKE_ENTITLEMENTS_FS="0")
    started = time.monotonic()
    names: dict[str, tuple[str, str]] = {}
    steps: list[dict] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(["docker", "buildx", "bake", "--file", str(file), "--progress", "plain", *targets],
                                cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            line = line.rstrip("\n")
            match = VERTEX.match(line)
            if match:
                names.setdefault(match.group(1), (match.group(2), match.group(3)))
                continue
            match = EXPORT.match(line)
            if match:
                names.setdefault(match.group(1), ("", "exporting to image"))
                continue
            match = DONE.match(line)
            if match and match.group(1) in names:
                target, text = names.pop(match.group(1))
                steps.append({"target": target, "step": text[:160], "seconds": float(match.group(2))})
        if proc.wait():
            raise SystemExit(f"bake failed (log: {log})")
    by_kind: dict[str, float] = {}
    for step in steps:
        text = step["step"]
        what = ("exporting" if text.startswith("exporting") else "RUN apt-get" if "apt-get" in text
                else "RUN CUDA fetch" if "fetch.sh" in text or "layout.sh" in text
                else "COPY CUDA" if "COPY --from=fetch" in text else "RUN pip" if "pip install" in text else "other")
        by_kind[what] = round(by_kind.get(what, 0.0) + step["seconds"], 1)
    return round(time.monotonic() - started, 1), by_kind, steps


def side(label: str, tree: Path, work: Path, build_id: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    rendered = subprocess.run([sys.executable, "-c", RENDER, json.dumps({"select": SELECT, "skip": SKIP,
                                                                          "build_id": build_id})],
                              cwd=tree, env=env, check=True, capture_output=True, text=True)
    data = json.loads(rendered.stdout)
    definition, variants = data["definition"], data["variants"]
    refs = []
    for target in definition["target"].values():
        target["no-cache"] = True
    for vid, node in variants:
        ref = f"{REGISTRY}/{REPOSITORY}:{vid}-{label}"
        target = definition["target"][node]
        target["tags"] = [ref]
        target["attest"] = ["type=provenance,disabled=true"]
        refs.append(ref)
    file = work / "bake.json"
    file.write_text(json.dumps(definition, indent=2, sort_keys=True) + "\n")
    with open(LOCK, "w") as lock:
        print(f"{label}: waiting for the engine lock", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
        print(f"{label}: baking {len(variants)} variants ({len(definition['target'])} targets) of {tree}",
              file=sys.stderr)
        registry_dir = work / "registry"
        shutil.rmtree(registry_dir, ignore_errors=True)
        registry = start_registry(registry_dir)
        try:
            before = {name: du(path) for name, path in PLACES.items()}
            cache_before = records()
            with Peak() as peak:
                wall, by_kind, steps = bake(tree, file, [node for _, node in variants], work / "bake.log")
                started = time.monotonic()
                for ref in refs:
                    docker("push", "--quiet", ref)
                push = round(time.monotonic() - started, 1)
            after = {name: du(path) for name, path in PLACES.items()}
            after["registry"] = du(registry_dir / "data")
            cache_after = records()
            mine = {rid: r for rid, r in cache_after.items() if rid not in cache_before}
            cache: dict[str, int] = {}
            for r in mine.values():
                if r["type"] != "exec.cachemount":
                    cache[kind(r["description"])] = cache.get(kind(r["description"]), 0) + r["size"]
            for rid, r in cache_after.items():
                if r["type"] == "exec.cachemount":
                    grown = r["size"] - cache_before.get(rid, {}).get("size", 0)
                    cache[mount_kind(r["description"])] = cache.get(mount_kind(r["description"]), 0) + grown
            pip_mount = sum(r["size"] for r in cache_after.values()
                            if r["type"] == "exec.cachemount" and "/root/.cache" in r["description"])
            snapshots = after["snapshots"] - before["snapshots"]
            built = sum(size for name, size in cache.items())
            # Forget the images: what that frees of the snapshots is the variants unpacked.
            for ref in refs:
                docker("image", "rm", "--force", ref, check=False)
            time.sleep(5)   # containerd's garbage collection runs after the removal
            forgotten = {name: du(path) for name, path in PLACES.items()}
            result = {
                "label": label, "tree": str(tree), "variants": [vid for vid, _ in variants],
                "bake_s": wall, "push_s": push, "step_s": by_kind,
                "apt_steps": [s for s in steps if "apt-get" in s["step"]],
                "peak_growth": peak.peak - peak.start,
                "growth": {"content store (compressed blobs)": after["content"] - before["content"],
                           "snapshots: build cache (records of this side)": built,
                           "snapshots: the rest (images unpacked)": snapshots - built,
                           "registry": after["registry"],
                           "buildkit metadata": after["buildkit"] - before["buildkit"]},
                "build_cache": cache,
                "pip_cache_mount_total": pip_mount,
                "freed_by_removing_images": {name: after[name] - forgotten[name] for name in PLACES},
            }
        finally:
            registry.terminate()
            registry.wait()
            shutil.rmtree(registry_dir, ignore_errors=True)
            # Only this side's own records, by id: the engine's other cache stays.
            # (Cache mounts stay: they are the engine's, whoever made a new one.)
            try:
                buildcache.prune({rid for rid, r in records().items()
                                  if rid not in cache_before and r["type"] != "exec.cachemount"})
            except DlenvError as exc:   # the numbers are taken: a cache left behind costs disk only
                print(f"pruning this side's build cache failed: {exc}", file=sys.stderr)
    print(json.dumps(result, indent=2), file=sys.stderr)
    return result


def table(before: dict, after: dict) -> str:
    rows = [("bake (s)", before["bake_s"], after["bake_s"], False),
            ("pushes (s)", before["push_s"], after["push_s"], False),
            ("peak growth of the filesystem", before["peak_growth"], after["peak_growth"], True)]
    rows += [(name, before["growth"][name], after["growth"][name], True) for name in before["growth"]]
    names = list(dict.fromkeys([*before["build_cache"], *after["build_cache"]]))
    rows += [(f"  build cache: {name}", before["build_cache"].get(name, 0), after["build_cache"].get(name, 0), True)
             for name in names]
    rows += [(f"freed by removing the images: {name}", before["freed_by_removing_images"][name],
              after["freed_by_removing_images"][name], True) for name in before["freed_by_removing_images"]]
    kinds = list(dict.fromkeys([*before["step_s"], *after["step_s"]]))
    rows += [(f"step seconds: {name}", before["step_s"].get(name, 0), after["step_s"].get(name, 0), False)
             for name in kinds]
    lines = [f"| | {before['label']} | {after['label']} | ratio |", "|---|---|---|---|"]
    for name, a, b, size in rows:
        show = (lambda v: f"{v / GB:.2f} GB") if size else (lambda v: f"{v:.0f} s")
        ratio = f"{b / a:.2f}x" if a else ""
        lines.append(f"| {name} | {show(a)} | {show(b)} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to compare this working tree with")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=ROOT / "out/bench-disk")
    options = parser.parse_args()
    options.workdir = options.workdir.resolve()   # bake runs in each side's tree
    os.environ.setdefault("DOCKER_HOST", "unix:///run/dlenv/docker.sock")
    shutil.rmtree(WORKTREE, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(WORKTREE), options.ref],
                   check=True, capture_output=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    try:
        before = side("before", WORKTREE, options.workdir / "before", f"bench-disk-{stamp}-before")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(WORKTREE)], capture_output=True)
    after = side("after", ROOT, options.workdir / "after", f"bench-disk-{stamp}-after")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"before: {options.ref}; after: the working tree on {commit}; selection {SELECT}, skip {SKIP}")
    print(table(before, after))
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({"ref": options.ref, "head": commit, "before": before, "after": after},
                                           indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
