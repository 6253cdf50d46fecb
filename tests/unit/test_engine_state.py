"""`engine down` stops what dlenv started, by its recorded pids, and nothing else."""

from __future__ import annotations

import subprocess
import time

from dlenv import engine


def test_down_stops_recorded_processes_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DLENV_STATE", str(tmp_path))
    ours = subprocess.Popen(["sleep", "300"])
    theirs = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "dockerd.pid").write_text(f"{ours.pid}\n")
        said = []
        stopped = engine.down(say=said.append)
        assert stopped == [f"dockerd (pid {ours.pid})"]
        assert ours.wait(timeout=10) is not None
        time.sleep(0.2)
        assert theirs.poll() is None, "a process dlenv did not start was stopped"
        assert not (tmp_path / "dockerd.pid").exists()
        assert "stopped dockerd" in said[0]
        # Nothing recorded: nothing stopped, and it says so.
        assert engine.down(say=said.append) == []
        assert "nothing" in said[-1]
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_stale_pidfile_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("DLENV_STATE", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "registry.pid").write_text(f"{gone.pid}\n")
    assert engine.down(say=lambda s: None) == []


def test_unreachable_engine_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    monkeypatch.setenv("DLENV_RUN", str(tmp_path / "run"))
    try:
        engine.ensure(start=False)
    except engine.EngineError as exc:
        message = str(exc)
    assert "\n" not in message and "no Docker engine is reachable" in message and "DOCKER_HOST" in message


def test_unreachable_registry_is_one_line_with_the_fix():
    try:
        engine.ensure_registry("127.0.0.1:9", say=lambda s: None)
    except engine.EngineError as exc:
        message = str(exc)
    assert message == ("registry 127.0.0.1:9 is unreachable (start it, log in, or set `registry:` in "
                       "matrix.yaml / --registry)")
