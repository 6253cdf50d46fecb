"""The build stage: a plan built into images, a Result per variant (build.run is its front door).

It brings the engine and registry up, probes sources, pins bases by the lock and sets up
attestations, then one Builder bakes the family (the main job: a bake per variant, several at
once, build.schedule): bake.py runs `docker buildx bake` and
reads its progress, isolate.py finds which node failed and bakes again what does not depend on
it, publish.py guards immutable tags, pushes and sizes what was built.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from dlenv import bake, bootstrap, buildcache, config, disk, engine, graph, interrupt, lock, reach, registry, sbom
from dlenv.bake import Capabilities, capabilities
from dlenv.config import BuildSettings
from dlenv.errors import DlenvError
from dlenv.isolate import isolate
from dlenv.options import BuildRequest
from dlenv.plan import LeftOut, Plan, Variant
from dlenv.publish import Publisher
from dlenv.results import Board, Result
from dlenv.sbom import DEFAULT_SBOM_SCANNER

# Hears a bake's results, with the plan as built (see run).
Baked = Callable[[Plan, list[Result]], None]


class InUse:
    """The variants whose pushed images a bake running now builds on. Any other image may leave
    the engine's store once it is tested (main_job): a bake that starts later on it takes it from
    the registry, so the store does not hold an image for a bake that waits for a free slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def hold(self, ids: Collection[str]) -> None:
        with self._lock:   # waits while free() removes images: a bake starts on what is left
            for i in ids:
                self._held[i] = self._held.get(i, 0) + 1

    def release(self, ids: Collection[str]) -> None:
        with self._lock:
            for i in ids:
                self._held[i] -= 1
                if not self._held[i]:
                    del self._held[i]

    def free(self, ids: Collection[str], remove: Callable[[set[str]], None]) -> None:
        """remove(those of ids no bake running now builds on), with no bake starting meanwhile."""
        with self._lock:
            remove(set(ids) - self._held.keys())


class _Quiet:
    def step(self, variant: str, text: str) -> None:
        pass

    def finish(self, variant: str, status: str) -> None:
        pass

    def node_done(self, node: str, seconds: float | None = None) -> None:
        pass

    def drop(self, variants: set[str]) -> None:
        pass


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
                         rewrite_timestamp=caps.rewrite_timestamp, push=caps.driver != "docker",
                         compression=settings.compression, compression_level=settings.compression_level), notes


