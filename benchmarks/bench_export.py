"""What a variant's layers cost by compression: gzip (BuildKit's default) against zstd, for one
variant of the repository's family, measured on freshly built layers.

For each setting the variant's own node is rebuilt (no-cache: new layers) and every layer is
compressed afresh (force-compression), then: bake's own "exporting layers" seconds (compression into
the engine's store), the push to dlenv's registry, and a client's pull and unpack: every layer
fetched from the registry over HTTP, decompressed by the system's gzip or zstd and unpacked
with tar into an empty folder (what a host that pulls the image does). Prints a table and
writes JSON (--json). Run it alone on the engine: it measures time.

    python benchmarks/bench_export.py --select '13.0.2-runtime-debian12' --json out/bench-export.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from python_on_whales import DockerClient
from rich.console import Console
from rich.table import Table

from dlenv import engine, graph, registry
from dlenv import plan as planmod
from dlenv.bake import working_dir
from dlenv.options import PlanRequest
from dlenv.report import human_size

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True, width=200)
SETTINGS = {"gzip": "compression=gzip", "zstd": "compression=zstd", "zstd-9": "compression=zstd,compression-level=9"}
EXPORT = re.compile(r"^#\d+ exporting layers ([\d.]+)s done")


def bake(client: DockerClient, definition: dict, target: str, workdir: Path) -> tuple[float, float]:
    """(wall seconds, the export's own seconds)."""
    file = workdir / "bench-export.json"
    file.write_text(graph.render(definition))
    started, export = time.monotonic(), 0.0
    with working_dir(ROOT):
        for line in client.buildx.bake([target], files=[str(file)], progress="plain", stream_logs=True,
                                       variables={"BUILDX_BAKE_ENTITLEMENTS_FS": "0"}):
            match = EXPORT.match(line.strip())
            if match:
                export += float(match.group(1))
    return time.monotonic() - started, export


def pull_unpack(repository: str, tag: str) -> float:
    """Fetch and unpack every layer as a client does; seconds."""
    reg = engine.DEFAULT_REGISTRY
    layers = registry.image_manifest(reg, repository, tag)["layers"]
    folder = Path(tempfile.mkdtemp(prefix="dlenv-bench-pull-"))
    started = time.monotonic()
    try:
        for layer in layers:
            tool = ["zstd", "-dc"] if "zstd" in layer["mediaType"] else ["gzip", "-dc"]
            url = f"{registry.base_url(reg)}/v2/{repository}/blobs/{layer['digest']}"
            with urllib.request.urlopen(url, timeout=600) as response:
                unpack = subprocess.Popen(["tar", "-x", "-C", str(folder)], stdin=subprocess.PIPE)
                decompress = subprocess.Popen(tool, stdin=subprocess.PIPE, stdout=unpack.stdin)
                assert decompress.stdin is not None
                shutil.copyfileobj(response, decompress.stdin, 1 << 20)
                decompress.stdin.close()
                if decompress.wait() or (unpack.stdin.close() or unpack.wait()):
                    raise SystemExit(f"unpacking {layer['digest']} failed")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--select", default="13.0.2-runtime-debian12-py-torch", help="one variant id")
    parser.add_argument("--settings", default="gzip,zstd", help=f"comma separated: {', '.join(SETTINGS)}")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-export"))
    args = parser.parse_args()
    engine.ensure(say=console.print)
    engine.ensure_registry(engine.DEFAULT_REGISTRY, say=console.print)
    plan = planmod.load(PlanRequest(matrix=ROOT / "matrix.yaml", root=ROOT, select=(args.select,)))
    if len(plan.variants) != 1:
        sys.exit(f"--select must name one variant (it names {len(plan.variants)})")
    variant = plan.variants[0]
    args.workdir.mkdir(parents=True, exist_ok=True)
    client = DockerClient()
    rows = []
    epoch = plan.build.epoch   # tags of their own per run
    for index, name in enumerate(args.settings.split(",")):
        definition = graph.definition(plan, "push", graph.secrets(plan))
        target = definition["target"][variant.node]
        # The variant's own layers are built again (new files, new blobs), and every layer below
        # them is compressed again too: nothing of an earlier setting is reused.
        target["no-cache"] = True
        repository = "dlenv-bench/export"
        tag = f"{variant.id}-{name}-{epoch + 1 + index}"
        ref = f"{engine.DEFAULT_REGISTRY}/{repository}:{tag}"
        target["tags"] = [ref]
        target["attest"] = ["type=provenance,disabled=true"]
        target["output"] = [f"type=image,oci-mediatypes=true,force-compression=true,{SETTINGS[name]}"]
        console.print(f"{name}: building and exporting {variant.id} with fresh layers")
        wall, export = bake(client, definition, variant.node, args.workdir)
        started = time.monotonic()
        client.image.push(ref, quiet=True)
        push = time.monotonic() - started
        size = registry.compressed_size(engine.DEFAULT_REGISTRY, repository, tag)
        pull = pull_unpack(repository, tag)
        client.image.remove(ref, force=True)
        rows.append({"setting": name, "bake_s": round(wall, 1), "export_s": round(export, 1),
                     "push_s": round(push, 1), "pull_unpack_s": round(pull, 1), "compressed_bytes": size})
        console.print(rows[-1])
    table = Table(title=f"export, push, pull and unpack of {variant.id} (fresh layers for each setting)")
    for column in ("setting", "bake s", "export s", "push s", "pull+unpack s", "compressed", "export vs gzip",
                   "pull vs gzip"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    base = next((r for r in rows if r["setting"] == "gzip"), rows[0])
    for r in rows:
        table.add_row(r["setting"], f"{r['bake_s']:.0f}", f"{r['export_s']:.0f}", f"{r['push_s']:.0f}",
                      f"{r['pull_unpack_s']:.0f}",
                      human_size(r["compressed_bytes"]), f"{r['export_s'] / base['export_s']:.2f}x",
                      f"{r['pull_unpack_s'] / base['pull_unpack_s']:.2f}x")
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"variant": variant.id, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
