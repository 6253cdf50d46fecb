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
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from dlenv import bootstrap, engine, graph, lock, reach, registry
from dlenv.config import BuildSettings
from dlenv.errors import DlenvError
from dlenv.options import BuildRequest
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
def working_dir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# BuildKit's own default SBOM scanner, named the way the default registry names it.
DEFAULT_SBOM_SCANNER = "docker/buildkit-syft-scanner:stable-1"


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
        # Docker 26's image exporter unpacks into its store, which BuildKit refuses together with
        # rewrite-timestamp ("conflicts with unpack"); exporters that push straight away accept it.
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


def export_options(settings: BuildSettings, caps: Capabilities, sbom_scanner: str | None,
                   secret_args: bool = False) -> tuple[graph.Options, list[str]]:
    """What this builder will export, and a line for each thing it cannot do (said, not hidden).

    sbom_scanner: the scanner image to use, or None when it cannot be reached from here.
    secret_args: a build arg holds a password (graph.credentials_in_args).
    """
    notes = []
    provenance, sbom = settings.provenance, sbom_scanner if settings.sbom else None
    if provenance == "max" and secret_args:
        # mode=max records every build arg in the attestation, for anyone who can pull the image.
        notes.append("provenance mode=min: a proxy or mirror URL among the build args holds a password, which "
                     "mode=max would record")
        provenance = "min"
    cache = settings.cache
    if not caps.attestations:
        lost = [what for what, on in (("attestations", provenance != "off" or sbom is not None),
                                      ("registry cache", bool(cache))) if on]
        if lost:
            notes.append(f"{' and '.join(lost)} off: builder {caps.name} (docker driver, classic image store) cannot "
                         "export them; enable the containerd image store "
                         "(`\"features\": {\"containerd-snapshotter\": true}`) or use another builder")
        provenance, sbom, cache = "off", None, ""
    elif settings.sbom and sbom_scanner is None:
        notes.append(f"SBOM off: the scanner image {settings.sbom_generator or DEFAULT_SBOM_SCANNER} cannot be "
                     "pulled from here; set build.sbom_generator (or mirrors.registry) to a copy of it")
    if not caps.rewrite_timestamp:
        notes.append(f"layer timestamps not rewritten: builder {caps.name} (docker driver) cannot with its image "
                     "store; a docker-container, remote or kubernetes builder does it (docs/release.md)")
    return graph.Options(cache=cache, provenance=provenance, sbom=sbom,
                         rewrite_timestamp=caps.rewrite_timestamp, push=caps.driver != "docker"), notes


class Builder:
    def __init__(self, plan: Plan, workdir: Path, output: graph.Output = "push",
                 secrets: tuple[graph.Secret, ...] = (), builder: str | None = None,
                 board: Board | None = None, log: Callable[[str], None] = print,
                 options: graph.Options | None = None):
        self.plan = plan
        self.workdir = workdir = workdir.resolve()  # bake runs in the project folder
        self.output = output
        self.secrets = secrets
        self.builder = builder
        self.options = options or graph.Options()
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
        with open(self.logfile, "a") as log, working_dir(self.plan.matrix.root):
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

    def _first_failing(self, target: str) -> str | None:
        """Build target's chain one node at a time (cache only); the first that fails is the culprit.

        None: every node builds, so what failed was exporting the target, not building it.
        """
        for node in graph.ancestors(self.plan, target):
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
                    bootstrap.ensure_rootfs(node.rootfs, self.say, self.plan.network.env())
                except DlenvError as exc:
                    failed_nodes[name] = [str(exc)]
        self.bakefile.write_text(graph.render(graph.definition(self.plan, self.output, self.secrets, self.options)))
        self.probefile.write_text(graph.render(graph.definition(self.plan, "cache", self.secrets, self.options)))
        remaining = list(self.plan.variants)
        if self.options.push and self.output == "push":
            # BuildKit pushes as it builds, so an immutable tag that exists is kept by not building
            # its variant again.
            for variant in list(remaining):
                try:
                    pushed = self._pushed(variant)
                except DlenvError as exc:
                    remaining.remove(variant)
                    results[variant.id] = Result(variant.id, "failed", error=str(exc), node=variant.node)
                    self.board.finish(variant.id, "failed")
                    continue
                if pushed:
                    remaining.remove(variant)
                    results[variant.id] = Result(variant.id, "built", (self.plan.ref(variant.immutable),), pushed[0],
                                                 node=variant.node, error="already pushed: not rebuilt")
                    self.board.finish(variant.id, "built")
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

    def _pushed(self, variant: Variant) -> tuple[str, tuple] | None:
        """(digest, identity) of what the immutable tag names in the registry; None if it names nothing.

        identity: the layers (diff ids) and the run-time config (env, labels, entrypoint...).
        A registry that cannot be read is an error: an immutable tag is never overwritten blind.
        """
        model = self.plan.matrix.model
        try:
            _, digest = registry.manifest(model.registry, model.repository, variant.immutable)
            config = registry.image_manifest(model.registry, model.repository, digest)["config"]["digest"]
            image = json.loads(registry.blob(model.registry, model.repository, config))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise DlenvError(f"cannot read {self.plan.ref(variant.immutable)}: HTTP {exc.code}",
                             "log in to the registry (docker login) with a user that may read and push") from None
        except (OSError, ValueError, KeyError) as exc:
            raise DlenvError(f"cannot read {self.plan.ref(variant.immutable)}: {exc}", "check the registry") from None
        c = image.get("config") or {}
        return digest, (tuple(image.get("rootfs", {}).get("diff_ids", [])), c.get("Env") or [], c.get("Labels") or {},
                        c.get("Entrypoint") or [], c.get("Cmd") or [], c.get("WorkingDir") or "", c.get("User") or "")

    def _identity(self, variant: Variant) -> tuple:
        """The same identity for the image this build left in the engine's store."""
        found = self.client.image.inspect(self.plan.ref(variant.immutable))
        c = found.config
        return (tuple(found.root_fs.layers or ()), c.env or [], c.labels or {}, c.entrypoint or [], c.cmd or [],
                str(c.working_dir or ""), c.user or "")

    def _keep_immutable(self, variant: Variant, digest: str) -> tuple[str, str | None]:
        """An immutable tag is a promise: never point it at another image.

        The same image built again (same layers and config: only its attestations, which record
        the build, differ) keeps the pushed one. Returns (the digest the tag names after this
        build, an error or None).
        """
        try:
            pushed = self._pushed(variant)
        except DlenvError as exc:
            return digest, str(exc)
        if pushed is None:
            return digest, None
        current, identity = pushed
        if current == digest:
            return digest, None
        try:
            mine = self._identity(variant)
        except DockerException:
            mine = ()
        if mine == identity:
            return current, None
        return current, (f"immutable tag {variant.immutable} already names {current[:19]}, another image than this "
                         f"build's {digest[:19]}: refusing to move it (a new commit gives a new build id)")

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
        digest = meta.get("containerimage.digest", "")
        if self.output == "push" and not self.options.push:
            self.board.step(variant.id, "pushing")
            started = time.monotonic()
            kept, error = self._keep_immutable(variant, digest)
            if not error and kept == digest:
                error = self._push(variant)
            digest = kept
            seconds += time.monotonic() - started
            if error:
                return Result(variant.id, "failed", error=error, node=variant.node, seconds=seconds)
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


