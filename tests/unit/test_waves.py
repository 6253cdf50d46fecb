"""The main job bakes in waves (build.waves): one per OS and CUDA release, the largest first."""

from __future__ import annotations

from dlenv.build import waves
from helpers import expand


def test_each_wave_is_one_chain_and_the_largest_comes_first(project):
    p = expand(project)
    chains = {(v.os, v.cuda) for v in p.variants}
    assert len(chains) > 1   # SMALL has several OS x CUDA chains: there is an order to check
    got = waves(p.variants)
    assert len(got) == len(chains)
    assert [{(v.os, v.cuda) for v in wave} for wave in got] == [{(w[0].os, w[0].cuda)} for w in got]
    assert sorted(v.id for wave in got for v in wave) == sorted(v.id for v in p.variants)
    sizes = [len(wave) for wave in got]
    assert sizes == sorted(sizes, reverse=True)
    # The last wave (the one whose images are in the store at the peak) is a smallest chain.
    assert sizes[-1] == min(sum(1 for v in p.variants if (v.os, v.cuda) == chain) for chain in chains)
