"""A release shard's peak disk on a build runner of the hosted runners' free disk, measured.

Each shard of a selection's split (`--count N`, the split `nox -s shards` prints) is built in
stage order, as release.yml runs them, on a fresh runner: a dockerd of its own whose data root,
bootstrap cache and dlenv state are an ext4 file of `--size` (14G: the free disk of GitHub's
hosted runners) loop-mounted, pushing to a registry of the benchmark's own whose storage is
elsewhere on / (a release's registry is not on the runner). `dlenv build --shard I/N --platform
linux/amd64 --no-promote --cache` runs there while the filesystem's use is sampled every 2 s;
then the runner is thrown away (dockerd stopped, the file removed) and the next shard starts on
an empty one, pulling what the earlier ones pushed. dlenv's shared engine is not used.

    python benchmarks/bench_shard_disk.py --select 'cuda=12.8.1 os=debian12' --count 2 \\
        --json out/bench-shard-disk.json

For each shard: its variants, the estimate `nox -s shards` gives, the measured peak against the
file's size, whether the build passed, and the compressed bytes it built and pulled (from the
registry) with the ratio of the peak to them (fit.PEAK_PER_BYTE's basis). Root; the machine's
/ needs room for the file's size plus the registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "engine"))   # the tests' scratch engine and registry

from faults import OwnRegistry  # noqa: E402
from scratch import ScratchEngine  # noqa: E402

from dlenv import disk, fit, registry, shards  # noqa: E402
from dlenv import plan as planmod  # noqa: E402
from dlenv.options import PlanRequest  # noqa: E402

PLATFORM = "linux/amd64"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=ROOT / "matrix.yaml")
    parser.add_argument("--select", action="append", default=[], help="as dlenv's --select")
    parser.add_argument("--count", type=int, required=True, help="the shard count to split the selection into")
    parser.add_argument("--size", default="14G", help="the runner's free disk: the loop file's size")
    parser.add_argument("--runner-disk", type=float, default=None,
                        help="GB the split fits shards into (default: --size's figure); a larger --size then "
                             "measures what a shard needs where it does not fit")
    parser.add_argument("--folder", type=Path, default=Path("/var/tmp/dlenv-bench-shard-disk"),
                        help="where the loop file and the registry's storage go (removed at the end)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # Stopped (SIGTERM), it still removes its engine, registry, loop file and firewall rules.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.folder.exists():
        shutil.rmtree(args.folder)
    args.folder.mkdir(parents=True)
    own = OwnRegistry(args.folder / "registry")
    # One build id for every shard, as in a release (a tree edited meanwhile would change it).
    request = PlanRequest(matrix=args.matrix, select=tuple(args.select), platform=(PLATFORM,), registry=own.address,
                          runner_disk=args.runner_disk or float(args.size.rstrip("G")), build_id=f"bench-{int(time.time())}")
    family = planmod.load(request)
    layout = shards.layout(family, args.count)
    order = sorted((i for i, s in enumerate(layout) if s.variants), key=lambda i: (layout[i].stage, i))
    rows = []
    try:
        for index in order:
            shard = f"{index + 1}/{args.count}"
            mine = planmod.load(dataclasses.replace(request, shard=shard))
            runner = ScratchEngine(args.folder / f"runner-{index + 1}", args.size, "dlenv-bench-disk", "10.214.0",
                                   outbound=True)
            runner.folder.mkdir(parents=True)
            work = args.folder / f"work-{index + 1}"
            metadata = work / "build.json"
            started = time.monotonic()
            try:
                runner.up()
                env = {**os.environ, **runner.env, "DLENV_CACHE": str(runner.root / "cache"),
                       "PYTHONPATH": str(ROOT / "src")}
                with disk.Sampler(runner.root) as sampler:
                    out = subprocess.run([sys.executable, "-m", "dlenv", "build", "--matrix", str(args.matrix),
                                          *[a for s in args.select for a in ("--select", s)], "--platform", PLATFORM,
                                          "--shard", shard, "--build-id", request.build_id, "--registry",
                                          own.address, "--runner-disk",
                                          str(request.runner_disk), "--cache", f"{own.address}/dlenv-cache",
                                          "--no-promote", "--workdir", str(work), "--metadata", str(metadata)],
                                         cwd=ROOT, env=env, capture_output=True, text=True)
                capacity = shutil.disk_usage(runner.root).total
                (args.folder.parent / f"dlenv-bench-shard-{index + 1}.log").write_text(out.stdout + out.stderr)
                if (work / "build.log").exists():
                    shutil.copy(work / "build.log", args.folder.parent / f"dlenv-bench-shard-{index + 1}.build.log")
            finally:
                runner.down()
            built = {r["variant"]: r["size"] for r in json.loads(metadata.read_text())["variants"]} \
                if metadata.exists() else {}
            pulled = {v: registry.compressed_size(own.address, family.matrix.model.repository,
                                                  family.variant(v).immutable) for v in layout[index].pulled}
            compressed = _distinct(family, mine, {**pulled, **built}) + sum(pulled.values())
            rows.append({"shard": shard, "stage": layout[index].stage, "variants": [v.id for v in mine.variants],
                         "estimate_gb": round(layout[index].need / fit.GB, 1), "exit": out.returncode,
                         "seconds": round(time.monotonic() - started), "peak_gb": round(sampler.growth / fit.GB, 2),
                         "capacity_gb": round(capacity / fit.GB, 2), "built_sizes": built, "pulled_sizes": pulled,
                         "compressed_gb": round(compressed / fit.GB, 2),
                         "peak_per_compressed_byte": round(sampler.growth / compressed, 2) if compressed else None,
                         "error": [line for line in out.stderr.splitlines() if "error" in line][-3:]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        own.kill()
        shutil.rmtree(args.folder, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": args.size, "runner_disk": request.runner_disk, "select": args.select,
                                         "count": args.count, "shards": rows}, indent=2) + "\n")
    for row in rows:
        print(f"shard {row['shard']} (stage {row['stage']}, {len(row['variants'])} variants): peak {row['peak_gb']} GB "
              f"of {row['capacity_gb']} GB, estimate {row['estimate_gb']} GB, {row['compressed_gb']} GB compressed "
              f"built and pulled ({row['peak_per_compressed_byte']}x), exit {row['exit']}, {row['seconds']} s")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


def _distinct(family: planmod.Plan, shard: planmod.Plan, sizes: dict[str, int | None]) -> int:
    """Compressed bytes of the layers a shard built: each of its variants' size less that of the
    nearest variant below it (built there or pulled)."""
    estimator = fit.Estimator(family.variants, {})
    total = 0
    for v in shard.variants:
        below = estimator.below(v)
        total += max(0, (sizes.get(v.id) or 0) - ((sizes.get(below.id) or 0) if below else 0))
    return total


if __name__ == "__main__":
    sys.exit(main())
