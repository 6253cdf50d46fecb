"""The GitHub Actions workflows: valid against GitHub's workflow schema (offline, the schema
check-jsonschema vendors), and holding no logic beyond installing nox and calling its sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))


def validate(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, files)], capture_output=True, text=True)


def test_there_are_workflows_and_they_match_githubs_schema():
    assert WORKFLOWS
    out = validate(*WORKFLOWS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_validator_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-onn: ubuntu-24.04\n    steps:\n      - run: nox -s lint\n")
    out = validate(broken)
    assert out.returncode != 0 and "runs-on" in out.stdout + out.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_steps_only_install_nox_and_call_its_sessions(path):
    doc = yaml.safe_load(path.read_text())
    for name, job in doc["jobs"].items():
        for step in job["steps"]:
            if "uses" in step:
                assert step["uses"].split("@")[0] in ("actions/checkout", "actions/setup-python"), (name, step)
                continue
            command = step["run"].strip()
            assert command == "python -m pip install nox" or " nox -s " in f" {command}", (name, command)
