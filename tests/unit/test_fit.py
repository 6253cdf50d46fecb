"""A release shard's disk estimate and the split that fits shards to a runner's disk (fit.py,
shards.layout): derived from the plan, the recorded sizes and build.runner_disk."""

from __future__ import annotations

import json
from pathlib import Path

from dlenv import disk, fit, graph, shards
from dlenv import plan as planmod
from dlenv.options import PlanRequest
from helpers import SMALL, expand

GROUP = "cuda=13.0.2 os=debian12"


def family(project: Path, runner_disk: float | None = None, sizes: str = "", select=(GROUP,)) -> planmod.Plan:
    build = {k: v for k, v in (("runner_disk", runner_disk), ("sizes", sizes)) if v}
    return expand(project, SMALL + (f"build: {json.dumps(build)}\n" if build else ""), select=list(select))


def by_id(p: planmod.Plan) -> dict[str, planmod.Variant]:
    return {v.id: v for v in p.variants}


def test_a_share_is_the_size_less_the_nearest_variant_below_and_pulling_one_costs_its_whole_chain(project):
    p = family(project)
    v = by_id(p)
    # Distinct sizes, growing up each chain: a variant is its chain's sizes added up.
    sizes = {vid: 10**9 * len(x.chain) + 10**6 * i for i, (vid, x) in enumerate(sorted(v.items()))}
    est = fit.Estimator(p.variants, sizes)
    base, runtime, py = v["13.0.2-base-debian12"], v["13.0.2-runtime-debian12"], v["13.0.2-runtime-debian12-py"]
    assert est.below(base) is None and est.below(runtime) == base and est.below(py) == runtime
    assert est.share[base.id] == round(fit.PEAK_PER_BYTE * sizes[base.id])
    assert est.share[py.id] == round(fit.PEAK_PER_BYTE * (sizes[py.id] - sizes[runtime.id]))
    # The shares of a chain add up to its top variant's whole size.
    for x in p.variants:
        assert abs(est.whole(x) - fit.PEAK_PER_BYTE * sizes[x.id]) <= len(x.chain)
    # Without a recorded size (its own or the one below): the project's measured figure.
    unknown = fit.Estimator(p.variants, {k: s for k, s in sizes.items() if k != runtime.id})
    assert unknown.share[runtime.id] == unknown.share[py.id] == disk.DEFAULT_PER_VARIANT
    assert unknown.share[base.id] == est.share[base.id]


def test_a_group_that_fits_stays_whole_and_one_that_does_not_is_cut_between_flavor_levels(project):
    p = family(project)
    est = fit.Estimator(p.variants, {})
    whole = est.part("g", p.variants)
    assert whole.need == fit.SHARD_OVERHEAD + len(p.variants) * disk.DEFAULT_PER_VARIANT and not whole.pulled
    assert fit.cut(est, "g", p.variants, whole.need) == [whole]
    parts = fit.cut(est, "g", p.variants, whole.need - 1)
    flavors = [{x.flavor for x in part.variants} for part in parts]
    # Lowest level first, adjacent levels kept together while they fit.
    low = [x for x in p.variants if x.flavor in ("base", "runtime")]
    assert est.part("g", low).need <= whole.need - 1
    assert flavors == [{"base", "runtime"}, {"devel"}]
    # The devel level builds on runtime's CUDA image: it pulls it, and pays for its whole chain.
    runtime = by_id(p)["13.0.2-runtime-debian12"]
    devel = [x for x in p.variants if x.flavor == "devel"]
    assert parts[1].pulled == (runtime.id,)
    assert parts[1].need == fit.SHARD_OVERHEAD + len(devel) * disk.DEFAULT_PER_VARIANT + est.whole(runtime)
    # Tighter: each level alone.
    levels = fit.cut(est, "g", p.variants, est.part("g", devel).need)
    assert [{x.flavor for x in part.variants} for part in levels] == [{"base"}, {"runtime"}, {"devel"}]
    assert [part.pulled for part in levels] == [(), ("13.0.2-base-debian12",), (runtime.id,)]