class Builder:
    """The plan baked, in one bake or (the main job) a bake per variant, and a Result per variant
    (log and bake files in workdir)."""

    def __init__(self, plan: Plan, workdir: Path, output: graph.Output = "push",
                 secrets: tuple[graph.Secret, ...] = (), builder: str | None = None,
                 board: Board | None = None, log: Callable[[str], None] = print,
                 options: graph.Options | None = None, baked: Baked | None = None,
                 verify_rootfs: Callable[[str, str], None] = lambda node, platform: None,
                 keep_cache: bool = True, jobs: int = 1, rootfs: dict[tuple[str, str], Future] | None = None,
                 in_use: InUse | None = None, keep_images: bool = False, checkers: int = 1):
        self.plan = plan
        self.workdir = workdir = workdir.resolve()  # bake files name absolute paths (graph.folder)
        self.output = output
        self.secrets = secrets
        self.builder = builder
        self.options = options or graph.Options()
        self.board = board or _Quiet()
        self.say = log
        self.publisher = Publisher(plan, output, self.options, self.board)
        self.baked = baked
        self.verify_rootfs = verify_rootfs   # (bootstrap node, platform): a foreign rootfs, once bootstrapped
        self.keep_cache = keep_cache         # False: what a bake made in the build cache goes after it (buildcache.py)
        self.jobs = jobs                     # variants baked at once (schedule)
        self.checkers = checkers             # variants heard (tested) at once (schedule)
        self.rootfs = rootfs or {}           # (bootstrap node, architecture) -> its tarball (bootstraps)
        self.in_use = in_use or InUse()      # the pushed images the bakes running now build on
        self.keep_images = keep_images       # the images stay in the engine's store (--keep-images)
        workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = workdir / "build.log"
        # Bakes side by side each log to a file of their own, added whole to build.log as each ends,
        # so that build.log reads bake by bake (each numbers its steps from #1).
        self.bakelogs = workdir / "bakes"
        shutil.rmtree(self.bakelogs, ignore_errors=True)   # an earlier run's, numbered alike
        self.bakes = itertools.count(1)
        self.logging = threading.Lock()
        self.staging = threading.Lock()   # rootfs tarballs moved in and checked, one bake at a time
        # The build cache: what a chain's first bake made is kept (the OS layers the next chain shares).
        self.pruning = threading.Lock()
        self.kept_records: set[str] = set()
        self.first_bakes: dict[int, set[str]] = {}   # a chain's first bakes running now: the records before each
        self.firsts_left = 0                         # a chain's first bakes not ended yet
        # What a prune left because an image in the store shared it: it goes at a later prune,
        # once that image has left the store (main_job removes each after its checks).
        self.left_behind: dict[str, buildcache.Record] = {}
        self.bakefile = workdir / "bake.json"
        self.probefile = workdir / "bake-probe.json"
        self.dependents = {t: [v for v in plan.variants if t in v.chain] for t in plan.nodes}

    def _bake(self, file: Path, targets: list[str], metadata: Path | None = None,
              variants: Collection[Variant] = ()) -> bake.Outcome:
        """bake.run of targets, its progress shown on the rows of variants (those the bake is for;
        by default every variant a target is in)."""
        interrupt.check()   # a bake beside the main thread starts nothing once a signal came
        self.bakelogs.mkdir(exist_ok=True)
        log = self.bakelogs / f"{next(self.bakes):03d}.log"
        try:
            outcome = bake.run(file, targets, log, self.builder, metadata,
                               lambda target, text: self._step(target, text, variants), self.board.node_done)
        finally:
            with self.logging, open(self.logfile, "a") as whole:
                whole.write(log.read_text(errors="replace") if log.exists() else "")
        interrupt.check()   # its buildx was stopped by the signal: no failure to isolate
        return outcome

    def _step(self, target: str, text: str, among: Collection[Variant] = ()) -> None:
        for variant in self.dependents.get(target, []):
            if not among or variant in among:   # a shared layer's step is not another bake's
                self.board.step(variant.id, f"{target}: {text}")

    def run(self) -> list[Result]:
        results: dict[str, Result] = {}

        def settle(result: Result) -> None:
            results[result.variant] = result
            self.board.finish(result.variant, result.status)

        broken: dict[str, list[str]] = {}
        rootfs = dict(self.rootfs)
        self.bakefile.write_text(graph.render(graph.definition(self.plan, self.output, self.secrets, self.options)))
        self.probefile.write_text(graph.render(graph.definition(self.plan, "cache", self.secrets, self.options)))
        remaining = list(self.plan.variants)
        kept: list[Result] = []
        if self.output == "push":
            # An immutable tag names one build of one commit (the build id is the commit, plus a
            # hash of any uncommitted change): where the registry holds it already, that image is
            # kept by not building its variant again. A rerun then bakes, exports and pushes
            # nothing, and needs no image in the engine's store.
            for variant in self.plan.variants:
                found = self.publisher.already_pushed(variant)
                if found:
                    remaining.remove(variant)
                    settle(found)
                    kept.append(found)
        rounds = itertools.count(1)
        variant_nodes = {v.node for v in self.plan.variants}

        def first(variant: Variant) -> bool:   # a chain's first: no variant below it
            return not any(n in variant_nodes for n in variant.chain[:-1])

        self.firsts_left = sum(map(first, remaining))

        def needed(batch: list[Variant]) -> set[tuple[str, str]]:
            """The rootfs tarballs (bootstrap node, architecture) of the platforms batch builds for."""
            return {(n, config.arch(p)) for v in batch if v in remaining for n in v.chain for p in v.platforms}

        def bake(batch: list[Variant]) -> list[Result]:
            # Held at once: the image below may be in the store now (schedule starts such a bake
            # first), and its checks may end while this bake waits for the staging or the cache.
            below = {p.id for v in batch if (p := self.plan.below(v))}
            self.in_use.hold(below)
            try:
                return baking(batch)
            finally:
                self.in_use.release(below)

        def baking(batch: list[Variant]) -> list[Result]:
            with self.staging:   # the rootfs tarballs this bake builds on, as they are ready
                for name, arch in sorted(needed(batch) & rootfs.keys()):
                    if not rootfs[(name, arch)].done():
                        self.say(f"dlenv: the next bake waits for {name}'s {arch} rootfs (bootstrapping)")
                    try:
                        tar = rootfs.pop((name, arch)).result()
                        spec = self.plan.nodes[name].rootfs
                        if spec and tar != bootstrap.rootfs_tar(spec, arch):
                            tar.rename(bootstrap.rootfs_tar(spec, arch))   # no bake reads it yet
                        if arch != bootstrap.native_architecture():
                            self.verify_rootfs(name, f"linux/{arch}")
                    except DlenvError as exc:   # its variants fail; the bakes before were pushed and tested
                        broken.setdefault(name, [str(exc)])
            number = next(rounds)
            # A chain's first bake made the OS layers the next chains share: what it made stays.
            firsts = all(map(first, batch))
            before = None if self.keep_cache else self._records()
            if before is not None and firsts:
                with self.pruning:
                    self.first_bakes[number] = set(before)
            try:
                self._build(batch, number, remaining, broken, results, settle,
                            None if before is None else lambda: self._prune(number, before, firsts))
            except BaseException:   # a run that stops before its bake ended keeps its cache: the rerun finds its steps
                with self.pruning:
                    self.first_bakes.pop(number, None)
                raise
            return [results[v.id] for v in batch]

        if self.baked:
            baked = self.baked

            def ready(variant: Variant) -> bool:   # the rootfs tarballs it builds on are bootstrapped
                with self.staging:
                    return all(rootfs[key].done() for key in needed([variant]) & rootfs.keys())

            schedule(remaining, self.plan.below, bake, lambda done: baked(self.plan, done), self.jobs, ready, kept,
                     self.checkers)
            if not self.keep_cache and (self.left_behind or self.kept_records):
                with self.pruning:   # the images are tested and gone by now (unless --keep-images)
                    after = self._records() or {}
                    self._remove({i: after[i] for i in set(self.left_behind) | self.kept_records if i in after},
                                 "after the last bake")
        else:
            bake(remaining)
        return [results[v.id] for v in self.plan.variants]

    def _records(self) -> dict[str, buildcache.Record] | None:
        try:
            return buildcache.records(self.builder)
        except DlenvError as exc:   # a cache left as it is costs disk, not the run
            self.say(f"dlenv: {exc.message}")
            return None

    def _prune(self, number: int, before: dict[str, buildcache.Record], first: bool) -> None:
        """Remove what bake number made in the build cache (buildcache.py), the caches of apt and
        pip steps (cache mounts) aside, and what earlier prunes left behind for an image then in
        the store; a chain's first bake (first) keeps what it made until the last chain's first
        bake ends.

        Bakes run side by side, so what appeared meanwhile is not all this bake's: BuildKit leaves
        what a build uses now, and what a chain's first bake running now may have made is left
        here."""
        with self.pruning:
            after = self._records()
            if first:
                del self.first_bakes[number]
                self.firsts_left -= 1
            if after is None:
                return
            made = {i: r for i, r in after.items() if i not in before and r.kind == "regular"}
            if first:
                if self.firsts_left:   # another chain's first bake shares the OS layers
                    self.kept_records |= set(made)
                    return
                # The last: no bake is left to share what the first bakes kept (nor what bakes
                # beside them made meanwhile).
                made.update({i: after[i] for i in self.kept_records if i in after})
                self.kept_records.clear()
            self.left_behind = {i: r for i, r in self.left_behind.items() if i in after}
            if not self.keep_images:   # else the images that share them stay to the end
                made.update(self.left_behind)
            made = {i: r for i, r in made.items() if i not in self.kept_records
                    and all(i in earlier for earlier in self.first_bakes.values())}
            self._remove(made, f"after bake {number}")

    def _remove(self, made: dict[str, buildcache.Record], when: str) -> None:
        """Prune these records (the caller holds self.pruning); those an image in the store shares
        are left behind for a later prune."""
        if not made:
            return
        try:
            left = buildcache.prune(set(made), self.builder)
        except DlenvError as exc:
            self.say(f"dlenv: {exc.message}")
            self.left_behind |= made   # tried again at the next prune
            return
        self.left_behind = {i: r for i, r in self.left_behind.items() if i not in made} | {i: made[i] for i in left}
        gone = set(made) - left
        if gone:
            self.say(f"dlenv: removed {len(gone)} records ({sum(made[i].size for i in gone) / 1e9:.1f} GB) from the "
                     f"build cache {when}: later bakes build on the pushed images (--keep-cache keeps them)")

    def _build(self, batch: list[Variant], number: int, remaining: list[Variant], broken: dict[str, list[str]],
               results: dict[str, Result], settle: Callable[[Result], None],
               prune: Callable[[], None] | None = None) -> None:
        """Bake these variants (those not kept already), settling a result for each; prune()
        once the bake ended, before its images are pushed: a push reads the image store, not the
        build cache, and what the bake made there (a torch layer's 6.5 GB) went only after the
        push, seconds in which the next bake's export could end beside it (docs/benchmarks.md).

        Part of the plan bakes from a bake file of its own (bake_plan): each node for the
        platforms of these variants only, on the images earlier bakes pushed."""
        bakefile, probefile, part = self.bakefile, self.probefile, self.plan
        if len(batch) < len(self.plan.variants):
            # list(): other bakes settle their results meanwhile
            part = bake_plan(self.plan, batch, {r.variant for r in list(results.values()) if r.status == "built"},
                             engine.host_platform())
            bakefile, probefile = (self.workdir / f"bake-{number}.json", self.workdir / f"bake-probe-{number}.json")
            bakefile.write_text(graph.render(graph.definition(part, self.output, self.secrets, self.options)))
            probefile.write_text(graph.render(graph.definition(part, "cache", self.secrets, self.options)))
        tries = itertools.count(1)
        # The bake's own plan: a node taken from the registry is no target of its bake to probe.
        built, outcome = isolate(
            part, [v for v in batch if v in remaining],
            bake=lambda targets: self._bake(bakefile, targets, self.workdir / f"metadata-{number}-{next(tries)}.json",
                                            batch),
            probe=lambda targets: self._bake(probefile, targets, variants=batch),
            broken=broken, settle=settle,
            found=lambda node: self.say(f"dlenv: {node} failed; building what does not depend on it "
                                        f"(log: {self.logfile})"),
            again=lambda line: self.say(f"dlenv: the bake failed naming no step ({line}); baking once more, "
                                        f"from the cache (log: {self.logfile})"))
        if prune:
            prune()
        if outcome is not None:
            for variant in built:
                settle(self.publisher.finish(variant, outcome.metadata.get(variant.node, {}),
                                             outcome.ready.get(variant.node, 0.0)))
        # A node that failed here is not baked again by a later bake (a variant not attempted
        # names the node below it that failed).
        broken.update({results[v.id].node: results[v.id].error.splitlines() for v in batch
                       if results[v.id].status in ("failed", "not attempted") and results[v.id].node in self.plan.nodes})


