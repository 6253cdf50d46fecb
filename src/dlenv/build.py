"""The build stage: a plan built into images, a Result per variant (build.run is its front door).

It brings the engine and registry up, probes sources, pins bases by the lock and sets up
attestations, then one Builder bakes the whole family: bake.py runs `docker buildx bake` and
reads its progress, isolate.py finds which node failed and bakes again what does not depend on
it, publish.py guards immutable tags, pushes and sizes what was built.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dlenv import bake, bootstrap, buildcache, config, disk, engine, graph, lock, reach, registry, sbom
from dlenv.bake import Capabilities, capabilities
from dlenv.config import BuildSettings
from dlenv.errors import DlenvError
from dlenv.isolate import isolate
from dlenv.options import BuildRequest
from dlenv.plan import LeftOut, Plan, Variant
from dlenv.publish import Publisher
from dlenv.results import Board, Result
from dlenv.sbom import DEFAULT_SBOM_SCANNER

# Hears a wave's results, with the plan as built (see run).
WaveDone = Callable[[Plan, list[Result]], None]


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
    """One bake graph for the whole plan, and a Result per variant (log and bake files in workdir)."""

    def __init__(self, plan: Plan, workdir: Path, output: graph.Output = "push",
                 secrets: tuple[graph.Secret, ...] = (), builder: str | None = None,
                 board: Board | None = None, log: Callable[[str], None] = print,
                 options: graph.Options | None = None, wave_done: WaveDone | None = None,
                 verify_rootfs: Callable[[str, str], None] = lambda node, platform: None,
                 keep_cache: bool = True):
        self.plan = plan
        self.workdir = workdir = workdir.resolve()  # bake runs in the project folder
        self.output = output
        self.secrets = secrets
        self.builder = builder
        self.options = options or graph.Options()
        self.board = board or _Quiet()
        self.say = log
        self.publisher = Publisher(plan, output, self.options, self.board)
        self.wave_done = wave_done
        self.verify_rootfs = verify_rootfs   # (bootstrap node, platform): a foreign rootfs, once bootstrapped
        self.keep_cache = keep_cache         # False: what a wave made in the build cache goes after it (buildcache.py)
        workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = workdir / "build.log"
        self.bakefile = workdir / "bake.json"
        self.probefile = workdir / "bake-probe.json"
        self.dependents = {t: [v for v in plan.variants if t in v.chain] for t in plan.nodes}

    def _bake(self, file: Path, targets: list[str], metadata: Path | None = None) -> bake.Outcome:
        return bake.run(file, targets, self.plan.matrix.root, self.logfile, self.builder, metadata, self._step,
                        self.board.node_done)

    def _step(self, target: str, text: str) -> None:
        for variant in self.dependents.get(target, []):
            self.board.step(variant.id, f"{target}: {text}")

    def run(self) -> list[Result]:
        # Foreign architectures bootstrap under QEMU (minutes) in a thread of their own, beside
        # the native waves' bakes; a wave waits only for the rootfs its own chains stand on.
        behind = ThreadPoolExecutor(1, thread_name_prefix="bootstrap")
        try:
            return self._run(behind)
        finally:
            # A run that stops (a signal, a full disk) starts no bootstrap it will not use.
            behind.shutdown(wait=False, cancel_futures=True)

    def _run(self, behind: ThreadPoolExecutor) -> list[Result]:
        results: dict[str, Result] = {}

        def settle(result: Result) -> None:
            results[result.variant] = result
            self.board.finish(result.variant, result.status)

        broken: dict[str, list[str]] = {}
        pulled = graph.pulled_below(self.plan)
        rootfs: dict[tuple[str, str], Future] = {}   # (bootstrap node, architecture) -> its tarball
        for name, node in self.plan.nodes.items():
            if node.kind == "rootfs" and (spec := node.rootfs) and name not in pulled:
                for arch in spec.architectures:
                    env, waiting = self.plan.network.env(), bootstrap.staged(spec, arch)
                    if waiting.exists():   # made by a run that stopped before it was moved in
                        rootfs[(name, arch)] = _done(Path, waiting)
                    elif arch == bootstrap.native_architecture() or bootstrap.rootfs_tar(spec, arch).exists():
                        rootfs[(name, arch)] = _done(bootstrap.ensure_architecture, spec, arch, self.say, env)
                    else:   # made beside the bakes, moved into the bakes' folder between two waves
                        rootfs[(name, arch)] = behind.submit(bootstrap.make_rootfs, spec, arch, waiting, self.say, env)
        self.bakefile.write_text(graph.render(graph.definition(self.plan, self.output, self.secrets, self.options)))
        self.probefile.write_text(graph.render(graph.definition(self.plan, "cache", self.secrets, self.options)))
        remaining = list(self.plan.variants)
        if self.output == "push":
            # An immutable tag names one build of one commit (the build id is the commit, plus a
            # hash of any uncommitted change): where the registry holds it already, that image is
            # kept by not building its variant again. A rerun then bakes, exports and pushes
            # nothing, and needs no image in the engine's store.
            for variant in self.plan.variants:
                kept = self.publisher.already_pushed(variant)
                if kept:
                    remaining.remove(variant)
                    settle(kept)
        rounds = itertools.count(1)

        def bake(wave: list[Variant]) -> list[Result]:
            # The rootfs tarballs of the architectures this wave builds for, as they are ready.
            needed = {(n, config.arch(p)) for v in wave if v in remaining for n in v.chain for p in v.platforms}
            for name, arch in sorted(needed & rootfs.keys()):
                if not rootfs[(name, arch)].done():
                    self.say(f"dlenv: the next wave waits for {name}'s {arch} rootfs (bootstrapping)")
                try:
                    tar = rootfs.pop((name, arch)).result()
                    spec = self.plan.nodes[name].rootfs
                    if spec and tar != bootstrap.rootfs_tar(spec, arch):
                        tar.rename(bootstrap.rootfs_tar(spec, arch))   # no bake runs now
                    if arch != bootstrap.native_architecture():
                        self.verify_rootfs(name, f"linux/{arch}")
                except DlenvError as exc:   # its variants fail; the waves before were pushed and tested
                    broken.setdefault(name, [str(exc)])
            number = next(rounds)
            # A chain's first wave made the OS layers the next chains share: what it made stays.
            prune = not self.keep_cache and any(n in variant_nodes for v in wave for n in v.chain[:-1])
            before = self._records() if prune else None
            self._wave(wave, number, remaining, broken, results, settle)
            if before is not None:
                self._prune(number, before)
            return [results[v.id] for v in wave]

        variant_nodes = {v.node for v in self.plan.variants}

        if self.wave_done:
            wave_done = self.wave_done
            pipelined(waves(self.plan.variants, engine.host_platform()), bake, lambda done: wave_done(self.plan, done))
        else:
            bake(list(self.plan.variants))
        return [results[v.id] for v in self.plan.variants]

    def _records(self) -> dict[str, buildcache.Record] | None:
        try:
            return buildcache.records(self.builder)
        except DlenvError as exc:   # a cache left as it is costs disk, not the run
            self.say(f"dlenv: {exc.message}")
            return None

    def _prune(self, number: int, before: dict[str, buildcache.Record]) -> None:
        """Remove what wave number made in the build cache (buildcache.py), the caches of apt
        and pip steps (cache mounts) aside."""
        after = self._records()
        if after is None:
            return
        made = {i: r for i, r in after.items() if i not in before and r.kind == "regular"}
        if not made:
            return
        try:
            buildcache.prune(set(made), self.builder)
        except DlenvError as exc:
            self.say(f"dlenv: {exc.message}")
            return
        self.say(f"dlenv: removed what wave {number} left in the build cache ({len(made)} records, "
                 f"{sum(r.size for r in made.values()) / 1e9:.1f} GB): later waves build on its pushed images "
                 "(--keep-cache keeps it)")

    def _wave(self, wave: list[Variant], number: int, remaining: list[Variant], broken: dict[str, list[str]],
              results: dict[str, Result], settle: Callable[[Result], None]) -> None:
        """Bake one wave's variants that are not kept already, settling a result for each.

        A wave of part of the plan bakes from a bake file of its own (wave_plan): each node for
        the platforms of that wave's variants only, on the images earlier waves pushed."""
        bakefile, probefile, part = self.bakefile, self.probefile, self.plan
        if len(wave) < len(self.plan.variants):
            part = wave_plan(self.plan, wave, {r.variant for r in results.values() if r.status == "built"},
                             engine.host_platform())
            bakefile, probefile = (self.workdir / f"bake-wave{number}.json", self.workdir / f"bake-probe-wave{number}.json")
            bakefile.write_text(graph.render(graph.definition(part, self.output, self.secrets, self.options)))
            probefile.write_text(graph.render(graph.definition(part, "cache", self.secrets, self.options)))
        tries = itertools.count(1)
        # The wave's own plan: a node taken from the registry is no target of its bake to probe.
        built, outcome = isolate(
            part, [v for v in wave if v in remaining],
            bake=lambda targets: self._bake(bakefile, targets, self.workdir / f"metadata-{number}-{next(tries)}.json"),
            probe=lambda targets: self._bake(probefile, targets),
            broken=broken, settle=settle,
            found=lambda node: self.say(f"dlenv: {node} failed; building what does not depend on it "
                                        f"(log: {self.logfile})"),
            again=lambda line: self.say(f"dlenv: the bake failed naming no step ({line}); baking once more, "
                                        f"from the cache (log: {self.logfile})"))
        if outcome is not None:
            for variant in built:
                settle(self.publisher.finish(variant, outcome.metadata.get(variant.node, {}),
                                             outcome.ready.get(variant.node, 0.0)))
        # A node that failed in this wave is not baked again by the next one (a variant not
        # attempted names the node below it that failed).
        broken.update({results[v.id].node: results[v.id].error.splitlines() for v in wave
                       if results[v.id].status in ("failed", "not attempted") and results[v.id].node in self.plan.nodes})


