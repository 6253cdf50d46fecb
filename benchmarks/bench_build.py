"""Time the test family (tests/family.yaml) built two ways, in the same run, on the same engine.

  dlenv:  one `docker buildx bake` graph for the whole family (shared targets, in parallel)
  naive:  one `docker build` per image, in sequence, the way the seed article builds (every
          layer of every variant's chain is its own build; BuildKit's cache still helps it)

Each way starts cold: the BuildKit cache (including its cache mounts) is pruned before it. The
mmdebstrap rootfs is made once beforehand and used by both. Prints a table with the ratio and
writes the figures to out/bench.json. These machines are noisy: compare ratios, not seconds.

Usage: python benchmarks/bench_build.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from python_on_whales import DockerClient
from rich.console import Console
from rich.table import Table

from dlenv import bootstrap, config, engine, graph, hostconf, registry
from dlenv.build import Builder
from dlenv.plan import expand
from dlenv.plan import mirrors as plan_mirrors
from dlenv.report import human_size
from dlenv.selection import Selection
from dlenv.tags import build_info

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)


def load(repository: str):
    tmp = Path(tempfile.mkdtemp(prefix="dlenv-bench-"))
    text = (ROOT / "tests/family.yaml").read_text().replace("dlenv-test/family", repository)
    (tmp / "matrix.yaml").write_text(text)
    matrix = config.load(tmp / "matrix.yaml", root=ROOT)
    return expand(matrix, build_info(ROOT, "bench"), plan_mirrors(matrix.model), Selection())


def prune(docker: DockerClient) -> None:
    docker.buildx.prune(all=True)


def dlenv_build(plan, workdir: Path) -> tuple[float, list]:
    started = time.monotonic()
    results = Builder(plan, workdir, "push", graph.secrets(plan), log=lambda s: None).run()
    seconds = time.monotonic() - started
    bad = [r for r in results if r.status != "built"]
    if bad:
        sys.exit(f"dlenv build failed: {bad[0].variant}: {bad[0].error}")
    return seconds, results


def naive_build(docker: DockerClient, plan) -> float:
    """One `docker build` per image, in sequence: every node of every variant's chain."""
    secrets = [s.spec() for s in graph.secrets(plan)]
    started = time.monotonic()
    for variant in plan.variants:
        for name in variant.chain:
            node = plan.nodes[name]
            contexts = {}
            if node.parent:
                contexts["base"] = f"docker-image://naive/{node.parent.lower()}:bench"
            elif node.base_image:
                contexts["base"] = f"docker-image://{node.base_image}"
            args = dict(node.args, SOURCE_DATE_EPOCH=str(plan.build.epoch))
            context = bootstrap.rootfs_dir(node.rootfs) if node.rootfs else ROOT / node.dockerfile
            tags = [f"naive/{name.lower()}:bench"]
            ref = plan.ref(variant.immutable).replace("/dlenv-bench:", "/dlenv-bench-naive:")
            if name == variant.node:
                tags.append(ref)
            docker.buildx.build(context, file=ROOT / node.dockerfile / "Dockerfile", build_contexts=contexts,
                                build_args=args, secrets=secrets, tags=tags, load=True, progress=False)
            if name == variant.node:
                docker.image.push(ref, quiet=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="cold runs of each way (default 1)")
    args = parser.parse_args()
    engine.ensure(say=console.print)
    engine.ensure_registry(engine.DEFAULT_REGISTRY, say=console.print)
    docker = DockerClient()
    plan = load("dlenv-bench")
    for node in plan.nodes.values():
        if node.rootfs:
            t = time.monotonic()
            bootstrap.ensure_rootfs(node.rootfs, console.print)
            console.print(f"rootfs ready ({time.monotonic() - t:.0f}s; made once, used by both ways)")
    rows = []
    for run in range(args.repeat):
        prune(docker)
        work = Path(tempfile.mkdtemp(prefix="dlenv-bench-work-"))
        cold, results = dlenv_build(plan, work)
        console.print(f"run {run + 1}: dlenv cold {cold:.0f}s")
        noop, _ = dlenv_build(plan, work)
        console.print(f"run {run + 1}: dlenv no-op {noop:.1f}s")
        prune(docker)
        naive = naive_build(docker, plan)
        console.print(f"run {run + 1}: naive cold {naive:.0f}s")
        rows.append({"run": run + 1, "dlenv_cold_s": round(cold, 1), "dlenv_noop_s": round(noop, 1),
                     "naive_cold_s": round(naive, 1), "ratio": round(naive / cold, 2)})
        shutil.rmtree(work, ignore_errors=True)
    model = plan.matrix.model
    sizes = []
    for r in results:
        sizes.append({"variant": r.variant,
                      "compressed": registry.compressed_size(model.registry, model.repository, r.digest)})
    table = Table(title=f"test family ({len(plan.variants)} variants, {len(plan.nodes)} bake targets)")
    for column in ("run", "dlenv cold (s)", "dlenv no-op (s)", "naive cold (s)", "naive / dlenv"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["run"]), f"{row['dlenv_cold_s']:.0f}", f"{row['dlenv_noop_s']:.1f}",
                      f"{row['naive_cold_s']:.0f}", f"{row['ratio']:.2f}x")
    sizes_table = Table(title="image sizes")
    for column in ("variant", "compressed (pull)"):
        sizes_table.add_column(column, justify="right" if column != "variant" else "left")
    for s in sizes:
        sizes_table.add_row(s["variant"], human_size(s["compressed"]))
    out = Console()
    out.print(table)
    out.print(sizes_table)
    Path(ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out/bench.json").write_text(json.dumps({"runs": rows, "sizes": sizes,
                                                      "host": hostconf.os_release().get("PRETTY_NAME", "")},
                                                     indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
