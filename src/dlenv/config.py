"""matrix.yaml and recipes/*.toml -> validated, typed objects.

Every error names the file, the line and the field, and suggests the likely key for a typo.
Nothing here touches an engine or the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
import typing
import unicodedata
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dlenv.errors import ConfigError
from dlenv.sources import LineDict, LineList, TomlDoc, load_toml, load_yaml

FLAVORS = ("base", "runtime", "devel")
# The platforms dlenv builds: images/cuda-pip/layout.sh lays CUDA out for x86_64 and sbsa
# (arm64 servers: Grace Hopper, GB200, DGX Spark). The architecture part is Debian's name too.
Platform = Literal["linux/amd64", "linux/arm64"]
PLATFORMS: tuple[str, ...] = typing.get_args(Platform)
DEFAULT_PLATFORMS = ["linux/amd64"]
DEFAULT_REGISTRY = "127.0.0.1:5000"
# The placeholders a tag template may use (see tags.py for their values).
TAG_FIELDS = ("id", "cuda", "cuda_mm", "cuda_major", "flavor", "os", "stack", "recipes",
              "build", "date", "sha")

NAME = re.compile(r"^[a-z][a-z0-9.-]*$")
CUDA_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
TAG_PART = re.compile(r"^[a-z0-9][a-z0-9.]*$")
IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@{}-]*$")
REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._/-]+)?$")


class _Strict(BaseModel):
    # A docstring under a field is its description in matrix.schema.json (editors show it).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _url(value: str | None, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not re.fullmatch(r"https?://[^\s/]+\S*", value):
        raise ValueError(f"{what} must be an http:// or https:// URL (got {value!r})")
    return value.rstrip("/")


class Mirrors(_Strict):
    """Where sources are fetched from; empty means the host's own defaults."""

    apt: str | None = None
    """A Debian/Ubuntu archive (http[s]://); bootstrap fetches from it and every OS layer's sources are rewritten to it.
    Empty: the host's own Debian mirror."""
    pypi: str | None = None
    """A PyPI simple index URL for every pip/uv step. Empty: the host's pip index-url, else pip's default."""
    pytorch: str | None = None
    """A PyTorch wheel index root holding cu130/, cu128/, ... folders. Empty: torch from PyPI where
    recipes/pytorch.toml says PyPI has that CUDA build."""
    registry: str | None = None
    """A registry mirror (host[:port][/path]) base images are pulled through. Empty: straight from their registry."""
    huggingface: str | None = None
    """A Hugging Face endpoint: HF_ENDPOINT in containers (dlenv compose), never in an image."""

    @field_validator("apt", "pypi", "pytorch", "huggingface")
    @classmethod
    def _urls(cls, v, info):
        what = {"apt": "an apt mirror", "pypi": "a PyPI index", "pytorch": "a PyTorch wheel index root",
                "huggingface": "a Hugging Face endpoint"}[info.field_name]
        return _url(v, what)

    @field_validator("registry")
    @classmethod
    def _registry(cls, v):
        if v in (None, ""):
            return None
        if not REGISTRY.match(v):
            raise ValueError(f"a registry mirror is host[:port][/path] (got {v!r})")
        return v.rstrip("/")


class Proxy(_Strict):
    """Proxies for builds (passed as BuildKit's predefined proxy args: in no image or history)."""

    http_proxy: str | None = None
    """HTTP_PROXY for builds and dlenv's own requests. Empty: the environment's."""
    https_proxy: str | None = None
    """HTTPS_PROXY for builds and dlenv's own requests. Empty: the environment's."""
    no_proxy: str | None = None
    """NO_PROXY: comma separated hosts, domains, CIDRs. Empty: the environment's."""
    ca_bundle: str | None = None
    """A PEM file (relative to matrix.yaml) of extra CA certificates for a TLS-intercepting proxy; in no layer."""

    @field_validator("http_proxy", "https_proxy")
    @classmethod
    def _proxy_url(cls, v):
        return _url(v, "a proxy")

    @field_validator("no_proxy")
    @classmethod
    def _no(cls, v):
        if v and not re.fullmatch(r"[A-Za-z0-9.*:/_\[\]-]+(,[A-Za-z0-9.*:/_\[\]-]+)*", v.replace(" ", "")):
            raise ValueError(f"NO_PROXY is a comma separated list of hosts, domains or CIDRs (got {v!r})")
        return v.replace(" ", "") if v else v

    @field_validator("ca_bundle")
    @classmethod
    def _pem(cls, v, info: ValidationInfo):
        # A relative path is relative to matrix.yaml, whose folder only load() knows (context);
        # a flag's value is absolute. A missing file is the plan's error, with its line.
        folder = (info.context or {}).get("folder")
        if v and (folder is not None or Path(v).is_absolute()):
            path = Path(folder or ".") / v
            problem = pem_problem(path) if path.exists() else None
            if problem:
                raise ValueError(problem)
        return v