def waves(variants: tuple[Variant, ...] | list[Variant], native: str) -> list[list[Variant]]:
    """The variants in waves: each OS and CUDA release's chain (the layers they share), the
    largest first, one generation after another. A generation's variants build on images of
    the one before it (their parents), which are pushed by then (wave_plan).

    So each image is exported once every layer below it is: its export compresses and unpacks
    only its own layers. Baked together, a child's export began while its parent's still ran,
    and both compressed and unpacked the same CUDA layer (2 to 4 GB) at once, up to eight times
    over (docs/benchmarks.md); that is also when BuildKit failed with `DeadlineExceeded`.

    A chain with a variant built for a platform under QEMU comes last, so that the rootfs of
    that platform bootstraps beside the native waves' bakes (each wave bakes its nodes for its
    own variants' platforms: see Builder._wave). The main job tests each wave beside the next
    one's bake, and removes an image once it is tested and no later wave builds on it."""
    groups: dict[tuple[str, str], list[Variant]] = {}
    for variant in variants:
        groups.setdefault((variant.os, variant.cuda), []).append(variant)
    built = {v.node for v in variants}   # a generation: how many of the chain's nodes are variants
    out: list[list[Variant]] = []
    for group in sorted(groups.values(), key=lambda w: (any(v.platforms != (native,) for v in w), -len(w))):
        generations: dict[int, list[Variant]] = {}
        for variant in group:
            generations.setdefault(sum(n in built for n in variant.chain[:-1]), []).append(variant)
        out += [generations[g] for g in sorted(generations)]
    return out


