"""One `docker buildx bake` through python-on-whales, and what its plain progress says.

buildx prints each step as a vertex (`#12 [target 2/3] RUN ...`), then the step's output
(`#12 0.289 ...`) and its end (`#12 DONE 1.2s`, `CACHED`, `ERROR: ...`, `CANCELED`). Progress
reads that text into an Outcome: the target whose step failed first, with that step's last
lines, and when each target was exported. Every line also goes to the build log, under a
`### bake TARGETS` header per bake. Also here: what a buildx builder can do (Capabilities).
Bake files name their folders absolutely: bakes run side by side in threads of one process,
which has one working folder.

A bake that failed because the engine went away, or because a disk filled up, is not a failing
node: it stops the run at once, in one line (EngineError, disk.Full), without probing every node
again against an engine that cannot build.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import disk, engine
from dlenv.errors import ConfigError, DlenvError, EngineError

VERTEX = re.compile(r"^#(\d+) \[([^\] ]+)[^\]]*\] (.*)$")
STATE = re.compile(r"^#(\d+) (DONE [\d.]+s|CACHED|ERROR:? .*|CANCELED)$")
OUTPUT = re.compile(r"^#(\d+) \d+\.\d+ (.*)$")
UNNAMED = re.compile(r"^#(\d+) (\S.*)$")   # a step named without a target, e.g. `#12 exporting to image`


@dataclass
class Outcome:
    """What one bake showed."""

    ok: bool = True
    error_target: str = ""
    error_lines: list[str] = field(default_factory=list)
    ready: dict[str, float] = field(default_factory=dict)   # target -> seconds when exported
    metadata: dict = field(default_factory=dict)   # buildx's metadata file: written only when every target built


class Progress:
    """Reads one bake's plain progress, a line at a time, into its Outcome.

    step(target, text) hears each step as it starts; done(target, seconds) each target whose
    image was exported, with the seconds since its first step. (BuildKit names a step shared by
    several targets after any one of them, so a target's own steps cannot tell when it is built;
    its export can.)
    """

    def __init__(self, step: Callable[[str, str], None] = lambda target, text: None,
                 clock: Callable[[], float] = time.monotonic,
                 done: Callable[[str, float], None] = lambda target, seconds: None, only: str = "",
                 targets: Collection[str] = ()):
        """only: the bake's one target. buildx then names no target in that target's own steps
        (`#10 [stage-0 2/3] RUN ...`, `#12 exporting to image`): those are its. A step of a
        target it builds on (targets: every target of the bake file) still names its own."""
        self.outcome = Outcome()
        self._only = only
        self._targets = set(targets)
        self._step = step
        self._done = done
        self._first: dict[str, float] = {}       # target -> when its first step started
        self._clock = clock
        self._started = clock()
        self._names: dict[str, str] = {}          # vertex -> target
        self._lines: dict[str, list[str]] = {}    # vertex -> its name, then its output

    def read(self, line: str) -> None:
        run = self.outcome
        match = VERTEX.match(line)
        if match:
            vid, target, text = match.groups()
            self._vertex(vid, target if target in self._targets or not self._only else self._only, text)
            return
        match = STATE.match(line)
        if match:
            vid, state = match.groups()
            target = self._names.get(vid, "")
            # A cache that cannot be read (the first run has none yet) fails no build: BuildKit
            # goes on without it, so it names no failing step.
            if state.startswith("ERROR") and not run.error_target and \
                    not self._lines.get(vid, [""])[0].startswith("importing cache manifest"):
                run.error_target = target
                run.error_lines = (self._lines.get(vid, [])[-9:] + [state])
            elif state.startswith("DONE") and self._lines.get(vid, [""])[0].startswith(("exporting", "pushing")):
                run.ready[target] = self._clock() - self._started
                self._done(target, self._clock() - self._first.get(target, self._started))
            return
        match = OUTPUT.match(line)
        if match:
            self._lines.setdefault(match.group(1), []).append(match.group(2))
            return
        match = UNNAMED.match(line)
        if match and self._only:
            self._vertex(match.group(1), self._only, match.group(2))

    def _vertex(self, vid: str, target: str, text: str) -> None:
        """A step's line (its first names it)."""
        self._names.setdefault(vid, target)
        self._first.setdefault(target, self._clock())
        self._lines.setdefault(vid, [text])
        self._step(target, text)

    def failed(self, stderr: str) -> Outcome:
        """The bake exited non-zero; stderr is what it printed (its last lines name the target
        where no step's error did)."""
        run = self.outcome
        run.ok = False
        if not run.error_target:
            match = re.search(r"target ([A-Za-z0-9_-]+): failed", stderr)
            run.error_target = match.group(1) if match else ""
        if not run.error_lines:
            run.error_lines = stderr.strip().splitlines()[-8:]
        return run


