"""Shared fixtures: the environment restored after each test, a project folder to load matrices
and recipes from; tests under tests/engine/ are marked `engine` and run after the unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dlenv import hostconf
from helpers import CHROMEDRIVER, CHROMIUM, REPO

ENGINE_TESTS = Path(__file__).resolve().parent / "engine"


@pytest.hookimpl(tryfirst=True)   # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.is_relative_to(ENGINE_TESTS):
            item.add_marker(pytest.mark.engine)
    # Unit tests first, whatever order the paths were given in; the order within each kept
    # (the release tests prune the build cache, so they run after the other engine tests).
    items.sort(key=lambda item: item.path.is_relative_to(ENGINE_TESTS))


NETWORK_VARIABLES = [*hostconf.PROXY_NAMES, *(n.lower() for n in hostconf.PROXY_NAMES), "SSL_CERT_FILE"]


@pytest.fixture(autouse=True)
def _network_environment_untouched():
    """dlenv passes proxies and CA bundles as data to what it starts, never through its own
    environment: no test that runs it in this process may find them changed afterwards."""
    before = {n: os.environ.get(n) for n in NETWORK_VARIABLES}
    yield
    assert {n: os.environ.get(n) for n in NETWORK_VARIABLES} == before, "dlenv changed its own environment"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: the repository's images/ and a copy of its recipes/ to break at will."""
    (tmp_path / "images").symlink_to(REPO / "images")
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


# smoke builds its CUDA probe with the host's C compiler (libc6-dev brings the headers); the
# catalog page's tests drive Debian's chromium through its chromedriver; the leak scans unpack
# zstd layers.
TEST_TOOLS = {"htpasswd": "apache2-utils", "ssh": "openssh-client", "openssl": "openssl", "cc": "gcc", "zstd": "zstd",
              "/usr/include/stdio.h": "libc6-dev", "chromium": "chromium", "chromedriver": "chromium-driver"}


def pytest_sessionstart(session):
    """The engine tests and the browser tests need a few host tools; a fresh Debian machine (as
    root) gets them here."""
    missing = sorted({pkg for tool, pkg in TEST_TOOLS.items()
                      if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))})
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                       check=True, capture_output=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium, headless, driven by selenium through Debian's chromium-driver, with a
    fresh profile (nothing from an earlier run) and its console kept for get_log("browser")."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by `nox -s tests`")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (the tests install them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    # Headless as root; no background requests (this machine's network refuses them).
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver given by path: selenium looks for nothing to download.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()