def pem_problem(path: Path) -> str | None:
    """Why path is not a PEM file of certificates (a CA bundle), or None."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} cannot be read as a PEM file ({exc.__class__.__name__})"
    if not re.search(r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----", text):
        return f"{path} is not a PEM file of CA certificates (no BEGIN/END CERTIFICATE block)"
    return None


SIMPLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")   # suites, packages, OS tags
TIMEZONE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")


def arch(platform: str) -> str:
    """linux/arm64 -> arm64: Docker's TARGETARCH, and Debian's architecture, for dlenv's platforms."""
    return platform.split("/", 1)[1]


def _distinct(v: list[str]) -> list[str]:
    if len(set(v)) != len(v):
        raise ValueError("a platform is listed twice")
    if not v:
        raise ValueError("list at least one platform")
    return v


def _simple(value: str, what: str) -> str:
    if not SIMPLE.match(value):
        raise ValueError(f"{what} {value!r} may hold letters, digits and . _ + - only")
    return value


class OsSpec(_Strict):
    """An OS release; its name is used in tags and in nvidia/cuda tags."""

    source: Literal["image", "bootstrap"]
    """bootstrap: mmdebstrap from the apt mirror into a FROM scratch layer; image: a base image."""
    image: str | None = None
    """For source image: the base image, e.g. ubuntu:24.04."""
    suite: str | None = None
    """For source bootstrap: the release codename, e.g. bookworm."""
    family: Literal["debian", "ubuntu"] | None = None
    """debian or ubuntu; guessed from the image name when not given."""
    packages: list[str] = []
    """For source bootstrap: extra packages in the rootfs (ca-certificates always)."""
    cuda_image_os: str | None = None
    """The OS part of NVIDIA's image tags, where it differs from the OS's name in matrix.yaml."""

    @field_validator("suite", "cuda_image_os")
    @classmethod
    def _names(cls, v):
        return v if v is None else _simple(v, "name")

    @field_validator("packages")
    @classmethod
    def _packages(cls, v):
        return [_simple(p, "package") for p in v]

    @model_validator(mode="after")
    def _check(self):
        if self.source == "image" and not self.image:
            raise ValueError("an OS with source 'image' needs `image` (e.g. ubuntu:24.04)")
        if self.source == "bootstrap" and not self.suite:
            raise ValueError("an OS with source 'bootstrap' needs `suite` (e.g. bookworm)")
        if self.image and not IMAGE_REF.match(self.image):
            raise ValueError(f"`image` is not an image reference: {self.image!r}")
        return self

    @property
    def os_family(self) -> str:
        if self.family:
            return self.family
        if self.image and self.image.split("/")[-1].startswith("ubuntu"):
            return "ubuntu"
        return "debian"


class CudaSpec(_Strict):
    """A CUDA version (a quoted "X.Y.Z") and where it comes from."""

    source: Literal["image", "pip"]
    """pip: NVIDIA's wheels from PyPI on top of the OS layer; image: NVIDIA's image."""
    image: str = "nvidia/cuda:{version}-{flavor}-{os}"
    """For source image: the image template; placeholders {version}, {flavor}, {os}."""
    allow_eol: bool = False
    """Build this release after its end of life (src/dlenv/data/cuda_releases.toml): an explicit,
    reviewed choice, like --allow-eol on the command line."""
    platforms: list[Platform] | None = None
    """The platforms this release is built for, of the family's `platforms`. Empty: every one
    its source has (for source pip: images/cuda-pip/components.toml)."""

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v):
        return v if v is None else _distinct(v)

    @field_validator("image")
    @classmethod
    def _image(cls, v):
        try:
            parsed = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ValueError(f"bad template {v!r}: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is not None and name not in ("version", "flavor", "os"):
                raise ValueError(f"unknown placeholder {{{name}}} (use version, flavor, os)")
            if spec or conversion:
                raise ValueError(f"format specs and conversions are not supported ({v!r})")
        if not IMAGE_REF.match(v.format(version="1.0.0", flavor="base", os="os")):
            raise ValueError(f"not an image reference: {v!r}")
        return v


class Rule(_Strict):
    """A pattern over the axes; every given key must match (shell-style globs)."""

    cuda: str | None = None
    """A glob over CUDA versions, e.g. "12.6.*"."""
    flavor: str | None = None
    """A glob over flavors."""
    os: str | None = None
    """A glob over OS names, e.g. "debian*"."""
    stack: str | None = None
    """A glob over stacks: recipe names joined by +, none for bare CUDA."""
    recipe: str | None = None
    """A glob matching any recipe of the stack."""
    platform: str | None = None
    """A glob over platforms, e.g. linux/arm64: the rule leaves out only that platform of the
    combinations it matches (they keep their others)."""

    @field_validator("platform")
    @classmethod
    def _platform(cls, v):
        if v is not None and not any(fnmatchcase(p, v) for p in PLATFORMS):
            raise ValueError(f"{v!r} matches no platform dlenv builds ({', '.join(PLATFORMS)})")
        return v

    @model_validator(mode="after")
    def _not_empty(self):
        if not any(getattr(self, k) for k in ("cuda", "flavor", "os", "stack", "recipe", "platform")):
            raise ValueError("a rule needs at least one of cuda, flavor, os, stack, recipe, platform")
        return self


class Include(_Strict):
    """A combination to add (it wins over exclude)."""

    cuda: str
    """A CUDA version declared under cuda."""
    flavor: Literal["base", "runtime", "devel"]
    os: str
    """An OS declared under os."""
    stack: list[str] = []
    """Recipe names, layered in order; [] is bare CUDA."""
    platforms: list[Platform] | None = None
    """The platforms of this combination, of the family's `platforms`. Empty: all of them."""

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v):
        return v if v is None else _distinct(v)


