"""checks/batch.sh, the runner that takes all of a variant's checks into one container, run
here by the host's own /bin/sh (the images' shell is Debian's dash too), and its reader."""

from __future__ import annotations

import subprocess

from dlenv.config import CHECKS_DIR
from dlenv.smoke import batch_results


def run_batch(checks: list[tuple[str, int]], marker: str = "@@dlenv-check-test") -> dict:
    env = {"PATH": "/usr/bin:/bin", "DLENV_CHECKS": str(len(checks)), "DLENV_MARKER": marker}
    for i, (command, limit) in enumerate(checks, 1):
        env |= {f"DLENV_CHECK_{i}": command, f"DLENV_TIMEOUT_{i}": str(limit)}
    out = subprocess.run(["sh", str(CHECKS_DIR / "batch.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return batch_results(out.stdout, marker)


def test_each_check_gets_its_exit_code_output_and_time():
    results = run_batch([("echo one; echo two", 10), ("echo out; echo err >&2; exit 3", 10), ("sleep 1", 10)])
    assert sorted(results) == [1, 2, 3]
    assert results[1][0] == 0 and results[1][2] == "one\ntwo"
    assert results[2][0] == 3 and results[2][2] == "out\nerr"
    assert results[3][0] == 0 and 0.9 <= results[3][1] < 5


def test_a_check_past_its_limit_is_stopped_and_the_next_still_runs():
    results = run_batch([("sleep 30", 1), ("echo after", 10)])
    assert results[1][0] == 124          # timeout's code: judge says "timed out"
    assert results[1][1] < 10
    assert results[2] == (0, results[2][1], "after")


def test_no_variable_or_directory_of_one_check_reaches_the_next():
    results = run_batch([("export LEAK=1; cd /tmp; echo $LEAK", 10), ('echo "[${LEAK:-}] $(pwd)"', 10)])
    assert results[1][2] == "1"
    assert results[2][2] == f"[] {subprocess.run(['pwd'], capture_output=True, text=True).stdout.strip()}"


def test_a_check_that_prints_a_marker_of_its_own_cannot_pass_for_a_result():
    # The marker is new for each run; a check printing the shape of a result line with another
    # marker stays output, and one that reads stdin gets nothing (it cannot eat the next check).
    results = run_batch([("echo '@@dlenv-check-other 2 0 0 0'; cat; exit 1", 10), ("exit 0", 10)],
                        marker="@@dlenv-check-4f1e")
    assert results[1][0] == 1 and "@@dlenv-check-other 2 0 0 0" in results[1][2]
    assert results[2][0] == 0


def test_a_container_that_died_half_way_leaves_the_rest_without_a_result():
    output = "first\n@@m 1 0 10.0 10.5\npartial output of the second"
    assert batch_results(output, "@@m") == {1: (0, 0.5, "first")}


def test_a_check_that_changes_what_the_next_would_see_is_declared_isolated():
    """The jupyter recipe's kernel checks save notebooks and make a user: run after one another in
    a shared container, the user's server could not save its notebook (HTTP 500). They are
    isolated; every other check of the repository shares its variant's container."""
    import tomli

    from dlenv.config import Check, CheckModel
    from helpers import REPO

    recipe = tomli.loads((REPO / "recipes/jupyter.toml").read_text())
    kernels = [c for c in recipe["checks"] if "jupyter_checks.py kernel" in c["run"]]
    assert kernels and all(Check.of(CheckModel(**c), "jupyter").isolated for c in kernels)
    assert not Check.of(CheckModel(name="n", run="true"), "x").isolated
