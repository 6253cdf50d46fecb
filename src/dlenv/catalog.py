"""The catalog of a published family: which tags exist, what each image holds, which are past EOL.

catalog.md is for people choosing a tag; catalog.json holds the same facts for machines, with
every image's full Python package list (the manifest docker-stacks publishes per image), and
the table and rule doctor judges a host by; catalog.html (also written as index.html, the page a
web server gives for the folder) is one self-contained page over that JSON, with filters and a
"which tag for my machine" helper. The facts come from the registry (the digest each variant's
first floating tag names, and per platform of its index the image's digest and compressed size),
from inside each platform's image (checks/inventory.sh; another platform's under QEMU), and from
data/cuda_releases.toml for the end of life of NVIDIA's images of each CUDA release.
Only `run_in_image` needs an engine: everything else is testable from the script's output.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import engine, gpuarch, lifecycle, registry
from dlenv.config import FLAVORS, PLATFORMS, arch
from dlenv.errors import DlenvError
from dlenv.options import CatalogRequest
from dlenv.plan import Plan, Variant
from dlenv.report import human_size

INVENTORY = Path(__file__).parent / "checks/inventory.sh"
PAGE = Path(__file__).parent / "data/catalog.html"
PAGE_DATA = "__CATALOG_JSON__"     # where the page template takes the catalog's JSON
# In the order the catalog shows them.
KEY_PACKAGES = ("torch", "torchvision", "jupyterlab", "numpy", "uv", "pip")
BY_HAND = 'docker run --rm --entrypoint /bin/sh IMAGE -c "$(cat src/dlenv/checks/inventory.sh)"'

Runner = Callable[[str, str, str], str]   # (image reference, sh script, platform) -> what the script printed


@dataclass(frozen=True)
class Inventory:
    """What checks/inventory.sh found inside an image."""

    os_name: str                 # PRETTY_NAME, e.g. Debian GNU/Linux 12 (bookworm)
    cuda_runtime: str            # the cudart library's version, "" without one
    debian_packages: int
    python: str | None           # /opt/venv's Python version, None where there is none
    packages: dict[str, str]     # every Python distribution: name -> version
    torch_archs: tuple[str, ...]  # the CUDA architectures torch was built for; () without torch


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image in a published variant's index."""

    platform: str                # e.g. linux/arm64
    digest: str                  # its image manifest: pull it by this to get exactly this platform's
    size: int                    # compressed bytes: what a pull on that platform downloads
    python: str | None
    key_packages: dict[str, str]


@dataclass(frozen=True)
class Entry:
    """One published variant, as its floating tags name it now. The facts besides `images` are
    those of its first platform's image."""

    id: str
    image: str                   # registry/repository
    tag: str                     # the immutable tag of `digest`; "" when none is found
    floating: tuple[str, ...]    # the floating tags that name `digest`
    digest: str
    size: int                    # compressed bytes: what a pull downloads
    cuda: str
    os: str
    flavor: str
    recipes: tuple[str, ...]
    python: str | None
    key_packages: dict[str, str]  # those of KEY_PACKAGES the image has
    os_name: str
    cuda_runtime: str
    debian_packages: int
    packages: tuple[str, ...]    # name==version, every Python distribution
    torch_archs: tuple[str, ...]  # sm_XY/compute_XY torch was built for, as doctor reads them
    eol: str | None              # YYYY-MM-DD: NVIDIA's images of this CUDA release reach end of life
    eol_reached: bool
    platforms: tuple[str, ...] = ()       # those of its index (the page's platform filter)
    images: tuple[PlatformImage, ...] = ()  # one per platform, in that order


@dataclass(frozen=True)
class NotPublished:
    """A variant of the plan that the catalog leaves out, and why."""

    id: str
    tag: str                     # the floating tag looked for
    reason: str


# --- facts from inside the image ---------------------------------------------------------------

def inventory_script() -> str:
    return INVENTORY.read_text()


def run_in_image(ref: str, script: str, platform: str = "linux/amd64") -> str:
    """What `script` prints in the image of platform (another one than the host's runs under
    QEMU). sh is the entrypoint: the ssh images have their own."""
    try:
        return DockerClient().run(ref, ["-c", script], entrypoint="/bin/sh", remove=True, platform=platform)
    except DockerException as exc:
        detail = " ".join((exc.stderr or str(exc)).split())[-300:]
        raise DlenvError(f"cannot read what {ref} holds: {detail}",
                         "DOCKER_HOST must name a running engine that can pull from the registry") from None