def bake_plan(plan: Plan, batch: list[Variant], ready: Collection[str] = (), native: str = "") -> Plan:
    """The plan of one bake: its variants (batch), each node built for the platforms of these
    variants above it only, and taken from the registry where it is the node of a variant in
    ready (built and pushed by an earlier bake): what is below it is not built again.

    Only an image that has every platform the bake builds on it, and the build machine's own
    (native: a CUDA node's fetch stage runs on it), is taken; any other is built here again,
    from the cache, as one bake of the whole plan would."""
    part = plan.unselect({v.id for v in plan.variants} - {v.id for v in batch}, "another bake")
    parents = {p.id: p for v in batch if (p := plan.below(v)) and p.id in ready}
    takes = {p.node: p.immutable for p in parents.values() if taken(p, batch, native)}
    return part.pull(takes) if takes else part


def taken(parent: Variant, batch: Collection[Variant], native: str = "") -> bool:
    """Whether a bake of batch takes parent's pushed image (bake_plan): it has every platform
    the bake builds on it, and native."""
    return {q for v in batch if parent.node in v.chain for q in v.platforms} | ({native} if native else set()) \
        <= set(parent.platforms)


def bootstraps(plan: Plan, behind: ThreadPoolExecutor, say: Callable[[str], None]) -> dict[tuple[str, str], Future]:
    """The rootfs tarball of each (bootstrap node, architecture) the plan builds on: the native
    one and those made before at once, a foreign one bootstrapped under QEMU (minutes) in behind,
    started now; a bake waits only for the rootfs its own variant stands on (schedule's ready)."""
    pulled = graph.pulled_below(plan)
    rootfs: dict[tuple[str, str], Future] = {}
    for name, node in plan.nodes.items():
        if node.kind == "rootfs" and (spec := node.rootfs) and name not in pulled:
            for arch in spec.architectures:
                env, waiting = plan.network.env(), bootstrap.staged(spec, arch)
                if waiting.exists():   # made by a run that stopped before it was moved in
                    rootfs[(name, arch)] = _done(Path, waiting)
                elif arch == bootstrap.native_architecture() or bootstrap.rootfs_tar(spec, arch).exists():
                    rootfs[(name, arch)] = _done(bootstrap.ensure_architecture, spec, arch, say, env)
                else:   # made beside the bakes, moved into the bakes' folder by the first bake on it
                    rootfs[(name, arch)] = behind.submit(bootstrap.make_rootfs, spec, arch, waiting, say, env)
    return rootfs


