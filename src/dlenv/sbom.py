"""The SBOM scanner image: BuildKit's default where it can be pulled, else dlenv's own.

BuildKit makes SBOM attestations by running a scanner image over each built image. Its
default scanner lives on a registry that filtered networks often cannot reach, so dlenv builds
images/sbom-scanner (Debian packages and Python distributions, SPDX 2.3) on the family's own
OS layer, pushes it next to the family, and hands that to BuildKit instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import bootstrap, graph, reach, registry
from dlenv.bake import Capabilities
from dlenv.errors import DlenvError
from dlenv.plan import Plan, with_mirror

# BuildKit's own default SBOM scanner, named the way the default registry names it.
DEFAULT_SBOM_SCANNER = "docker/buildkit-syft-scanner:stable-1"
FOLDER = "images/sbom-scanner"
TARGET = "sbom-scanner"


def _os_node(plan: Plan) -> str:
    """The OS set-up node the scanner is built on: a bootstrapped one if the plan has one (small,
    and needing no registry), else the first variant's."""
    chains = sorted((v.chain for v in plan.variants), key=lambda c: plan.nodes[c[0]].kind != "rootfs")
    return next(n for n in chains[0] if plan.nodes[n].kind == "os")


def scanner_ref(plan: Plan) -> str:
    """Named by its inputs (its files, and every node it is built on): a scanner that exists is reused."""
    digest = hashlib.sha256()
    for name in graph.ancestors(plan, _os_node(plan)):
        digest.update(repr(plan.nodes[name]).encode())
    for path in sorted((plan.matrix.root / FOLDER).iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return f"{plan.image}-sbom-scanner:{digest.hexdigest()[:16]}"


def definition(plan: Plan, ref: str, push: bool) -> dict:
    base = _os_node(plan)
    # The builder's own platform only: a foreign platform's OS layers would wait for its bootstrap.
    targets = {name: {k: v for k, v in graph.target(plan, plan.nodes[name], None, "cache", ()).items() if k != "platforms"}
               for name in graph.ancestors(plan, base)}
    targets[TARGET] = {"context": graph.folder(plan, FOLDER), "contexts": {"base": f"target:{base}"}, "tags": [ref],
                       "attest": ["type=provenance,disabled=true"],
                       "output": ["type=image,oci-mediatypes=true" + (",push=true" if push else "")]}
    return {"group": {"default": {"targets": [TARGET]}}, "target": targets}


def build_scanner(plan: Plan, caps: Capabilities, workdir: Path) -> str:
    """Build and push dlenv's scanner unless it is in the registry already; its reference."""
    ref = scanner_ref(plan)
    if registry.digest(ref) is not None:
        return ref
    workdir.mkdir(parents=True, exist_ok=True)
    for name in graph.ancestors(plan, _os_node(plan)):
        if spec := plan.nodes[name].rootfs:
            bootstrap.ensure_architecture(spec, bootstrap.native_architecture(), lambda _: None, plan.network.env())
    file = workdir / "bake-sbom-scanner.json"
    file.write_text(graph.render(definition(plan, ref, push=caps.driver != "docker")))
    client = DockerClient()
    client.buildx.bake([TARGET], files=[str(file)], builder=caps.name, progress=False,
                       variables={"BUILDX_BAKE_ENTITLEMENTS_FS": "0"})
    if caps.driver == "docker":
        client.image.push(ref, quiet=True)
    return ref


def scanner(plan: Plan, caps: Capabilities, workdir: Path, say: Callable[[str], None]) -> str | None:
    """The scanner image for BuildKit ("" for its default), or None when there is none to use."""
    settings = plan.matrix.model.build
    if not settings.sbom:
        return None
    image = settings.sbom_generator or with_mirror(DEFAULT_SBOM_SCANNER, plan.mirrors.registry)
    if reach.image_ok(image, plan.network)[0]:
        return "" if image == DEFAULT_SBOM_SCANNER else image
    if settings.sbom_generator:
        return None   # the maintainer named one: do not swap it for another
    try:
        ref = build_scanner(plan, caps, workdir)
    except (DockerException, DlenvError) as exc:
        detail = str(exc) if isinstance(exc, DlenvError) else ((exc.stderr or "") if isinstance(exc.stderr, str) else "")
        say(f"dlenv's own SBOM scanner did not build: {(detail.strip().splitlines() or ['?'])[-1]}")
        return None
    say(f"SBOMs by dlenv's scanner ({ref}): {image} cannot be pulled from here")
    return ref