def run(file: Path, targets: list[str], log: Path, builder: str | None = None,
        metadata: Path | None = None, step: Callable[[str, str], None] = lambda target, text: None,
        done: Callable[[str, float], None] = lambda target, seconds: None) -> Outcome:
    """Bake targets of file (its folders are absolute), appending its progress to log.

    metadata: where buildx writes what it built (read into the Outcome when every target built).
    """
    if metadata:
        metadata.unlink(missing_ok=True)
    progress = Progress(step, done=done, only=targets[0] if len(targets) == 1 else "",
                        targets=json.loads(file.read_text()).get("target", {}))
    stderr = ""
    env = {"BUILDX_BAKE_ENTITLEMENTS_FS": "0"}  # newer buildx asks before reading outside the context
    with open(log, "a") as out:
        out.write(f"\n### bake {' '.join(targets)}\n")
        try:
            stream = DockerClient().buildx.bake(targets, files=[str(file)], builder=builder, progress="plain",
                                                metadata_file=metadata, stream_logs=True, variables=env)
            for raw in stream:
                line = raw.rstrip("\n")
                out.write(line + "\n")
                progress.read(line)
        except DockerException as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            progress.failed(stderr)
    outcome = progress.outcome
    if not outcome.ok:
        _stopped([*outcome.error_lines, *stderr.splitlines()[-8:]], targets, log)
    if outcome.ok and metadata and metadata.exists():
        outcome.metadata = read_metadata(metadata)
    return outcome


def _stopped(lines: list[str], targets: list[str], log: Path) -> None:
    """Raise when the bake failed (lines: its error) for a reason no node is to blame for: no
    space left, or an engine that no longer answers."""
    full = disk.full_folder(lines)
    if full is not None:
        raise disk.Full(full)
    host = os.environ.get("DOCKER_HOST", "")
    if host and not engine.answers(host):
        raise EngineError(f"the engine at {host} stopped answering during the bake of {' '.join(targets)} "
                          f"(log: {log})",
                          "start it again (`dlenv engine up` for dlenv's own) and rerun: what finished is in its "
                          "build cache and is not built again")


def read_metadata(path: Path) -> dict:
    """buildx's record of what it built; a file cut short or damaged is one line naming it."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        raise ConfigError(str(path), line, "metadata", f"buildx's metadata file cannot be read ({exc}); nothing "
                          "was pushed: run the build again") from None
    return data


@dataclass(frozen=True)
class Capabilities:
    """What a buildx builder can do with what it builds."""

    name: str
    driver: str               # docker, docker-container, remote, kubernetes
    containerd_store: bool    # the docker driver: does the engine keep images in containerd?

    @property
    def attestations(self) -> bool:
        # The docker driver's classic image store cannot hold an image index with attestations.
        return self.driver != "docker" or self.containerd_store

    @property
    def rewrite_timestamp(self) -> bool:
        # The docker driver's image exporter unpacks into its store, which BuildKit refused together
        # with rewrite-timestamp on Docker 26 ("conflicts with unpack"; not tried again on 28);
        # exporters that push straight away accept it.
        return self.driver != "docker"


def capabilities(builder: str | None = None) -> Capabilities:
    client = DockerClient()
    try:
        found = client.buildx.inspect(builder)
    except DockerException as exc:
        raise DlenvError(f"buildx builder {builder or '(default)'} is not usable: "
                         f"{(exc.stderr or '').strip().splitlines()[-1:] or ['?']}",
                         "see `docker buildx ls`; docs/release.md says how to set one up") from None
    store = False
    if found.driver == "docker":
        status = client.system.info().driver_status or []
        store = any("containerd.snapshotter" in str(value) for _, value in status)
    return Capabilities(found.name, found.driver, store)