def _check_template(v: str) -> str:
    try:
        parsed = list(string.Formatter().parse(v))
    except ValueError as exc:
        raise ValueError(f"bad template {v!r}: {exc}") from None
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if name not in TAG_FIELDS:
            guess = difflib.get_close_matches(name, TAG_FIELDS, n=1)
            hint = f"; did you mean {{{guess[0]}}}?" if guess else f"; known: {', '.join(TAG_FIELDS)}"
            raise ValueError(f"unknown placeholder {{{name}}} in {v!r}{hint}")
        if spec:
            raise ValueError(f"format specs are not supported in tag templates ({v!r})")
    return v


class Tags(_Strict):
    """Tag templates. Placeholders: {id}, {cuda}, {cuda_mm}, {cuda_major}, {flavor}, {os}, {stack},
    {recipes}, {build}, {date}, {sha}."""

    immutable: str = "{id}-{build}"
    """The tag that never moves: must contain {build} or {sha}."""
    floating: list[str] = ["{id}", "{cuda_mm}-{flavor}-{os}{stack}"]
    """Tags moved to a variant's newest digest that passed its smoke checks."""

    @field_validator("immutable")
    @classmethod
    def _imm(cls, v):
        _check_template(v)
        if "{build}" not in v and "{sha}" not in v:
            raise ValueError("the immutable tag must contain {build} or {sha}, or it would move")
        return v

    @field_validator("floating")
    @classmethod
    def _float(cls, v):
        return [_check_template(t) for t in v]


class BuildSettings(_Strict):
    """How the family is built and published, beyond what is in it."""

    cache: str = ""
    """A registry repository (host[:port]/path) for BuildKit's cache, one tag per layer node:
    shards and later releases import it and export to it. Empty keeps the cache local."""
    provenance: Literal["off", "min", "max"] = "max"
    """The provenance attestation pushed with each image (max drops to min when a build arg holds a password)."""
    sbom: bool = True
    """An SPDX SBOM attestation pushed with each image."""
    sbom_generator: str = ""
    """The SBOM scanner image (BuildKit's SBOM protocol). Empty: BuildKit's, else dlenv's own where that is out of reach."""
    compression: Literal["gzip", "zstd"] = "zstd"
    """How pushed layers are compressed: zstd exports 4x faster and pulls 25% faster than gzip, 7% smaller
    (docs/benchmarks.md); pulling it needs Docker 23, containerd 1.5 or podman. gzip: every engine."""
    compression_level: int | None = Field(default=None, ge=0, le=22)
    """The compression level (gzip 0-9, zstd 0-22); empty: BuildKit's default for the method."""
    runner_disk: float = Field(default=14.0, gt=0)
    """GB of free disk on each release build runner (GitHub's hosted ones: about 14): the shard split keeps
    each shard's estimated peak under it, splitting an OS x CUDA group by flavor where it must (docs/release.md)."""
    emulate: list[str] = ["*"]
    """Selectors (as --select; a variant matching any) of the variants built for a platform this host runs
    only under QEMU, e.g. linux/arm64 on amd64: the rest are built for the host's own platform here and left
    to a native machine for the others (release.yml builds each platform natively). ["*"]: all."""
    sizes: str = ""
    """A previous build's --metadata JSON (relative to matrix.yaml): the variants' compressed sizes the shard
    split estimates disk from. Empty, or a variant it lacks: the project's measured figure per variant."""

    @model_validator(mode="after")
    def _level(self):
        if self.compression == "gzip" and self.compression_level is not None and self.compression_level > 9:
            raise ValueError(f"gzip levels are 0-9 (got {self.compression_level})")
        return self

    @field_validator("cache")
    @classmethod
    def _cache(cls, v):
        if v and (not REGISTRY.match(v) or "/" not in v):
            raise ValueError(f"a cache is a registry repository host[:port]/path (got {v!r})")
        return v.rstrip("/")


