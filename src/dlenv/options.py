"""Every option, declared once: each field of a request below carries its flag, its help, the
matrix.yaml field it overrides and its environment fallback. The command line's parser, the one
precedence rule (flag > matrix.yaml > environment > default) and the rehearsal's command lines
are derived from these declarations, as nox and cibuildwheel derive theirs.

The requests are the typed front doors' inputs: `plan.load(PlanRequest)`,
`build.run(plan, BuildRequest)`, `smoke.run(plan, SmokeRequest)`, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlenv.errors import ConfigError

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    field: str = ""              # the matrix.yaml field a given flag overrides (dotted)
    env: tuple[str, ...] = ()    # read when neither the flag nor matrix.yaml sets the field
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    group: str = ""              # a heading in --help
    positional: bool = False
    nonempty: bool = False       # "" is an error, not "unset" (a workflow variable that is not set)


def opt(default: Any, *flags: str, help: str, **more: Any) -> Any:
    """A request field with its option; a positional when the one flag has no leading dash."""
    positional = bool(flags) and not flags[0].startswith("-")
    option = Option(tuple(flags), help, positional=positional, **more)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata={"option": option})
    return dataclasses.field(default=default, metadata={"option": option})


NET = "mirrors and proxies (override matrix.yaml's mirrors and proxy)"


@dataclass(frozen=True)
class PlanRequest:
    """What every command that takes a matrix is asked: which family, which part of it, and
    the settings a flag puts over matrix.yaml."""

    matrix: Path = opt(Path("matrix.yaml"), "--matrix", help="the family to build")
    root: Path | None = opt(None, "--root",
                            help="project folder holding images/ and recipes/ (default: the current one)")
    select: tuple[str, ...] = opt((), "--select", metavar="EXPR",
                                  help="build only matching variants, e.g. 'cuda=13.* flavor=devel' (repeatable)")
    skip: tuple[str, ...] = opt((), "--skip", metavar="EXPR",
                                help="leave out matching variants, e.g. 'recipe=ssh' (repeatable)")
    platform: tuple[str, ...] = opt((), "--platform", metavar="OS/ARCH",
                                    help="build only these platforms of each variant, e.g. linux/arm64 "
                                         "(repeatable, or comma separated)")
    per_platform: bool = opt(False, "--per-platform",
                             help="one platform's images under their own tags (the immutable tag + -ARCH, no floating "
                                  "tags), for `dlenv merge` to join into one index per tag (release.yml's build jobs, "
                                  "one machine per platform); needs --platform unless the family has one")
    shard: str | None = opt(None, "--shard", metavar="I/N",
                            help="only the I-th of N parts of the family (variants sharing a CUDA base stay together)")
    runner_disk: float | None = opt(None, "--runner-disk", field="build.runner_disk", metavar="GB",
                                    help="free disk of each build runner: shards are split to fit it (overrides "
                                         "build.runner_disk)")
    allow_eol: bool = opt(False, "--allow-eol",
                          help="also build CUDA releases past their end of life (src/dlenv/data/cuda_releases.toml)")
    build_id: str | None = opt(None, "--build-id", help="override the build id (default: commit date-sha)")
    build_suffix: str = opt("", "--build-suffix", metavar="TEXT",
                            help="append -TEXT to the build id, e.g. w42 for a scheduled rebuild of the same commit")
    registry: str | None = opt(None, "--registry", field="registry", nonempty=True, help="override `registry:` of matrix.yaml")
    apt_mirror: str | None = opt(None, "--apt-mirror", field="mirrors.apt", metavar="URL", group=NET,
                                 help="a Debian/Ubuntu archive mirror")
    pypi_mirror: str | None = opt(None, "--pypi-mirror", field="mirrors.pypi", metavar="URL", group=NET,
                                  help="a PyPI simple index")
    pytorch_index: str | None = opt(None, "--pytorch-index", field="mirrors.pytorch", metavar="URL", group=NET,
                                    help="a PyTorch wheel index root (cu130/, ...)")
    registry_mirror: str | None = opt(None, "--registry-mirror", field="mirrors.registry", metavar="HOST[:PORT]",
                                      group=NET, help="a registry mirror for base images")
    http_proxy: str | None = opt(None, "--http-proxy", field="proxy.http_proxy", env=("HTTP_PROXY", "http_proxy"),
                                 metavar="URL", group=NET, help="HTTP_PROXY for builds (default: the environment's)")
    https_proxy: str | None = opt(None, "--https-proxy", field="proxy.https_proxy",
                                  env=("HTTPS_PROXY", "https_proxy"), metavar="URL", group=NET,
                                  help="HTTPS_PROXY for builds (default: the environment's)")
    no_proxy: str | None = opt(None, "--no-proxy", field="proxy.no_proxy", env=("NO_PROXY", "no_proxy"),
                               metavar="LIST", group=NET, help="NO_PROXY for builds (default: the environment's)")
    ca_bundle: Path | None = opt(None, "--ca-bundle", field="proxy.ca_bundle", metavar="FILE", group=NET,
                                 help="extra CA certificates (PEM) for a TLS-intercepting proxy, given to builds "
                                      "as a secret")


# Most checks keep one core busy (an import, a compiler): variants side by side use the others.
_JOBS_HELP = "variants checked at once, each in containers of its own (default: one per CPU)"
_CACHE_HELP = "registry repository for the build cache, e.g. host:5000/family-cache (overrides build.cache)"


@dataclass(frozen=True)
class ListRequest:
    json: bool = opt(False, "--json", help="print JSON for machines")
    check: bool = opt(False, "--check", help="also check that each variant's sources answer")


@dataclass(frozen=True)
class BakeRequest:
    load: bool = opt(False, "--load", help="load into the engine instead of pushing")


@dataclass(frozen=True)
class BuildRequest:
    load: bool = opt(False, "--load", help="load into the engine instead of pushing")
    strict: bool = opt(False, "--strict", help="fail if any variant's sources are unreachable")
    no_check: bool = opt(False, "--no-check", help="skip the source reachability check")
    metadata: Path | None = opt(None, "--metadata", help="write per-variant results as JSON")
    builder: str | None = opt(None, "--builder",
                              help="the buildx builder to use, e.g. a remote or kubernetes one (default: the engine's)")
    cache: str | None = opt(None, "--cache", field="build.cache", metavar="REPO", help=_CACHE_HELP)
    locked: bool = opt(False, "--locked",
                       help="fail if the lock file is missing, lacks a base, or a bootstrap differs from it")
    workdir: Path = opt(Path("out"), "--workdir", help="bake file, logs and metadata")
    no_promote: bool = opt(False, "--no-promote",
                           help="push immutable tags only; skip the smoke checks that would move the floating tags")
    require_gpu: bool = opt(False, "--require-gpu", help="smoke: a missing GPU fails instead of skipping")
    retest: bool = opt(False, "--retest", help="smoke: run the checks again on an image that already passed them")
    check_jobs: int | None = opt(None, "--check-jobs", metavar="N", help="smoke: " + _JOBS_HELP)
    bake_jobs: int | None = opt(None, "--bake-jobs", metavar="N",
                                help="main job: variants baked at once, each as soon as the image it builds on is "
                                     "pushed (default: one per CPU)")
    keep_images: bool = opt(False, "--keep-images",
                            help="keep the pushed images in the engine's store (by default they go once pushed and "
                                 "tested: the registry has them)")
    keep_cache: bool = opt(False, "--keep-cache",
                           help="main job: keep what each bake leaves in the build cache (by default it goes once "
                                "its variant is pushed: later bakes build on its image, later runs on its inline cache)")
    emulate: tuple[str, ...] = opt((), "--emulate", field="build.emulate", metavar="EXPR",
                                   help="build under QEMU (a platform this host does not run natively) only the "
                                        "variants matching EXPR (repeatable; overrides build.emulate), e.g. '*' for all")
    force: bool = opt(False, "--force",
                      help="build even where the engine's data root looks too small for the plan (see docs/benchmarks.md)")


@dataclass(frozen=True)
class ShardsRequest:
    count: int = opt(MISSING, "--count", help="how many jobs")
    github_output: bool = opt(False, "--github-output",
                              help="also append matrix=<json> to the file $GITHUB_OUTPUT names (GitHub Actions)")


@dataclass(frozen=True)
class LockRequest:
    check: bool = opt(False, "--check",
                      help="write nothing: report what moved upstream since the lock (exit 1 if anything did)")
    add_missing: bool = opt(False, "--add-missing",
                            help="lock only the bases the lock file lacks; never move a locked one (a release's plan job)")


@dataclass(frozen=True)
class SmokeRequest:
    require_gpu: bool = opt(False, "--require-gpu", help="fail, instead of skipping GPU checks, without a GPU")
    retest: bool = opt(False, "--retest", help="run the checks again on images that already passed them")
    junit: Path | None = opt(None, "--junit", help="write the verdicts as JUnit XML")
    json: Path | None = opt(None, "--json", help="write the verdicts as JSON")
    export: Path | None = opt(None, "--export", metavar="DIR",
                              help="instead of running: write a bundle per variant for a GPU host without an engine")
    have: Path | None = opt(None, "--have", metavar="INVENTORY",
                            help="with --export: leave out the large files the GPU host has (rootfs_run.py --inventory)")
    check_jobs: int | None = opt(None, "--check-jobs", metavar="N", help=_JOBS_HELP)


@dataclass(frozen=True)
class PromoteRequest:
    verdicts: tuple[Path, ...] = opt(MISSING, "verdicts", metavar="RESULT",
                                     help="smoke results: files written by `dlenv smoke --json` or rootfs_run.py --json")
    require_gpu: bool = opt(False, "--require-gpu", help="a variant whose GPU checks were skipped is not promoted")
    json: Path | None = opt(None, "--json", help="write the promotions as JSON")


@dataclass(frozen=True)
class MergeRequest:
    json: Path | None = opt(None, "--json", help="write one object per tag merged (or not, and why) as JSON")


@dataclass(frozen=True)
class CatalogRequest:
    output: Path = opt(Path("catalog"), "--output", "-o", help="folder for catalog.md and catalog.json")


@dataclass(frozen=True)
class RehearseRequest:
    shards: int = opt(2, "--shards", help="how many build jobs to rehearse")
    workdir: Path = opt(Path("out/rehearsal"), "--workdir", help="results of each step")
    cache: str | None = opt(None, "--cache", field="build.cache", metavar="REPO", help=_CACHE_HELP)
    require_gpu: bool = opt(False, "--require-gpu",
                            help="as on the GPU runners: a skipped GPU check holds a variant back")


@dataclass(frozen=True)
class DoctorRequest:
    image: str | None = opt(None, "image", help="a tag of the family in --matrix (e.g. 13.0-runtime-debian12-py-torch) "
                                                "or a full image reference")
    matrix: Path = opt(Path("matrix.yaml"), "--matrix", help="the family a bare tag belongs to")
    json: str | None = opt(None, "--json", metavar="FILE", help="also write the findings as JSON ('-': stdout)")


@dataclass(frozen=True)
class EngineRequest:
    action: str = opt("status", "action", choices=("up", "down", "status"),
                      help="start, stop or show the engine and registry")


def option(cls: type, name: str) -> Option:
    return next(f.metadata["option"] for f in dataclasses.fields(cls) if f.name == name)


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globals())


def add_arguments(parser: argparse.ArgumentParser, cls: type, without: Iterable[str] = ()) -> None:
    """The flags of one request, derived from its declarations (but those of the fields without)."""
    groups: dict[str, Any] = {}
    types = _types(cls)
    for f in dataclasses.fields(cls):
        if f.name in without:
            continue
        o: Option = f.metadata["option"]
        target = parser if not o.group else groups.setdefault(o.group, parser.add_argument_group(o.group))
        kind = types[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        spec: dict[str, Any] = {"help": o.help}
        if o.metavar:
            spec["metavar"] = o.metavar
        if o.choices:
            spec["choices"] = o.choices
        if kind is bool:
            spec["action"] = "store_true"
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            if item is not str:
                spec["type"] = item
            if o.positional:
                spec["nargs"] = "+"
            else:
                spec.update(action="append", default=[])
        else:
            spec["type"] = _count if base is int else base
        if o.positional:
            if f.default is not MISSING:
                spec.update(nargs="?", default=f.default)
            target.add_argument(f.name, **spec)
            continue
        if f.default is MISSING and f.default_factory is MISSING:
            spec["required"] = True
        elif "default" not in spec and kind is not bool:
            spec["default"] = f.default
        target.add_argument(*o.flags, dest=f.name, **spec)


def _count(text: str) -> int:
    """A whole number of things (jobs, shards): 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def from_args(cls: type, args: argparse.Namespace, **changes: Any) -> Any:
    """The request cls, filled from parsed arguments (and changes over them)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = changes.get(f.name, getattr(args, f.name, MISSING))
        if value is MISSING:
            continue
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def argv(request: Any) -> list[str]:
    """The command-line arguments that give request (its non-default fields): the rehearsal's
    steps are shown as the commands release.yml runs."""
    out: list[str] = []
    positional: list[str] = []
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        if value == default:
            continue
        o: Option = f.metadata["option"]
        if o.positional:
            positional += [str(v) for v in value]
        elif value is True:
            out.append(o.flags[0])
        elif isinstance(value, tuple):
            for item in value:
                out += [o.flags[0], str(item)]
        elif value is not None:
            out += [o.flags[0], str(value)]
    return out + positional


def overrides(request: Any) -> dict[str, tuple[Any, str]]:
    """matrix.yaml field -> (value, flag) for each field a given flag overrides."""
    out = {}
    for f in dataclasses.fields(request):
        o: Option = f.metadata["option"]
        value = getattr(request, f.name)
        if o.field and value is not None and value != ():
            if value == "" and o.nonempty:
                raise ConfigError(o.flags[0], None, o.field, "is empty (in a workflow: is the variable it reads set?)")
            out[o.field] = (str(value.resolve()) if isinstance(value, Path) else value, o.flags[0])
    return out


def from_matrix(request: Any, model: Any) -> Any:
    """request with each field that no flag set taken from the matrix.yaml field it mirrors
    (flag > matrix.yaml): e.g. compose's --pip-index from mirrors.pypi."""
    changes = {}
    for f in dataclasses.fields(request):
        o: Option = f.metadata["option"]
        if o.field and not getattr(request, f.name) and model is not None:
            value: Any = model
            for part in o.field.split("."):
                value = getattr(value, part)
            if value:
                changes[f.name] = value
    return dataclasses.replace(request, **changes)


def fallback(cls: type, name: str, configured: str | None, environ: Mapping[str, str]) -> str | None:
    """A setting after flags were put over matrix.yaml (configured), else its environment variables."""
    if configured:
        return configured
    return next((environ[e] for e in option(cls, name).env if environ.get(e)), None)