def schedule(variants: Sequence[Variant], below: Callable[[Variant], Variant | None],
             bake: Callable[[list[Variant]], list[Result]], done: Callable[[list[Result]], None], jobs: int = 1,
             ready: Callable[[Variant], bool] = lambda variant: True, kept: Sequence[Result] = (),
             checkers: int = 1) -> None:
    """bake([variant]) for each variant once the variant below it (below: the image its own
    layers go on) has been baked, up to jobs bakes at once; and done([result]) for each bake's
    variant in threads beside, up to checkers calls at once, in the order the bakes ended (kept:
    variants not to bake, already pushed, are heard first, in one call).

    So an image is exported only once every layer below it is (its export compresses and
    unpacks only its own layers), and a slow variant (a torch install) holds back only what is
    built on it. Baked together, a child's export began while its parent's still ran, and both
    compressed and unpacked the same CUDA layer (2 to 4 GB) at once, up to eight times over; in
    generations, each generation waited for its slowest variant (docs/benchmarks.md). Each
    variant is heard on its own as soon as a checker is free: heard in batches, one call at a
    time, a variant with checks of seconds waited behind a torch image's minutes of checks, its
    image in the engine's store meanwhile.

    The variants with the most layers still to come above them start first, but those whose
    parent's image is still in the engine's store (baked, not yet through done) before the
    others: a bake that starts once that image has gone takes it from the registry again, every
    layer of it pulled and unpacked into the build cache beside the store (7.7 GB under the
    12.8.1 torch image's jupyter child, docs/benchmarks.md). ready(variant)
    False holds one back (its platform's rootfs is still bootstrapping under QEMU), and no bake
    starts while more than jobs variants wait for a checker: their images stay in the engine's
    store until then. An exception in a bake or in done ends the run once the bakes and the
    calls of done running have ended; so does a signal, raised in the main thread (the bakes'
    own processes get it, and interrupt.check stops the threads)."""
    above = {v.id: [u for u in variants if u is not v and v.node in u.chain] for v in variants}
    height = {v.id: max((len(u.chain) - len(v.chain) for u in above[v.id]), default=0) for v in variants}
    waiting = sorted(variants, key=lambda v: (-height[v.id], -len(above[v.id])))
    unbaked = {v.id for v in variants}
    heard: list[list[Result]] = [list(kept)] if kept else []   # calls of done not made yet
    with ThreadPoolExecutor(jobs, thread_name_prefix="bake") as bakers, \
            ThreadPoolExecutor(checkers, thread_name_prefix="tested") as beside:
        hearing: dict[Future, list[Result]] = {}
        running: dict[Future, Variant] = {}
        stored: set[str] = set()   # built, not yet through done: its image is (or was until its checks) in the store
        try:
            while True:
                for call in [f for f in hearing if f.done()]:
                    stored.difference_update(r.variant for r in hearing.pop(call))
                    call.result()   # done failed: the run ends
                while heard and len(hearing) < checkers:
                    results = heard.pop(0)
                    hearing[beside.submit(done, results)] = results
                # Stable: in height order within each of the two groups.
                for variant in sorted(waiting, key=lambda v: not ((p := below(v)) and p.id in stored)):
                    if len(running) >= jobs or len(heard) > jobs:
                        break
                    parent = below(variant)
                    if (parent is None or parent.id not in unbaked) and ready(variant):
                        waiting.remove(variant)
                        running[bakers.submit(bake, [variant])] = variant
                if not (waiting or running or hearing or heard):
                    return
                if not (running or hearing):   # only variants not ready yet: wait, do not spin
                    time.sleep(1)
                ended, _ = wait([*running, *hearing], timeout=1, return_when=FIRST_COMPLETED)
                for future in ended & running.keys():
                    variant = running.pop(future)
                    ended_results = future.result()
                    heard += [[result] for result in ended_results]
                    stored.update(result.variant for result in ended_results if result.status == "built")
                    unbaked.discard(variant.id)
        except BaseException:
            waiting.clear()
            wait(running)   # their processes were stopped too (a signal), or end on their own
            raise