class MatrixModel(_Strict):
    """A family of images: the product os x cuda x flavors x stacks, minus exclude, plus include
    (docs/matrix.md)."""

    registry: str = DEFAULT_REGISTRY
    """Where images are pushed (host[:port][/path]); the default is the registry dlenv starts."""
    repository: str = "dlenv"
    """The image name under the registry: <registry>/<repository>:<tag>."""
    source: str | None = None
    """URL for the org.opencontainers.image.source label. Empty: the git remote."""
    timezone: str = "Etc/UTC"
    """TZ in every image (tzdata installed)."""
    locale: str = "C.UTF-8"
    """LANG and LC_ALL; anything but C/POSIX is compiled with locales."""
    platforms: list[Platform] = DEFAULT_PLATFORMS
    """The platforms every tag holds, one image each in the tag's index (a variant that cannot
    have one is listed by `nox -s list` with the reason)."""
    mirrors: Mirrors = Mirrors()
    proxy: Proxy = Proxy()
    os: dict[str, OsSpec]
    """OS releases by name (lowercase, e.g. ubuntu24.04)."""
    cuda: dict[str, CudaSpec]
    """CUDA versions, quoted ("13.0.2"), and their source."""
    flavors: list[Literal["base", "runtime", "devel"]] = list(FLAVORS)
    """Which CUDA flavors to build."""
    stacks: list[list[str]] = [[]]
    """Lists of recipe names (recipes/NAME.toml), layered in order; [] is bare CUDA."""
    include: list[Include] = []
    """Combinations to add (they win over exclude)."""
    exclude: list[Rule] = []
    """Rules: a combination matching every key of a rule is left out."""
    tags: Tags = Tags()
    build: BuildSettings = BuildSettings()

    @field_validator("registry")
    @classmethod
    def _registry(cls, v):
        if not REGISTRY.match(v):
            raise ValueError(f"a registry is host[:port][/path] (got {v!r})")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v):
        if not TIMEZONE.match(v):
            raise ValueError(f"a time zone is a name like Etc/UTC or Asia/Shanghai (got {v!r})")
        return v

    @field_validator("locale")
    @classmethod
    def _locale(cls, v):
        if not re.fullmatch(r"C|POSIX|[A-Za-z]{2,3}(_[A-Z]{2})?(@\w+)?(\.[A-Za-z0-9-]+)?|C\.[A-Za-z0-9-]+", v):
            raise ValueError(f"a locale is like C.UTF-8 or en_US.UTF-8 (got {v!r})")
        return v

    @field_validator("repository")
    @classmethod
    def _repository(cls, v):
        if not re.match(r"^[a-z0-9]+([._/-][a-z0-9]+)*$", v):
            raise ValueError(f"not a valid repository name: {v!r} (lowercase, digits, . _ - /)")
        return v

    @field_validator("os")
    @classmethod
    def _os_keys(cls, v):
        for key in v:
            if not isinstance(key, str) or not NAME.match(key):
                raise ValueError(f"OS name {key!r} must be lowercase letters, digits, dots (e.g. ubuntu24.04)")
        if not v:
            raise ValueError("declare at least one OS")
        return v

    @field_validator("cuda", mode="before")
    @classmethod
    def _cuda_keys(cls, v):
        if isinstance(v, dict):
            for key in v:
                if not isinstance(key, str):
                    raise ValueError(f"CUDA version {key!r} must be a quoted string like \"13.0.2\"")
                if not CUDA_VERSION.match(key):
                    raise ValueError(f"CUDA version {key!r} must be major.minor.patch, e.g. \"13.0.2\"")
            if not v:
                raise ValueError("declare at least one CUDA version")
        return v

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v):
        return _distinct(v)

    @field_validator("flavors")
    @classmethod
    def _flavors(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a flavor is listed twice")
        if not v:
            raise ValueError("list at least one flavor")
        return v


class Constraints(_Strict):
    cuda: list[str] = ["*"]
    flavors: list[Literal["base", "runtime", "devel"]] = list(FLAVORS)
    os: list[str] = ["*"]
    os_family: list[Literal["debian", "ubuntu"]] = ["debian", "ubuntu"]
    platforms: list[Platform] = list(PLATFORMS)


class CheckModel(_Strict):
    """A smoke check: a shell command run in the image."""

    name: str
    run: str
    expect_exit: int = 0
    expect_output: str | None = None   # a regular expression its output must match
    gpu: bool = False                  # needs a GPU: skipped (never passed) without one
    timeout: int = 120
    # A container of its own: the image's checks share one, so a check that changes what the
    # next would see (a user it makes, files it leaves, a server's state) is isolated.
    isolated: bool = False

    @field_validator("expect_output")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v):
        if not 1 <= v <= 3600:
            raise ValueError("timeout is 1 to 3600 seconds")
        return v