@dataclass(frozen=True)
class BuildReport:
    plan: Plan                    # as built: bases pinned, unreachable variants left out
    results: tuple[Result, ...]   # one per variant, the unreachable ones "skipped"


def run(plan: Plan, request: BuildRequest, board: Board, say: Callable[[str], None],
        warn: Callable[[str], None]) -> BuildReport:
    """The build stage's front door: engine and registry up, sources probed, bases pinned by the
    lock, attestations set up, one bake graph built and pushed (or loaded), a result per variant."""
    if not plan.variants:
        raise DlenvError("nothing to build: every combination is left out", "see `nox -s list`")
    engine.ensure(say=say, env=plan.network.env())
    if not request.load:
        engine.ensure_registry(plan.matrix.model.registry, say=say)
    if not request.no_check:
        gone, _ = reach.check(plan)
        if gone:
            if request.strict:
                first = next(iter(gone.values()))
                raise DlenvError(f"{len(gone)} variants have unreachable sources, e.g. {first.id}: {first.detail}",
                                 first.fix)
            rows: dict[tuple[str, str], list[str]] = {}
            for left in gone.values():
                rows.setdefault((left.detail, left.fix), []).append(left.id)
            for (detail, fix), ids in rows.items():
                warn(f"skipping {len(ids)} variants: {detail}\n  fix: {fix}")
            plan = plan.without(gone)
            if not plan.variants:
                raise DlenvError("every selected variant has unreachable sources", "see the fixes above")
            say(f"building the {len(plan.variants)} reachable variants (--strict makes this an error)")
    plan, found, problems = lock.pinned(plan, request.locked)
    for problem in problems:
        warn(f"lock: {problem}")
    if found:
        stale = lock.verify_rootfs(plan, found, say)
        if stale and request.locked:
            raise DlenvError(f"--locked: {stale[0]}", lock.FIX)
        for problem in stale:
            warn(f"lock: {problem}")
    options = None
    if not request.load:
        from dlenv import sbom  # TODO(restructure): top-level once capabilities live below build

        caps = capabilities(request.builder)
        scanner = sbom.scanner(plan, caps, request.workdir, say) if caps.attestations else None
        options, notes = export_options(plan.matrix.model.build, caps, scanner, graph.credentials_in_args(plan))
        for note in notes:
            warn(note)
    results = Builder(plan, request.workdir, "load" if request.load else "push", graph.secrets(plan),
                      request.builder, board, say, options).run()
    results += [Result(left.id, "skipped", error=f"unreachable: {left.detail}")
                for left in plan.left_out if left.reason == "unreachable"]
    return BuildReport(plan, tuple(results))
