"""Helpers the test files share (test files never import each other): the repository, small
matrices and their plans for the unit tests, projects and a dlenv process for the engine tests."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
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


def sh(docker: DockerClient, image: str, script: str, **kwargs) -> str:
    """Run a shell script in image, past any entrypoint (the ssh image's makes host keys)."""
    return docker.run(image, ["-c", script], entrypoint="/bin/sh", remove=True, **kwargs)