def _build_args(v: dict[str, str]) -> dict[str, str]:
    for key in v:
        if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
            raise ValueError(f"build arg {key!r} must be UPPER_CASE")
    return v


def _arg_value(v: str) -> str:
    # A line break or control character would end a bake argument or a log line early, or hide
    # what follows it from whoever reads them.
    bad = next((c for c in v if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"a build arg holds the control character {bad!r} (one line of printable text only)")
    return v


ArgValue = Annotated[str, AfterValidator(_arg_value)]


class CompatModel(_Strict):
    """One row of a recipe's compatibility table: which wheels to install for which CUDA."""

    cuda: str                       # a pattern of CUDA versions, e.g. "13.0.*"
    index: str                      # the sub-index under mirrors.pytorch, e.g. "cu130"
    pypi: bool = False              # PyPI's wheels of these versions are this CUDA build
    args: dict[str, ArgValue]       # build args, e.g. TORCH_VERSION
    note: str = ""
    platforms: list[Platform] = list(PLATFORMS)   # the platforms this row is for

    @field_validator("index")
    @classmethod
    def _index(cls, v):
        if not re.fullmatch(r"[a-z0-9._-]+", v):
            raise ValueError(f"an index name is a folder name such as cu130 (got {v!r})")
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v):
        return _build_args(v)


class RecipeModel(_Strict):
    description: str
    dockerfile: str
    tag: str
    requires: list[str] = []
    args: dict[str, ArgValue] = {}
    constraints: Constraints = Constraints()
    # Wheels built per CUDA release: a variant whose CUDA matches no row is left out.
    compat: list[CompatModel] = []
    checks: list[CheckModel] = []
    # More build contexts the Dockerfile may COPY --from, by name: folders under the project
    # (files several images share, e.g. images/common's entrypoint for DLENV_UID).
    contexts: dict[str, str] = {}

    @field_validator("tag")
    @classmethod
    def _tag(cls, v):
        if not TAG_PART.match(v):
            raise ValueError(f"a tag part is lowercase letters, digits and dots (got {v!r})")
        return v

    @field_validator("contexts")
    @classmethod
    def _contexts(cls, v):
        for name in v:
            if not NAME.match(name) or name == "base":
                raise ValueError(f"a context name is lowercase letters, digits, . and -, and not base (got {name!r})")
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v):
        return _build_args(v)


class Components(_Strict):
    """What one CUDA major release on PyPI provides per flavor (images/cuda-pip/components.toml)."""

    base: list[str]
    runtime: list[str] = []
    devel: list[str] = []
    extra: dict[str, list[str]] = {}
    unsupported: dict[str, str] = {}
    # The platforms PyPI has this release's wheels for, and components it has for some of them only.
    platforms: list[Platform] = DEFAULT_PLATFORMS
    only: dict[str, list[Platform]] = {}

    @model_validator(mode="after")
    def _only(self):
        known = self.base + self.runtime + self.devel
        for name in self.only:
            if name not in known:
                raise ValueError(f"only.{name}: not a component of base, runtime or devel")
        return self

    def for_platforms(self, names: list[str], platforms: tuple[str, ...]) -> list[str]:
        """names for a build of these platforms: a component some of them lack is written
        name@arch,... (fetch.sh installs it for those architectures only), one all of them lack
        is dropped."""
        out = []
        for name in names:
            has = [p for p in platforms if p in self.only.get(name, platforms)]
            if len(has) == len(platforms):
                out.append(name)
            elif has:
                out.append(f"{name}@{','.join(arch(p) for p in has)}")
        return out


@dataclass(frozen=True)
class Check:
    name: str
    run: str
    expect_exit: int
    expect_output: str | None
    gpu: bool
    timeout: int
    origin: str   # the file that declares it
    isolated: bool = False

    @classmethod
    def of(cls, model: CheckModel, origin: str) -> Check:
        return cls(model.name, model.run, model.expect_exit, model.expect_output, model.gpu, model.timeout, origin,
                   model.isolated)


class CheckFile(_Strict):
    checks: list[CheckModel] = []
    base: list[CheckModel] = []
    runtime: list[CheckModel] = []
    devel: list[CheckModel] = []


