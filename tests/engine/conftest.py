"""The real engine and registry, for the engine tests (dlenv starts them where none is given)."""

from __future__ import annotations

import pytest
from python_on_whales import DockerClient

from dlenv import engine
from helpers import REGISTRY


@pytest.fixture(scope="session")
def docker() -> DockerClient:
    engine.ensure()
    engine.ensure_registry(REGISTRY)
    return DockerClient()
