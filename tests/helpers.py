"""Helpers the test files share (test files never import each other): the repository, small
matrices and their plans for the unit tests, projects and a dlenv process for the engine tests."""

from __future__ import annotations

import gzip
import io
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from dlenv import config, engine, plan, registry
from dlenv.selection import Selection
from dlenv.tags import BuildInfo

if TYPE_CHECKING:
    from python_on_whales import DockerClient

REPO = Path(__file__).resolve().parent.parent
REGISTRY = engine.DEFAULT_REGISTRY
# The smallest family: CUDA 13.0.2's base flavor from PyPI on bootstrapped Debian 12; the engine
# tests give it a registry, a repository of their own and the stacks they need.
TINY = """
registry: {registry}
repository: {repository}
os:
  debian12: {{source: bootstrap, suite: bookworm}}
cuda:
  "13.0.2": {{source: pip}}
flavors: [base]
stacks:
{stacks}
"""
# Debian's browser and its driver, for the tests of pages (conftest.py installs them as root).
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def empty_engine() -> None:
    """No containers, images or build cache at all, as on a new release runner. (Pruning only the build
    cache leaves the containerd image store naming snapshots that are gone: "parent snapshot does
    not exist" on the next export.)"""
    for command in (["container", "prune", "-f"], ["image", "prune", "-af"], ["buildx", "prune", "-af"]):
        subprocess.run(["docker", *command], check=True, capture_output=True)


def run_steps(log: Path) -> dict[str, bool]:
    """A one-bake build log's RUN steps (`[target stage n/m]`), each with whether it came from a cache."""
    lines = log.read_text(errors="replace").splitlines()
    steps = {line.split(" ", 1)[0]: line for line in lines if line.startswith("#") and "] RUN " in line}
    cached = {line.split(" ", 1)[0] for line in lines if line.endswith(" CACHED")}
    return {line.split(" ", 1)[1].split("] RUN ")[0] + "]": vertex in cached for vertex, line in steps.items()}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


SMALL = """
registry: 127.0.0.1:5000
repository: test/family
os:
  debian12: {source: bootstrap, suite: bookworm}
  ubuntu24.04: {source: image, image: "ubuntu:24.04"}
cuda:
  "13.0.2": {source: pip}
  "12.8.1": {source: pip}
  "12.6.3": {source: image}
stacks:
  - []
  - [python]
  - [python, devtools, ssh]
exclude:
  - {cuda: "12.6.*", os: "debian*"}
"""


# --- plans without an engine ---------------------------------------------------------------

BUILD = BuildInfo("20260101-abcdef0", "20260101", "abcdef0", "abcdef0" * 5 + "abcde", 1767225600,
                  "https://example.invalid/dlenv")
MIRRORS = plan.Mirrors(bootstrap_apt="http://apt.invalid/debian")


def expand(project: Path, text: str = SMALL, select=(), skip=(), mirrors=MIRRORS) -> plan.Plan:
    write(project / "matrix.yaml", text)
    matrix = config.load(project / "matrix.yaml", root=project)
    return plan.expand(matrix, BUILD, mirrors, Selection.parse(select, skip))


def reasons(p: plan.Plan) -> dict[str, str]:
    return {x.id: x.reason for x in p.left_out}


# --- the real engine, for the engine tests -------------------------------------------------

# Repositories of their own per test run: an immutable tag is never moved, and a rebuild with a
# pruned cache (or changed recipes) under the same tag would have to move it.
RUN = secrets.token_hex(3)


