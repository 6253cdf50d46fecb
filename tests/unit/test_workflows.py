"""The GitHub Actions workflows: valid against GitHub's workflow schema (offline, the schema
check-jsonschema vendors), and holding no logic beyond installing nox and calling its sessions."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO

WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))
# Set-up and hand-over only: checking out, Python, a buildx builder, a registry login, artifacts
# between jobs and the Pages upload of the catalog. What is built and how is in the nox sessions.
ACTIONS = ("actions/checkout", "actions/setup-python", "docker/setup-buildx-action", "docker/login-action",
           "actions/upload-artifact", "actions/download-artifact", "actions/upload-pages-artifact",
           "actions/deploy-pages")
SESSION = re.compile(r"\bnox -s ([\w-]+)")


def sessions() -> set[str]:
    """The sessions noxfile.py defines (by name= or by function name)."""
    tree = ast.parse((REPO / "noxfile.py").read_text())
    names = set()
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for deco in fn.decorator_list:
            if "nox.session" in ast.unparse(deco):
                named = [k.value.value for k in getattr(deco, "keywords", []) if k.arg == "name"]
                names.add(named[0] if named else fn.name)
    return names


def release() -> dict:
    return yaml.safe_load((REPO / ".github/workflows/release.yml").read_text())


def run_lines(job: dict) -> str:
    return "\n".join(" ".join(step["run"].split()) for step in job["steps"] if "run" in step)


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
                assert step["uses"].split("@")[0] in ACTIONS, (name, step)
                continue
            command = step["run"].strip()
            assert command == "python -m pip install nox" or " nox -s " in f" {command}", (name, command)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_every_session_a_workflow_calls_exists(path):
    called = set(SESSION.findall(path.read_text()))
    assert called and called <= sessions(), called - sessions()


def test_release_runs_plan_shards_smoke_promote_catalog_in_that_order():
    jobs = release()["jobs"]

    def needs(name: str) -> set[str]:
        direct = jobs[name].get("needs", [])
        direct = [direct] if isinstance(direct, str) else direct
        return set(direct).union(*(needs(d) for d in direct)) if direct else set()

    assert {"plan"} <= needs("build") and {"plan", "build"} <= needs("smoke")
    assert {"smoke", "build"} <= needs("promote") and "promote" in needs("catalog") and "catalog" in needs("publish")
    assert "--github-output" in run_lines(jobs["plan"]) and "nox -s shards" in run_lines(jobs["plan"])
    # Every build and smoke job takes its shard from the plan job's matrices.
    for name, output in (("build", "build1"), ("smoke", "matrix")):
        assert f"needs.plan.outputs.{output}" in jobs[name]["strategy"]["matrix"]
        assert '--shard "${{ matrix.shard }}"' in run_lines(jobs[name])


def test_release_builds_locked_with_a_registry_cache_and_moves_tags_only_after_gpu_checks():
    jobs = release()["jobs"]
    build, smoke, promote = run_lines(jobs["build"]), run_lines(jobs["smoke"]), run_lines(jobs["promote"])
    assert "nox -s build-matrix" in build and all(f in build for f in ("--locked", "--no-promote", "--cache", "--builder"))
    assert "gpu" in jobs["smoke"]["runs-on"] and "--require-gpu" in smoke and "--json" in smoke
    assert "nox -s promote" in promote and "--require-gpu" in promote
    assert "nox -s catalog" in run_lines(jobs["catalog"])


def test_the_pages_site_is_the_folder_the_catalog_writes():
    """The Pages artifact is the catalog's --output folder itself: the index.html catalog.write puts
    there is the site's root page."""
    catalog = release()["jobs"]["catalog"]
    written = re.search(r"nox -s catalog -- .*--output (\S+)", run_lines(catalog))
    uploaded = [step["with"]["path"] for step in catalog["steps"]
                if step.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert written and uploaded == [written.group(1)]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_conditions_only_read_jobs_they_directly_need(path):
    # GitHub's `needs` context holds direct dependencies only: `needs.plan.result` in a job
    # that needs plan only through another job is always empty, and the job never runs.
    for name, job in yaml.safe_load(path.read_text())["jobs"].items():
        needs = job.get("needs", [])
        needs = {needs} if isinstance(needs, str) else set(needs)
        text = json.dumps(job)
        assert set(re.findall(r"needs\.([\w-]+)\.", text)) <= needs, name


def test_release_inputs_reach_the_shell_through_the_environment_only():
    # ${{ inputs.* }} inside a run: script is pasted into the shell before it runs.
    for name, job in release()["jobs"].items():
        for step in job["steps"]:
            assert "inputs." not in step.get("run", ""), (name, step["run"])


def test_each_platform_builds_natively_under_its_own_tags_then_one_merge_per_shard_before_the_gpu_checks():
    jobs = release()["jobs"]
    build, merge, smoke = jobs["build"], jobs["merge"], jobs["smoke"]
    # The runner by platform: amd64 on the hosted x64 runner, arm64 on the hosted arm64 one.
    assert build["runs-on"] == "${{ matrix.platform == 'linux/arm64' && 'ubuntu-24.04-arm' || 'ubuntu-24.04' }}"
    assert "matrix.platform == 'linux/arm64' && 'ARM64' || 'X64'" in json.dumps(smoke["runs-on"])
    # Build and the build job's own checks: that platform alone, under its per-platform tags.
    steps = [" ".join(s["run"].split()) for s in build["steps"] if "nox -s" in s.get("run", "")
             and "nox -s free-disk" not in s["run"]]
    assert [re.search(r"nox -s ([\w-]+)", s).group(1) for s in steps] == ["build-matrix", "smoke"]
    assert all('--platform "${{ matrix.platform }}" --per-platform' in s for s in steps)
    # Both as root: the checks share the build's nox environment and out/ folder, which root made.
    assert all(s.startswith('sudo env "PATH=$PATH" "DOCKER_CONFIG=$HOME/.docker" nox -s') for s in steps)
    # One merge job per shard, after every build job; the GPU checks run on the merged tags.
    assert "needs.plan.outputs.shards" in merge["strategy"]["matrix"]
    assert '--shard "${{ matrix.shard }}"' in run_lines(merge) and "nox -s merge" in run_lines(merge)
    assert "--per-platform" not in run_lines(merge) + run_lines(smoke)
    assert set(merge["needs"]) >= {"plan", "build"} and "merge" in smoke["needs"]
    assert '--platform "${{ matrix.platform }}"' in run_lines(smoke)


def test_the_plan_jobs_outputs_are_what_the_shards_command_writes(tmp_path, monkeypatch):
    from dlenv.cli import main

    output = tmp_path / "github-output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.chdir(REPO)
    assert main(["shards", "--count", "2", "--github-output", "--matrix", "tests/release-family.yaml"]) == 0
    written = {line.split("=", 1)[0] for line in output.read_text().splitlines()}
    plan = release()["jobs"]["plan"]
    assert {k: v.replace(" ", "") for k, v in plan["outputs"].items()} == {
        key: f"${{{{steps.shards.outputs.{key}}}}}" for key in written}
    used = set(re.findall(r"needs\.plan\.outputs\.(\w+)", json.dumps(release()["jobs"])))
    assert used == written


def test_build_jobs_run_by_stage_each_after_the_one_before_with_the_same_steps_on_a_freed_disk():
    from dlenv import shards

    jobs = release()["jobs"]
    names = ["build"] + [f"build-{k}" for k in range(2, shards.STAGES + 1)]
    for stage, name in enumerate(names, 1):
        job = jobs[name]
        assert f"needs.plan.outputs.build{stage}" in job["strategy"]["matrix"]
        assert job["steps"] == jobs["build"]["steps"]
        if stage > 1:
            # Skipped where no shard has that stage (an empty matrix would fail the job).
            assert names[stage - 2] in job["needs"] and f"outputs.stages) >= {stage}" in job["if"]
    # Nothing is tested before every stage is built.
    needed, todo = set(), ["smoke"]
    while todo:
        direct = jobs[todo.pop()].get("needs", [])
        todo += [n for n in ([direct] if isinstance(direct, str) else direct) if n not in needed]
        needed.update(todo)
    assert set(names) <= needed
    # The disk is freed before anything is built: a nox session, as root.
    steps = [" ".join(s.get("run", "").split()) for s in jobs["build"]["steps"]]
    freed = next(i for i, s in enumerate(steps) if "nox -s free-disk" in s)
    assert steps[freed].startswith("sudo ") and freed < next(i for i, s in enumerate(steps) if "nox -s build-matrix" in s)
    # Each job's artifact has a name of its own: jobs of two stages share job indices.
    uploads = [s["with"]["name"] for s in jobs["build"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads == ["${{ github.job }}-${{ strategy.job-index }}"]

