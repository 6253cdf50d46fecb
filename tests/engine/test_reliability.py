"""When things break mid-run (docs/reliability.md): each fault injected for real, and what must
hold afterwards. No tag names an untested image, a variant's floating tags move all or none,
the user reads one line, and a rerun finishes the job.

One tiny family is built once (module fixture) and every test builds on its cache: CUDA 13.0.2
base on a Debian 12 bootstrap, bare and with a one-line recipe of the tests (`mark`), no SBOM.
Registry faults go through a proxy of the test (faults.FaultProxy) in front of the shared
registry, or a registry of the test's own that is killed; signals go to the dlenv process
itself; the pip index and apt mirror that drop connections are servers of the test on the
bridge's gateway; the engine that is killed and the data root that fills up are a dockerd of the
tests' own on a loop-mounted filesystem. dlenv's shared engine and registry are never stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults import Dropper, FaultProxy, OwnRegistry, Request
from scratch import ScratchEngine, processes_with, wait_for
from tlsproxy import make_ca, mint

from dlenv import bootstrap, disk, engine, hostconf, lock, registry, retry
from dlenv import plan as planmod
from dlenv.options import PlanRequest
from helpers import REGISTRY, RUN, TINY, dlenv, dlenv_started, new_project, sh, write

REPOSITORY = f"dlenv-test/reliability-{RUN}"
CACHE = f"{REGISTRY}/{REPOSITORY}-cache"
SCRATCH_CACHE = f"{REGISTRY}/{REPOSITORY}-scratch-cache"
LIMIT = 300   # seconds any one dlenv run of these tests may take

MATRIX = TINY + "build: {{sbom: false}}\n"
STACKS = "  - []\n  - [mark]"

# A recipe of the tests: one small layer, no network, one check.
MARK = {"images": {"mark": "FROM base\nRUN echo reliability > /etc/dlenv-mark\n"},
        "recipes": {"mark.toml": 'description = "a small layer of the reliability tests"\ndockerfile = "images/mark"\n'
                                 'tag = "mark"\n[[checks]]\nname = "the mark is there"\nrun = "test -s /etc/dlenv-mark"\n'}}


def plan_of(project: Path, build: str, reg: str | None = None) -> planmod.Plan:
    return planmod.load(PlanRequest(matrix=project / "matrix.yaml", root=project, build_id=build, registry=reg))


def floating(plan: planmod.Plan) -> dict[str, str | None]:
    """Every floating tag of the plan -> the digest it names in the shared registry, read there directly."""
    return {tag: registry.digest(f"{REGISTRY}/{REPOSITORY}:{tag}") for v in plan.variants for tag in v.floating}


def expected(plan: planmod.Plan, digests: dict[str, str]) -> dict[str, str | None]:
    """Every floating tag of the plan -> the digest of its variant in digests."""
    return {tag: digests.get(v.id) for v in plan.variants for tag in v.floating}


def put_back(plan: planmod.Plan, digests: dict[str, str]) -> None:
    """Floating tags where a test starts from: on the family's first build."""
    for variant in plan.variants:
        for tag in variant.floating:
            registry.retag(REGISTRY, REPOSITORY, digests[variant.id], tag)


def tags_of_build(build: str) -> list[str]:
    return [t for t in registry.tags(REGISTRY, REPOSITORY) if t.endswith(f"-{build}")]


def error_line(text: str) -> str:
    """The one error line the user reads (all of text where there is not exactly one)."""
    found = [line for line in text.splitlines() if line.startswith("dlenv: error:")]
    assert len(found) == 1, text[-4000:]
    print(found[0])   # what the user reads, for docs/reliability.md (pytest -rA shows it)
    return found[0]


@dataclass
class Family:
    project: Path
    tmp: Path
    digests: dict[str, str]          # variant -> digest of the first build ("a")
    smoke: Path                      # its smoke results (dlenv smoke --json)

    def plan(self, build: str = "a", reg: str | None = None) -> planmod.Plan:
        return plan_of(self.project, build, reg)


def built(metadata: Path) -> dict[str, str]:
    return {r["variant"]: r["digest"] for r in json.loads(metadata.read_text())["variants"] if r["status"] == "built"}


