"""The command line: `python -m dlenv list|bake|build|engine ...` (the nox sessions call these).

It parses, calls one stage's front door, and prints; the options are declared once, in
options.py. Exit codes: 0 success, 1 a build failed or something needed is missing, 2 bad input.
Stages that drive the engine are imported by the commands that use them, so that `dlenv --help`
or `dlenv doctor` on a bare GPU host loads no engine client.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rich.markup import escape

from dlenv import __version__, compose, config, engine, interrupt, options, report
from dlenv import plan as planmod
from dlenv.errors import DlenvError
from dlenv.options import (
    BakeRequest,
    BuildRequest,
    CatalogRequest,
    DoctorRequest,
    EngineRequest,
    ListRequest,
    LockRequest,
    MergeRequest,
    PlanRequest,
    PromoteRequest,
    RehearseRequest,
    ShardsRequest,
    SmokeRequest,
)


def cmd_list(plan: planmod.Plan, request: ListRequest) -> int:
    if request.check:
        from dlenv import reach

        plan = reach.reachable(plan, report.say)
    if request.json:
        report.write_json(None, report.plan_json(plan))
    else:
        report.plan_table(plan)
    return 0


def cmd_bake(plan: planmod.Plan, request: BakeRequest) -> int:
    from dlenv import graph, lock

    plan, _, problems = lock.pinned(plan, strict=False)
    for problem in problems:
        report.warn(f"lock: {problem}")
    sys.stdout.write(graph.bake_file(plan, "load" if request.load else "push"))
    return 0


def cmd_build(plan: planmod.Plan, request: BuildRequest) -> int:
    from dlenv import main_job

    job = main_job.run(plan, request)
    if job.failed:
        report.console.print(f"[bold red]{len(job.failed)} of {len(job.build.results)} variants did not build[/]")
    if job.held:
        report.console.print(f"[bold red]{len(job.held)} built variants were not promoted[/] (their floating tags "
                             "stay where they were)")
    return job.exit_code


def cmd_shards(plan: planmod.Plan, request: ShardsRequest) -> int:
    from dlenv import shards

    text = json.dumps(shards.matrix(plan, request.count), separators=(",", ":"))
    for line in shards.fits(plan, request.count):
        report.say(line)
    print(text)
    if request.github_output:
        target = os.environ.get("GITHUB_OUTPUT")
        if not target:
            raise DlenvError("--github-output: $GITHUB_OUTPUT is not set", "run it in a GitHub Actions step")
        # matrix: a build (and smoke) job per shard and platform; shards: a merge job per shard.
        with open(target, "a") as handle:
            handle.write(f"matrix={text}\nshards={json.dumps(shards.merges(plan, request.count), separators=(',', ':'))}\n")
            # build1, build2, ...: the build jobs of each stage (a stage pulls what the one before pushed).
            handle.writelines(f"{key}={value}\n" for key, value in shards.stages(plan, request.count).items())
    return 0


def cmd_lock(plan: planmod.Plan, request: LockRequest) -> int:
    from dlenv import lock

    result = lock.update(plan, request, report.say)
    for problem in result.unresolved:
        report.warn(f"{'not checked' if result.checked else 'not locked'}: {problem}")
    if result.checked:
        for problem in result.moved:
            report.console.print(f"[red]stale:[/] {escape(str(problem))}")
        if result.moved or result.unresolved:
            report.say(f"{result.path}: {len(result.moved)} bases moved since the lock, "
                       f"{len(result.unresolved)} could not be checked")
            return 1
        report.say(f"{result.path}: every base is as locked")
        return 0
    assert result.lock is not None
    report.say(f"wrote {result.path}: {len(result.lock.images)} images, {len(result.lock.rootfs)} OS bootstraps"
               + (f"; added {', '.join(result.added)} (commit the lock file to keep them)"
                  if request.add_missing and result.added else ""))
    return 0


def cmd_smoke(plan: planmod.Plan, request: SmokeRequest) -> int:
    from dlenv import smoke

    result = smoke.run(plan, request, report.say)
    if not request.export:
        report.smoke_table(list(result.verdicts))
    return 1 if result.failed else 0


def cmd_promote(plan: planmod.Plan, request: PromoteRequest) -> int:
    from dlenv import release

    promotions = release.run(plan, request)
    report.promotions(promotions)
    held = [p for p in promotions if not p.promoted]
    if held:
        report.console.print(f"[bold red]{len(held)} of {len(promotions)} variants were not promoted[/]")
    return 1 if held else 0


def cmd_merge(plan: planmod.Plan, request: MergeRequest) -> int:
    from dlenv import merge

    merged = merge.run(plan, request, report.say)
    missing = [m for m in merged if not m.merged]
    if missing:
        report.console.print(f"[bold red]{len(missing)} of {len(merged)} tags were not merged[/]")
    return 1 if missing else 0


def cmd_catalog(plan: planmod.Plan, request: CatalogRequest) -> int:
    from dlenv import catalog

    result = catalog.run(plan, request, report.say)
    report.say(f"wrote {result.index} (the page), {result.markdown} and {result.machine}: "
               f"{result.entries} published variants"
               + (f", {result.unpublished} not published" if result.unpublished else ""))
    return 0 if result.entries else 1


def cmd_rehearse(plan_request: PlanRequest, request: RehearseRequest) -> int:
    from dlenv import rehearsal

    return rehearsal.run(plan_request, request)


@dataclass(frozen=True)
class MatrixCommand:
    """A command that takes a matrix: the plan's options, then its own request's."""

    help: str
    request: type
    run: Callable[[Any, Any], int]
    plan_defaults: dict = field(default_factory=dict)   # what the command sets over the plan's options (no flags)
    takes_plan: bool = True                             # run gets the loaded plan (else the PlanRequest)


MATRIX_COMMANDS = {
    "list": MatrixCommand("print the expanded matrix: variants, tags, layer chains, what is left out",
                          ListRequest, cmd_list),
    "bake": MatrixCommand("print the generated bake definition (builds nothing)", BakeRequest, cmd_bake),
    "build": MatrixCommand("build the family with one bake graph and push it", BuildRequest, cmd_build),
    "shards": MatrixCommand("split the family into N build jobs: JSON for a CI matrix", ShardsRequest, cmd_shards),
    # lock and catalog see past end of life: a later --allow-eol --locked build finds its bases
    # locked, and published images of a release past its end of life are listed, marked.
    "lock": MatrixCommand("resolve every base image and OS bootstrap to a digest in the lock file",
                          LockRequest, cmd_lock, {"allow_eol": True}),
    "smoke": MatrixCommand("run each variant's checks in its image (GPU checks where there is a GPU)",
                           SmokeRequest, cmd_smoke),
    "merge": MatrixCommand("join each variant's per-platform tags (--per-platform builds) into one index per tag",
                           MergeRequest, cmd_merge, {"per_platform": False}),
    "promote": MatrixCommand("move floating tags to the tested digests of variants whose checks passed",
                             PromoteRequest, cmd_promote),
    "catalog": MatrixCommand("write the family's catalog (a web page, Markdown and JSON) from the registry",
                             CatalogRequest, cmd_catalog, {"allow_eol": True}),
    "rehearse": MatrixCommand("run the release pipeline's steps against the local registry",
                              RehearseRequest, cmd_rehearse, takes_plan=False),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlenv", description="Build a family of GPU-ready images.")
    parser.add_argument("--version", action="version", version=f"dlenv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in MATRIX_COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        options.add_arguments(p, PlanRequest, without=command.plan_defaults)
        options.add_arguments(p, command.request)

    p = sub.add_parser("compose", help="write a docker-compose.yaml to work in one of the family's images")
    options.add_arguments(p, compose.Request)

    p = sub.add_parser("doctor", help="check this host for running the family's images on its GPUs, with fixes")
    options.add_arguments(p, DoctorRequest)

    p = sub.add_parser("engine", help="start, stop or show the engine and registry dlenv uses")
    options.add_arguments(p, EngineRequest)
    return parser


def cmd_doctor(args: argparse.Namespace) -> int:
    from dlenv import doctor

    request = options.from_args(DoctorRequest, args)
    return doctor.run(config.image_ref(request.image, request.matrix) if request.image else None, request.json)


def cmd_compose(args: argparse.Namespace) -> int:
    request = options.from_args(compose.Request, args)
    model = config.family(request.matrix)
    request = options.from_matrix(replace(request, image=config.image_ref(request.image, request.matrix, model)), model)
    written = compose.run(request, report.say)
    if isinstance(written, str):
        sys.stdout.write(written)
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    request = options.from_args(EngineRequest, args)
    if request.action == "up":
        found = engine.up(say=report.say)
        report.say(f"engine: {found.host} (Docker {found.server_version}, buildx {found.buildx_version})")
        print(f"export DOCKER_HOST={found.host}")
    elif request.action == "down":
        engine.down(say=report.say)
    else:
        for key, value in engine.status().items():
            report.say(f"{key}: {value}")
    return 0


OTHER_COMMANDS = {"compose": cmd_compose, "doctor": cmd_doctor, "engine": cmd_engine}


def run_matrix_command(name: str, args: argparse.Namespace) -> int:
    command = MATRIX_COMMANDS[name]
    plan_request = options.from_args(PlanRequest, args, **command.plan_defaults)
    request = options.from_args(command.request, args)
    if not command.takes_plan:
        return command.run(plan_request, request)
    return command.run(planmod.load(plan_request, request), request)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    previous = interrupt.install()   # SIGINT and SIGTERM: children stopped, exit 130 or 143
    try:
        if args.command in MATRIX_COMMANDS:
            return run_matrix_command(args.command, args)
        return OTHER_COMMANDS[args.command](args)
    except DlenvError as exc:
        report.error(exc)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return interrupt.stopped(exc, report.say)
    finally:
        interrupt.restore(previous)