CHECKS_DIR = Path(__file__).parent / "checks"


def builtin_checks() -> dict[str, tuple[Check, ...]]:
    """The global checks and the CUDA flavors' checks that ship with dlenv."""
    out: dict[str, tuple[Check, ...]] = {}
    for name in ("global.toml", "cuda.toml"):
        path = CHECKS_DIR / name
        label = f"dlenv/checks/{name}"
        doc = load_toml(path, label)
        try:
            model = CheckFile.model_validate(dict(doc))
        except ValidationError as exc:
            _raise_first(exc, label, CheckFile, doc.line_of)
        for key in ("checks", "base", "runtime", "devel"):
            slot = "global" if key == "checks" else key
            out[slot] = out.get(slot, ()) + tuple(Check.of(c, label) for c in getattr(model, key))
    return out


@dataclass(frozen=True)
class Compat:
    cuda: str
    index: str
    pypi: bool
    args: tuple[tuple[str, str], ...]
    note: str
    line: int
    platforms: tuple[str, ...] = PLATFORMS


@dataclass(frozen=True)
class Recipe:
    name: str
    file: str
    description: str
    dockerfile: str
    tag: str
    requires: tuple[str, ...]
    args: tuple[tuple[str, str], ...]
    constraints: Constraints
    checks: tuple[Check, ...] = ()
    compat: tuple[Compat, ...] = ()
    contexts: tuple[tuple[str, str], ...] = ()   # (name, folder under the project)

    def compat_for(self, cuda: str, platform: str) -> Compat | None:
        """The first row of the compatibility table for this CUDA version on this platform."""
        return next((row for row in self.compat if fnmatchcase(cuda, row.cuda) and platform in row.platforms), None)


@dataclass(frozen=True)
class Where:
    """Where a piece of the matrix came from, for error messages."""

    file: str
    line: int


@dataclass(frozen=True)
class Matrix:
    file: str
    root: Path
    model: MatrixModel
    recipes: dict[str, Recipe]
    components: dict[str, Components]
    lines: dict[str, Where] = field(default_factory=dict, compare=False, hash=False)
    checks: dict[str, tuple[Check, ...]] = field(default_factory=dict, compare=False, hash=False)

    def where(self, *path: Any) -> Where:
        key = ".".join(str(p) for p in path)
        while key and key not in self.lines:
            key = key.rpartition(".")[0]
        return self.lines.get(key, Where(self.file, 1))


# --- turning pydantic's errors into one line with file, line and field ----------------------

def _model_at(model: Any, loc: tuple) -> Any:
    """The model class a (partial) pydantic location points into, for did-you-mean."""
    tp = model
    for part in loc:
        origin = typing.get_origin(tp)
        if origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if args else tp
            origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(part)
            if info is None:
                return None
            tp = info.annotation
        elif origin in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _line_in_yaml(data: Any, loc: tuple) -> int:
    node, line = data, getattr(data, "line", 1)
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line, node = node.line_of(part), node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line, node = node.line_of(part), node[part]
        else:
            break
    return line


