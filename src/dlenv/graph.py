"""Plan -> one bake definition: a target per distinct layer node, chained by named contexts.

A node's target takes its parent as `contexts = {base = "target:<parent>"}`, so BuildKit builds a
shared prefix once for all the variants above it. Only variant targets carry tags, labels and
an output; intermediate nodes are built as their dependencies. The same plan always renders to
the same bytes (sorted keys, no timestamps beyond the commit's).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dlenv import bootstrap
from dlenv.plan import Node, Plan, Variant

Output = Literal["push", "load", "cache"]
LABEL = "io.dlenv"


@dataclass(frozen=True)
class Secret:
    id: str
    src: Path

    def spec(self) -> str:
        return f"id={self.id},src={self.src}"


@dataclass(frozen=True)
class Options:
    """How the builder exports: what it supports decides these (see build.Builder)."""

    cache: str = ""                 # registry repository for per-node cache; "" keeps it local
    provenance: str = "off"         # off | min | max
    sbom: str | None = None         # the SBOM generator image ("": BuildKit's default); None: no SBOM
    rewrite_timestamp: bool = False  # file times in layers clamped to SOURCE_DATE_EPOCH
    push: bool = False              # BuildKit pushes (any driver but docker, whose store dlenv pushes from)
    compression: str = "gzip"       # gzip | zstd, for layers this build compresses
    compression_level: int | None = None


# Any userinfo in a URL: user:password@, or a bare token@.
CREDENTIALS = re.compile(r"://[^/\s@]+@")


def credentials_in_args(plan: Plan) -> bool:
    """Does a build arg hold a URL with credentials (a proxy's or a mirror's)?"""
    values = [v for node in plan.nodes.values() for _, v in node.args] + [v for _, v in plan.mirrors.proxies]
    return any(CREDENTIALS.search(v) for v in values)


def labels(plan: Plan, variant: Variant) -> dict[str, str]:
    b = plan.build
    out = {
        "org.opencontainers.image.title": f"{plan.matrix.model.repository}:{variant.id}",
        "org.opencontainers.image.version": variant.immutable,
        "org.opencontainers.image.revision": b.revision,
        "org.opencontainers.image.created": b.created,
        "org.opencontainers.image.description": (
            f"CUDA {variant.cuda} {variant.flavor} on {variant.os}"
            + (f" with {', '.join(variant.stack)}" if variant.stack else "")),
        f"{LABEL}.variant": variant.id,
        f"{LABEL}.cuda": variant.cuda,
        f"{LABEL}.cuda.source": variant.cuda_source,
        f"{LABEL}.flavor": variant.flavor,
        f"{LABEL}.os": variant.os,
        f"{LABEL}.recipes": ",".join(variant.stack),
    }
    if b.source:
        out["org.opencontainers.image.source"] = b.source
    return out


def folder(plan: Plan, relative: str) -> str:
    """A path under the project, absolute, as bake files name every path: bakes run side by
    side in threads of one process, which cannot each have a working folder of their own."""
    return str((plan.matrix.root / relative).resolve())


def _context(plan: Plan, node: Node) -> str:
    if node.kind == "rootfs" and node.rootfs:
        return str(bootstrap.rootfs_dir(node.rootfs))
    return folder(plan, node.dockerfile)


def ancestors(plan: Plan, name: str) -> list[str]:
    """The node named name and every node below it, the first first."""
    chain = [name]
    while plan.nodes[chain[0]].parent:
        chain.insert(0, plan.nodes[chain[0]].parent)  # type: ignore[arg-type]
    return chain


def target(plan: Plan, node: Node, variant: Variant | None, output: Output,
           secrets: tuple[Secret, ...], options: Options = Options()) -> dict:
    t: dict = {"context": _context(plan, node)}
    if node.platforms and node.platforms != ("linux/amd64",):
        # Each platform's image under the same tags (an index); a family of linux/amd64 alone
        # leaves it to the builder's default, as its bake files always did.
        t["platforms"] = list(node.platforms)
    if node.kind == "rootfs":
        t["dockerfile"] = folder(plan, f"{node.dockerfile}/Dockerfile")
    pulled = dict(plan.pulled)
    if node.parent in pulled:
        # Built and pushed by an earlier shard or bake: its image, not a target here.
        t["contexts"] = {"base": f"docker-image://{pulled[node.parent]}"}
    elif node.parent:
        t["contexts"] = {"base": f"target:{node.parent}"}
    elif node.base_image:
        t["contexts"] = {"base": f"docker-image://{node.base_image}"}
    if node.contexts:   # folders under the project, like the node's own context
        t.setdefault("contexts", {}).update({name: folder(plan, path) for name, path in node.contexts})
    args = dict(node.args)
    # Fixes the image's creation time to the commit's: rebuilds of a commit are identical.
    args["SOURCE_DATE_EPOCH"] = str(plan.build.epoch)
    args.update(plan.mirrors.proxies)
    t["args"] = args
    if node.kind in ("cuda", "recipe") and secrets:
        t["secret"] = [s.spec() for s in secrets]
    if options.cache:
        # One cache tag per node: a shard imports what other shards and earlier releases built
        # below it, and exports its own nodes. A cache that cannot be written fails no build.
        t["cache-from"] = [f"type=registry,ref={options.cache}:{name}" for name in ancestors(plan, node.name)]
        if output != "cache":
            t["cache-to"] = [f"type=registry,ref={options.cache}:{node.name},mode=max,oci-mediatypes=true,"
                             "ignore-error=true"]
    if variant is None or output == "cache":
        # Built only as a dependency (or a probe): kept in the build cache, exported nowhere.
        t["output"] = ["type=cacheonly"]
        return t
    lab = labels(plan, variant)
    t["labels"] = lab
    t["annotations"] = [f"manifest:{k}={v}" for k, v in sorted(lab.items())
                        if k.startswith("org.opencontainers.")]
    t["tags"] = [plan.ref(tag) for tag in variant.tags]
    if output == "push" and not options.cache and variant.floating:
        # The image carries its own cache (inline): the main job prunes the build cache after
        # each bake (buildcache.py), and its next run builds on what the last image of this variant
        # cached instead of on nothing.
        t["cache-to"] = ["type=inline"]
        t["cache-from"] = [f"type=registry,ref={plan.ref(variant.floating[0])}"]
    if output != "push":
        t["attest"] = ["type=provenance,disabled=true"]
        t["output"] = ["type=docker"]
        return t
    # Attestations sit in the image index next to the image manifest: the image itself (its
    # manifest and layers) stays the same across rebuilds, the index records this build.
    t["attest"] = [f"type=provenance,mode={options.provenance}" if options.provenance != "off"
                   else "type=provenance,disabled=true"]
    if options.sbom is not None:
        t["attest"].append("type=sbom" + (f",generator={options.sbom}" if options.sbom else ""))
    out = "type=image,oci-mediatypes=true"
    if options.compression != "gzip" or options.compression_level is not None:
        out += f",compression={options.compression}"
        if options.compression_level is not None:
            out += f",compression-level={options.compression_level}"
    if options.rewrite_timestamp:
        out += ",rewrite-timestamp=true"
    if options.push:
        out += ",push=true"
        # Only the immutable tag is pushed; floating tags move after the smoke checks.
        t["tags"] = [plan.ref(variant.immutable)]
    # Otherwise dlenv pushes from the engine's store, one variant after another: parallel pushes
    # of the same large layer from several targets race in the registry ("manifest blob unknown").
    t["output"] = [out]
    return t


def pulled_below(plan: Plan) -> set[str]:
    """The nodes the plan takes from the registry (Plan.pulled) and every node below them: none is built."""
    return {n for name, _ in plan.pulled if name in plan.nodes for n in ancestors(plan, name)}


def definition(plan: Plan, output: Output = "push", secrets: tuple[Secret, ...] = (),
               options: Options = Options()) -> dict:
    by_node = {v.node: v for v in plan.variants}
    below = pulled_below(plan)
    targets = {name: target(plan, node, by_node.get(name), output, secrets, options)
               for name, node in plan.nodes.items() if name not in below}
    return {
        "group": {"default": {"targets": [v.node for v in plan.variants]}},
        "target": targets,
    }


def render(definition_: dict) -> str:
    return json.dumps(definition_, indent=2, sort_keys=True) + "\n"


def secrets(plan: Plan) -> tuple[Secret, ...]:
    """The CA bundle pip trusts, as a BuildKit secret: in no layer."""
    bundle = plan.network.ca()
    return (Secret("cacert", bundle),) if bundle else ()


def bake_file(plan: Plan, output: Output = "push") -> str:
    """The graph stage's front door: the plan as a bake file. What depends on the builder
    (attestations, timestamp rewriting) is decided when a build starts."""
    settings = plan.matrix.model.build
    return render(definition(plan, output, secrets(plan), Options(
        cache=settings.cache, compression=settings.compression, compression_level=settings.compression_level)))