def dlenv(project: Path, *args: str, env: dict | None = None, timeout: int = 3000) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO / "src"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "dlenv", *args], cwd=project, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def dlenv_started(project: Path, *args: str, output: Path, env: dict | None = None) -> subprocess.Popen:
    """dlenv running in the background, its output going to the file output: for the tests
    that signal it, or stop what it talks to, while it runs."""
    environment = dict(os.environ, PYTHONPATH=str(REPO / "src"), **(env or {}))
    with open(output, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "dlenv", *args], cwd=project, env=environment,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def new_project(path: Path, matrix: str, images: dict[str, str] | None = None,
                recipes: dict[str, str] | None = None) -> Path:
    """A project using the repository's images and recipes, plus extra ones, as a git checkout."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "images").mkdir()
    for folder in (REPO / "images").iterdir():
        (path / "images" / folder.name).symlink_to(folder)
    for name, dockerfile in (images or {}).items():
        write(path / "images" / name / "Dockerfile", dockerfile)
    shutil.copytree(REPO / "recipes", path / "recipes")
    for name, text in (recipes or {}).items():
        write(path / "recipes" / name, text)
    write(path / "matrix.yaml", matrix)
    # A git checkout with a fixed commit date: the build id, revision label and creation time
    # are the same in every run, so digests are too.
    when = {"GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z", "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z",
            "GIT_AUTHOR_NAME": "dlenv tests", "GIT_AUTHOR_EMAIL": "tests@dlenv.invalid",
            "GIT_COMMITTER_NAME": "dlenv tests", "GIT_COMMITTER_EMAIL": "tests@dlenv.invalid"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "test project"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, env=dict(os.environ, **when))
    return path


def attestations(reg: str, repository: str, reference: str, user: tuple[str, str] | None = None):
    """(predicate type, statement bytes) of each attestation pushed with an image (provenance, SBOM)."""
    index, _ = registry.manifest(reg, repository, reference, user=user)
    for entry in index.get("manifests", []):
        if entry.get("annotations", {}).get("vnd.docker.reference.type") != "attestation-manifest":
            continue
        attestation, _ = registry.manifest(reg, repository, entry["digest"], user=user)
        for layer in attestation["layers"]:
            yield (layer.get("annotations", {}).get("in-toto.io/predicate-type", ""),
                   registry.blob(reg, repository, layer["digest"], user=user))


def marker_bundle(tmp: Path) -> tuple[Path, str]:
    """The host's CA bundle plus a certificate made here: if it leaks into a layer, we will find it."""
    key, cert = tmp / "marker.key", tmp / "marker.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN=dlenv-leak-marker-{secrets.token_hex(4)}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    body = "".join(cert.read_text().strip().splitlines()[1:-1])
    bundle = tmp / "bundle.pem"
    bundle.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text() + cert.read_text())
    return bundle, body[40:100]


def unpack(media_type: str, blob: bytes) -> bytes:
    """A layer's tar, from gzip or zstd (matrix.yaml's build.compression; zstd through Debian's
    zstd, which conftest.py installs)."""
    if media_type.endswith("+zstd"):
        return subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    return gzip.decompress(blob)


def layers_and_configs(repository: str, tags: list[str], user=None):
    """Every blob anyone who pulls tags reads: configs (with the history), layers (unpacked) and
    attestations, as (what, bytes)."""
    reg, cred = (user[0], user[1]) if user else (REGISTRY, None)
    seen = set()
    for tag in tags:
        manifest = registry.image_manifest(reg, repository, tag, user=cred)
        yield "config " + tag, registry.blob(reg, repository, manifest["config"]["digest"], user=cred)
        for layer in manifest["layers"]:
            if layer["digest"] in seen:
                continue
            seen.add(layer["digest"])
            yield f"layer {layer['digest'][:19]} of {tag}", unpack(layer["mediaType"],
                                                                   registry.blob(reg, repository, layer["digest"], user=cred))
        for kind, statement in attestations(reg, repository, tag, user=cred):
            yield f"attestation {kind} of {tag}", statement


def layer_files(data: bytes) -> dict[str, tarfile.TarInfo]:
    """The regular files of an unpacked layer, by path (no leading ./)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}


def read_files(data: bytes, names: list[str]) -> dict[str, bytes]:
    """The contents of some regular files of an unpacked layer, by path (no leading ./)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and m.name.removeprefix("./") in names}


def leaks(what: str, data: bytes, marker: str, bundle: Path) -> list[str]:
    """What leaked into one blob of layers_and_configs: the build's CA bundle (marker: a
    certificate only it holds), secret files, apt lists and .debs, pip/uv caches, SSH host keys,
    private keys."""
    found = []
    if marker.encode() in data or bundle.read_bytes()[-2000:] in data:
        found.append(f"the build's CA bundle leaked into {what}")
    if not what.startswith("layer"):
        return found
    files = list(layer_files(data))
    rules = {"a secret file": lambda n: n.startswith("run/secrets/"),
             "apt lists": lambda n: n.startswith("var/lib/apt/lists/") and not n.endswith("/lock"),
             "apt's .debs": lambda n: n.startswith("var/cache/apt/") and n.endswith(".deb"),
             "pip/uv caches": lambda n: "/.cache/pip/" in "/" + n or "/.cache/uv/" in "/" + n,
             "SSH host keys": lambda n: n.startswith("etc/ssh/ssh_host_"),
             "private keys": lambda n: n.rsplit("/", 1)[-1] in ("id_rsa", "id_ecdsa", "id_ed25519")}
    for name, rule in rules.items():
        hits = [n for n in files if rule(n)]
        if hits:
            found.append(f"{name} in {what}: {hits[:3]}")
    return found


def sh(docker: DockerClient, image: str, script: str, **kwargs) -> str:
    """Run a shell script in image, past any entrypoint (the ssh image's makes host keys)."""
    return docker.run(image, ["-c", script], entrypoint="/bin/sh", remove=True, **kwargs)