def wave_plan(plan: Plan, wave: list[Variant], ready: Collection[str] = (), native: str = "") -> Plan:
    """The plan of one wave: its variants, each node built for the platforms of this wave's
    variants above it only, and taken from the registry where it is the node of a variant in
    ready (built and pushed by an earlier wave): what is below it is not built again.

    Only an image that has every platform the wave builds on it, and the build machine's own
    (native: a CUDA node's fetch stage runs on it), is taken; any other is built here again,
    from the cache, as before the waves were split."""
    part = plan.unselect({v.id for v in plan.variants} - {v.id for v in wave}, "another wave")
    parents = {p.id: p for v in wave if (p := plan.below(v)) and p.id in ready}
    takes = {p.node: p.immutable for p in parents.values()
             if {q for v in wave if p.node in v.chain for q in v.platforms} | ({native} if native else set())
             <= set(p.platforms)}
    return part.pull(takes) if takes else part


def pipelined(waves: list[list[Variant]], bake: Callable[[list[Variant]], list[Result]],
              done: Callable[[list[Result]], None]) -> None:
    """bake(wave) for each wave in turn, and done(its results) in a thread beside the next
    wave's bake: at most one behind, in order; an exception in either ends the run once the
    other has stopped (a signal reaches the thread through interrupt.check)."""
    with ThreadPoolExecutor(1, thread_name_prefix="wave") as beside:
        behind: Future | None = None
        for wave in waves:
            results = bake(wave)
            if behind is not None:
                behind.result()
            behind = beside.submit(done, results)
        if behind is not None:
            behind.result()


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
        warn: Callable[[str], None], wave_done: WaveDone | None = None) -> BuildReport:
    """The build stage's front door: engine and registry up, sources probed, bases pinned by the
    lock, attestations set up, the bake graph built and pushed (or loaded), a result per variant.

    wave_done(plan, results): bake in waves (`waves`), and hear each one's results (pushed
    images, or kept ones already pushed) before the next is baked; plan is the plan as built."""
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
    options = None
    if not request.load:
        caps = capabilities(request.builder)
        scanner = sbom.scanner(plan, caps, request.workdir, say) if caps.attestations else None
        options, notes = export_options(plan.matrix.model.build, caps, scanner, graph.credentials_in_args(plan))
        for note in notes:
            warn(note)
    try:
        results = Builder(plan, request.workdir, "load" if request.load else "push", graph.secrets(plan),
                          request.builder, board, say, options, wave_done, verify_rootfs,
                          keep_cache=request.keep_cache or wave_done is None).run()
    except disk.Full as full:   # --force, or an estimate that was low: the same figures, now
        raise full.explained(engine.state_dir(), room) from None
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
