"""The main job bakes in waves (build.waves): each OS and CUDA release's chain one generation after
another, on the images the wave before pushed, the largest chain first, a chain with a platform
under QEMU last; each wave is tested beside the next one's bake (pipelined)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from dlenv import graph
from dlenv.build import pipelined, wave_plan, waves
from dlenv.results import Result
from helpers import SMALL, expand


def _chains(got):
    """The OS x CUDA chain of each wave, and the chains in the order they come."""
    keys = [{(v.os, v.cuda) for v in wave} for wave in got]
    assert all(len(k) == 1 for k in keys)   # a wave is part of one chain
    order = [k.pop() for k in keys]
    return order, [c for i, c in enumerate(order) if c not in order[:i]]


def test_each_chain_bakes_in_generations_and_the_largest_chain_comes_first(project):
    p = expand(project)
    chains = {(v.os, v.cuda) for v in p.variants}
    assert len(chains) > 1   # SMALL has several OS x CUDA chains: there is an order to check
    got = waves(p.variants, "linux/amd64")
    order, distinct = _chains(got)
    assert sorted(distinct) == sorted(chains)
    assert order == sorted(order, key=distinct.index)   # a chain's generations follow one another
    sizes = [sum(order[i] == c for i, wave in enumerate(got) for _ in wave) for c in distinct]
    assert sizes == sorted(sizes, reverse=True)
    assert sorted(v.id for wave in got for v in wave) == sorted(v.id for v in p.variants)
    # The nearest variant below each variant (in its chain of nodes) is baked in the wave just
    # before its own; a chain's first wave builds on no variant.
    where = {v.node: i for i, wave in enumerate(got) for v in wave}
    deeper = 0
    for i, wave in enumerate(got):
        for v in wave:
            below = [n for n in v.chain[:-1] if n in where]
            if below:
                assert where[below[-1]] == i - 1
                deeper += 1
            else:
                assert i == 0 or order[i - 1] != order[i]
    assert deeper   # SMALL has stacks on flavors: there are generations to check


def test_a_wave_builds_on_the_images_earlier_waves_pushed(project):
    p = expand(project, select=["os=debian12"])
    got = waves(p.variants, "linux/amd64")
    ready: set[str] = set()
    for wave in got:
        part = wave_plan(p, wave, ready)
        targets = graph.definition(part, "push", (), graph.Options())["target"]
        for v in wave:
            below = [b for b in p.variants if b.node in v.chain[:-1]]
            if not below:   # a chain's first variant: its OS layers are built here
                assert set(v.chain) <= set(targets)
            else:   # pushed by the wave before: taken from the registry, nothing below it rebuilt
                nearest = max(below, key=lambda b: len(b.chain))
                assert nearest.id in ready and not set(nearest.chain) & set(targets)
                above = v.chain[len(nearest.chain)]   # the first node built on it
                assert targets[above]["contexts"]["base"] == f"docker-image://{p.ref(nearest.immutable)}"
        ready |= {v.id for v in wave}


def test_the_chain_with_an_emulated_platform_bakes_last_and_whole(project):
    p = expand(project, select=["os=debian12"])
    cuda = p.variants[0].cuda
    # One chain's bare base also builds for linux/arm64; the rest of its chain stays amd64.
    both = [dataclasses.replace(v, platforms=("linux/amd64", "linux/arm64"))
            if v.cuda == cuda and v.flavor == "base" and not v.stack else v for v in p.variants]
    got = waves(both, "linux/amd64")
    order, distinct = _chains(got)
    assert distinct[-1] == (both[0].os, cuda)
    assert sorted(v.id for i, wave in enumerate(got) if order[i] == distinct[-1] for v in wave) == \
        sorted(v.id for v in both if v.cuda == cuda)
    assert all(len(v.platforms) == 1 for i, wave in enumerate(got) if order[i] != distinct[-1] for v in wave)
    assert len(got) == len(waves(p.variants, "linux/amd64"))


def test_a_native_waves_bake_file_builds_no_node_for_the_emulated_platform(project):
    # SMALL's debian12 chains for both platforms; under QEMU here only CUDA 13's bare base (build.emulate).
    text = SMALL + "platforms: [linux/amd64, linux/arm64]\nbuild: {emulate: ['cuda=13.0.2 flavor=base stack=none']}\n"
    p = expand(project, text, select=["os=debian12"]).emulating("linux/amd64")
    emulated = {v.id for v in p.variants if "linux/arm64" in v.platforms}
    assert emulated and len(emulated) < len(p.variants)
    os_node = p.variants[0].chain[1]
    assert p.nodes[os_node].platforms == ("linux/amd64", "linux/arm64")   # shared: both, in the whole plan
    got = waves(p.variants, "linux/amd64")
    order, distinct = _chains(got)
    assert emulated <= {v.id for i, wave in enumerate(got) if order[i] == distinct[-1] for v in wave}
    for wave in got:
        targets = graph.definition(wave_plan(p, wave), "push", (), graph.Options())["target"]
        platforms = {tuple(t.get("platforms", ["linux/amd64"])) for t in targets.values()}
        if any(v.id in emulated for v in wave):
            assert ("linux/amd64", "linux/arm64") in platforms and os_node in targets
        else:   # the OS layer too is built for linux/amd64 alone: no QEMU, no arm64 rootfs needed
            assert platforms == {("linux/amd64",)} and os_node in targets
    assert any(not any(v.id in emulated for v in wave) for wave in got)   # there is a native wave to check


def test_each_wave_is_tested_beside_the_next_ones_bake_and_in_order():
    order: list[str] = []
    first_tested = threading.Event()

    def bake(wave):
        order.append(f"bake {wave[0]}")
        if wave[0] == "w2":   # waits for w1's tests: it fails unless they run beside this bake
            assert first_tested.wait(10), "w1 was not tested while w2 baked"
        return [Result(wave[0], "built")]

    def done(results):
        order.append(f"test {results[0].variant}")
        if results[0].variant == "w1":
            first_tested.set()
            time.sleep(0.3)   # long enough for w2's bake to end first: w3's bake must wait for this
        order.append(f"tested {results[0].variant}")

    pipelined([["w1"], ["w2"], ["w3"]], bake, done)   # type: ignore[list-item]
    assert order.index("tested w1") < order.index("test w2") < order.index("tested w2") < order.index("test w3")
    assert order.index("bake w2") < order.index("tested w1") < order.index("bake w3")   # at most one wave behind
    assert order[-1] == "tested w3"


def test_a_failure_in_a_waves_tests_ends_the_run_after_the_bake_beside_it():
    baked = []

    def done(results):
        if results[0].variant == "w1":
            raise RuntimeError("w1's tests broke")

    with pytest.raises(RuntimeError, match="w1's tests broke"):
        pipelined([["w1"], ["w2"], ["w3"]], lambda wave: baked.append(wave[0]) or [Result(wave[0], "built")], done)  # type: ignore[list-item]
    assert baked == ["w1", "w2"]


def test_an_image_lacking_a_platform_the_wave_builds_on_it_is_built_again_not_taken(project):
    # CUDA 13's runtime also for linux/arm64, its base for linux/amd64 alone: the runtime wave
    # cannot build arm64 on the pushed base, nor fetch for arm64 on a base without amd64.
    text = SMALL + "platforms: [linux/amd64, linux/arm64]\nbuild: {emulate: ['cuda=13.0.2 flavor=runtime stack=none']}\n"
    p = expand(project, text, select=["os=debian12 cuda=13.0.2 stack=none"]).emulating("linux/amd64")
    base = next(v for v in p.variants if v.flavor == "base")
    runtime = next(v for v in p.variants if v.flavor == "runtime")
    assert base.platforms == ("linux/amd64",) and runtime.platforms == ("linux/amd64", "linux/arm64")
    targets = graph.definition(wave_plan(p, [runtime], {base.id}, "linux/amd64"), "push", (), graph.Options())["target"]
    assert targets[runtime.node]["contexts"]["base"] == f"target:{base.node}"   # built here again
    # With the platforms it needs, the same image is taken from the registry.
    both = dataclasses.replace(base, platforms=runtime.platforms)
    q = dataclasses.replace(p, variants=tuple(both if v.id == base.id else v for v in p.variants))
    targets = graph.definition(wave_plan(q, [runtime], {base.id}, "linux/amd64"), "push", (), graph.Options())["target"]
    assert targets[runtime.node]["contexts"]["base"] == f"docker-image://{p.ref(base.immutable)}"
