"""Progress in a log (no terminal): a line per exported image and a heartbeat naming what runs."""

from __future__ import annotations

import time

from dlenv import report
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
