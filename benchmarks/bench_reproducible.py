"""How reproducible is a build? Rebuild one variant from scratch and count bit-identical layers.

Each way builds the variant's whole chain twice with `no-cache` (every step runs again; cache
mounts, i.e. downloaded .debs and wheels, stay), exports it as an OCI tarball and compares the
two builds layer by layer (compressed digests: what a registry stores and users pull):

  as pushed:          SOURCE_DATE_EPOCH from the commit (image config and history times), layers
                      as the steps wrote them: what dlenv pushes with the docker driver
  rewrite-timestamp:  the same, plus BuildKit clamping every file time in the layers to
                      SOURCE_DATE_EPOCH: what dlenv pushes with any other builder

The OS rootfs tarball made by mmdebstrap is reused by both builds (it has fixed times of its
own). Prints a table and writes out/reproducible.json.

Usage: python benchmarks/bench_reproducible.py [--matrix tests/family.yaml] [--select EXPR]
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

from python_on_whales import DockerClient
from rich.console import Console
from rich.table import Table

from dlenv import bootstrap, config, engine, graph
from dlenv.bake import working_dir
from dlenv.plan import expand
from dlenv.plan import mirrors as plan_mirrors
from dlenv.report import human_size
from dlenv.selection import Selection
from dlenv.tags import build_info

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)


def layers(oci_tar: Path) -> list[tuple[str, int]]:
    """(digest, size) of each layer of the single image in an OCI tarball, bottom first."""
    with tarfile.open(oci_tar) as tar:
        def blob(digest: str) -> dict:
            return json.load(tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}"))  # type: ignore[arg-type]
        top = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = blob(top["manifests"][0]["digest"])
        if "manifests" in manifest:   # an index: take the image, not an attestation
            manifest = blob(next(m["digest"] for m in manifest["manifests"]
                                 if m.get("platform", {}).get("architecture") == "amd64"))
        return [(layer["digest"], layer["size"]) for layer in manifest["layers"]]


def build(plan, variant, dest: Path, rewrite: bool) -> float:
    definition = graph.definition(plan, "push", graph.secrets(plan))
    for name in graph.ancestors(plan, variant.node):
        definition["target"][name]["no-cache"] = True
    out = f"type=oci,dest={dest}" + (",rewrite-timestamp=true" if rewrite else "")
    top = definition["target"][variant.node]
    top.update(output=[out], attest=["type=provenance,disabled=true"])
    top.pop("tags", None)
    definition["group"]["default"]["targets"] = [variant.node]
    bake = dest.with_suffix(".bake.json")
    bake.write_text(graph.render(definition))
    started = time.monotonic()
    with working_dir(plan.matrix.root):
        # Streamed, as dlenv's builds are: without it python-on-whales left the tarball empty.
        for _ in DockerClient().buildx.bake([variant.node], files=[str(bake)], progress="plain", stream_logs=True,
                                            variables={"BUILDX_BAKE_ENTITLEMENTS_FS": "0"}):
            pass
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=ROOT / "tests/family.yaml")
    parser.add_argument("--select", default="cuda=13.0.2 flavor=runtime os=debian12 stack=none")
    args = parser.parse_args()
    engine.ensure(say=lambda s: console.print(s))
    matrix = config.load(args.matrix, root=ROOT)
    plan = expand(matrix, build_info(ROOT), plan_mirrors(matrix.model), Selection.parse([args.select]))
    variant = plan.variants[0]
    for node in plan.nodes.values():
        if node.rootfs:
            bootstrap.ensure_rootfs(node.rootfs, say=lambda s: console.print(s))
    work = Path(tempfile.mkdtemp(prefix="dlenv-repro-"))
    rows = []
    for rewrite in (False, True):
        mode = "rewrite-timestamp" if rewrite else "as pushed"
        runs = []
        for attempt in (1, 2):
            dest = work / f"{'rewrite' if rewrite else 'plain'}-{attempt}.tar"
            console.print(f"{variant.id}: {mode}, build {attempt} of 2 (no cache)")
            seconds = build(plan, variant, dest, rewrite)
            runs.append((layers(dest), seconds))
            dest.unlink()   # GBs each
        (first, s1), (second, s2) = runs
        same = [a for a, b in zip(first, second, strict=True) if a[0] == b[0]]
        total = sum(size for _, size in first)
        rows.append({"mode": mode, "layers": len(first), "identical": len(same),
                     "identical_bytes": sum(size for _, size in same), "bytes": total,
                     "image_identical": first == second, "seconds": [round(s1), round(s2)],
                     "different": [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a[0] != b[0]]})
    table = Table(title=f"rebuilding {variant.id} from scratch (commit {plan.build.sha})", title_justify="left")
    for column in ("mode", "layers bit-identical", "bytes bit-identical", "image identical", "differing layers",
                   "build seconds"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["mode"], f"{r['identical']} of {r['layers']}",
                      f"{human_size(r['identical_bytes'])} of {human_size(r['bytes'])}",
                      "yes" if r["image_identical"] else "no", ", ".join(map(str, r["different"])) or "-",
                      " / ".join(map(str, r["seconds"])))
    Console().print(table)
    out = ROOT / "out/reproducible.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"variant": variant.id, "commit": plan.build.revision, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