def _done(function: Callable[..., object], *args: object) -> Future:
    """function(*args) run now, as a finished Future (its exception kept, as a thread's would be)."""
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except DlenvError as exc:
        future.set_exception(exc)
    return future


@dataclass(frozen=True)
class BuildReport:
    plan: Plan                    # as built: bases pinned, unreachable variants left out
    results: tuple[Result, ...]   # one per variant, the unreachable ones "skipped"
    fresh: int = 0                # variants whose immutable tag the registry did not hold yet


def run(plan: Plan, request: BuildRequest, board: Board, say: Callable[[str], None],
        warn: Callable[[str], None], baked: Baked | None = None, in_use: InUse | None = None) -> BuildReport:
    """The build stage's front door: engine and registry up, sources probed, bases pinned by the
    lock, attestations set up, the bake graph built and pushed (or loaded), a result per variant.

    baked(plan, results): bake each variant on its own, once the image below it is pushed
    (`schedule`), several at once (request.bake_jobs), and hear each bake's result (a pushed
    image; first, in one call, those already pushed) in threads beside, several at once
    (request.check_jobs); plan is as built.
    in_use: which of the pushed images the bakes running now build on."""
    if not plan.variants:
        raise DlenvError("nothing to build: every combination is left out", "see `nox -s list`")
    engine.ensure(say=say, env=plan.network.env())
    if not request.load:
        engine.ensure_registry(plan.matrix.model.registry, say=say)
    plan = _reachable_platforms(plan, request, board, say, warn)
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
            board.drop(set(gone))
            if not plan.variants:
                raise DlenvError("every selected variant has unreachable sources", "see the fixes above")
            say(f"building the {len(plan.variants)} reachable variants (--strict makes this an error)")
    plan, found, problems = lock.pinned(plan, request.locked)
    for problem in problems:
        warn(f"lock: {problem}")
    native = engine.host_platform()

    def verify_rootfs(node: str | None, platform: str) -> None:
        """The rootfs of node (None: every node) for platform against the lock: --locked stops."""
        stale = lock.verify_rootfs(plan, found, say, lambda n, p: node in (None, n) and p == platform) if found else []
        if stale and request.locked:
            raise DlenvError(f"--locked: {stale[0]}", lock.FIX)
        for problem in stale:
            warn(f"lock: {problem}")

    # A foreign platform's rootfs is compared when its bootstrap (under QEMU, beside the bake) ends.
    verify_rootfs(None, native)
    missing = [ref for _, ref in plan.pulled if registry.digest(ref) is None]
    if missing:
        raise DlenvError(f"this shard builds on {', '.join(missing)}, which an earlier stage's shard pushes: not in the "
                         "registry", "build the earlier stage first (in release.yml: did its build job fail?)")
    fresh = [v for v in plan.variants if request.load or registry.digest(plan.ref(v.immutable)) is None]
    room = disk.estimate(engine.state_dir(), len(fresh))
    if fresh and not room.fits:
        line = room.line(engine.state_dir())
        if not request.force:
            raise DlenvError(line, "free space there, build fewer variants (--select, --shard), or pass --force")
        warn(f"--force: {line}")
    # A foreign platform's rootfs bootstraps beside what follows (the SBOM scanner, the bakes).
    behind = ThreadPoolExecutor(1, thread_name_prefix="bootstrap")
    try:
        rootfs = bootstraps(plan, behind, say)
        options = None
        if not request.load:
            caps = capabilities(request.builder)
            scanner = sbom.scanner(plan, caps, request.workdir, say) if caps.attestations else None
            options, notes = export_options(plan.matrix.model.build, caps, scanner, graph.credentials_in_args(plan))
            for note in notes:
                warn(note)
        results = Builder(plan, request.workdir, "load" if request.load else "push", graph.secrets(plan),
                          request.builder, board, say, options, baked, verify_rootfs,
                          keep_cache=request.keep_cache or baked is None,
                          jobs=request.bake_jobs or os.cpu_count() or 1, rootfs=rootfs, in_use=in_use,
                          keep_images=request.keep_images, checkers=request.check_jobs or os.cpu_count() or 1).run()
    except disk.Full as full:   # --force, or an estimate that was low: the same figures, now
        raise full.explained(engine.state_dir(), room) from None
    finally:
        # A run that stops (a signal, a full disk) starts no bootstrap it will not use.
        behind.shutdown(wait=False, cancel_futures=True)
    # A variant left out whole; one that lost only some platforms was built for the others.
    results += [Result(left.id, "skipped", error=f"unreachable: {left.detail}")
                for left in plan.left_out if left.reason == "unreachable" and not left.platform]
    return BuildReport(plan, tuple(results), len(fresh))


