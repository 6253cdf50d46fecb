"""Progress in a log (no terminal): a line per exported image and a heartbeat naming what runs."""

from __future__ import annotations

import time

from dlenv import bake, report
from helpers import expand


def test_off_a_terminal_a_heartbeat_names_what_is_running_and_each_layer_gets_a_line(project, capsys):
    plan = expand(project, select=["os=debian12 cuda=13.0.2 flavor=base"])
    first = plan.variants[0]
    with report.LiveBoard(plan, heartbeat=0.2) as board:
        board.step(first.id, "[3/5] RUN pip install")
        time.sleep(0.7)
        board.node_done(first.chain[0], 12)
        board.node_done(first.chain[0], 12)   # BuildKit may say it twice: one line
        board.finish(first.id, "built")
    err = capsys.readouterr().err
    beats = [line for line in err.splitlines() if line.startswith("... ")]
    assert len(beats) >= 2, err
    assert f"0 of {len(plan.variants)} variants done, 1 building" in beats[0]
    assert "now: [3/5] RUN pip install" in beats[0]
    assert err.count(f"exported {first.chain[0]} in 12s") == 1
    assert any(line.startswith("built") and first.id in line for line in err.splitlines())


def test_variants_dropped_after_the_start_are_not_counted(project):
    plan = expand(project, select=["os=debian12 cuda=13.0.2"])
    board = report.LiveBoard(plan, heartbeat=60)
    board.drop({v.id for v in plan.variants[1:]})
    assert "0 of 1 variants done, 0 building, 1 waiting" in board.heartbeat_line()


def test_a_bake_of_one_target_has_its_unnamed_steps_and_its_export_read_as_that_targets():
    # buildx names no target in the steps of a bake of one (the main job bakes a variant at a time).
    steps: list[tuple[str, str]] = []
    exported: list[str] = []
    progress = bake.Progress(lambda target, text: steps.append((target, text)),
                             done=lambda target, seconds: exported.append(target), only="13_0_2-runtime-debian12-py",
                             targets=["os-debian12", "13_0_2-runtime-debian12-py"])
    for line in ["#8 [os-debian12 stage-0 1/2] RUN apt-get install locales",   # a target it builds on
                 "#8 DONE 20.0s",
                 "#9 [os-debian12] exporting to image",
                 "#9 DONE 2.0s",
                 "#10 [stage-0 2/3] RUN pip install torch",
                 "#10 12.301 Collecting torch",
                 "#10 DONE 129.2s",
                 "#12 exporting to image",
                 "#12 exporting layers",
                 "#12 exporting layers 109.3s done",
                 "#12 DONE 145.4s"]:
        progress.read(line)
    assert steps[0] == ("os-debian12", "RUN apt-get install locales")
    assert ("13_0_2-runtime-debian12-py", "RUN pip install torch") in steps
    assert ("13_0_2-runtime-debian12-py", "exporting layers") in steps
    assert exported == ["os-debian12", "13_0_2-runtime-debian12-py"]
    assert set(progress.outcome.ready) == {"os-debian12", "13_0_2-runtime-debian12-py"}
    # A bake of several targets reads each step's own target, as before.
    several = bake.Progress()
    for line in ["#12 [13_0_2-base-debian12] exporting to image", "#12 DONE 3.0s"]:
        several.read(line)
    assert set(several.outcome.ready) == {"13_0_2-base-debian12"}
