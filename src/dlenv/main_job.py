"""The main job (`nox -s build-matrix`): build the family, smoke-test what was built at the
digest it was pushed at, and promote what passed, printing each stage's table as it ends.

It only chains the stages' front doors (build.run, smoke, release.promote); the release
pipeline runs the same stages as separate jobs instead (see rehearsal.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from dataclasses import dataclass

from dlenv import build, disk, engine, publish, release, report, smoke
from dlenv.options import BuildRequest, SmokeRequest
from dlenv.plan import Plan


@dataclass(frozen=True)
class JobReport:
    build: build.BuildReport
    verdicts: tuple[smoke.Verdict, ...] = ()
    promotions: tuple[release.Promotion, ...] = ()
    peak_growth: int = 0   # bytes the engine's data root grew by at the peak of the run

    @property
    def failed(self) -> list[build.Result]:
        return [r for r in self.build.results if r.status in ("failed", "not attempted")]

    @property
    def held(self) -> list[release.Promotion]:
        return [p for p in self.promotions if not p.promoted]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.held else 0

    def to_json(self) -> dict:
        data = report.results_json(self.build.plan, list(self.build.results))
        data["disk"] = {"peak_growth_bytes": self.peak_growth, "fresh_variants": self.build.fresh}
        if self.promotions or self.verdicts:
            data["smoke"] = [v.to_json() for v in self.verdicts]
            data["promotions"] = [p.to_json() for p in self.promotions]
        return data


def run(plan: Plan, request: BuildRequest) -> JobReport:
    with disk.Sampler(engine.state_dir()) as sampler:
        result = _run(plan, request)
    data_root = engine.state_dir()
    disk.record(data_root, sampler.growth, result.build.fresh, datetime.date.today().isoformat())
    report.say(f"the data root's filesystem grew by {sampler.growth / 1e9:.1f} GB at the peak of this run "
               f"({result.build.fresh} variants built afresh)")
    result = dataclasses.replace(result, peak_growth=sampler.growth)
    if request.metadata:
        report.write_json(request.metadata, result.to_json())
    return result


def _run(plan: Plan, request: BuildRequest) -> JobReport:
    verdicts: list[smoke.Verdict] = []
    promotions: list[release.Promotion] = []
    removed = 0   # images removed from the engine's store, for the next line about it
    forgotten: set[str] = set()
    tested: set[str] = set()        # the variants heard so far
    checked_ids: set[str] = set()   # ... whose checks and promotion ended: each end retries their images
    # Variants are heard several at once (build.schedule), and the smoke stage's threads call
    # forget as each variant ends: in_use removes one call at a time; counting holds this lock.
    in_use = build.InUse()
    counting = threading.Lock()

    def forget(plan: Plan, ids: set[str]) -> None:
        """Remove these variants' images from the engine's store (pushed, and tested where they
        are), but those a bake running now builds on; a bake that starts later on one takes it
        from the registry (build.bake_plan). One that bake would not take (it lacks a platform
        the bake builds) stays: that bake builds it again from the cache its image holds."""
        native = engine.host_platform()
        with counting:
            again = {p.id for v in plan.variants if v.id not in tested and (p := plan.below(v))
                     and not build.taken(p, [v], native)}

        def remove(free: set[str]) -> None:
            nonlocal removed
            with counting:
                gone = free - forgotten
                forgotten.update(gone)
            if gone:
                count = publish.forget(plan.unselect({v.id for v in plan.variants if v.id not in gone}, "another bake"))
                with counting:
                    removed += count

        if not request.keep_images:
            in_use.free(ids - again, remove)

    def baked(plan: Plan, results: list[build.Result]) -> None:
        """A bake's variant is pushed: smoke-test it (removing its image from the engine's store
        once its checks ended), promote it where it passed, and remove the rest of its images and
        those of variants checked before that no bake running now builds on. It runs in threads
        beside the bakes (build.schedule), several variants at once."""
        nonlocal removed
        with counting:
            tested.update(r.variant for r in results)
        done = {r.variant for r in results if r.status == "built"}
        if done and not request.no_promote:
            checked = smoke.run(plan.unselect({v.id for v in plan.variants if v.id not in done}, "not built"),
                                SmokeRequest(require_gpu=request.require_gpu, retest=request.retest,
                                             check_jobs=request.check_jobs), report.say,
                                lambda variant: forget(plan, {variant.id}))
            report.smoke_table(list(checked.verdicts))
            statuses: dict[str, dict[str, list[str]]] = {}   # variant -> platform -> statuses: all must pass
            for v in checked.verdicts:
                statuses.setdefault(v.variant, {}).setdefault(v.platform, []).append(v.status)
            promoted = release.promote(plan, [v for v in plan.variants if v.id in done], statuses, checked.digests)
            report.promotions(promoted)
            with counting:
                verdicts.extend(checked.verdicts)
                promotions.extend(promoted)
        with counting:
            checked_ids.update(r.variant for r in results)
            ended = set(checked_ids)   # not those under test in another thread now
        forget(plan, ended)
        with counting:
            count, removed = removed, 0
        if count:
            report.say(f"removed {count} images of {plan.image} from the engine's store (pushed and tested: the "
                       "registry has them; --keep-images keeps them)")

    with report.LiveBoard(plan) as board:
        # --load leaves the images in the engine's store: one bake, nothing removed.
        built = build.run(plan, request, board, report.say, report.warn, None if request.load else baked, in_use)
    report.summary_table(built.plan, list(built.results))
    return JobReport(built, tuple(verdicts), tuple(promotions))
