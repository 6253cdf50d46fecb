"""SIGINT and SIGTERM, on real processes: the signal reaches dlenv's children, dlenv leaves with
128 + the signal, a section that must not be cut runs to its end, and a second signal exits at
once. Each case is a small Python program run as a process of its own, signalled by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import REPO

PROGRAM = """
import subprocess, sys, time
from pathlib import Path
from dlenv import interrupt

interrupt.install()
out = Path(sys.argv[1])
try:
    child = subprocess.Popen(["sleep", "300"])
    (out / "child").write_text(str(child.pid))
    with interrupt.held() if sys.argv[2] == "held" else open(out / "unheld", "w"):
        (out / "ready").write_text("")
        time.sleep(float(sys.argv[3]))
        (out / "section ended").write_text("")
    time.sleep(300)
except KeyboardInterrupt as exc:
    sys.exit(interrupt.stopped(exc, lambda line: (out / "said").write_text(line)))
"""


def started(tmp_path: Path, mode: str, seconds: float) -> subprocess.Popen:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(PROGRAM))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), mode, str(seconds)],
                            env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the program did not start"
        time.sleep(0.05)
    return proc


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_signal_stops_the_children_and_the_exit_code_says_which(tmp_path, signum):
    proc = started(tmp_path, "free", 300)
    child = int((tmp_path / "child").read_text())
    proc.send_signal(signum)
    assert proc.wait(30) == 128 + signum
    assert not alive(child)
    assert f"stopped by {signal.Signals(signum).name}" in (tmp_path / "said").read_text()


def test_a_held_section_runs_to_its_end_before_the_signal_is_raised(tmp_path):
    proc = started(tmp_path, "held", 1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert (tmp_path / "section ended").exists()


def test_a_second_signal_exits_at_once_even_in_a_held_section(tmp_path):
    proc = started(tmp_path, "held", 300)
    child = int((tmp_path / "child").read_text())
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None   # the section goes on
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 128 + signal.SIGTERM
    assert not (tmp_path / "section ended").exists()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


BESIDE = """
import subprocess, sys, time
from collections import namedtuple
from pathlib import Path
from dlenv import build, interrupt
from dlenv.results import Result

interrupt.install()
out = Path(sys.argv[1])
V = namedtuple("V", "id node chain")
chain = [V("w1", "n1", ("n1",)), V("w2", "n2", ("n1", "n2")), V("w3", "n3", ("n1", "n2", "n3"))]

def waited(name):
    deadline = time.monotonic() + 20
    while not (out / name).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

def bake(variants):
    if variants[0].id == "w2":
        try:
            (out / "ready").write_text("")
            subprocess.run(["sleep", "300"])   # a bake's buildx: the signal is passed on to it
            interrupt.check()
        except KeyboardInterrupt:
            (out / "bake stopped").write_text("")
            raise
    return [Result(variants[0].id, "built")]

def tested(results):
    if results[0].variant == "w1":
        with interrupt.held():   # as promotion is: the section ends before the thread stops
            waited("ready")
            # Signalled in here: the bake beside stops now, not when this section ends.
            (out / "section saw the bake stop" if waited("bake stopped") else out / "section waited").write_text("")
        (out / "after the section").write_text("")   # never: the section's end raises

try:
    build.schedule(chain, lambda v: chain[chain.index(v) - 1] if chain.index(v) else None, bake, tested)
except KeyboardInterrupt as exc:
    sys.exit(interrupt.stopped(exc, lambda line: (out / "said").write_text(line)))
"""


def test_a_signal_stops_the_bake_at_once_and_the_variant_tested_beside_it_after_its_held_section(tmp_path):
    script = tmp_path / "beside.py"
    script.write_text(textwrap.dedent(BESIDE))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the program did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 128 + signal.SIGINT
    assert (tmp_path / "section saw the bake stop").exists()   # the held section ran on, beside the stop
    assert not (tmp_path / "after the section").exists()      # and the thread stopped when it ended
    assert "stopped by SIGINT" in (tmp_path / "said").read_text()
