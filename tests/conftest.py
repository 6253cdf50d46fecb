"""Shared fixtures: a project folder to load matrices and recipes from, and the real engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from python_on_whales import DockerClient

from dlenv import engine

REPO = Path(__file__).resolve().parent.parent
REGISTRY = engine.DEFAULT_REGISTRY


@pytest.fixture(autouse=True)
def _environment_restored():
    """dlenv makes proxies its process's own (hostconf.use_network): a test that runs it in
    this process must not leave them to the tests after it (mmdebstrap would use a dead proxy)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: the repository's images/ and a copy of its recipes/ to break at will."""
    (tmp_path / "images").symlink_to(REPO / "images")
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


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


# smoke builds its CUDA probe with the host's C compiler (libc6-dev brings the headers).
TEST_TOOLS = {"htpasswd": "apache2-utils", "ssh": "openssh-client", "openssl": "openssl", "cc": "gcc",
              "/usr/include/stdio.h": "libc6-dev"}


def pytest_sessionstart(session):
    """The engine tests need a few host tools; a fresh Debian machine (as root) gets them here."""
    missing = sorted({pkg for tool, pkg in TEST_TOOLS.items()
                      if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))})
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                       check=True, capture_output=True)


# --- the real engine, for the engine tests -------------------------------------------------

@pytest.fixture(scope="session")
def docker() -> DockerClient:
    engine.ensure()
    engine.ensure_registry(REGISTRY)
    return DockerClient()


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