def _raise_first(exc: ValidationError, file: str, model: Any, line_of) -> None:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    field_name = ".".join(str(p) for p in loc) or "document"
    line = line_of(loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = list(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else (f"; known keys: {', '.join(known)}" if known else "")
        raise ConfigError(file, line, field_name, f"unknown key{hint}")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing", "value_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    raise ConfigError(file, line, field_name, msg)


# --- loading ----------------------------------------------------------------------------------

def _check_names(file: str, doc: Any, line_of, names: list[str], known: list[str], what: str, loc: tuple) -> None:
    for index, name in enumerate(names):
        if name not in known:
            guess = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; known: {', '.join(known) or 'none'}"
            raise ConfigError(file, line_of(loc + (index,)), ".".join(map(str, loc + (index,))),
                              f"unknown {what} {name!r}{hint}")


def load_recipe(path: Path, root: Path) -> Recipe:
    label = _label(path, root)
    doc = load_toml(path, label)
    name = path.stem
    if not NAME.match(name):
        raise ConfigError(label, None, "file name", f"a recipe name is lowercase letters, digits, - (got {name!r})")
    try:
        model = RecipeModel.model_validate(dict(doc))
    except ValidationError as exc:
        _raise_first(exc, label, RecipeModel, doc.line_of)
    folder = root / model.dockerfile
    if not (folder / "Dockerfile").is_file():
        raise ConfigError(label, doc.line_of(("dockerfile",)), "dockerfile",
                          f"no Dockerfile in {model.dockerfile!r} (a folder under the repository, e.g. images/python)")
    for context, where in model.contexts.items():
        if not (root / where).is_dir():
            raise ConfigError(label, doc.line_of(("contexts", context)), f"contexts.{context}",
                              f"no folder {where!r} under the repository")
    compat = tuple(Compat(row.cuda, row.index, row.pypi, tuple(sorted(row.args.items())), row.note,
                          doc.line_of(("compat", i)), tuple(row.platforms)) for i, row in enumerate(model.compat))
    for row in compat:
        # One tag holds every platform of a variant, built from one set of build args.
        first = next(r for r in compat if r.cuda == row.cuda)
        if (row.index, row.args) != (first.index, first.args):
            raise ConfigError(label, row.line, "compat", f"the rows for CUDA {row.cuda} at lines {first.line} and "
                              f"{row.line} differ in index or args: a tag's platforms are built from one set of build "
                              "args (use one version for every platform)")
    return Recipe(name, label, model.description, model.dockerfile, model.tag, tuple(model.requires),
                  tuple(sorted(model.args.items())), model.constraints,
                  tuple(Check.of(c, label) for c in model.checks), compat, tuple(sorted(model.contexts.items())))


def load_components(root: Path) -> dict[str, Components]:
    path = root / "images/cuda-pip/components.toml"
    label = _label(path, root)
    doc: TomlDoc = load_toml(path, label)
    out = {}
    for major, table in doc.items():
        try:
            out[major] = Components.model_validate(table)
        except ValidationError as exc:
            _raise_first(exc, label, Components, lambda loc, m=major: doc.line_of((m,) + loc))
    return out


def _label(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _check_requirements(recipes: dict[str, Recipe], root: Path) -> None:
    for recipe in recipes.values():
        doc = load_toml(root / recipe.file, recipe.file)
        _check_names(recipe.file, doc, doc.line_of, list(recipe.requires), sorted(recipes), "recipe", ("requires",))
    # Cycles: depth-first over `requires`.
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = trail[trail.index(name):] + [name]
            recipe = recipes[trail[-1]]
            doc = load_toml(root / recipe.file, recipe.file)
            raise ConfigError(recipe.file, doc.line_of(("requires",)), "requires",
                              f"requirements form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in recipes[name].requires:
            visit(dep, trail + [name])
        state[name] = 2

    for name in sorted(recipes):
        visit(name, [])
    tags: dict[str, str] = {}
    for recipe in recipes.values():
        if recipe.tag in tags:
            doc = load_toml(root / recipe.file, recipe.file)
            raise ConfigError(recipe.file, doc.line_of(("tag",)), "tag",
                              f"tag part {recipe.tag!r} is already used by recipe {tags[recipe.tag]!r}")
        tags[recipe.tag] = recipe.name


def load(matrix_path: Path, root: Path | None = None, recipes_dir: Path | None = None) -> Matrix:
    """Read and validate a matrix and the recipes it may use.

    root is the project folder holding images/ (and recipes/ unless recipes_dir is given);
    recipes name their Dockerfile folder relative to it.
    """
    root = (root or Path.cwd()).resolve()
    label = _label(matrix_path, Path.cwd())
    data = load_yaml(matrix_path, label)
    try:
        model = MatrixModel.model_validate(dict(data), context={"folder": matrix_path.parent})
    except ValidationError as exc:
        _raise_first(exc, label, MatrixModel, lambda loc: _line_in_yaml(data, loc))

    recipes_dir = recipes_dir or root / "recipes"
    recipes = {p.stem: load_recipe(p, root) for p in sorted(recipes_dir.glob("*.toml"))}
    _check_requirements(recipes, root)
    components = load_components(root) if any(c.source == "pip" for c in model.cuda.values()) else {}

    def line(*loc: Any) -> int:
        return _line_in_yaml(data, loc)

    def check_stack(stack: list[str], path: tuple) -> None:
        _check_names(label, data, lambda loc: line(*loc), stack, sorted(recipes), "recipe", path)
        seen: list[str] = []
        for ri, name in enumerate(stack):
            where = ".".join(map(str, path + (ri,)))
            if name in seen:
                raise ConfigError(label, line(*path, ri), where, f"recipe {name!r} is listed twice")
            for dep in recipes[name].requires:
                if dep not in seen:
                    raise ConfigError(label, line(*path, ri), where, f"recipe {name!r} requires {dep!r} earlier in the stack")
            seen.append(name)

    for si, stack in enumerate(model.stacks):
        check_stack(stack, ("stacks", si))
    for ii, inc in enumerate(model.include):
        for key, known in (("cuda", model.cuda), ("os", model.os)):
            value = getattr(inc, key)
            if value not in known:
                guess = difflib.get_close_matches(value, list(known), n=1)
                hint = f"; did you mean {guess[0]!r}?" if guess else f"; known: {', '.join(known)}"
                raise ConfigError(label, line("include", ii, key), f"include.{ii}.{key}", f"unknown {key} {value!r}{hint}")
        check_stack(inc.stack, ("include", ii, "stack"))
    for version, spec in model.cuda.items():
        major = f"cuda{version.split('.')[0]}"
        if spec.source == "pip" and major not in components:
            raise ConfigError(label, line("cuda", version, "source"), f"cuda.{version}.source",
                              f"PyPI components for CUDA {version.split('.')[0]} are not described "
                              f"(images/cuda-pip/components.toml has {', '.join(sorted(components)) or 'none'})")
        for index, platform in enumerate(spec.platforms or ()):
            why = _platform_problem(model, components, version, platform)
            if why:
                raise ConfigError(label, line("cuda", version, "platforms", index), f"cuda.{version}.platforms.{index}", why)
    for ii, inc in enumerate(model.include):
        for index, platform in enumerate(inc.platforms or ()):
            why = _platform_problem(model, components, inc.cuda, platform) or next(
                (f"recipe {name} cannot be built for {platform} (constraints.platforms in {recipes[name].file}: "
                 f"{', '.join(recipes[name].constraints.platforms)})"
                 for name in inc.stack if platform not in recipes[name].constraints.platforms), None)
            if why:
                raise ConfigError(label, line("include", ii, "platforms", index), f"include.{ii}.platforms.{index}", why)
    lines = {}

    def record(node: Any, prefix: str) -> None:
        if isinstance(node, LineDict):
            for key, value in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                lines[path] = Where(label, node.line_of(key))
                record(value, path)
        elif isinstance(node, LineList):
            for index, value in enumerate(node):
                path = f"{prefix}.{index}"
                lines[path] = Where(label, node.line_of(index))
                record(value, path)

    record(data, "")
    return Matrix(label, root, model, recipes, components, lines, builtin_checks())


def cuda_platforms(model: MatrixModel, components: dict[str, Components], version: str) -> tuple[str, ...]:
    """The family's platforms a CUDA release is built for: those its `platforms` name, else
    every one its source has (PyPI's wheels as components.toml describes them; NVIDIA's images
    hold every platform dlenv builds)."""
    spec = model.cuda[version]
    if spec.platforms:
        return tuple(p for p in model.platforms if p in spec.platforms)
    if spec.source == "pip":
        return tuple(p for p in model.platforms if p in components[f"cuda{version.split('.')[0]}"].platforms)
    return tuple(model.platforms)


def _platform_problem(model: MatrixModel, components: dict[str, Components], version: str,
                      platform: str) -> str | None:
    """Why a CUDA release cannot be built for a platform the matrix names for it, or None."""
    if platform not in model.platforms:
        return f"{platform} is not one of the family's platforms ({', '.join(model.platforms)}); add it to `platforms`"
    major = f"cuda{version.split('.')[0]}"
    if model.cuda[version].source == "pip" and platform not in components[major].platforms:
        return (f"CUDA {version} from PyPI cannot be built for {platform}: images/cuda-pip/components.toml gives "
                f"{major} the platforms {', '.join(components[major].platforms)}")
    spec = model.cuda[version]
    if spec.platforms and platform not in spec.platforms:
        return f"CUDA {version} is built for {', '.join(spec.platforms)} only (its `platforms`)"
    return None


def override(matrix: Matrix, values: dict[str, tuple[Any, str]]) -> Matrix:
    """matrix with command-line values put over its fields ({"mirrors.apt": (value, "--apt-mirror")}),
    validated as matrix.yaml's own values are; a bad value is an error naming its flag."""
    if not values:
        return matrix
    data = matrix.model.model_dump()
    for path, (value, _flag) in values.items():
        *sections, key = path.split(".")
        node = data
        for section in sections:
            node = node[section]
        node[key] = value
    try:
        model = MatrixModel.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(p) for p in error["loc"])
        flag = values.get(path, (None, next(iter(values.values()))[1]))[1]
        raise ConfigError(flag, None, path, error["msg"].removeprefix("Value error, ")) from None
    return dataclasses.replace(matrix, model=model)


def family(matrix: Path) -> MatrixModel | None:
    """The family in matrix, for commands that also work without one (compose, doctor); its
    recipes and images are in the matrix's folder, wherever the command runs."""
    return load(matrix, root=matrix.parent).model if matrix.exists() else None


def image_ref(image: str, matrix: Path, model: MatrixModel | None = None) -> str:
    """A bare tag names an image of the family in matrix; anything else is a full reference."""
    if "/" in image or ":" in image:
        return image
    model = model or family(matrix)
    if model is None:
        raise ConfigError(str(matrix), None, "file", f"not found, so the bare tag {image!r} names no image")
    return f"{model.registry}/{model.repository}:{image}"
