"""A dress rehearsal of .github/workflows/release.yml on one machine, against the local registry.

The same commands as the workflow's jobs, in the same order and with the same options: the
shard matrix through $GITHUB_OUTPUT, each shard built with --locked and the registry cache and
pushed without moving floating tags, each shard smoke-tested to JSON, one promotion from all the
results, then the catalog. A step that fails does not stop the later ones (the workflow's jobs
do not either); the exit code says whether every step passed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from dataclasses import dataclass

from rich.table import Table

from dlenv import report
from dlenv.errors import ConfigError


@dataclass
class Step:
    name: str
    argv: list[str]
    rc: int = -1
    seconds: float = 0.0


# The options of `dlenv rehearse` itself; everything else goes to every step.
OWN = {"--shards": True, "--workdir": True, "--cache": True, "--require-gpu": False}


def common_args(raw: list[str]) -> list[str]:
    """raw (what followed `rehearse`) without rehearse's own options."""
    out, skip = [], False
    for index, arg in enumerate(raw):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in OWN:
            skip = OWN[name] and "=" not in arg and index + 1 < len(raw)
            continue
        out.append(arg)
    return out


def _call(step: Step) -> Step:
    from dlenv.cli import main

    report.console.rule(f"[bold]{step.name}[/]: dlenv {' '.join(step.argv)}")
    started = time.monotonic()
    step.rc = main(step.argv)
    step.seconds = time.monotonic() - started
    return step


def run(args: argparse.Namespace) -> int:
    from dlenv.cli import load_plan

    if args.shard:
        raise ConfigError("--shard", None, "shard", "the rehearsal builds every shard: give --shards N instead")
    plan = load_plan(args)   # bad input stops here, before anything is built
    common = common_args(args.raw)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = args.cache or f"{plan.matrix.model.registry}/{plan.matrix.model.repository}-cache"
    gpu = ["--require-gpu"] if args.require_gpu else []
    steps: list[Step] = []

    output = work / "github-output"
    output.write_text("")
    plan_step = Step("plan", ["shards", "--count", str(args.shards), "--github-output", *common])
    with contextlib.redirect_stdout(io.StringIO()):
        old = os.environ.get("GITHUB_OUTPUT")
        os.environ["GITHUB_OUTPUT"] = str(output)
        try:
            steps.append(_call(plan_step))
        finally:
            if old is None:
                os.environ.pop("GITHUB_OUTPUT")
            else:
                os.environ["GITHUB_OUTPUT"] = old
    lines = [line for line in output.read_text().splitlines() if line.startswith("matrix=")]
    shards = json.loads(lines[-1].removeprefix("matrix="))["include"] if plan_step.rc == 0 and lines else []

    for index, entry in enumerate(shards):
        shard = entry["shard"]
        steps.append(_call(Step(f"build {shard}", [
            "build", "--shard", shard, *common, "--cache", cache, "--locked", "--no-promote",
            "--workdir", str(work / f"build-{index}"), "--metadata", str(work / f"build-{index}.json")])))
    results = []
    for index, entry in enumerate(shards):
        results.append(work / f"smoke-{index}.json")
        steps.append(_call(Step(f"smoke {entry['shard']}", [
            "smoke", "--shard", entry["shard"], *common, *gpu, "--json", str(results[-1]),
            "--junit", str(work / f"smoke-{index}.xml")])))
    found = [str(p) for p in results if p.exists()]
    if found:
        steps.append(_call(Step("promote", ["promote", *common, *gpu, *found])))
    else:
        steps.append(Step("promote", ["promote"], rc=1))
    steps.append(_call(Step("catalog", ["catalog", *common, "--output", str(work / "catalog")])))

    table = Table(title=f"release rehearsal: {len(shards)} shards, results in {work}", title_justify="left")
    for column in ("step", "status", "seconds", "command"):
        table.add_column(column)
    for step in steps:
        table.add_row(step.name, "[green]passed[/]" if step.rc == 0 else f"[red]failed ({step.rc})[/]",
                      f"{step.seconds:.0f}", "dlenv " + " ".join(step.argv))
    report.console.print(table)
    report.write_json(work / "rehearsal.json", {"shards": shards, "steps": [
        {"name": s.name, "argv": s.argv, "rc": s.rc, "seconds": round(s.seconds, 1)} for s in steps]})
    return 0 if all(s.rc == 0 for s in steps) else 1
