"""A dress rehearsal of .github/workflows/release.yml on one machine, against the local registry.

The same steps as the workflow's jobs, in the same order and with the same options, through the
stages' own front doors: the shard matrix through $GITHUB_OUTPUT's format; each shard built per
platform (--platform P --per-platform: under its own platform tags, another platform than the
host's under QEMU) with --locked and the registry cache, and that platform's checks run on
those tags; a merge per shard (one index per tag, every platform's attestations kept); each
shard's platforms smoke-tested on the merged tags to JSON; one promotion from all the results,
then the catalog. A step that fails does not stop the later ones (the workflow's jobs do not
either); the exit code says whether every step passed. Each step is shown as the command line
the workflow runs, derived from its requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from rich.table import Table

from dlenv import catalog, main_job, merge, release, report, shards, smoke
from dlenv import plan as planmod
from dlenv.errors import ConfigError, DlenvError
from dlenv.options import (
    BuildRequest,
    CatalogRequest,
    MergeRequest,
    PlanRequest,
    PromoteRequest,
    RehearseRequest,
    ShardsRequest,
    SmokeRequest,
    argv,
)


@dataclass
class Step:
    name: str
    argv: list[str]
    rc: int = -1
    seconds: float = 0.0


def _call(name: str, command: str, plan_request: PlanRequest, request: object, work: Callable[[], int]) -> Step:
    step = Step(name, [command, *argv(plan_request), *argv(request)])
    report.console.rule(f"[bold]{name}[/]: dlenv {' '.join(step.argv)}")
    started = time.monotonic()
    try:
        step.rc = work()
    except DlenvError as exc:
        report.error(exc)
        step.rc = exc.exit_code
    step.seconds = time.monotonic() - started
    return step


def run(plan_request: PlanRequest, request: RehearseRequest) -> int:
    if plan_request.shard:
        raise ConfigError("--shard", None, "shard", "the rehearsal builds every shard: give --shards N instead")
    family = planmod.load(plan_request, request)   # bad input stops here, before anything is built
    work = request.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = request.cache or f"{family.matrix.model.registry}/{family.matrix.model.repository}-cache"
    steps: list[Step] = []

    # The plan job: the shard matrix release.yml's build jobs get (the shards stage's front door,
    # as `shards --github-output` calls it).
    wanted = ShardsRequest(count=request.shards, github_output=True)
    parts: list[dict] = []     # the build (and smoke) jobs: a shard and platform each
    merges: list[dict] = []    # the merge jobs: a shard each

    def plan_job() -> int:
        parts.extend(shards.matrix(family, wanted.count)["include"])
        merges.extend(shards.merges(family, wanted.count)["include"])
        return 0

    def smoke_job(part: PlanRequest, test: SmokeRequest) -> int:
        result = smoke.run(planmod.load(part), test, report.say)
        report.smoke_table(list(result.verdicts))
        return 1 if result.failed else 0

    steps.append(_call("plan", "shards", plan_request, wanted, plan_job))
    # The build jobs stage by stage, as the workflow's build, build-2, ... jobs: a later stage
    # builds on the images an earlier one pushed.
    for index, entry in sorted(enumerate(parts), key=lambda item: (item[1].get("stage", 1), item[0])):
        name = f"{entry['shard']} {entry['platform'].split('/')[1]}"
        part = replace(plan_request, shard=entry["shard"], platform=(entry["platform"],), per_platform=True)
        build = BuildRequest(cache=cache, locked=True, no_promote=True, workdir=work / f"build-{index}",
                             metadata=work / f"build-{index}.json")
        steps.append(_call(f"build {name}", "build", part, build,
                           lambda part=part, build=build: main_job.run(planmod.load(part, build), build).exit_code))
        # The build job's own checks of its platform, on its platform tags.
        check = SmokeRequest(json=work / f"check-{index}.json", junit=work / f"check-{index}.xml")
        steps.append(_call(f"check {name}", "smoke", part, check, lambda part=part, check=check: smoke_job(part, check)))
    for index, entry in enumerate(merges):
        part = replace(plan_request, shard=entry["shard"])
        joined = MergeRequest(json=work / f"merge-{index}.json")

        def merge_job(part=part, joined=joined) -> int:
            return 0 if all(m.merged for m in merge.run(planmod.load(part), joined, report.say)) else 1

        steps.append(_call(f"merge {entry['shard']}", "merge", part, joined, merge_job))
    results = []
    for index, entry in enumerate(parts):
        part = replace(plan_request, shard=entry["shard"], platform=(entry["platform"],))
        results.append(work / f"smoke-{index}.json")
        test = SmokeRequest(require_gpu=request.require_gpu, json=results[-1], junit=work / f"smoke-{index}.xml")
        steps.append(_call(f"smoke {entry['shard']} {entry['platform'].split('/')[1]}", "smoke", part, test,
                           lambda part=part, test=test: smoke_job(part, test)))
    found = tuple(p for p in results if p.exists())
    promote = PromoteRequest(verdicts=found, require_gpu=request.require_gpu)

    def promote_job() -> int:
        if not found:
            return 1
        promotions = release.run(planmod.load(plan_request), promote)
        report.promotions(promotions)
        return 1 if any(not p.promoted for p in promotions) else 0

    steps.append(_call("promote", "promote", plan_request, promote, promote_job))
    listed = CatalogRequest(output=work / "catalog")
    # The catalog lists releases past their end of life too (as `dlenv catalog` does).
    everything = replace(plan_request, allow_eol=True)
    steps.append(_call("catalog", "catalog", everything, listed,
                       lambda: 0 if catalog.run(planmod.load(everything), listed, report.say).entries else 1))

    table = Table(title=f"release rehearsal: {len(parts)} shards, results in {work}", title_justify="left")
    for column in ("step", "status", "seconds", "command"):
        table.add_column(column)
    for step in steps:
        table.add_row(step.name, "[green]passed[/]" if step.rc == 0 else f"[red]failed ({step.rc})[/]",
                      f"{step.seconds:.0f}", "dlenv " + " ".join(step.argv))
    report.console.print(table)
    report.write_json(work / "rehearsal.json", {"shards": parts, "merges": merges, "steps": [
        {"name": s.name, "argv": s.argv, "rc": s.rc, "seconds": round(s.seconds, 1)} for s in steps]})
    return 0 if all(s.rc == 0 for s in steps) else 1