@pytest.fixture(scope="module")
def family(docker, tmp_path_factory) -> Family:
    """The tiny family built, pushed, tested and promoted once (build "a"), its layers also in
    a registry cache (for the tests' own engine); its smoke results as `dlenv smoke --json` writes them."""
    tmp = tmp_path_factory.mktemp("reliability")
    project = new_project(tmp / "project", MATRIX.format(registry=REGISTRY, repository=REPOSITORY, stacks=STACKS),
                          **MARK)
    out = dlenv(project, "build", "--build-id", "a", "--cache", CACHE, "--workdir", str(tmp / "wa"),
                "--metadata", str(tmp / "a.json"), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    smoke = dlenv(project, "smoke", "--build-id", "a", "--json", str(tmp / "a-smoke.json"), timeout=LIMIT)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    return Family(project, tmp, built(tmp / "a.json"), tmp / "a-smoke.json")


@dataclass
class Candidate:
    digests: dict[str, str]          # variant -> digest of build "b": pushed and tested, not promoted
    smoke: Path


@pytest.fixture(scope="module")
def candidate(family) -> Candidate:
    """A second build ("b") of the family, pushed and smoke-tested but not promoted: what a
    promotion moves the floating tags to."""
    out = dlenv(family.project, "build", "--build-id", "b", "--no-promote", "--workdir", str(family.tmp / "wb"),
                "--metadata", str(family.tmp / "b.json"), timeout=LIMIT)
    assert out.returncode == 0, out.stderr[-3000:]
    smoke = dlenv(family.project, "smoke", "--build-id", "b", "--json", str(family.tmp / "b-smoke.json"), timeout=LIMIT)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    digests = built(family.tmp / "b.json")
    assert set(digests) == set(family.digests) and not set(digests.values()) & set(family.digests.values())
    return Candidate(digests, family.tmp / "b-smoke.json")


def promote(family: Family, proxy: FaultProxy, results: Path) -> subprocess.CompletedProcess:
    out = dlenv(family.project, "promote", "--registry", proxy.address, "--build-id", "b", str(results), timeout=LIMIT)
    print(out.stderr[-2500:])   # the promotions table, for docs/reliability.md
    return out


# --- the registry answers 500, 429, slowly, or not at all ---------------------------------------

def test_a_registry_answering_500_429_or_slowly_is_asked_again_and_the_run_finishes(family, tmp_path):
    asked = iter(range(1, 10_000))

    def flaky(request: Request):
        if not request.by_dlenv:   # the engine's own pushes retry layers themselves
            return None
        n = next(asked)
        if n % 5 == 1:
            return 500 if n % 2 else 429
        return ("stall", 3) if n == 3 else None

    proxy = FaultProxy(REGISTRY, flaky)
    out = dlenv(family.project, "build", "--registry", proxy.address, "--build-id", "flaky",
                "--workdir", str(tmp_path / "w"), "--metadata", str(tmp_path / "m.json"), timeout=LIMIT)
    assert out.returncode == 0, out.stderr[-3000:]
    outcomes = [r.outcome for r in proxy.log]
    assert "500" in outcomes and "429" in outcomes, outcomes   # and the third request was answered 3 s late
    plan = family.plan("flaky")
    assert floating(plan) == expected(plan, built(tmp_path / "m.json"))
    # For good: every answer a 500. The promotion stops after the bounded attempts, in one line
    # naming the registry, and no floating tag moves.
    before = floating(plan)
    proxy.rule = lambda request: 500
    started = time.monotonic()
    out = dlenv(family.project, "promote", "--registry", proxy.address, "--build-id", "a", str(family.smoke),
                timeout=LIMIT)
    seconds = time.monotonic() - started
    assert out.returncode == 1, out.stderr[-3000:]
    line = error_line(out.stderr)
    assert f"the registry {proxy.address} answered 500" in line and "after 4 attempts" in line, line
    assert seconds < 60
    assert floating(plan) == before


def test_a_retag_failing_between_two_tags_of_a_variant_moves_it_back_or_the_next_run_finishes_it(family, candidate):
    plan = family.plan("b")
    put_back(plan, family.digests)
    victim = plan.variants[0]
    first, second = victim.floating[:2]
    others = {tag: candidate.digests[v.id] for v in plan.variants[1:] for tag in v.floating}
    # The registry refuses the second tag of the variant: the first is moved back.
    proxy = FaultProxy(REGISTRY, lambda r: 500 if r.method == "PUT" and r.manifest_tag == second else None)
    out = promote(family, proxy, candidate.smoke)
    assert out.returncode == 1
    assert floating(plan) == {**expected(plan, family.digests), **others}
    assert f"moving {first}, {second}" in " ".join(out.stderr.split()) and "left where they were" in out.stderr
    # The registry goes away right after the first tag moved: nothing can be moved back, and the
    # run says the next one finishes the move.
    put_back(plan, family.digests)
    cut = threading.Event()

    def gone_after_the_first_tag(request: Request):
        if cut.is_set():
            return "drop"
        if request.method == "PUT" and request.manifest_tag == first:
            cut.set()   # this one still lands
        return None

    proxy.rule = gone_after_the_first_tag
    out = promote(family, proxy, candidate.smoke)
    assert out.returncode == 1
    state = floating(plan)
    assert (state[first], state[second]) == (candidate.digests[victim.id], family.digests[victim.id])
    assert "the next run moves the rest" in " ".join(out.stderr.split())
    proxy.rule = lambda request: None
    out = promote(family, proxy, candidate.smoke)
    assert out.returncode == 0, out.stderr[-3000:]
    assert floating(plan) == expected(plan, candidate.digests)


def test_the_registry_killed_during_pushes_stops_the_run_and_the_rerun_pushes_only_what_is_missing(family, tmp_path):
    own = OwnRegistry(tmp_path / "registry")
    build = "killed"
    pushed: list[str] = []

    def kill_at_the_second_variant(request: Request):
        """The registry dies as the engine puts the second variant's tag: its layers are up."""
        tag = request.manifest_tag
        if request.method == "PUT" and tag.endswith(f"-{build}") and tag not in pushed:
            pushed.append(tag)
            if len(pushed) == 2:
                own.kill()
                return "drop"
        return None

    proxy = FaultProxy(own.address, kill_at_the_second_variant)
    try:
        plan = family.plan(build, proxy.address)
        out = dlenv(family.project, "build", "--registry", proxy.address, "--build-id", build,
                    "--workdir", str(tmp_path / "w1"), timeout=LIMIT)
        assert out.returncode == 1
        line = error_line(out.stderr)
        second = next(v for v in plan.variants if v.immutable == pushed[1])
        assert f"the registry {proxy.address} stopped answering while dlenv pushed {second.id}" in line, line
        own.start()
        assert own.tag(REPOSITORY, pushed[0]) and own.tag(REPOSITORY, pushed[1]) is None
        # The second variant's bake moved no tag; an earlier bake's variant, pushed and tested
        # beside it, may have been promoted, to the image of its own immutable tag only.
        assert not [tag for tag in second.floating if own.tag(REPOSITORY, tag)], "a tag of the failed bake moved"
        for v in plan.variants:
            assert all(own.tag(REPOSITORY, tag) in (None, own.tag(REPOSITORY, v.immutable)) for tag in v.floating)
        rerun = len(proxy.log)
        proxy.rule = lambda request: None
        out = dlenv(family.project, "build", "--registry", proxy.address, "--build-id", build,
                    "--workdir", str(tmp_path / "w2"), timeout=LIMIT)
        assert out.returncode == 0, out.stderr[-3000:]
        again = proxy.log[rerun:]
        immutable = {r.manifest_tag for r in again if r.method == "PUT" and r.manifest_tag.endswith(f"-{build}")}
        assert immutable == {pushed[1]}, immutable
        # No layer went up again: the ones uploaded before the registry died were kept.
        layers = {layer["digest"] for v in plan.variants
                  for layer in registry.image_manifest(proxy.address, REPOSITORY, v.immutable)["layers"]}
        uploaded = {r.path.partition("digest=")[2].split("&")[0] for r in again
                    if r.method == "PUT" and "/blobs/uploads/" in r.path}
        assert not layers & uploaded
        for variant in plan.variants:
            digest = own.tag(REPOSITORY, variant.immutable)
            assert digest and all(own.tag(REPOSITORY, tag) == digest for tag in variant.floating)
    finally:
        proxy.close()
        own.kill()


# --- SIGINT and SIGTERM during the bake, pushes, checks and promotion ---------------------------

def nonce() -> str:
    return str(secrets.randbelow(10**6)).zfill(6)


def test_sigterm_during_the_bake_stops_buildx_and_leaves_the_engine_usable(family, docker, tmp_path):
    mark = nonce()
    project = new_project(tmp_path / "project", MATRIX.format(registry=REGISTRY, repository=REPOSITORY,
                                                              stacks="  - [nap]"),
                          images={"nap": "FROM base\nARG NONCE\nRUN sleep 120.$NONCE\n"},
                          recipes={"nap.toml": 'description = "a step that takes long"\ndockerfile = "images/nap"\n'
                                               f'tag = "nap"\nargs = {{NONCE = "{mark}"}}\n'})
    work = tmp_path / "w"
    proc = dlenv_started(project, "build", "--build-id", "sigbake", "--workdir", str(work), output=tmp_path / "out")
    try:
        wait_for("the long step", lambda: processes_with(f"sleep 120.{mark}"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        proc.kill()
    out = (tmp_path / "out").read_text()
    assert "stopped by SIGTERM" in out, out[-2000:]
    # buildx and the step it ran are gone, and the engine still builds and runs.
    wait_for("the bake and its step to end",
             lambda: not processes_with(f"sleep 120.{mark}") and not processes_with(str(work)), timeout=30)
    assert engine.answers(os.environ["DOCKER_HOST"])
    assert sh(docker, family.plan().ref(family.plan().variants[0].immutable), "echo usable").strip() == "usable"
    assert not tags_of_build("sigbake")


def test_sigint_during_pushes_stops_the_push_and_moves_no_tag(family, tmp_path):
    dlenv_pid: list[int] = []

    def interrupt_at_the_first_upload(request: Request):
        if not request.by_dlenv and "/blobs/" in request.path and dlenv_pid:
            os.kill(dlenv_pid.pop(), signal.SIGINT)
            return ("stall", 3)
        return None

    plan = family.plan("sigpush")
    before = floating(plan)
    proxy = FaultProxy(REGISTRY, interrupt_at_the_first_upload)
    proc = dlenv_started(family.project, "build", "--registry", proxy.address, "--build-id", "sigpush",
                         "--workdir", str(tmp_path / "w"), output=tmp_path / "out")
    dlenv_pid.append(proc.pid)
    try:
        assert proc.wait(LIMIT) == 130
    finally:
        proc.kill()
        proxy.close()
    out = (tmp_path / "out").read_text()
    assert "stopped by SIGINT" in out, out[-2000:]
    wait_for("docker push to end", lambda: not processes_with(f"{proxy.address}/{REPOSITORY}"), timeout=30)
    time.sleep(2)   # a push the engine went on with would land now
    assert not tags_of_build("sigpush")
    assert floating(plan) == before


def test_sigterm_during_the_checks_stops_the_container_and_promotes_nothing(family, docker, tmp_path):
    mark = nonce()
    project = new_project(tmp_path / "project", MATRIX.format(registry=REGISTRY, repository=REPOSITORY,
                                                              stacks="  - [mark]"),
                          images=MARK["images"],
                          recipes={"mark.toml": MARK["recipes"]["mark.toml"]
                                   + f'[[checks]]\nname = "takes long"\nrun = "sleep 60.{mark}"\n'})
    plan = plan_of(project, "sigsmoke")
    before = floating(plan)
    proc = dlenv_started(project, "build", "--build-id", "sigsmoke", "--workdir", str(tmp_path / "w"),
                         output=tmp_path / "out")
    try:
        # The check itself, in its container (the `docker run` before it holds the same words in
        # its arguments: a signal then would come before the container starts).
        wait_for("the long check", lambda: processes_with(f"sleep 60.{mark}", program="sleep"), timeout=LIMIT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        proc.kill()
    assert "stopped by SIGTERM" in (tmp_path / "out").read_text()
    wait_for("the check's container to end", lambda: not processes_with(f"sleep 60.{mark}"), timeout=30)
    # None left behind, running or not (a created one would keep its image in the store).
    assert not docker.container.list(all=True, filters=[("ancestor", plan.ref(plan.variants[0].immutable))])
    assert floating(plan) == before, "a floating tag moved to an image whose checks did not end"


def test_sigterm_during_promotion_finishes_the_variant_and_a_second_signal_stops_at_once(family, candidate, tmp_path):
    plan = family.plan("b")
    put_back(plan, family.digests)
    first, rest = plan.variants[0], plan.variants[1:]
    arrived, go = threading.Event(), threading.Event()

    def hold(tag: str):
        def rule(request: Request):
            if request.method == "PUT" and request.manifest_tag == tag:
                arrived.set()
                return ("hold", go)
            return None
        return rule

    # SIGTERM while the first variant's first tag is being moved: its other tags still move, the
    # variants after it do not.
    proxy = FaultProxy(REGISTRY, hold(first.floating[0]))
    args = ["promote", "--registry", proxy.address, "--build-id", "b", str(candidate.smoke)]
    proc = dlenv_started(family.project, *args, output=tmp_path / "out1")
    try:
        assert arrived.wait(LIMIT)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None, "the move of a variant's tags was cut"
        go.set()
        assert proc.wait(60) == 143
    finally:
        proc.kill()
    assert "stopped by SIGTERM" in (tmp_path / "out1").read_text()
    state = floating(plan)
    assert all(state[tag] == candidate.digests[first.id] for tag in first.floating)
    assert all(state[tag] == family.digests[v.id] for v in rest for tag in v.floating)
    # A second signal does not wait: the tags are left split, and the next run moves them all.
    put_back(plan, family.digests)
    arrived.clear()
    go.clear()
    proxy.rule = hold(first.floating[1])
    proc = dlenv_started(family.project, *args, output=tmp_path / "out2")
    try:
        assert arrived.wait(LIMIT)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 143
    finally:
        proc.kill()
        go.set()
    assert "again: stopped at once" in (tmp_path / "out2").read_text()
    state = floating(plan)
    assert (state[first.floating[0]], state[first.floating[1]]) == (candidate.digests[first.id],
                                                                    family.digests[first.id])
    proxy.rule = lambda request: None
    out = promote(family, proxy, candidate.smoke)
    assert out.returncode == 0, out.stderr[-3000:]
    assert floating(plan) == expected(plan, candidate.digests)
    proxy.close()


# --- two runs at once -----------------------------------------------------------------------------

def test_two_runs_on_one_registry_take_turns_and_every_variant_ends_on_one_tested_digest(family, tmp_path):
    plan = family.plan()
    put_back(plan, family.digests)
    tags = {tag for v in plan.variants for tag in v.floating}
    other = threading.Event()
    first: list[Request] = []

    def overlap(request: Request):
        """Hold the first floating tag's move until the other run moves one too (10 s at most):
        runs that do not take turns interleave their moves."""
        if request.method != "PUT" or request.manifest_tag not in tags:
            return None
        if not first:
            first.append(request)
            return ("hold", other, 10)
        other.set()
        return None

    proxy = FaultProxy(REGISTRY, overlap)
    runs = {}
    for build in ("c1", "c2"):
        runs[build] = dlenv_started(family.project, "build", "--registry", proxy.address, "--build-id", build,
                                    "--workdir", str(tmp_path / build), "--metadata", str(tmp_path / f"{build}.json"),
                                    output=tmp_path / f"{build}.out")
    try:
        for build, proc in runs.items():
            assert proc.wait(LIMIT) == 0, (tmp_path / f"{build}.out").read_text()[-3000:]
    finally:
        for proc in runs.values():
            proc.kill()
        proxy.close()
    digests = {build: built(tmp_path / f"{build}.json") for build in runs}
    owner = {d: build for build, mine in digests.items() for d in mine.values()}
    # The main job promotes a bake's variants at a time: the runs take turns per promotion, so each
    # variant's tags move as one run's block, then the other's.
    for variant in plan.variants:
        moves = [owner[r.body_digest] for r in proxy.log if r.method == "PUT" and r.manifest_tag in variant.floating]
        changes = sum(1 for a, b in zip(moves, moves[1:], strict=False) if a != b)
        assert changes == 1, f"the two runs' moves of {variant.id} interleaved: {moves}"
    assert any("waiting for it" in " ".join((tmp_path / f"{b}.out").read_text().split()) for b in runs)
    state = floating(plan)
    for variant in plan.variants:
        found = {state[tag] for tag in variant.floating}
        assert len(found) == 1 and found <= {digests[b][variant.id] for b in runs}, (variant.id, found)


# --- files cut short ------------------------------------------------------------------------------

def test_a_truncated_lock_file_or_smoke_result_is_one_line_exit_2_and_nothing_is_pushed_or_moved(family, candidate,
                                                                                                tmp_path):
    lock_file = lock.path_for(family.project / "matrix.yaml")
    whole = json.dumps({"version": 1, "images": {}, "rootfs": {"debian12": {
        "suite": "bookworm", "sha256": "0" * 64, "packages": ["libc6=2.36-9+deb12u10", "tzdata=2025b-0+deb12u1"]}}},
        indent=2)
    write(lock_file, whole[: len(whole) // 2])
    try:
        out = dlenv(family.project, "build", "--build-id", "cut", "--workdir", str(tmp_path / "w"), timeout=LIMIT)
    finally:
        lock_file.unlink()
    assert out.returncode == 2, out.stderr[-3000:]
    line = error_line(out.stderr)
    assert f"{lock_file.name}:" in line and "not a dlenv lock file" in line, line
    assert not tags_of_build("cut")
    plan = family.plan("b")
    put_back(plan, family.digests)
    results = candidate.smoke.read_text()
    cut = write(tmp_path / "cut.json", results[: len(results) // 2])
    out = dlenv(family.project, "promote", "--build-id", "b", str(cut), timeout=LIMIT)
    assert out.returncode == 2
    line = error_line(out.stderr)
    assert f"{cut}:" in line and "not a smoke result" in line, line
    assert floating(plan) == expected(plan, family.digests)


# --- a pip index and an apt mirror that drop connections ----------------------------------------

def gateway(docker) -> str:
    """The host's address as builds (and the host itself) reach it: the bridge's gateway."""
    return docker.network.inspect("bridge").ipam.config[0]["Gateway"]


def test_a_pypi_index_dropping_connections_is_asked_again_and_one_dropping_all_is_named(family, docker, tmp_path):
    address = gateway(docker)
    ca = make_ca(tmp_path, "index-ca")
    drops = 2   # per page, fewer than pip's own retries (5) and dlenv's probe's (retry.ATTEMPTS)
    index = Dropper(address, "/simple", hostconf.pip_default_index(), lambda path, n: n <= drops,
                    tls=mint(tmp_path, ca, f"IP:{address}"))
    # A new index address is a new build arg: the CUDA layer's pip steps run again, through it.
    args = ["build", "--no-promote", "--pypi-mirror", index.url, "--ca-bundle", str(ca[0])]
    try:
        out = dlenv(family.project, *args, "--build-id", "pipdrop", "--workdir", str(tmp_path / "w1"), timeout=LIMIT)
        assert out.returncode == 0, out.stderr[-3000:]
        assert any(path.startswith("/simple/cuda-toolkit") for path, _ in index.log), index.log   # pip used it
        assert served_after_the_drops(index, drops)
        assert "Retrying" in (tmp_path / "w1/build.log").read_text()
    finally:
        index.shutdown()
    # An index that drops every connection (at an address of its own: the steps that used the
    # first one are in the cache now): the probe before the build names it...
    dead = Dropper(address, "/simple", hostconf.pip_default_index(), lambda path, n: True,
                   tls=mint(tmp_path, ca, f"IP:{address}"))
    args = ["build", "--no-promote", "--pypi-mirror", dead.url, "--ca-bundle", str(ca[0]), "--build-id", "pipdead"]
    try:
        out = dlenv(family.project, *args, "--strict", "--workdir", str(tmp_path / "w2"), timeout=LIMIT)
        assert out.returncode == 1
        line = error_line(out.stderr)
        assert f"pypi {dead.url}/pip/" in line and f"after {retry.ATTEMPTS} attempts" in line, line
        # ...and so does the build, after pip's own retries, where the probe is skipped.
        out = dlenv(family.project, *args, "--no-check", "--workdir", str(tmp_path / "w3"),
                    "--metadata", str(tmp_path / "m3.json"), timeout=LIMIT)
        assert out.returncode == 1
        results = json.loads((tmp_path / "m3.json").read_text())["variants"]
        assert {r["status"] for r in results} <= {"failed", "not attempted"}
        assert all(f"pip {dead.url}" in r["error"] for r in results), [r["error"] for r in results]
        assert not tags_of_build("pipdead")
    finally:
        dead.shutdown()


def served_after_the_drops(server: Dropper, drops: int) -> bool:
    """Every path asked was dropped `drops` times, then served: the client asked again."""
    served = {path for path, what in server.log if what == "relayed"}
    return served == set(server.asked) and all(server.asked[path] > drops for path in served)


def test_an_apt_mirror_dropping_connections_is_asked_again_and_one_dropping_all_is_named(family, docker, tmp_path):
    drops = 1   # per file, fewer than Acquire::Retries (images/os, bootstrap.py)
    mirror = Dropper(gateway(docker), "/debian", hostconf.debian_mirror(), lambda path, n: n <= drops)
    # A new mirror is a new OS bootstrap and a new apt source: every apt step runs again, through it.
    args = ["build", "--no-promote", "--apt-mirror", mirror.url]
    try:
        out = dlenv(family.project, *args, "--build-id", "aptdrop", "--workdir", str(tmp_path / "w1"), timeout=LIMIT)
        assert out.returncode == 0, out.stderr[-3000:]
        assert any(path.endswith(".deb") for path, _ in mirror.log), mirror.log[:5]   # apt used it
        assert served_after_the_drops(mirror, drops)
    finally:
        mirror.shutdown()
    dead = Dropper(gateway(docker), "/debian", hostconf.debian_mirror(), lambda path, n: True)
    args = ["build", "--no-promote", "--apt-mirror", dead.url, "--build-id", "aptdead"]
    try:
        out = dlenv(family.project, *args, "--strict", "--workdir", str(tmp_path / "w2"), timeout=LIMIT)
        assert out.returncode == 1
        line = error_line(out.stderr)
        assert f"apt {dead.url}/dists/bookworm/Release" in line and f"after {retry.ATTEMPTS} attempts" in line, line
        # The bootstrap names it too, after apt's own retries.
        out = dlenv(family.project, *args, "--no-check", "--workdir", str(tmp_path / "w3"),
                    "--metadata", str(tmp_path / "m3.json"), timeout=LIMIT)
        assert out.returncode == 1
        results = json.loads((tmp_path / "m3.json").read_text())["variants"]
        assert all(f"from {dead.url} failed" in r["error"] for r in results), [r["error"] for r in results]
        assert not tags_of_build("aptdead")
    finally:
        dead.shutdown()


# --- an engine of the tests' own: killed during the bake, its data root filling up ---------------

# The family the tests' engine builds: its CUDA layer is an image (the first family's pushed base
# variant), so every node it builds is either in the registry cache or needs no network.
SCRATCH = MATRIX.replace('"13.0.2": {{source: pip}}',
                         '"13.0.2": {{source: image, image: "{registry}/{base}:{{version}}-{{flavor}}-{{os}}-a"}}')


def scratch_project(path: Path, stacks: str, **extra) -> Path:
    matrix = SCRATCH.format(registry=REGISTRY, repository=f"{REPOSITORY}-scratch", base=REPOSITORY, stacks=stacks)
    return new_project(path, matrix, **extra)


@pytest.fixture(scope="module")
def scratch(family, tmp_path_factory):
    """dockerd of the tests' own, its data root on a loop-mounted ext4 of SIZE, on a bridge of its
    own with no way out and iptables left alone (the shared engine's rules stay as they are): it
    builds the family from its registry cache, runs its checks and pushes to the shared registry."""
    tmp = tmp_path_factory.mktemp("scratch")
    engine_ = ScratchEngine(tmp, SIZE, f"dlenv-test-{RUN}", "10.213.0")
    # The registry cache the tests' engine builds from: the scratch family, built once here.
    project = scratch_project(tmp / "project", STACKS, **MARK)
    out = dlenv(project, "build", "--cache", SCRATCH_CACHE, "--build-id", "s0", "--no-promote",
                "--workdir", str(tmp / "w"), timeout=LIMIT)
    assert out.returncode == 0, out.stderr[-3000:]
    engine_.project = project
    try:
        yield engine_.up()
    finally:
        engine_.down()


# The tests' data root: sparse, so it costs what is written. Larger than dlenv's estimate for the
# family with no record of its own (disk.DEFAULT_PER_VARIANT per variant), so a build goes ahead.
SIZE = "4G"


def _bakes(log: Path) -> list[list[str]]:
    """The log's lines, one list per bake (the main job bakes each variant on its own; each bake numbers its steps from #1)."""
    bakes: list[list[str]] = [[]]
    for line in log.read_text().splitlines():
        if line.startswith("### bake"):
            bakes.append([])
        bakes[-1].append(line)
    return bakes


def finished_steps(log: Path, last: bool = False) -> set[str]:
    """The RUN steps a bake's log shows done or taken from the cache, by their text (last: of
    its last bake only)."""
    found = set()
    for lines in _bakes(log)[-1:] if last else _bakes(log):
        runs = {line.split(" ", 1)[0]: line.split("] ", 1)[1] for line in lines
                if line.startswith("#") and "] RUN " in line}
        ended = {line.split(" ", 1)[0] for line in lines if line.endswith(" CACHED") or " DONE " in line}
        found |= {text for vertex, text in runs.items() if vertex in ended}
    return found


def cached_steps(log: Path) -> set[str]:
    found = set()
    for lines in _bakes(log):
        runs = {line.split(" ", 1)[0]: line.split("] ", 1)[1] for line in lines
                if line.startswith("#") and "] RUN " in line}
        found |= {text for vertex, text in runs.items() if f"{vertex} CACHED" in lines}
    return found


def test_the_engine_killed_during_the_bake_is_one_line_and_the_rerun_reuses_every_finished_step(family, scratch,
                                                                                             tmp_path):
    mark = nonce()
    project = scratch_project(tmp_path / "project", "  - []\n  - [two]",
                              images={"two": "FROM base\nARG NONCE\nRUN echo first-$NONCE > /etc/first\n"
                                             "RUN sleep 15.$NONCE && echo second > /etc/second\n"},
                              recipes={"two.toml": 'description = "two steps, the second one long"\n'
                                                   f'dockerfile = "images/two"\ntag = "two"\n'
                                                   f'args = {{NONCE = "{mark}"}}\n'})
    args = ["build", "--cache", SCRATCH_CACHE, "--build-id", f"kill{mark}"]
    proc = dlenv_started(project, *args, "--workdir", str(tmp_path / "w1"), output=tmp_path / "out1",
                         env=scratch.env)
    try:
        wait_for("the long step", lambda: processes_with(f"sleep 15.{mark}"), timeout=LIMIT)
        scratch.kill()
        assert proc.wait(LIMIT) == 1
    finally:
        proc.kill()
        for pid in processes_with(f"sleep 15.{mark}"):   # the engine's orphaned step, ended by its pid
            os.kill(pid, signal.SIGKILL)
        scratch.start()
    out = (tmp_path / "out1").read_text()
    line = error_line(out)
    assert f"the engine at {scratch.host} stopped answering during the bake" in line, out[-2000:]
    # The bake that was stopped; the bakes before it were pushed, and the rerun keeps their images.
    finished = finished_steps(tmp_path / "w1/build.log", last=True)
    assert any(f"first-{mark}" in step for step in finished), finished
    out = dlenv(project, *args, "--workdir", str(tmp_path / "w2"), env=scratch.env, timeout=LIMIT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert finished <= cached_steps(tmp_path / "w2/build.log"), "a finished step was built again"
    ran = finished_steps(tmp_path / "w2/build.log") - cached_steps(tmp_path / "w2/build.log")
    assert not finished_steps(tmp_path / "w1/build.log") & ran, "a finished step was built again"


def test_a_full_data_root_is_one_line_naming_it_and_the_need_and_the_rerun_completes_once_space_is_freed(
        family, scratch, tmp_path):
    # The tests' engine starts empty again: everything must come in from the registry cache.
    for args in (["image", "prune", "-af"], ["buildx", "prune", "-af"]):
        assert scratch.docker(*args).returncode == 0
    plan = plan_of(scratch.project, "full")
    before = {tag: registry.digest(plan.ref(tag)) for v in plan.variants for tag in v.floating}
    # No record of an earlier run here: the estimate takes dlenv's own figure per variant.
    (scratch.root / disk.RECORD).unlink(missing_ok=True)
    assert disk.estimate(scratch.root, len(plan.variants)).fits
    # Leave less room than the OS layer of the family's base takes unpacked: half its bootstrap tarball.
    rootfs = next(n.rootfs for n in family.plan().nodes.values() if n.rootfs)
    left = bootstrap.rootfs_tar(rootfs, "amd64").stat().st_size // 2
    ballast = scratch.root / "ballast"
    subprocess.run(["fallocate", "-l", str(shutil.disk_usage(scratch.root).free - left), str(ballast)], check=True)
    try:
        args = ["build", "--cache", SCRATCH_CACHE, "--build-id", "full"]
        out = dlenv(scratch.project, *args, "--workdir", str(tmp_path / "w0"), env=scratch.env, timeout=LIMIT)
        assert out.returncode == 1
        line = error_line(out.stderr)
        assert f"the data root {scratch.root} has" in line and "needs about" in line, line
        # Past the estimate (--force): the bake itself runs out of space.
        out = dlenv(scratch.project, *args, "--force", "--workdir", str(tmp_path / "w1"), env=scratch.env,
                    timeout=LIMIT)
        assert out.returncode == 1, out.stderr[-3000:]
        line = error_line(out.stderr)
        assert f"the build ran out of space in {scratch.root}" in line and "needs about" in line, line
        pushed = registry.tags(REGISTRY, f"{REPOSITORY}-scratch")
        assert not [t for t in pushed if t.endswith("-full")]
        assert {tag: registry.digest(plan.ref(tag)) for v in plan.variants for tag in v.floating} == before
    finally:
        ballast.unlink()
    out = dlenv(scratch.project, *args, "--workdir", str(tmp_path / "w2"), env=scratch.env, timeout=LIMIT)
    assert out.returncode == 0, out.stderr[-3000:]
    for variant in plan.variants:
        digest = registry.digest(plan.ref(variant.immutable))
        assert digest and all(registry.digest(plan.ref(tag)) == digest for tag in variant.floating)