def test_the_split_fits_the_runner_in_stages_each_shard_of_one_stage_pulling_from_an_earlier_one(project):
    each = fit.Estimator(family(project).variants, {})
    # Room for the largest level with what it pulls, not for two levels together.
    room = max(each.part("", [x for x in family(project).variants if x.flavor == f]).need
               for f in ("base", "runtime", "devel"))
    assert each.part("", [x for x in family(project).variants if x.flavor != "devel"]).need > room
    p = family(project, runner_disk=room / fit.GB, select=())
    groups = {shards.group_key(v) for v in p.variants}
    count = 3 * len(groups)
    planned = shards.layout(p, count)
    ids = [v.id for s in planned for v in s.variants]
    assert sorted(ids) == sorted(v.id for v in p.variants)
    home = {v.id: s for s in planned for v in s.variants}
    for s in planned:
        if s.variants:
            assert s.need <= room, (s.parts, s.need)
            assert all(home[x].stage < s.stage for x in s.pulled)
            assert s.stage == 1 + max((home[x].stage for x in s.pulled), default=0)
    assert {s.stage for s in planned if s.variants} == {1, 2, 3}
    assert shards.layout(p, count) == planned          # deterministic
    # Stages in order: no shard of a stage comes before one of an earlier stage.
    stages = [s.stage for s in planned if s.variants]
    assert stages == sorted(stages)
    # The CI matrix carries each shard's stage and estimate; the stage outputs split it.
    outputs = shards.stages(p, count)
    for k in range(1, shards.STAGES + 1):
        entries = json.loads(outputs[f"build{k}"])["include"]
        assert entries and {e["stage"] for e in entries} == {k}
    assert outputs["stages"] == "3"


def test_too_few_shards_for_the_disk_is_said_with_a_count_that_fits_and_a_part_too_big_alone_with_its_figure(project):
    est = fit.Estimator(family(project).variants, {})
    devel = [x for x in family(project).variants if x.flavor == "devel"]
    room = est.part("", devel).need
    p = family(project, runner_disk=room / fit.GB)
    lines = shards.fits(p, 1)
    assert any("over the runner's" in line and "--count" in line for line in lines), lines
    enough = int(lines[-1].rsplit("--count ", 1)[1].split()[0])
    assert all(s.need <= room for s in shards.layout(p, enough) if s.variants)
    assert any(s.need > room for s in shards.layout(p, enough - 1) if s.variants)
    # A runner smaller than the devel level alone: that part is named, with what it needs.
    small = family(project, runner_disk=(room - 1) / fit.GB)
    (line,) = [x for x in shards.fits(small, 3) if "even alone" in x]
    assert f"needs about {room / fit.GB:.1f} GB" in line and ":devel" in line


def test_recorded_sizes_decide_the_split(project):
    p = family(project)
    sizes = {v.id: 10**6 for v in p.variants}     # tiny images: the whole group fits one runner
    (project / "sizes.json").write_text(json.dumps({"variants": [{"variant": k, "size": s} for k, s in sizes.items()]}))
    est = fit.Estimator(p.variants, {})
    tight = est.part("", [x for x in p.variants if x.flavor == "devel"]).need / fit.GB
    assert len([s for s in shards.layout(family(project, tight), 3) if s.variants]) > 1
    recorded = family(project, tight, sizes="sizes.json")
    assert shards.sizes(recorded) == sizes
    (one,) = [s for s in shards.layout(recorded, 3) if s.variants]
    assert one.need == fit.Estimator(p.variants, sizes).part("", p.variants).need


def test_a_later_stage_bakes_on_the_pulled_image_and_builds_nothing_below_it(project):
    est = fit.Estimator(family(project).variants, {})
    room = est.part("", [x for x in family(project).variants if x.flavor == "devel"]).need
    family(project, runner_disk=room / fit.GB)   # writes the matrix
    request = PlanRequest(matrix=project / "matrix.yaml", root=project, select=(GROUP,), build_id="b1")
    whole = planmod.load(request)
    planned = shards.layout(whole, 3)
    index = next(i for i, s in enumerate(planned) if s.stage == 3)
    mine = planmod.load(PlanRequest(**{**request.__dict__, "shard": f"{index + 1}/3"}))
    runtime = whole.variant("13.0.2-runtime-debian12")
    assert mine.pulled == ((runtime.node, whole.ref(runtime.immutable)),)
    targets = graph.definition(mine)["target"]
    assert not set(graph.ancestors(whole, runtime.node)) & set(targets)
    devel = whole.variant("13.0.2-devel-debian12")
    assert targets[devel.node]["contexts"]["base"] == f"docker-image://{whole.ref(runtime.immutable)}"
    # Per platform, the image of the same platform's job, before any merge.
    one = planmod.load(PlanRequest(**{**request.__dict__, "shard": f"{index + 1}/3", "platform": ("linux/amd64",),
                                      "per_platform": True}))
    assert one.pulled == ((runtime.node, whole.ref(runtime.immutable) + "-amd64"),)
