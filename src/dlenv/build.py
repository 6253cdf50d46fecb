"""Build a plan: one `docker buildx bake` through python-on-whales, with a result per variant.

bake is fail-fast: the first failing target cancels all others, and buildx writes no metadata.
So on a failure dlenv finds the node that failed (building the failed target's chain one node at
a time: cached nodes take a second), marks the variants above it, and bakes again what does not
depend on it, until what is left builds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import bootstrap, graph, registry
from dlenv.errors import DlenvError
from dlenv.plan import Plan, Variant

Status = Literal["built", "failed", "not attempted", "skipped"]

VERTEX = re.compile(r"^#(\d+) \[([^\] ]+)[^\]]*\] (.*)$")
STATE = re.compile(r"^#(\d+) (DONE [\d.]+s|CACHED|ERROR:? .*|CANCELED)$")
OUTPUT = re.compile(r"^#(\d+) \d+\.\d+ (.*)$")


@dataclass
class Result:
    variant: str
    status: Status
    tags: tuple[str, ...] = ()
    digest: str = ""
    size: int | None = None
    seconds: float = 0.0
    error: str = ""
    node: str = ""

    def to_json(self) -> dict:
        return {"variant": self.variant, "status": self.status, "tags": list(self.tags),
                "digest": self.digest, "size": self.size, "seconds": round(self.seconds, 1),
                "error": self.error, "node": self.node}


class Board(Protocol):
    """Where progress goes (a rich live table, or nothing)."""

    def step(self, variant: str, text: str) -> None: ...
    def finish(self, variant: str, status: str) -> None: ...


class _Quiet:
    def step(self, variant: str, text: str) -> None:
        pass

    def finish(self, variant: str, status: str) -> None:
        pass


@dataclass
class _Run:
    """What one bake invocation showed."""

    ok: bool = True
    error_target: str = ""
    error_lines: list[str] = field(default_factory=list)
    ready: dict[str, float] = field(default_factory=dict)   # target -> seconds when exported


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class Builder:
    def __init__(self, plan: Plan, workdir: Path, output: graph.Output = "push",
                 secrets: tuple[graph.Secret, ...] = (), builder: str | None = None,
                 board: Board | None = None, log: Callable[[str], None] = print):
        self.plan = plan
        self.workdir = workdir = workdir.resolve()  # bake runs in the project folder
        self.output = output
        self.secrets = secrets
        self.builder = builder
        self.board = board or _Quiet()
        self.say = log
        self.client = DockerClient()
        workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = workdir / "build.log"
        self.bakefile = workdir / "bake.json"
        self.probefile = workdir / "bake-probe.json"

    # --- one bake ---------------------------------------------------------------------------

    def _bake(self, file: Path, targets: list[str], metadata: Path | None) -> _Run:
        run = _Run()
        names: dict[str, str] = {}
        vertex_lines: dict[str, list[str]] = {}
        started = time.monotonic()
        dependents = {t: [v for v in self.plan.variants if t in v.chain] for t in self.plan.nodes}
        env = {"BUILDX_BAKE_ENTITLEMENTS_FS": "0"}  # newer buildx asks before reading outside the context
        with open(self.logfile, "a") as log, _cwd(self.plan.matrix.root):
            log.write(f"\n### bake {' '.join(targets)}\n")
            try:
                stream = self.client.buildx.bake(targets, files=[str(file)], builder=self.builder,
                                                 progress="plain", metadata_file=metadata,
                                                 stream_logs=True, variables=env)
                for raw in stream:
                    line = raw.rstrip("\n")
                    log.write(line + "\n")
                    self._watch(line, names, vertex_lines, dependents, run, started)
            except DockerException as exc:
                run.ok = False
                stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
                if not run.error_target:
                    match = re.search(r"target ([A-Za-z0-9_-]+): failed", stderr)
                    run.error_target = match.group(1) if match else ""
                if not run.error_lines:
                    run.error_lines = stderr.strip().splitlines()[-8:]
        return run

    def _watch(self, line: str, names: dict, vertex_lines: dict, dependents: dict, run: _Run,
               started: float) -> None:
        match = VERTEX.match(line)
        if match:
            vid, target, text = match.groups()
            names[vid] = target
            vertex_lines.setdefault(vid, [text])
            for variant in dependents.get(target, []):
                self.board.step(variant.id, f"{target}: {text}")
            return
        match = STATE.match(line)
        if match:
            vid, state = match.groups()
            target = names.get(vid, "")
            if state.startswith("ERROR") and not run.error_target:
                run.error_target = target
                run.error_lines = (vertex_lines.get(vid, [])[-9:] + [state])
            elif state.startswith("DONE") and vertex_lines.get(vid, [""])[0].startswith(("exporting", "pushing")):
                run.ready[target] = time.monotonic() - started
            return
        match = OUTPUT.match(line)
        if match:
            vertex_lines.setdefault(match.group(1), []).append(match.group(2))

    # --- failure isolation ------------------------------------------------------------------

    def _ancestors(self, node: str) -> list[str]:
        chain = [node]
        while self.plan.nodes[chain[0]].parent:
            chain.insert(0, self.plan.nodes[chain[0]].parent)
        return chain

    def _first_failing(self, target: str) -> str | None:
        """Build target's chain one node at a time (cache only); the first that fails is the culprit.

        None: every node builds, so what failed was exporting the target, not building it.
        """
        for node in self._ancestors(target):
            run = self._bake(self.probefile, [node], None)
            if not run.ok:
                self.errors[node] = run.error_lines
                return node
        return None

    # --- the whole family -------------------------------------------------------------------

    def run(self) -> list[Result]:
        results: dict[str, Result] = {}
        failed_nodes: dict[str, list[str]] = {}
        self.errors: dict[str, list[str]] = {}
        for name, node in self.plan.nodes.items():
            if node.kind == "rootfs" and node.rootfs:
                try:
                    bootstrap.ensure_rootfs(node.rootfs, self.say)
                except DlenvError as exc:
                    failed_nodes[name] = [str(exc)]
        self.bakefile.write_text(graph.render(graph.definition(self.plan, self.output, self.secrets)))
        self.probefile.write_text(graph.render(graph.definition(self.plan, "cache", self.secrets)))
        remaining = list(self.plan.variants)
        retried: set[str] = set()
        rounds = 0
        while True:
            for variant in list(remaining):
                bad = next((n for n in variant.chain if n in failed_nodes), None)
                if bad:
                    remaining.remove(variant)
                    results[variant.id] = self._failure(variant, bad, failed_nodes[bad])
                    self.board.finish(variant.id, results[variant.id].status)
            if not remaining:
                break
            rounds += 1
            metadata = self.workdir / f"metadata-{rounds}.json"
            metadata.unlink(missing_ok=True)
            run = self._bake(self.bakefile, [v.node for v in remaining], metadata)
            if run.ok:
                meta = json.loads(metadata.read_text()) if metadata.exists() else {}
                for variant in remaining:
                    results[variant.id] = self._finish(variant, meta.get(variant.node, {}),
                                                       run.ready.get(variant.node, 0.0))
                    self.board.finish(variant.id, results[variant.id].status)
                break
            if not run.error_target or run.error_target not in self.plan.nodes:
                for variant in remaining:
                    results[variant.id] = Result(variant.id, "failed", error="\n".join(run.error_lines),
                                                 node="?")
                    self.board.finish(variant.id, "failed")
                break
            node = self._first_failing(run.error_target)
            if node is None:
                # The chain builds now: exporting that target failed, or the failure did not repeat.
                # A variant's own export fails only that variant; anything else is not retried forever.
                variant = next((v for v in remaining if v.node == run.error_target), None)
                if variant is None or run.error_target in retried:
                    node = run.error_target
                    self.errors[node] = run.error_lines
                else:
                    retried.add(run.error_target)
                    remaining.remove(variant)
                    results[variant.id] = Result(variant.id, "failed", error="\n".join(run.error_lines[-10:]),
                                                 node=variant.node)
                    self.board.finish(variant.id, "failed")
                    continue
            failed_nodes[node] = self.errors[node]
            self.say(f"dlenv: {node} failed; building what does not depend on it "
                     f"(log: {self.logfile})")
        return [results[v.id] for v in self.plan.variants]

    def _failure(self, variant: Variant, node: str, lines: list[str]) -> Result:
        if node == variant.node:
            return Result(variant.id, "failed", error="\n".join(lines[-10:]), node=node)
        # The node's own error goes along: a failure below every variant must still be readable.
        return Result(variant.id, "not attempted", error="\n".join([*lines[-10:], f"depends on {node}, which failed"]),
                      node=node)

    def _moves_immutable(self, variant: Variant, digest: str) -> str | None:
        """An immutable tag is a promise: never point it at another digest."""
        model = self.plan.matrix.model
        try:
            _, current = registry.manifest(model.registry, model.repository, variant.immutable)
        except Exception:  # noqa: BLE001 - absent (404) or unreadable: nothing to protect here
            return None
        if current and digest and current != digest:
            return (f"immutable tag {variant.immutable} already names {current[:19]}, not this build's "
                    f"{digest[:19]}: refusing to move it (a new commit gives a new build id)")
        return None

    def _push(self, variant: Variant) -> str | None:
        """Push a variant's immutable tag (floating tags move only after its smoke checks pass)."""
        ref = self.plan.ref(variant.immutable)
        try:
            self.client.image.push(ref, quiet=True)
        except DockerException as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return f"pushing {ref} failed: " + (stderr.strip().splitlines() or ["?"])[-1]
        return None

    def _finish(self, variant: Variant, meta: dict, seconds: float) -> Result:
        if self.output == "push":
            self.board.step(variant.id, "pushing")
            started = time.monotonic()
            error = self._moves_immutable(variant, meta.get("containerimage.digest", "")) or self._push(variant)
            seconds += time.monotonic() - started
            if error:
                return Result(variant.id, "failed", error=error, node=variant.node, seconds=seconds)
        digest = meta.get("containerimage.digest", "")
        size = None
        model = self.plan.matrix.model
        try:
            if self.output == "push" and digest:
                size = registry.compressed_size(model.registry, model.repository, digest)
            elif self.output == "load":
                size = self.client.image.inspect(self.plan.ref(variant.immutable)).size
        except Exception:  # noqa: BLE001 - a size we cannot read is reported as unknown
            size = None
        tags = (self.plan.ref(variant.immutable),) if self.output == "push" else tuple(self.plan.ref(t) for t in variant.tags)
        return Result(variant.id, "built", tags, digest, size, seconds, node=variant.node)
