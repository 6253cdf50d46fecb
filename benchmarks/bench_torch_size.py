"""How much smaller the pytorch stack is for reusing the image's CUDA, against the naive way.

For each selected pytorch variant of matrix.yaml (default: all that can be built here), dlenv
builds and pushes it and its `-py` parent; then the same stack is built the naive way on that
very parent (benchmarks/naive-torch/Dockerfile: torch into a venv blind to the image's CUDA
wheels, so pip brings CUDA again) and pushed beside it. Prints compressed (pull) sizes and the
CUDA libraries the naive image holds twice; writes out/bench-torch.json.

Usage: python benchmarks/bench_torch_size.py [--select EXPR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from python_on_whales import DockerClient
from rich.console import Console
from rich.table import Table

from dlenv import config, engine, graph, registry
from dlenv.build import Builder
from dlenv.plan import LeftOut, expand
from dlenv.plan import mirrors as plan_mirrors
from dlenv.report import human_size
from dlenv.selection import Selection
from dlenv.tags import build_info

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)
# Shared libraries in the venv that the image's linker cache also has: CUDA shipped twice.
TWICE = ("python -c \"import glob, os, subprocess, sysconfig; "
         "c = {l.split()[0] for l in subprocess.run(['ldconfig', '-p'], capture_output=True, "
         "text=True).stdout.splitlines()[1:]}; "
         "s = sysconfig.get_paths()['purelib']; "
         "t = [p for p in glob.glob(s + '/nvidia/**/lib*.so*', recursive=True) "
         "if os.path.basename(p) in c]; "
         "print(len(t), sum(os.path.getsize(p) for p in t))\"")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", action="append", default=[],
                        help="which variants, as for build (default: 'os=debian*', what builds here)")
    args = parser.parse_args()
    engine.ensure(say=console.print)
    engine.ensure_registry(engine.DEFAULT_REGISTRY, say=console.print)
    matrix = config.load(ROOT / "matrix.yaml", root=ROOT)
    info = build_info(ROOT, None, matrix.model.source)
    plan = expand(matrix, info, plan_mirrors(matrix.model), Selection.parse(args.select or ["os=debian*"], []))
    torch_variants = [v for v in plan.variants if "pytorch" in v.stack]
    parents = {v.id: plan.variant(v.id.removesuffix("-torch")) for v in torch_variants}
    keep = {v.id for v in torch_variants} | {p.id for p in parents.values()}
    plan = plan.without({v.id: LeftOut(v.id, "unselected", "not measured") for v in plan.variants if v.id not in keep})
    console.print(f"building {len(plan.variants)} variants with dlenv (a no-op where already pushed)")
    results = Builder(plan, Path(tempfile.mkdtemp(prefix="dlenv-bench-")), "push", graph.secrets(plan),
                      log=lambda s: None).run()
    failed = [r for r in results if r.status != "built"]
    if failed:
        raise SystemExit(f"dlenv build failed: {failed[0].variant}: {failed[0].error}")
    docker = DockerClient()
    reg, repo = matrix.model.registry, matrix.model.repository
    rows = []
    for variant in torch_variants:
        parent = parents[variant.id]
        node = plan.nodes[variant.node]
        naive = f"{reg}/dlenv-bench/naive-torch:{variant.id}"
        console.print(f"building {variant.id} the naive way")
        docker.buildx.build(ROOT / "benchmarks/naive-torch", build_args={**dict(node.args), "BASE": plan.ref(parent.immutable)},
                            secrets=[s.spec() for s in graph.secrets(plan)], tags=[naive], load=True, progress=False)
        docker.image.push(naive, quiet=True)
        sizes = {"parent": registry.compressed_size(reg, repo, parent.immutable),
                 "dlenv": registry.compressed_size(reg, repo, variant.immutable),
                 "naive": registry.compressed_size(reg, "dlenv-bench/naive-torch", variant.id)}
        twice = {}
        for way, ref in (("dlenv", plan.ref(variant.immutable)), ("naive", naive)):
            count, size = docker.run(ref, ["-c", TWICE], entrypoint="/bin/sh", remove=True).split()
            twice[way] = {"libraries": int(count), "bytes": int(size)}
        rows.append({"variant": variant.id, "compressed": sizes, "cuda_twice": twice})
    table = Table(title="pytorch stack: compressed (pull) size, dlenv vs naive")
    for column in ("variant", "CUDA + Python", "dlenv", "naive", "torch layer dlenv", "torch layer naive",
                   "naive / dlenv", "CUDA libs twice (naive)"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        s, t = row["compressed"], row["cuda_twice"]["naive"]
        table.add_row(row["variant"], human_size(s["parent"]), human_size(s["dlenv"]), human_size(s["naive"]),
                      human_size(s["dlenv"] - s["parent"]), human_size(s["naive"] - s["parent"]),
                      f"{s['naive'] / s['dlenv']:.2f}x",
                      f"{t['libraries']} ({human_size(t['bytes'])} unpacked)")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out/bench-torch.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
