"""How often a release shard rebuilt on an empty machine takes every step from the registry cache,
and how long it takes against building it with no cache at all, in the same run.

The shard is 1/2 of the rehearsal's family (tests/release-family.yaml: a bootstrapped Debian 12,
its OS layer and CUDA 13.0.2 base). First it is built from nothing, exporting the registry cache
(`--cache`); then, `--runs` times, the machine is emptied as a new release runner is (no
containers, images or build cache) and the shard is built again under another build id, importing
that cache. For each rebuild: its seconds and the `RUN` steps that ran again (build.log).

BuildKit does not always take a step from an imported cache when a bake's targets share the steps
below it (moby/buildkit#4674, open): the figure here is how often a rebuild took all of them.

Empties the build cache and the images of the engine it runs on: only on the engine dlenv starts
itself (`dlenv engine up`), with its loopback registry.

    python benchmarks/bench_registry_cache.py --runs 8 --json out/bench-registry-cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dlenv import engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the tests' helpers: emptying the engine, reading a build log
console = Console(stderr=True)

from helpers import empty_engine, run_steps  # noqa: E402


def build(registry: str, cache: str | None, build_id: str, work: Path) -> float:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "dlenv", "build", "--matrix", "tests/release-family.yaml",
                          "--registry", registry, "--shard", "1/2", "--build-id", build_id, "--no-promote",
                          "--workdir", str(work), *(["--cache", cache] if cache else [])],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"the build {build_id} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="rebuilds on an emptied machine")
    parser.add_argument("--workdir", type=Path, default=ROOT / "out/bench-registry-cache")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    found = engine.find()
    if found is None or found[0] != engine.private_host():
        sys.exit("bench_registry_cache empties the engine's images and build cache: start dlenv's own engine "
                 "(`python -m dlenv engine up`) and point DOCKER_HOST at it")
    os.environ["DOCKER_HOST"] = found[0]
    engine.ensure_registry(engine.DEFAULT_REGISTRY)
    run = secrets.token_hex(3)
    registry = f"{engine.DEFAULT_REGISTRY}/bench-cache-{run}"
    cache = f"{registry}/dlenv-test/release-cache"

    empty_engine()
    uncached = build(registry, None, f"nocache-{run}", args.workdir / "nocache")
    empty_engine()
    cold = build(registry, cache, f"cold-{run}", args.workdir / "cold")
    rows = []
    for index in range(1, args.runs + 1):
        empty_engine()
        work = args.workdir / f"rebuild-{index}"
        seconds = build(registry, cache, f"re{index}-{run}", work)
        ran = [step for step, cached in run_steps(work / "build.log").items() if not cached]
        rows.append({"run": index, "seconds": round(seconds, 1), "ran_again": ran})
        console.print(f"rebuild {index}: {seconds:.1f} s, {len(rows[-1]['ran_again'])} steps ran again")
    empty_engine()

    table = Table(title="shard 1/2 of tests/release-family.yaml on an emptied machine")
    for column in ("build", "seconds", "RUN steps run again"):
        table.add_column(column)
    table.add_row("no registry cache", f"{uncached:.1f}", "all")
    table.add_row("exporting the registry cache", f"{cold:.1f}", "all")
    for row in rows:
        table.add_row(f"rebuild {row['run']}", f"{row['seconds']:.1f}", ", ".join(row["ran_again"]) or "none")
    console.print(table)
    whole = [r for r in rows if not r["ran_again"]]
    median = statistics.median(r["seconds"] for r in rows)
    console.print(f"every step from the registry cache: {len(whole)} of {len(rows)} rebuilds; median rebuild "
                  f"{median:.1f} s = {median / uncached:.2f}x the build without a cache ({uncached:.1f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"uncached_s": round(uncached, 1), "cold_s": round(cold, 1), "rebuilds": rows,
                                         "whole": len(whole), "median_rebuild_s": median}, indent=1))


if __name__ == "__main__":
    main()