def parse_inventory(text: str, ref: str) -> Inventory:
    """The object checks/inventory.sh printed in the image `ref`."""
    try:
        data = json.loads(text)
        python = data["python"]
        return Inventory(os_name=str(data["os"]), cuda_runtime=str(data["cuda_runtime"]),
                         debian_packages=int(data["debian_packages"]),
                         python=str(python["version"]) if python else None,
                         packages={str(k): str(v) for k, v in python["packages"].items()} if python else {},
                         torch_archs=tuple(str(a) for a in python["torch_archs"]) if python else ())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DlenvError(f"{ref}: the inventory script printed no catalog facts ({type(exc).__name__}: {exc}): "
                         f"{text.strip()[:200]!r}", f"run it by hand: {BY_HAND}") from None


def _normal(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def key_packages(found: Inventory) -> dict[str, str]:
    """Those of KEY_PACKAGES the image has, by their normalized names."""
    by_name = {_normal(name): version for name, version in found.packages.items()}
    return {n: by_name[n] for n in KEY_PACKAGES if n in by_name}


def entry(variant: Variant, image: str, tag: str, floating: tuple[str, ...], digest: str, size: int,
          found: Inventory, today: datetime.date, images: tuple[PlatformImage, ...] = ()) -> Entry:
    """A catalog row: the variant, what the registry and the image said (found: the first
    platform's; images: every platform's), EOL as of today."""
    eol = lifecycle.eol_date(variant.cuda)
    return Entry(id=variant.id, image=image, tag=tag, floating=floating, digest=digest, size=size,
                 cuda=variant.cuda, os=variant.os, flavor=variant.flavor, recipes=variant.stack,
                 python=found.python, key_packages=key_packages(found),
                 os_name=found.os_name, cuda_runtime=found.cuda_runtime, debian_packages=found.debian_packages,
                 packages=tuple(f"{n}=={v}" for n, v in sorted(found.packages.items(), key=lambda i: i[0].lower())),
                 torch_archs=found.torch_archs,
                 eol=eol.isoformat() if eol else None, eol_reached=lifecycle.is_eol(variant.cuda, today),
                 platforms=tuple(i.platform for i in images), images=images)


# --- facts from the registry -------------------------------------------------------------------

def _immutable(plan: Plan, variant: Variant, digest: str, repo_tags: list[str]) -> str:
    """The immutable tag that names digest: this build's, else the newest older build's."""
    if registry.digest(plan.ref(variant.immutable)) == digest:
        return variant.immutable
    # Tags start with the variant id; a longer id that starts with this one is another variant.
    ids = sorted({v.id for v in plan.variants} | {x.id for x in plan.left_out}, key=len, reverse=True)
    floating = {t for v in plan.variants for t in v.floating}
    # A per-platform build's tags (the immutable tag + -ARCH) name one platform's image before
    # the merge: never a pin.
    merged = set(repo_tags)
    platform_tags = {t for t in repo_tags for p in PLATFORMS if t.removesuffix(f"-{arch(p)}") in merged - {t}}
    mine = [t for t in repo_tags if t not in floating and t not in platform_tags
            and next((i for i in ids if t.startswith(f"{i}-")), None) == variant.id]
    for tag in sorted(mine, reverse=True):   # build ids start with the date: newest first
        if registry.digest(plan.ref(tag)) == digest:
            return tag
    return ""


def gather(plan: Plan, runner: Runner = run_in_image,
           today: datetime.date | None = None) -> tuple[list[Entry], list[NotPublished]]:
    """An entry per variant whose first floating tag exists; the others with the reason."""
    today = today or datetime.date.today()
    reg, repo = plan.matrix.model.registry, plan.matrix.model.repository
    script = inventory_script()
    with registry.reading(reg):
        repo_tags = registry.tags(reg, repo)
    entries, left = [], []
    for variant in plan.variants:
        if not variant.floating:
            left.append(NotPublished(variant.id, "", "the matrix gives it no floating tag"))
            continue
        first = variant.floating[0]
        digest = registry.digest(plan.ref(first))
        if digest is None:
            left.append(NotPublished(variant.id, first, f"{plan.ref(first)} does not exist: never promoted "
                                     "(floating tags move only after the smoke checks pass)"))
            continue
        floating = tuple(t for t in variant.floating if t == first or registry.digest(plan.ref(t)) == digest)
        ref = f"{plan.image}@{digest}"
        images, inventories = [], []
        for platform, image_digest in platform_images(reg, repo, digest, variant.platforms):
            with registry.reading(reg):
                size = registry.compressed_size(reg, repo, digest, platform)
            found = parse_inventory(runner(ref, script, platform), f"{ref} ({platform})")
            images.append(PlatformImage(platform, image_digest, size, found.python, key_packages(found)))
            inventories.append(found)
        entries.append(entry(variant, plan.image, _immutable(plan, variant, digest, repo_tags), floating,
                             digest, images[0].size, inventories[0], today, tuple(images)))
    return entries, left


def platform_images(reg: str, repo: str, digest: str, wanted: tuple[str, ...]) -> list[tuple[str, str]]:
    """(platform, image manifest digest) of each platform of wanted the index at digest holds, in
    wanted's order; a plain image manifest is the image of the variant's first platform."""
    with registry.reading(reg):
        index, _ = registry.manifest(reg, repo, digest)
    if "manifests" not in index:
        return [(wanted[0], digest)]
    held: dict[str, str] = {}
    for item in index["manifests"]:   # attestations are unknown/unknown: never wanted
        platform = item.get("platform") or {}
        held.setdefault(f"{platform.get('os')}/{platform.get('architecture')}", item["digest"])
    found = [(p, held[p]) for p in wanted if p in held]
    if not found:
        raise DlenvError(f"{reg}/{repo}@{digest} holds no image of {', '.join(wanted)} "
                         f"(it holds {', '.join(registry.index_platforms(index)) or 'none'})",
                         "build and promote the variant again (nox -s build-matrix)")
    return found


# --- output ------------------------------------------------------------------------------------

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _order(e: Entry) -> tuple:
    """Newest CUDA first, then flavor (base, runtime, devel), OS, and stack."""
    flavor = FLAVORS.index(e.flavor) if e.flavor in FLAVORS else len(FLAVORS)
    return (tuple(-n for n in _version(e.cuda)), flavor, e.os, e.recipes)


def _support(e: Entry) -> str:
    if e.eol_reached:
        return f"**EOL {e.eol}**"
    return f"until {e.eol}" if e.eol else "no EOL announced"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _packages(found: dict[str, str]) -> str:
    return ", ".join(f"{n} {v}" for n, v in found.items()) or "-"


def _per_platform(e: Entry) -> tuple[str, str, str]:
    """The key packages, size and digest cells: one line per platform where the index has several
    (the key packages once where every platform has the same), else the image's own."""
    if len(e.images) < 2:
        return _packages(e.key_packages), human_size(e.size), f"`{e.digest.removeprefix('sha256:')[:12]}`"
    arch = {i.platform: i.platform.split("/")[-1] for i in e.images}
    same = len({tuple(i.key_packages.items()) for i in e.images}) == 1
    packages = _packages(e.key_packages) if same else "<br>".join(
        f"{arch[i.platform]}: {_packages(i.key_packages)}" for i in e.images)
    return (packages, "<br>".join(f"{arch[i.platform]}: {human_size(i.size)}" for i in e.images),
            "<br>".join(f"{arch[i.platform]}: `{i.digest.removeprefix('sha256:')[:12]}`" for i in e.images))


def render_markdown(entries: list[Entry], left_out: list[NotPublished], generated_at: datetime.datetime) -> str:
    ordered = sorted(entries, key=_order)
    image = ordered[0].image if ordered else ""
    lines = [f"# Image catalog{': ' + image if image else ''}", "",
             f"{len(ordered)} images, generated {generated_at.isoformat(timespec='seconds')}. Tags read "
             "`CUDA-FLAVOR-OS[-STACK]`; the first tags of a row move to each new build that passed its smoke "
             "checks, the `pin` tag never moves. Each image's full Python package list is in catalog.json.", ""]
    if ordered:
        lines += ["Pull by digest to get exactly the bytes listed here, whatever happens to the tags later:", "",
                  "```sh", f"docker pull {image}@{ordered[0].digest}", "```", ""]
        lines += ["| tag | CUDA | flavor | OS | stack | Python | key packages | size | digest | support |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for e in ordered:
            tags = "<br>".join([f"`{t}`" for t in e.floating] + ([f"pin: `{e.tag}`"] if e.tag else []))
            cuda = e.cuda + (f" (cudart {e.cuda_runtime})" if e.cuda_runtime else "")
            packages, size, digest = _per_platform(e)
            lines.append(f"| {tags} | {cuda} | {e.flavor} | {_cell(e.os_name or e.os)} | "
                         f"{' + '.join(e.recipes) or '-'} | {e.python or '-'} | {packages} | {size} | "
                         f"{digest} | {_support(e)} |")
    past = [e for e in ordered if e.eol_reached]
    if past:
        lines += ["", "## Past end of life", "",
                  "By NVIDIA's support policy for its CUDA images, its own images of these CUDA releases are past "
                  "their end of life: no more updates, and their tags are deleted six months later. Move to a newer "
                  "CUDA if your driver runs it (`dlenv doctor TAG` says).", ""]
        lines += [f"- `{e.floating[0] if e.floating else e.tag}`: CUDA {lifecycle.major_minor(e.cuda)}, EOL {e.eol}"
                  for e in past]
    if left_out:
        lines += ["", "## Not published", ""]
        lines += [f"- `{n.id}`: {n.reason}" for n in left_out]
    return "\n".join(lines) + "\n"


def compatibility() -> dict:
    """What doctor judges an image on a host by: its table (minimum driver, minor-version
    compatibility driver per major, compute capability range per CUDA release) and GPU models
    with their compute capability, for the page's "which tag for my machine"."""
    return {**lifecycle.requirements(), "gpus": gpuarch.GPUS}


def to_json(entries: list[Entry], left_out: list[NotPublished], generated_at: datetime.datetime) -> dict:
    return {"generated_at": generated_at.isoformat(timespec="seconds"),
            "images": [asdict(e) for e in sorted(entries, key=_order)],
            "not_published": [asdict(n) for n in left_out],
            "compatibility": compatibility()}


def render_html(entries: list[Entry], left_out: list[NotPublished], generated_at: datetime.datetime) -> str:
    """data/catalog.html with the catalog's JSON in it: one file that requests nothing."""
    data = json.dumps(to_json(entries, left_out, generated_at), separators=(",", ":"))
    # No "<" in the JSON: nothing in it can end the <script> element that holds it.
    return PAGE.read_text().replace(PAGE_DATA, data.replace("<", "\\u003c"), 1)


@dataclass(frozen=True)
class Written:
    markdown: Path        # catalog.md
    machine: Path         # catalog.json
    page: Path            # catalog.html
    index: Path           # index.html, the same page: what a web server (GitHub Pages) gives for the folder


def write(folder: Path, entries: list[Entry], left_out: list[NotPublished],
          generated_at: datetime.datetime) -> Written:
    """catalog.md, catalog.json, catalog.html and index.html in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = Written(folder / "catalog.md", folder / "catalog.json", folder / "catalog.html", folder / "index.html")
    out.markdown.write_text(render_markdown(entries, left_out, generated_at))
    out.machine.write_text(json.dumps(to_json(entries, left_out, generated_at), indent=2) + "\n")
    page = render_html(entries, left_out, generated_at)
    out.page.write_text(page)
    out.index.write_text(page)
    return out


@dataclass(frozen=True)
class CatalogReport:
    markdown: Path
    machine: Path
    page: Path
    index: Path
    entries: int          # published variants
    unpublished: int


def run(plan: Plan, request: CatalogRequest, say=print) -> CatalogReport:
    """The catalog's front door: the published family read from the registry and from inside
    each image, written as catalog.md, catalog.json, and the page (catalog.html and index.html)."""
    engine.ensure(say=say)
    entries, unpublished = gather(plan)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    out = write(request.output, entries, unpublished, now)
    return CatalogReport(out.markdown, out.machine, out.page, out.index, len(entries), len(unpublished))
