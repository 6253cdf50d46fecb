"""SIGINT and SIGTERM: what dlenv started stops, nothing is left cut in half, exit 130 or 143.

The first signal is passed on to dlenv's own child processes (buildx bake, docker push, a
smoke check's `docker run`, mmdebstrap): those in its process group, so never the engine or the
registry it may have started, which run in sessions of their own. Then it is raised in the main
thread as Interrupted, unless a section that must not be cut (a variant's floating tags being
moved, `held`) is running in the main thread: there it is raised when the section ends. A
thread working beside the main one (the main job tests what was baked while other bakes run) meets
it at its next `check` or at the end of its own held section. A second signal kills the
children and exits at once. `stopped` waits for the children to end and says so in one line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
WAIT = 20.0   # seconds children get to end after the signal, before they are killed


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (a KeyboardInterrupt, so code that cleans up on one does)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: int | None = None
_held: dict[int, int] = {}   # thread id -> depth of the held sections it is in


def _stat(pid: str) -> tuple[int, int, str] | None:
    """(parent pid, process group, state) of pid, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2]), fields[0]


def children() -> list[int]:
    """Living descendants of this process in its own process group."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(entry)):
            table[int(entry)] = found
    mine, group, out = {os.getpid()}, os.getpgrp(), []
    grew = True
    while grew:
        grew = False
        for pid, (parent, pgrp, state) in table.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                grew = True
                if pgrp == group and state != "Z":
                    out.append(pid)
    return out


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:
        _signal(children(), signal.SIGKILL)
        sys.stderr.write(f"dlenv: {signal.Signals(signum).name} again: stopped at once; a variant's floating "
                         "tags may be half moved: the next run moves them all\n")
        os._exit(128 + _received)
    _received = signum
    _signal(children(), signum)
    if not _held.get(threading.main_thread().ident or 0):
        raise Interrupted(signum)


def install() -> dict[int, object] | None:
    """Handle SIGINT and SIGTERM from now on; the handlers there were before (None off the main
    thread, where Python cannot set handlers)."""
    global _received, _held
    if threading.current_thread() is not threading.main_thread():
        return None
    _received, _held = None, {}
    return {s: signal.signal(s, _handler) for s in SIGNALS}


def restore(previous: dict[int, object] | None) -> None:
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)   # type: ignore[arg-type]


@contextmanager
def held() -> Iterator[None]:
    """A section a first signal does not cut: it is raised when the section ends (and none
    starts once a signal came)."""
    check()
    me = threading.get_ident()
    _held[me] = _held.get(me, 0) + 1
    try:
        yield
    finally:
        _held[me] -= 1
        if not _held[me] and _received is not None:
            raise Interrupted(_received)


def check() -> None:
    """Raise Interrupted if a signal came: where a thread beside the main one starts new work."""
    if _received is not None:
        raise Interrupted(_received)


def stopped(exc: KeyboardInterrupt, say: Callable[[str], None]) -> int:
    """After the run was interrupted: wait for the children (killed after WAIT seconds), say
    what happened, and return the exit code (128 + the signal)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    deadline = time.monotonic() + WAIT
    left = children()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = children()
    _signal(left, signal.SIGKILL)
    say(f"dlenv: stopped by {signal.Signals(signum).name}: its builds, pushes and checks were stopped"
        f"{f' ({len(left)} killed after {WAIT:.0f}s)' if left else ''}; floating tags moved for whole "
        "variants only; run it again to finish")
    return 128 + signum
