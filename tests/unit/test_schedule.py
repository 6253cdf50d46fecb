"""The main job bakes each variant on its own (build.schedule), as soon as the image below it is
pushed, several at once, on that pushed image (build.bake_plan); each bake's variants are tested
in threads beside the bakes, each on its own."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from dlenv import build, buildcache, graph
from dlenv.build import bake_plan, schedule
from dlenv.errors import DlenvError
from dlenv.results import Result
from helpers import SMALL, expand


class Recorder:
    """bake and done for schedule: what ran when, and how many bakes at once."""

    def __init__(self, slow: dict[str, float] | None = None, fail: str = "", hearing: float = 0.0):
        self.slow = slow or {}
        self.fail = fail
        self.hearing = hearing   # seconds each done call takes
        self.events: list[tuple[str, str]] = []
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.now = self.most = 0

    def bake(self, variants):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.events.append(("bake", variants[0].id))
        time.sleep(self.slow.get(variants[0].id, 0.02))
        with self.lock:
            self.now -= 1
            self.events.append(("baked", variants[0].id))
        return [Result(variants[0].id, "built")]

    def done(self, results):
        self.calls.append([r.variant for r in results])
        self.events += [("done", r.variant) for r in results]
        time.sleep(self.hearing)
        if self.fail and results[0].variant == self.fail:
            time.sleep(0.1)   # the next bake has started meanwhile
            raise RuntimeError(f"{self.fail}'s checks broke")

    def at(self, kind: str, variant: str) -> int:
        return self.events.index((kind, variant))


def test_each_variant_bakes_after_the_one_below_it_and_bakes_run_side_by_side(project):
    p = expand(project)
    got = Recorder()
    schedule(p.variants, p.below, got.bake, got.done, jobs=3)
    assert sorted(v for kind, v in got.events if kind == "bake") == sorted(v.id for v in p.variants)
    deeper = 0
    for v in p.variants:
        parent = p.below(v)
        if parent:
            deeper += 1
            assert got.at("baked", parent.id) < got.at("bake", v.id)
        assert got.at("baked", v.id) < got.at("done", v.id)   # heard once pushed, one bake a call
    assert deeper   # SMALL has stacks on flavors: there are variants on variants
    assert got.most == 3   # SMALL's chains have room for three bakes at once, and no more ran


def test_a_slow_variant_holds_back_only_what_is_built_on_it(project):
    p = expand(project, select=["os=debian12"])
    below = {v.id: p.below(v) for v in p.variants}
    # A variant with two children, one of which has a child of its own.
    slow = next(v for v in p.variants if sum(below[u.id] is v for u in p.variants) >= 2
                and any(below[w.id] is not None and below[below[w.id].id] is v for w in p.variants))
    kids = [u for u in p.variants if below[u.id] is slow]
    quick = next(k for k in kids if any(below[w.id] is k for w in p.variants))
    late = next(k for k in kids if k is not quick)
    grandchild = next(w for w in p.variants if below[w.id] is quick)
    got = Recorder(slow={late.id: 1.0})
    schedule(p.variants, p.below, got.bake, got.done, jobs=4)
    # In generations the grandchild would wait for its slow uncle; here it is baked beside it.
    assert got.at("bake", late.id) < got.at("bake", grandchild.id) < got.at("baked", late.id)


def test_a_variant_not_ready_is_held_back_while_others_bake(project):
    p = expand(project, select=["os=debian12"])
    held = p.variants[0]
    release = threading.Event()
    got = Recorder()

    def bake(variants):
        if variants[0] is not held and not release.is_set() and sum(k == "baked" for k, _ in got.events) >= 2:
            release.set()   # its rootfs "bootstrapped" once two other bakes ended
        return got.bake(variants)

    schedule(p.variants, p.below, bake, got.done, jobs=2, ready=lambda v: v is not held or release.is_set())
    assert got.at("baked", next(v for v in p.variants if v is not held and p.below(v) is None).id) < \
        got.at("bake", held.id)
    assert all(got.at("baked", held.id) < got.at("bake", v.id) for v in p.variants if p.below(v) is held)


def test_variants_kept_are_heard_first_in_one_call_and_not_baked(project):
    p = expand(project, select=["os=debian12"])
    kept = [v for v in p.variants if p.below(v) is None]
    rest = [v for v in p.variants if v not in kept]
    got = Recorder()
    schedule(rest, p.below, got.bake, got.done, jobs=2, kept=[Result(v.id, "built") for v in kept])
    assert got.calls[0] == [v.id for v in kept]
    assert {v for kind, v in got.events if kind == "bake"} == {v.id for v in rest}


def test_each_variant_is_heard_on_its_own_several_at_once_and_bakes_wait_for_the_checks(project):
    p = expand(project)
    got = Recorder(hearing=0.3)   # checks slower than bakes: results wait for a checker
    hearing = most = 0

    def done(results):
        nonlocal hearing, most
        with got.lock:
            hearing += 1
            most = max(most, hearing)
        got.done(results)
        with got.lock:
            hearing -= 1

    schedule(p.variants, p.below, got.bake, done, jobs=3, checkers=2)
    assert sorted(v for call in got.calls for v in call) == sorted(v.id for v in p.variants)   # each once
    assert all(len(call) == 1 for call in got.calls)   # a quick variant does not wait for a slow one's checks
    assert most == 2   # two checkers at once, never more
    # No bake started while more than jobs variants waited for a checker (two of them being heard).
    waiting = 0
    for kind, _ in got.events:
        waiting += {"baked": 1, "done": -1}.get(kind, 0)
        assert kind != "bake" or waiting <= 3 + 3   # jobs waiting, and jobs more ending as it starts


def test_a_variant_whose_parent_image_is_still_in_the_store_goes_before_a_taller_one():
    # a1 -> a2 -> a3 and b1 -> b2; a2 is held back (not ready) until b1 is baked, and b1 is still
    # being tested then, while a1 was tested and its image has gone.
    a, b = _chain(3, "a"), _chain(2, "b")
    got = Recorder(slow={v.id: 0.1 for v in a + b})

    def done(results):
        got.done(results)
        time.sleep(1.0 if results[0].variant == "b1" else 0.0)

    schedule(a + b, _below(a + b), got.bake, done, jobs=1, checkers=2,
             ready=lambda v: v.id != "a2" or ("baked", "b1") in got.events)
    assert [v for kind, v in got.events if kind == "bake"][:2] == ["a1", "b1"]
    # a2 is taller, but b1's image is in the store: b2 is built on it there, not pulled again.
    assert got.at("bake", "b2") < got.at("bake", "a2")


def test_variants_are_tested_beside_the_bakes():
    order: list[str] = []
    second_baking = threading.Event()
    chain = _chain(3)

    def bake(variants):
        order.append(f"bake {variants[0].id}")
        if variants[0].id == "v2":
            second_baking.set()
            time.sleep(0.2)
        return [Result(variants[0].id, "built")]

    def done(results):
        if results[0].variant == "v1":   # fails unless v1 is tested while v2 bakes
            assert second_baking.wait(10), "v2 did not bake while v1 was tested"
            order.append("v1 tested while v2 baked")
        order.append(f"tested {results[0].variant}")

    schedule(chain, _below(chain), bake, done, jobs=1)
    assert order.index("v1 tested while v2 baked") < order.index("tested v2")
    assert order[-1] == "tested v3"


def test_a_failure_in_the_tests_ends_the_run_once_the_bake_beside_has_ended():
    chain = _chain(4)
    got = Recorder(slow={"v2": 0.5}, fail="v1")
    with pytest.raises(RuntimeError, match="v1's checks broke"):
        schedule(chain, _below(chain), got.bake, got.done, jobs=1)
    assert ("baked", "v2") in got.events   # the bake running then ended first
    assert ("bake", "v4") not in got.events


def test_a_failed_bake_still_lets_the_variants_on_it_be_settled():
    chain = _chain(3)

    def bake(variants):
        return [Result(variants[0].id, "failed" if variants[0].id == "v1" else "not attempted")]

    heard: list[str] = []
    schedule(chain, _below(chain), bake, lambda results: heard.extend(r.status for r in results), jobs=2)
    assert heard == ["failed", "not attempted", "not attempted"]


@dataclasses.dataclass(frozen=True)
class _V:
    id: str
    node: str
    chain: tuple[str, ...]


def _chain(n: int, name: str = "v") -> list:
    """n variants, each on the one before."""
    return [_V(f"{name}{i}", f"{name}n{i}", tuple(f"{name}n{j}" for j in range(1, i + 1))) for i in range(1, n + 1)]


def _below(chain):
    by_node = {v.node: v for v in chain}
    return lambda v: next((by_node[n] for n in reversed(v.chain[:-1]) if n in by_node), None)


def test_a_bake_builds_on_the_image_the_variant_below_pushed(project):
    p = expand(project, select=["os=debian12"])
    ready: set[str] = set()
    got = Recorder()
    schedule(p.variants, p.below, got.bake, got.done, jobs=1)   # one at a time: the order bakes start in
    for vid in [v for kind, v in got.events if kind == "bake"]:
        v = next(u for u in p.variants if u.id == vid)
        targets = graph.definition(bake_plan(p, [v], ready), "push", (), graph.Options())["target"]
        nearest = p.below(v)
        if nearest is None:   # a chain's first variant: its OS layers are built here
            assert set(v.chain) <= set(targets)
        else:   # pushed by an earlier bake: taken from the registry, nothing below it rebuilt
            assert nearest.id in ready and not set(nearest.chain) & set(targets)
            above = v.chain[len(nearest.chain)]   # the first node built on it
            assert targets[above]["contexts"]["base"] == f"docker-image://{p.ref(nearest.immutable)}"
        ready.add(v.id)


def test_a_native_bake_file_builds_no_node_for_the_emulated_platform(project):
    # SMALL's debian12 chains for both platforms; under QEMU here only CUDA 13's bare base (build.emulate).
    text = SMALL + "platforms: [linux/amd64, linux/arm64]\nbuild: {emulate: ['cuda=13.0.2 flavor=base stack=none']}\n"
    p = expand(project, text, select=["os=debian12"]).emulating("linux/amd64")
    emulated = {v.id for v in p.variants if "linux/arm64" in v.platforms}
    assert emulated and len(emulated) < len(p.variants)
    os_node = p.variants[0].chain[1]
    assert p.nodes[os_node].platforms == ("linux/amd64", "linux/arm64")   # shared: both, in the whole plan
    for v in p.variants:
        targets = graph.definition(bake_plan(p, [v]), "push", (), graph.Options())["target"]
        platforms = {tuple(t.get("platforms", ["linux/amd64"])) for t in targets.values()}
        if v.id in emulated:
            assert ("linux/amd64", "linux/arm64") in platforms and os_node in targets
        else:   # the OS layer too is built for linux/amd64 alone: no QEMU, no arm64 rootfs needed
            assert platforms == {("linux/amd64",)} and os_node in targets


def test_an_image_lacking_a_platform_the_bake_builds_on_it_is_built_again_not_taken(project):
    # CUDA 13's runtime also for linux/arm64, its base for linux/amd64 alone: the runtime bake
    # cannot build arm64 on the pushed base, nor fetch for arm64 on a base without amd64.
    text = SMALL + "platforms: [linux/amd64, linux/arm64]\nbuild: {emulate: ['cuda=13.0.2 flavor=runtime stack=none']}\n"
    p = expand(project, text, select=["os=debian12 cuda=13.0.2 stack=none"]).emulating("linux/amd64")
    base = next(v for v in p.variants if v.flavor == "base")
    runtime = next(v for v in p.variants if v.flavor == "runtime")
    assert base.platforms == ("linux/amd64",) and runtime.platforms == ("linux/amd64", "linux/arm64")
    targets = graph.definition(bake_plan(p, [runtime], {base.id}, "linux/amd64"), "push", (), graph.Options())["target"]
    assert targets[runtime.node]["contexts"]["base"] == f"target:{base.node}"   # built here again
    # With the platforms it needs, the same image is taken from the registry.
    both = dataclasses.replace(base, platforms=runtime.platforms)
    q = dataclasses.replace(p, variants=tuple(both if v.id == base.id else v for v in p.variants))
    targets = graph.definition(bake_plan(q, [runtime], {base.id}, "linux/amd64"), "push", (), graph.Options())["target"]
    assert targets[runtime.node]["contexts"]["base"] == f"docker-image://{p.ref(base.immutable)}"


def test_an_image_a_running_bake_builds_on_stays_and_the_others_go():
    in_use = build.InUse()
    gone: list[set[str]] = []
    in_use.hold({"base"})
    in_use.hold({"base", "py"})
    in_use.free({"base", "py", "torch"}, gone.append)
    in_use.release({"base", "py"})
    in_use.free({"base", "py"}, gone.append)
    in_use.release({"base"})
    in_use.free({"base"}, gone.append)
    assert gone == [{"torch"}, {"py"}, {"base"}]


def test_a_bake_starts_only_once_the_images_being_removed_are_gone():
    in_use = build.InUse()
    removing, order = threading.Event(), []

    def remove(ids: set[str]) -> None:
        removing.set()
        time.sleep(0.2)
        order.append("removed")

    remover = threading.Thread(target=in_use.free, args=({"base"}, remove))
    remover.start()
    removing.wait(5)
    in_use.hold({"base"})   # a bake on base: it takes base from the registry
    order.append("held")
    remover.join()
    assert order == ["removed", "held"]


class Cache:
    """buildcache.records and buildcache.prune over a dict: a record an image shares stays."""

    def __init__(self, ids: set[str], shared: set[str]):
        self.records = {i: buildcache.Record(i, 10**9, "regular", i) for i in ids}
        self.shared = shared
        self.fail = False

    def prune(self, ids: set[str], builder=None) -> set[str]:
        if self.fail:
            raise DlenvError("docker buildx prune failed: EOF", "")
        for i in ids - self.shared:
            self.records.pop(i, None)
        return ids & self.records.keys()


@pytest.mark.parametrize("keep_images", [False, True])
def test_what_an_image_in_the_store_held_goes_at_a_later_prune_once_the_image_has_left(
        project, tmp_path, monkeypatch, keep_images):
    cache = Cache({"os"}, set())
    monkeypatch.setattr(buildcache, "records", lambda builder=None: dict(cache.records))
    monkeypatch.setattr(buildcache, "prune", cache.prune)
    builder = build.Builder(expand(project), tmp_path, keep_cache=False, keep_images=keep_images)
    before = dict(cache.records)
    cache.records |= Cache({"layer-a", "tree-a"}, set()).records   # bake 1 made these
    cache.shared = {"layer-a"}                                     # its image is in the store
    builder._prune(1, before, first=False)
    assert set(cache.records) == {"os", "layer-a"} and set(builder.left_behind) == {"layer-a"}
    before = dict(cache.records)
    cache.records |= Cache({"layer-b"}, set()).records              # bake 2, once image a has left
    cache.shared = set()
    builder._prune(2, before, first=False)
    # With --keep-images the image stays in the store: nothing is asked for again before the end.
    assert set(cache.records) == ({"os", "layer-a"} if keep_images else {"os"})


def test_records_a_failed_prune_was_asked_for_are_asked_for_again(project, tmp_path, monkeypatch):
    cache = Cache({"os"}, set())
    monkeypatch.setattr(buildcache, "records", lambda builder=None: dict(cache.records))
    monkeypatch.setattr(buildcache, "prune", cache.prune)
    builder = build.Builder(expand(project), tmp_path, keep_cache=False, log=lambda line: None)
    before = dict(cache.records)
    cache.records |= Cache({"layer-a"}, set()).records
    cache.fail = True
    builder._prune(1, before, first=False)
    assert set(builder.left_behind) == {"layer-a"}
    cache.fail = False
    builder._prune(2, dict(cache.records), first=False)
    assert set(cache.records) == {"os"} and not builder.left_behind