def _reachable_platforms(plan: Plan, request: BuildRequest, board: Board, say: Callable[[str], None],
                         warn: Callable[[str], None]) -> Plan:
    """The plan without the platforms the builder cannot run, even under QEMU (engine.emulation
    sets that up where it can): each said in one line with its fix; a variant left with no
    platform is skipped. Under QEMU, only the variants build.emulate selects."""
    native = engine.host_platform()
    if all(p == native for p in plan.platforms):
        return plan
    gone = {u.platform: LeftOut("", "unreachable", u.detail, u.fix)
            for u in engine.emulation(plan.platforms, say=say, builder=request.builder)}
    narrower = plan.without_platforms(gone)
    for platform, why in gone.items():
        count = sum(platform in v.platforms for v in plan.variants)
        warn(f"leaving {platform} out of {count} variants: {why.detail} (fix: {why.fix})")
    emulated = narrower.emulating(native)
    for platform in (p for p in narrower.platforms if p != native):
        count = sum(platform in v.platforms for v in narrower.variants) - \
            sum(platform in v.platforms for v in emulated.variants)
        if count:
            say(f"{platform} runs under QEMU here: {count} variants are left to a native {platform} machine (as "
                f"release.yml builds them; build.emulate: {', '.join(plan.matrix.model.build.emulate)})")
    narrower = emulated
    board.drop({v.id for v in plan.variants} - {v.id for v in narrower.variants})
    if not narrower.variants:
        raise DlenvError("no selected variant has a platform this builder can run", "see the fixes above")
    return narrower
