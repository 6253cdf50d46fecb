"""Matrix -> variants: expand the axes, apply include/exclude, constraints and selectors.

Each variant is a chain of layer nodes (OS root, OS set-up, CUDA flavors, recipes). Nodes are
named by what they contain, so variants with a common prefix share those nodes, and the graph
builds each once. Every combination left out is kept with its reason.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from dlenv import bootstrap, config, hostconf, lifecycle, options, shards
from dlenv.config import FLAVORS, Check, Matrix, Recipe
from dlenv.errors import ConfigError
from dlenv.hostconf import Network
from dlenv.options import PlanRequest
from dlenv.selection import Selection
from dlenv.selection import parse as parse_selector
from dlenv.tags import BuildInfo, build_info, platform_tag, render, valid_tag

Kind = Literal["rootfs", "os", "cuda", "recipe"]
Reason = Literal["excluded", "constraint", "unsupported", "eol", "unselected", "unreachable"]


@dataclass(frozen=True)
class Mirrors:
    """Mirror settings after defaults are applied (from matrix.yaml, else the host's own)."""

    apt: str = ""         # rewrite the apt sources of image-based OS layers; "" keeps them
    bootstrap_apt: str = ""  # where mmdebstrap fetches from
    bootstrap_security: str = ""  # and the security archive it adds ("" for none)
    pypi: str = ""        # "" is pip's built-in default
    pytorch: str = ""     # a PyTorch wheel index root (<root>/cu130, ...); "" uses PyPI where it can
    registry: str = ""    # prefix for base images pulled from a registry
    network: Network = Network()   # proxies and CA trust, for everything that goes out

    @property
    def proxies(self) -> tuple[tuple[str, str], ...]:
        """HTTP(S)_PROXY and NO_PROXY (both spellings): BuildKit's predefined proxy args, which
        no image config or history keeps."""
        return self.network.proxies


@dataclass(frozen=True)
class Node:
    name: str                       # the bake target
    kind: Kind
    dockerfile: str                 # folder under the project root (images/...)
    parent: str | None              # the node this one is built on
    base_image: str | None = None   # an external base image, for a chain's first node
    upstream: str | None = None     # that image's own name (without a mirror): its key in the lock
    args: tuple[tuple[str, str], ...] = ()
    rootfs: bootstrap.RootfsSpec | None = None
    summary: str = ""
    platforms: tuple[str, ...] = ()   # built for: every platform of the variants above it
    contexts: tuple[tuple[str, str], ...] = ()   # more named contexts: (name, folder under the project)


@dataclass(frozen=True)
class Variant:
    id: str
    cuda: str
    flavor: str
    os: str
    stack: tuple[str, ...]
    chain: tuple[str, ...]          # node names, OS first
    immutable: str
    floating: tuple[str, ...]
    cuda_source: str
    # Inherited along the chain: global, then each CUDA flavor up to this one, then each recipe.
    checks: tuple[Check, ...] = ()
    # Floating tags it renders that name a newer CUDA's variant instead: (tag, that variant).
    newer: tuple[tuple[str, str], ...] = ()
    # The entries of its tags' image index: one image per platform, all under the same tags.
    platforms: tuple[str, ...] = tuple(config.DEFAULT_PLATFORMS)

    @property
    def node(self) -> str:
        return self.chain[-1]

    @property
    def axes(self) -> dict[str, object]:
        """What a selector matches (selection.py)."""
        return axes_of(self.id, self.cuda, self.flavor, self.os, self.stack)

    @property
    def tags(self) -> tuple[str, ...]:
        return (self.immutable, *self.floating)


@dataclass(frozen=True)
class LeftOut:
    id: str
    reason: Reason
    detail: str
    fix: str = ""
    platform: str = ""   # "" leaves out the whole combination; else only this platform of it


@dataclass(frozen=True)
class Plan:
    matrix: Matrix
    build: BuildInfo
    mirrors: Mirrors
    variants: tuple[Variant, ...]
    nodes: dict[str, Node] = field(hash=False)
    left_out: tuple[LeftOut, ...]
    # Nodes an earlier shard, or an earlier bake of the main job, built and pushed: (node, the
    # image reference of its variant). The bake takes each from the registry instead of
    # building it and what is below it.
    pulled: tuple[tuple[str, str], ...] = ()

    @property
    def image(self) -> str:
        return f"{self.matrix.model.registry}/{self.matrix.model.repository}"

    def ref(self, tag: str) -> str:
        return f"{self.image}:{tag}"

    def variant(self, variant_id: str) -> Variant:
        return next(v for v in self.variants if v.id == variant_id)

    def below(self, variant: Variant) -> Variant | None:
        """The nearest variant of the plan under this one in its chain (the image its own layers
        go on, in the main job's bakes), or None."""
        by_node = {v.node: v for v in self.variants}
        return next((by_node[n] for n in reversed(variant.chain[:-1]) if n in by_node), None)

    @property
    def network(self) -> Network:
        return self.mirrors.network

    def unselect(self, ids: set[str], why: str) -> Plan:
        """The same plan with the variants ids moved to left_out as unselected."""
        return self.without({i: LeftOut(i, "unselected", why) for i in ids})

    def without(self, gone: dict[str, LeftOut]) -> Plan:
        """The same plan with some variants moved to left_out (e.g. unreachable sources)."""
        kept = tuple(v for v in self.variants if v.id not in gone)
        return Plan(self.matrix, self.build, self.mirrors, kept, _built_nodes(kept, self.nodes, self.matrix),
                    self.left_out + tuple(gone[v.id] for v in self.variants if v.id in gone), self.pulled)

    def pull(self, nodes: Mapping[str, str]) -> Plan:
        """The same plan also taking nodes (node -> the immutable tag of the variant built there)
        from the registry: another shard, or an earlier bake, built and pushed them."""
        return replace(self, pulled=tuple(sorted({**dict(self.pulled),
                                                  **{n: self.ref(tag) for n, tag in nodes.items()}}.items())))

    def without_platforms(self, gone: Mapping[str, LeftOut], only: Callable[[Variant], bool] | None = None) -> Plan:
        """The same plan without some platforms (platform -> why, e.g. one the engine cannot
        run) of every variant, or of those `only` takes: each variant keeps its other
        platforms; one left with none is left out."""
        kept: list[Variant] = []
        left: list[LeftOut] = []
        for v in self.variants:
            lost = {p: replace(gone[p], id=v.id) for p in v.platforms if p in gone and (only is None or only(v))}
            platforms = tuple(p for p in v.platforms if p not in lost)
            left += _left_out(lost, whole=not platforms)
            if platforms:
                kept.append(replace(v, platforms=platforms))
        return Plan(self.matrix, self.build, self.mirrors, tuple(kept), _built_nodes(kept, self.nodes, self.matrix),
                    self.left_out + tuple(left), self.pulled)

    def emulating(self, native: str) -> Plan:
        """The plan as a host of platform `native` builds it: each other platform (run under
        QEMU, several times slower) only for the variants build.emulate selects."""
        emulate = self.matrix.model.build.emulate
        if "*" in emulate:
            return self
        chosen = [parse_selector(text, "build.emulate") for text in emulate]
        return self.without_platforms(
            {p: LeftOut("", "unselected", f"not built under QEMU here (build.emulate: {', '.join(emulate)})",
                        f"a native {p} machine builds it (release.yml), or --emulate '*'")
             for p in self.platforms if p != native},
            only=lambda v: not any(e.matches(v.axes) for e in chosen))

    @property
    def platforms(self) -> tuple[str, ...]:
        """Every platform some variant of the plan is built for, in the family's order."""
        return tuple(p for p in self.matrix.model.platforms if any(p in v.platforms for v in self.variants))


def _built_nodes(variants: Iterable[Variant], nodes: dict[str, Node], matrix: Matrix) -> dict[str, Node]:
    """The nodes the variants are built on, each for every platform of the variants above it (a
    bootstrap node's rootfs for each of their architectures)."""
    on: dict[str, set[str]] = {}
    for v in variants:
        for name in v.chain:
            on.setdefault(name, set()).update(v.platforms)
    out = {}
    for name, node in nodes.items():
        if name in on:
            platforms = tuple(p for p in matrix.model.platforms if p in on[name])
            rootfs = node.rootfs and replace(node.rootfs, architectures=tuple(config.arch(p) for p in platforms))
            out[name] = replace(node, platforms=platforms, rootfs=rootfs)
    return out


def axes_of(vid: str, cuda: str, flavor: str, os_key: str, stack: Sequence[str]) -> dict[str, object]:
    return {"id": vid, "cuda": cuda, "flavor": flavor, "os": os_key, "stack": "+".join(stack) or "none",
            "recipe": tuple(stack)}


def _left_out(lost: dict[str, LeftOut], whole: bool) -> list[LeftOut]:
    """The entries for the platforms a combination lost (platform -> why); whole: it has none
    left, and where every platform went for the same reason, one entry says so for all."""
    if whole and len({(x.reason, x.detail, x.fix) for x in lost.values()}) == 1:
        return [next(iter(lost.values()))]
    return [replace(x, platform=p) for p, x in lost.items()]


def target_name(text: str) -> str:
    """Bake target names allow letters, digits, - and _ only."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def with_mirror(image: str, mirror: str) -> str:
    if not mirror:
        return image
    # Official images live under library/ on the default registry.
    path = image if "/" in image.split(":")[0] else f"library/{image}"
    return f"{mirror}/{path}"


class _Builder:
    def __init__(self, matrix: Matrix, mirrors: Mirrors):
        self.m = matrix
        self.model = matrix.model
        self.mirrors = mirrors
        self.nodes: dict[str, Node] = {}

    def add(self, node: Node) -> str:
        existing = self.nodes.get(node.name)
        assert existing is None or existing == node, f"two different nodes named {node.name}"
        self.nodes[node.name] = node
        return node.name

    def os_chain(self, os_key: str) -> list[str]:
        spec = self.model.os[os_key]
        chain = []
        if spec.source == "bootstrap":
            rootfs = bootstrap.RootfsSpec(spec.suite or "", self.mirrors.bootstrap_apt, tuple(spec.packages),
                                          self.mirrors.bootstrap_security if spec.os_family == "debian" else "")
            chain.append(self.add(Node(target_name(f"rootfs-{os_key}"), "rootfs", "images/os-bootstrap", None,
                                       rootfs=rootfs, summary=f"{spec.suite} rootfs (mmdebstrap)")))
            base = None
        else:
            base = with_mirror(spec.image or "", self.mirrors.registry)
        chain.append(self.add(Node(target_name(f"os-{os_key}"), "os", "images/os", chain[-1] if chain else None,
                                   base_image=base, upstream=spec.image if base else None,
                                   args=self.os_args(), summary=f"{os_key} set-up")))
        return chain

    def os_args(self) -> tuple[tuple[str, str], ...]:
        return (("APT_MIRROR", self.mirrors.apt), ("LANG", self.model.locale), ("TZ", self.model.timezone))

    def cuda_chain(self, os_key: str, cuda: str, flavor: str) -> list[str]:
        spec = self.model.cuda[cuda]
        if spec.source == "image":
            os_spec = self.model.os[os_key]
            image = spec.image.format(version=cuda, flavor=flavor, os=os_spec.cuda_image_os or os_key)
            name = target_name(f"{cuda}-{flavor}-{os_key}")
            return [self.add(Node(name, "os", "images/os", None, base_image=with_mirror(image, self.mirrors.registry),
                                  upstream=image, args=self.os_args(), summary=f"CUDA {cuda} {flavor} ({image})"))]
        chain = self.os_chain(os_key)
        components = self.m.components[f"cuda{cuda.split('.')[0]}"]
        # By the CUDA release's platforms, not the selection's: a node is named by its content.
        platforms = config.cuda_platforms(self.model, self.m.components, cuda)
        for step in FLAVORS[: FLAVORS.index(flavor) + 1]:
            args = (("COMPONENTS", " ".join(components.for_platforms(getattr(components, step), platforms))),
                    ("CUDA_VERSION", cuda),
                    ("EXTRA_PACKAGES", " ".join(components.extra.get(step, []))),
                    ("FLAVOR", step),
                    ("PIP_INDEX_URL", self.mirrors.pypi))
            chain.append(self.add(Node(target_name(f"{cuda}-{step}-{os_key}"), "cuda", "images/cuda-pip", chain[-1],
                                       args=args, summary=f"CUDA {cuda} {step} (PyPI)")))
        return chain

    def recipe_node(self, parent: str, recipe: Recipe, cuda: str, prefix: str, platforms: tuple[str, ...]) -> str:
        args = dict(recipe.args)
        args.update(CUDA_VERSION=cuda, PIP_INDEX_URL=self.mirrors.pypi)
        rows = {row for p in platforms if (row := recipe.compat_for(cuda, p))}
        if len({(r.index, r.args) for r in rows}) > 1:
            raise ConfigError(recipe.file, max(r.line for r in rows), "compat",
                              f"the rows for CUDA {cuda} on {', '.join(platforms)} differ in index or args: a tag's "
                              "platforms are built from one set of build args")
        row = min(rows, key=lambda r: r.line, default=None)
        if row:
            args.update(row.args)
            args["WHEEL_INDEX_URL"] = f"{self.mirrors.pytorch}/{row.index}" if self.mirrors.pytorch else self.mirrors.pypi
        return self.add(Node(target_name(prefix), "recipe", recipe.dockerfile, parent,
                             args=tuple(sorted(args.items())), summary=recipe.name, contexts=recipe.contexts))


def _rule_matches(rule, axes: dict[str, object]) -> bool:
    for key in ("cuda", "flavor", "os", "stack"):
        pattern = getattr(rule, key)
        if pattern is not None and not fnmatchcase(str(axes[key]), pattern):
            return False
    if rule.recipe is not None and not any(fnmatchcase(r, rule.recipe) for r in axes["recipe"]):
        return False
    if rule.platform is not None and not fnmatchcase(str(axes["platform"]), rule.platform):
        return False
    return True


def _constraint_problem(recipe: Recipe, cuda: str, flavor: str, os_key: str, family: str, platform: str) -> str | None:
    c = recipe.constraints
    if not any(fnmatchcase(cuda, p) for p in c.cuda):
        return f"recipe {recipe.name} supports CUDA {', '.join(c.cuda)} only"
    if flavor not in c.flavors:
        return f"recipe {recipe.name} supports flavors {', '.join(c.flavors)} only"
    if not any(fnmatchcase(os_key, p) for p in c.os) or family not in c.os_family:
        return f"recipe {recipe.name} supports OS {', '.join(c.os)} ({', '.join(c.os_family)}) only"
    if platform not in c.platforms:
        return f"recipe {recipe.name} supports platforms {', '.join(c.platforms)} only"
    return None


def _compat_problem(recipe: Recipe, cuda: str, mirrors: Mirrors, platform: str) -> LeftOut | None:
    """Why a recipe with a compatibility table cannot be built for this CUDA on this platform, if it cannot."""
    if not recipe.compat:
        return None
    row = recipe.compat_for(cuda, platform)
    if row is None:
        if any(fnmatchcase(cuda, r.cuda) for r in recipe.compat):
            return LeftOut("", "unsupported", f"recipe {recipe.name} has no wheels for CUDA {cuda} on {platform} "
                           f"(no row of its table in {recipe.file} is for {platform})",
                           f"add a row for {platform} to {recipe.file}")
        known = ", ".join(dict.fromkeys(r.cuda for r in recipe.compat))
        return LeftOut("", "unsupported", f"recipe {recipe.name} has no wheels for CUDA {cuda} "
                       f"(its table in {recipe.file} covers {known})", f"add a row to {recipe.file}")
    if not row.pypi and not mirrors.pytorch:
        return LeftOut("", "unsupported", f"recipe {recipe.name} for CUDA {cuda} needs the {row.index} wheel index"
                       + (f" ({row.note})" if row.note else ""),
                       f"set mirrors.pytorch to a PyTorch wheel index root (one with a {row.index}/ folder)")
    return None


def expand(matrix: Matrix, build: BuildInfo, mirrors: Mirrors, selection: Selection | None = None,
           today: datetime.date | None = None, allow_eol: bool = False) -> Plan:
    """today: the day end of life is judged on (default: the build's commit date)."""
    model = matrix.model
    selection = selection or Selection()
    today = today or datetime.datetime.fromtimestamp(build.epoch, datetime.timezone.utc).date()
    builder = _Builder(matrix, mirrors)
    # vid -> (cuda, flavor, os, stack, include rule or None, platforms); an include wins over an exclude.
    combos: dict[str, tuple[str, str, str, tuple[str, ...], str | None, tuple[str, ...]]] = {}

    def vid_of(cuda: str, flavor: str, os_key: str, stack: tuple[str, ...]) -> str:
        return "-".join([cuda, flavor, os_key, *(matrix.recipes[name].tag for name in stack)])

    for os_key in model.os:
        for cuda in model.cuda:
            for flavor in model.flavors:
                for stack in model.stacks:
                    vid = vid_of(cuda, flavor, os_key, tuple(stack))
                    combo = (cuda, flavor, os_key, tuple(stack), None, tuple(model.platforms))
                    if combos.setdefault(vid, combo)[:4] != combo[:4]:
                        where = matrix.where("os", os_key)
                        raise ConfigError(where.file, where.line, f"os.{os_key}",
                                          f"two combinations would both be called {vid!r} (rename this OS)")
    for index, inc in enumerate(model.include):
        combos[vid_of(inc.cuda, inc.flavor, inc.os, tuple(inc.stack))] = (
            inc.cuda, inc.flavor, inc.os, tuple(inc.stack), f"include.{index}",
            tuple(p for p in model.platforms if p in (inc.platforms or model.platforms)))

    variants: list[Variant] = []
    family: list[tuple[str, str, str, tuple[str, ...]]] = []   # every variant built if selected, and its tags
    left: list[LeftOut] = []
    all_axes = []
    buildable: set[str] = set()   # the platforms some variant can be built for
    for vid, (cuda, flavor, os_key, stack, included, wanted) in combos.items():
        recipes = [matrix.recipes[name] for name in stack]
        axes = axes_of(vid, cuda, flavor, os_key, stack)
        cuda_spec = model.cuda[cuda]
        lost = {p: replace(why, id=vid) for p in wanted
                if (why := _why_not(matrix, mirrors, axes, bool(included), p, today, allow_eol))}
        platforms = tuple(p for p in wanted if p not in lost)
        left += _left_out(lost, whole=not platforms)
        if not platforms:
            continue
        all_axes.append(axes)
        buildable.update(platforms)
        values = {"id": vid, "cuda": cuda, "cuda_mm": ".".join(cuda.split(".")[:2]),
                  "cuda_major": cuda.split(".")[0], "flavor": flavor, "os": os_key,
                  "stack": "".join(f"-{r.tag}" for r in recipes), "recipes": "-".join(stack) or "none",
                  "build": build.build, "date": build.date, "sha": build.sha}
        immutable = render(model.tags.immutable, values)
        floating = tuple(dict.fromkeys(render(t, values) for t in model.tags.floating))
        for index, tag in enumerate((immutable, *floating)):
            if not valid_tag(tag):
                path = ("tags", "immutable") if index == 0 else ("tags", "floating", index - 1)
                where = matrix.where(*path)
                raise ConfigError(where.file, where.line, ".".join(map(str, path)),
                                  f"renders the invalid tag {tag!r} for {vid} (letters, digits, . _ - only)")
        floating = tuple(t for t in floating if t != immutable)
        family.append((vid, cuda, immutable, floating))
        if not selection.wants(axes):
            left.append(LeftOut(vid, "unselected", "not matched by --select/--skip"))
            continue
        chosen = selection.on(platforms)
        left += _left_out({p: LeftOut(vid, "unselected", "not matched by --platform")
                           for p in platforms if p not in chosen}, whole=not chosen)
        if not chosen:
            continue
        chain = builder.cuda_chain(os_key, cuda, flavor)
        prefix = f"{cuda}-{flavor}-{os_key}"
        for recipe in recipes:
            prefix += f"-{recipe.tag}"
            chain.append(builder.recipe_node(chain[-1], recipe, cuda, prefix, platforms))
        checks = matrix.checks.get("global", ()) + tuple(
            c for step in FLAVORS[: FLAVORS.index(flavor) + 1] for c in matrix.checks.get(step, ()))
        checks += tuple(c for r in recipes for c in r.checks)
        variants.append(Variant(vid, cuda, flavor, os_key, stack, tuple(chain), immutable, floating,
                                cuda_spec.source, checks, platforms=chosen))

    known = {"cuda": list(model.cuda), "flavor": list(model.flavors), "os": list(model.os),
             "recipe": list(matrix.recipes)}
    selection.check_possible(known, all_axes)
    selection.check_platforms(model.platforms, buildable)
    owner = _tag_owners(matrix, family)
    variants = [replace(v, floating=tuple(t for t in v.floating if owner[t] == v.id),
                        newer=tuple((t, owner[t]) for t in v.floating if owner[t] != v.id)) for v in variants]
    return Plan(matrix, build, mirrors, tuple(variants), _built_nodes(variants, builder.nodes, matrix), tuple(left))


def _why_not(matrix: Matrix, mirrors: Mirrors, axes: dict, included: bool, platform: str, today: datetime.date,
             allow_eol: bool) -> LeftOut | None:
    """Why the combination axes cannot be built for platform (the first reason), or None."""
    model = matrix.model
    cuda, flavor, os_key = str(axes["cuda"]), str(axes["flavor"]), str(axes["os"])
    recipes = [matrix.recipes[name] for name in axes["recipe"]]
    cuda_spec = model.cuda[cuda]
    components = matrix.components.get(f"cuda{cuda.split('.')[0]}")
    if not included:
        rule = next((i for i, r in enumerate(model.exclude) if _rule_matches(r, {**axes, "platform": platform})), None)
        if rule is not None:
            where = matrix.where("exclude", rule)
            return LeftOut("", "excluded", f"exclude rule at {where.file}:{where.line}")
    if platform not in config.cuda_platforms(model, matrix.components, cuda):
        return _cuda_platform_problem(matrix, cuda, platform)
    if cuda_spec.source == "pip" and components and flavor in components.unsupported:
        return LeftOut("", "unsupported", components.unsupported[flavor],
                       "use source: image for this CUDA version, or another flavor")
    constraint = next((p for r in recipes if (
        p := _constraint_problem(r, cuda, flavor, os_key, model.os[os_key].os_family, platform))), None)
    if constraint:
        return LeftOut("", "constraint", constraint)
    wheels = next((p for r in recipes if (p := _compat_problem(r, cuda, mirrors, platform))), None)
    if wheels:
        return wheels
    if lifecycle.is_eol(cuda, today) and not (allow_eol or cuda_spec.allow_eol):
        return LeftOut("", "eol", f"NVIDIA's images of CUDA {lifecycle.major_minor(cuda)} reached end of life "
                       f"on {lifecycle.eol_date(cuda)}",
                       f"pass --allow-eol, or set cuda.\"{cuda}\".allow_eol: true in {matrix.file}")
    return None


def _cuda_platform_problem(matrix: Matrix, cuda: str, platform: str) -> LeftOut:
    """Why a CUDA release is not built for a platform of the family (config.cuda_platforms)."""
    spec = matrix.model.cuda[cuda]
    if spec.platforms:
        where = matrix.where("cuda", cuda, "platforms")
        return LeftOut("", "constraint", f"CUDA {cuda} is built for {', '.join(spec.platforms)} only "
                       f"(its platforms at {where.file}:{where.line})")
    major = f"cuda{cuda.split('.')[0]}"
    return LeftOut("", "unsupported", f"PyPI's CUDA {cuda.split('.')[0]} wheels are not described for {platform} "
                   f"(images/cuda-pip/components.toml gives {major} {', '.join(matrix.components[major].platforms)})",
                   f"add {platform} to {major}.platforms in images/cuda-pip/components.toml where PyPI has its "
                   "wheels, or use source: image for this CUDA version")


def _tag_owners(matrix: Matrix, family: list[tuple[str, str, str, tuple[str, ...]]]) -> dict[str, str]:
    """The variant each tag names. family: (id, CUDA, immutable, floating) of every variant the
    matrix builds, selected or not, so that `--select cuda=13.0.1` never hands 13.0.2's alias to
    13.0.1. A floating tag several variants render is an alias of the newest CUDA among them
    (docker-library's convention: `13.0-...` names 13.0.2, not 13.0.1); two of the newest, or
    an immutable tag rendered twice, is an error."""
    renders: dict[str, list[tuple[tuple[int, ...], str, bool]]] = {}
    for vid, cuda, immutable, floating in family:
        version = tuple(int(part) for part in cuda.split("."))
        for tag in (immutable, *floating):
            renders.setdefault(tag, []).append((version, vid, tag == immutable))
    owner: dict[str, str] = {}
    for tag, by in renders.items():
        top = max(r[0] for r in by)
        newest = [r for r in by if r[0] == top]
        clash = by if any(r[2] for r in by) else newest
        if len(clash) > 1:
            path = ("tags", "immutable") if clash[1][2] else ("tags", "floating")
            where = matrix.where(*path)
            raise ConfigError(where.file, where.line, ".".join(path),
                              f"tag {tag!r} would name both {clash[0][1]} and {clash[1][1]}")
        owner[tag] = newest[0][1]
    return owner


def mirrors(model: config.MatrixModel, network: Network | None = None) -> Mirrors:
    """matrix.yaml's mirrors, with the host's own apt sources and pip index as defaults."""
    m = model.mirrors
    return Mirrors(
        apt=m.apt or "",
        bootstrap_apt=m.apt or hostconf.debian_mirror() or "",
        bootstrap_security="" if m.apt else hostconf.debian_security_mirror() or "",
        pypi=m.pypi or hostconf.pip_index() or "",
        pytorch=m.pytorch or "",
        registry=m.registry or "",
        network=network or Network(),
    )


def load(request: PlanRequest, *more: object, environ: Mapping[str, str] | None = None) -> Plan:
    """The plan stage's front door: the matrix, with the flags of request (and of a command's own
    request, more) put over its fields, expanded, selected and sharded. Bad input raises ConfigError before anything is touched;
    nothing here writes this process's environment (environ is only read, for the proxies)."""
    environ = os.environ if environ is None else environ
    selection = Selection.parse(list(request.select), list(request.skip), list(request.platform))
    matrix = config.load(request.matrix, root=request.root)
    matrix = config.override(matrix, {k: v for r in (request, *more) for k, v in options.overrides(r).items()})
    info = build_info(matrix.root, request.build_id, matrix.model.source,
                      f"-{request.build_suffix}" if request.build_suffix else "")
    if (request.build_id or request.build_suffix) and not valid_tag(info.build):
        flag = "--build-suffix" if request.build_suffix else "--build-id"
        raise ConfigError(flag, None, "build id", f"{info.build!r} is not valid in a tag")
    proxy = matrix.model.proxy
    extra_ca = Path(matrix.file).parent / proxy.ca_bundle if proxy.ca_bundle else None
    if extra_ca and not extra_ca.is_file():
        where = ("--ca-bundle", None) if request.ca_bundle else (matrix.file, matrix.where("proxy", "ca_bundle").line)
        raise ConfigError(*where, "proxy.ca_bundle", f"no such file: {extra_ca}")
    net = hostconf.network(*(options.fallback(PlanRequest, name, getattr(proxy, name), environ)
                             for name in ("http_proxy", "https_proxy", "no_proxy")), extra_ca, environ)
    for index, text in enumerate(matrix.model.build.emulate):
        try:
            parse_selector(text, "build.emulate")
        except ConfigError as exc:
            flag = options.option(options.BuildRequest, "emulate").flags[0]
            where = (flag, None) if any(options.overrides(r).get("build.emulate") for r in more) else \
                (matrix.file, matrix.where("build", "emulate", index).line)
            raise ConfigError(*where, f"build.emulate.{index}", exc.problem) from None
    shard = shards.parse(request.shard) if request.shard else None
    # End of life is judged on the commit's date (expand's default), not the clock: every job of
    # a release, hours apart, splits the same plan.
    plan = expand(matrix, info, mirrors(matrix.model, net), selection, allow_eol=request.allow_eol)
    if shard:
        # Split the whole family, whatever --platform keeps: each platform's build job of a
        # shard and that shard's merge job hold the same variants.
        whole = expand(matrix, info, mirrors(matrix.model, net), replace(selection, platforms=()),
                       allow_eol=request.allow_eol) if selection.platforms else plan
        plan = shards.only(plan, shard, whole)
    return per_platform(plan) if request.per_platform else plan


def per_platform(plan: Plan) -> Plan:
    """Each variant under its one platform's tag (tags.platform_tag of its immutable tag) and no
    floating tag: what a release's build job of one platform pushes, builds on and tests, for
    `dlenv merge` to join into the immutable tag's index."""
    several = next((v for v in plan.variants if len(v.platforms) != 1), None)
    if several:
        raise ConfigError("--per-platform", None, "platform",
                          f"{several.id} is built for {', '.join(several.platforms)}: a per-platform build is of one "
                          "platform (add --platform, e.g. --platform linux/arm64)")
    variants = []
    for v in plan.variants:
        tag = platform_tag(v.immutable, v.platforms[0])
        if not valid_tag(tag):
            raise ConfigError("--per-platform", None, "tags.immutable", f"{tag!r} is not valid in a tag (too long?)")
        variants.append(replace(v, immutable=tag, floating=(), newer=()))
    # A node another shard built is taken from that shard's job of the same platform, before any merge.
    pulled = tuple((n, platform_tag(ref, variants[0].platforms[0])) for n, ref in plan.pulled) if variants else ()
    return replace(plan, variants=tuple(variants), pulled=pulled)
