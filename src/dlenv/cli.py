"""The command line: `python -m dlenv list|bake|build|engine ...` (the nox sessions call these).

Exit codes: 0 success, 1 a build failed or something needed is missing, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError
from rich.markup import escape

from dlenv import __version__, config, engine, graph, hostconf, lock, reach, report, shards, tags
from dlenv import plan as planmod
from dlenv.errors import ConfigError, DlenvError
from dlenv.selection import Selection


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", type=Path, default=Path("matrix.yaml"), help="the family to build")
    parser.add_argument("--root", type=Path, default=None,
                        help="project folder holding images/ and recipes/ (default: the current one)")
    parser.add_argument("--select", action="append", default=[], metavar="EXPR",
                        help="build only matching variants, e.g. 'cuda=13.* flavor=devel' (repeatable)")
    parser.add_argument("--skip", action="append", default=[], metavar="EXPR",
                        help="leave out matching variants, e.g. 'recipe=ssh' (repeatable)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="only the I-th of N parts of the family (variants sharing a CUDA base stay together)")
    parser.add_argument("--allow-eol", action="store_true",
                        help="also build CUDA releases past their end of life (src/dlenv/data/cuda_releases.toml)")
    parser.add_argument("--build-id", default=None, help="override the build id (default: commit date-sha)")
    parser.add_argument("--build-suffix", default="", metavar="TEXT",
                        help="append -TEXT to the build id, e.g. w42 for a scheduled rebuild of the same commit")
    parser.add_argument("--registry", default=None, help="override `registry:` of matrix.yaml")
    net = parser.add_argument_group("mirrors and proxies (override matrix.yaml's mirrors and proxy)")
    net.add_argument("--apt-mirror", default=None, metavar="URL", help="a Debian/Ubuntu archive mirror")
    net.add_argument("--pypi-mirror", default=None, metavar="URL", help="a PyPI simple index")
    net.add_argument("--pytorch-index", default=None, metavar="URL", help="a PyTorch wheel index root (cu130/, ...)")
    net.add_argument("--registry-mirror", default=None, metavar="HOST[:PORT]", help="a registry mirror for base images")
    net.add_argument("--http-proxy", default=None, metavar="URL", help="HTTP_PROXY for builds (default: the environment's)")
    net.add_argument("--https-proxy", default=None, metavar="URL", help="HTTPS_PROXY for builds (default: the environment's)")
    net.add_argument("--no-proxy", default=None, metavar="LIST", help="NO_PROXY for builds (default: the environment's)")
    net.add_argument("--ca-bundle", type=Path, default=None, metavar="FILE",
                     help="extra CA certificates (PEM) for a TLS-intercepting proxy, given to builds as a secret")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlenv", description="Build a family of GPU-ready images.")
    parser.add_argument("--version", action="version", version=f"dlenv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="print the expanded matrix: variants, tags, layer chains, what is left out")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument("--check", action="store_true", help="also check that each variant's sources answer")

    p = sub.add_parser("bake", help="print the generated bake definition (builds nothing)")
    _common(p)
    p.add_argument("--load", action="store_true", help="load into the engine instead of pushing")

    p = sub.add_parser("build", help="build the family with one bake graph and push it")
    _common(p)
    p.add_argument("--load", action="store_true", help="load into the engine instead of pushing")
    p.add_argument("--strict", action="store_true", help="fail if any variant's sources are unreachable")
    p.add_argument("--no-check", action="store_true", help="skip the source reachability check")
    p.add_argument("--metadata", type=Path, default=None, help="write per-variant results as JSON")
    p.add_argument("--builder", default=None,
                   help="the buildx builder to use, e.g. a remote or kubernetes one (default: the engine's)")
    p.add_argument("--cache", default=None, metavar="REPO",
                   help="registry repository for the build cache, e.g. host:5000/family-cache (overrides build.cache)")
    p.add_argument("--locked", action="store_true",
                   help="fail if the lock file is missing, lacks a base, or a bootstrap differs from it")
    p.add_argument("--workdir", type=Path, default=Path("out"), help="bake file, logs and metadata")
    p.add_argument("--no-promote", action="store_true",
                   help="push immutable tags only; skip the smoke checks that would move the floating tags")
    p.add_argument("--require-gpu", action="store_true", help="smoke: a missing GPU fails instead of skipping")

    p = sub.add_parser("shards", help="split the family into N build jobs: JSON for a CI matrix")
    _common(p)
    p.add_argument("--count", type=int, required=True, help="how many jobs")
    p.add_argument("--github-output", action="store_true",
                   help="also append matrix=<json> to the file $GITHUB_OUTPUT names (GitHub Actions)")

    p = sub.add_parser("lock", help="resolve every base image and OS bootstrap to a digest in the lock file")
    _common(p)
    p.add_argument("--check", action="store_true",
                   help="write nothing: report what moved upstream since the lock (exit 1 if anything did)")
    p.add_argument("--add-missing", action="store_true",
                   help="lock only the bases the lock file lacks; never move a locked one (a release's plan job)")

    p = sub.add_parser("smoke", help="run each variant's checks in its image (GPU checks where there is a GPU)")
    _common(p)
    p.add_argument("--require-gpu", action="store_true", help="fail, instead of skipping GPU checks, without a GPU")
    p.add_argument("--junit", type=Path, default=None, help="write the verdicts as JUnit XML")
    p.add_argument("--json", type=Path, default=None, help="write the verdicts as JSON")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="instead of running: write a bundle per variant for a GPU host without an engine")
    p.add_argument("--have", type=Path, default=None, metavar="INVENTORY",
                   help="with --export: leave out the large files the GPU host has (rootfs_run.py --inventory)")

    p = sub.add_parser("promote", help="move floating tags to the tested digests of variants whose checks passed")
    _common(p)
    p.add_argument("verdicts", nargs="+", type=Path, metavar="RESULT",
                   help="smoke results: files written by `dlenv smoke --json` or rootfs_run.py --json")
    p.add_argument("--require-gpu", action="store_true", help="a variant whose GPU checks were skipped is not promoted")
    p.add_argument("--json", type=Path, default=None, help="write the promotions as JSON")

    p = sub.add_parser("catalog", help="write the family's catalog (Markdown and JSON) from the registry")
    _common(p)
    p.add_argument("--output", "-o", type=Path, default=Path("catalog"), help="folder for catalog.md and catalog.json")

    p = sub.add_parser("rehearse", help="run the release pipeline's steps against the local registry")
    _common(p)
    p.add_argument("--shards", type=int, default=2, help="how many build jobs to rehearse")
    p.add_argument("--workdir", type=Path, default=Path("out/rehearsal"), help="results of each step")
    p.add_argument("--cache", default=None, metavar="REPO", help="registry repository for the build cache")
    p.add_argument("--require-gpu", action="store_true", help="as on the GPU runners: a skipped GPU check holds a "
                                                              "variant back")

    p = sub.add_parser("compose", help="write a docker-compose.yaml to work in one of the family's images")
    p.add_argument("image", help="a tag of the family in --matrix (e.g. 13.0-runtime-debian12-py-dev-ssh) or a full reference")
    p.add_argument("--matrix", type=Path, default=Path("matrix.yaml"), help="the family a bare tag belongs to")
    p.add_argument("--output", "-o", type=Path, default=Path("docker-compose.yaml"), help="the file to write")
    p.add_argument("--name", default="dlenv", help="the compose project and service name")
    p.add_argument("--gpus", default="all", help="all, a count (2) or device ids (0,2)")
    p.add_argument("--host-ip", default="", help="publish ports on this address only (e.g. 127.0.0.1)")
    p.add_argument("--ssh-port", type=int, default=2222, help="host port for ssh (container port 22)")
    p.add_argument("--web-port", type=int, default=8888, help="host and container port of a web service")
    p.add_argument("--models", default="./models", help="host folder mounted at /models")
    p.add_argument("--code", default=".", help="host folder mounted at /workspace (the working directory)")
    p.add_argument("--cache", default="~/.cache", help="host folder mounted as the user's ~/.cache (pip, Hugging Face)")
    p.add_argument("--restart", default="unless-stopped", choices=["no", "always", "on-failure", "unless-stopped"])
    p.add_argument("--ssh-key", default=None, metavar="FILE", help="public key to log in with (default: ~/.ssh/id_*.pub)")
    p.add_argument("--user", action="store_true", help="work as a non-root user with your uid/gid (files keep their owner)")
    p.add_argument("--uid", type=int, default=None, help="that user's uid (implies --user)")
    p.add_argument("--gid", type=int, default=None, help="that user's gid (default: the uid's)")
    p.add_argument("--sudo", action="store_true", help="let that user sudo without a password")
    p.add_argument("--hf-endpoint", default="", metavar="URL", help="a Hugging Face mirror (HF_ENDPOINT)")
    p.add_argument("--pip-index", default="", metavar="URL", help="a PyPI mirror for pip in the container")

    p = sub.add_parser("doctor", help="check this host for running the family's images on its GPUs, with fixes")
    p.add_argument("image", nargs="?", default=None,
                   help="a tag of the family in --matrix (e.g. 13.0-runtime-debian12-py-torch) or a full image reference")
    p.add_argument("--matrix", type=Path, default=Path("matrix.yaml"), help="the family a bare tag belongs to")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the findings as JSON ('-': stdout)")

    p = sub.add_parser("engine", help="start, stop or show the engine and registry dlenv uses")
    p.add_argument("action", choices=["up", "down", "status"])
    return parser


NETWORK_FLAGS = {("mirrors", "apt"): "--apt-mirror", ("mirrors", "pypi"): "--pypi-mirror",
                 ("mirrors", "pytorch"): "--pytorch-index", ("mirrors", "registry"): "--registry-mirror",
                 ("proxy", "http_proxy"): "--http-proxy", ("proxy", "https_proxy"): "--https-proxy",
                 ("proxy", "no_proxy"): "--no-proxy"}


def with_network_flags(matrix: config.Matrix, args: argparse.Namespace) -> config.Matrix:
    """matrix.yaml's mirrors and proxy, with the command line's values over them."""
    update: dict[str, dict] = {"mirrors": {}, "proxy": {}}
    for (section, key), flag in NETWORK_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            update[section][key] = value
    if getattr(args, "ca_bundle", None):
        update["proxy"]["ca_bundle"] = str(args.ca_bundle.resolve())
    if not update["mirrors"] and not update["proxy"]:
        return matrix
    model = matrix.model
    validated = {}
    for section, kind in (("mirrors", config.Mirrors), ("proxy", config.Proxy)):
        try:
            validated[section] = kind.model_validate({**getattr(model, section).model_dump(), **update[section]})
        except ValidationError as exc:
            key = str(exc.errors()[0]["loc"][0])
            raise ConfigError(NETWORK_FLAGS.get((section, key), f"--{key}"), None, f"{section}.{key}",
                              exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    mirrors, proxy = validated["mirrors"], validated["proxy"]
    return dataclasses.replace(matrix, model=model.model_copy(update={"mirrors": mirrors, "proxy": proxy}))


def mirrors_for(model: config.MatrixModel, proxies: tuple[tuple[str, str], ...] = ()) -> planmod.Mirrors:
    m = model.mirrors
    return planmod.Mirrors(
        apt=m.apt or "",
        bootstrap_apt=m.apt or hostconf.debian_mirror() or "",
        bootstrap_security="" if m.apt else hostconf.debian_security_mirror() or "",
        pypi=m.pypi or hostconf.pip_index() or "",
        pytorch=m.pytorch or "",
        proxies=proxies,
        registry=m.registry or "",
    )


def load_plan(args: argparse.Namespace) -> planmod.Plan:
    selection = Selection.parse(args.select, args.skip)
    matrix = config.load(args.matrix, root=args.root)
    if args.registry is not None:
        if not args.registry:
            raise ConfigError("--registry", None, "registry", "is empty (in a workflow: is the variable it reads set?)")
        if not config.REGISTRY.match(args.registry):
            raise ConfigError("--registry", None, "registry", f"a registry is host[:port][/path] (got {args.registry!r})")
        matrix = dataclasses.replace(matrix, model=matrix.model.model_copy(update={"registry": args.registry}))
    matrix = with_network_flags(matrix, args)
    info = tags.build_info(matrix.root, args.build_id, matrix.model.source,
                           f"-{args.build_suffix}" if args.build_suffix else "")
    if (args.build_id or args.build_suffix) and not tags.valid_tag(info.build):
        flag = "--build-suffix" if args.build_suffix else "--build-id"
        raise ConfigError(flag, None, "build id", f"{info.build!r} is not valid in a tag")
    proxy = matrix.model.proxy
    extra_ca = Path(matrix.file).parent / proxy.ca_bundle if proxy.ca_bundle else None
    if extra_ca and not extra_ca.is_file():
        where = ("--ca-bundle", None) if args.ca_bundle else (matrix.file, matrix.where("proxy", "ca_bundle").line)
        raise ConfigError(*where, "proxy.ca_bundle", f"no such file: {extra_ca}")
    proxies = hostconf.use_network(proxy.http_proxy, proxy.https_proxy, proxy.no_proxy, extra_ca)
    shard = shards.parse(args.shard) if args.shard else None
    # End of life is judged on the commit's date (expand's default), not the clock: every job of
    # a release, hours apart, splits the same plan.
    plan = planmod.expand(matrix, info, mirrors_for(matrix.model, proxies), selection, allow_eol=args.allow_eol)
    return shards.only(plan, shard) if shard else plan


def pinned_plan(plan: planmod.Plan, strict: bool) -> tuple[planmod.Plan, lock.Lock | None]:
    """The plan with its bases pulled by locked digests, and the lock; what the lock lacks is said
    (or, strict, an error)."""
    path = lock.path_for(plan.matrix.file)
    found = lock.read(path)
    pinned, problems = lock.pin(plan, found, path)
    if problems:
        if strict:
            raise DlenvError(f"--locked: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                             lock.FIX)
        for problem in problems:
            report.console.print(f"[yellow]lock:[/] {escape(str(problem))}")
    return pinned, found


def build_secrets() -> tuple[graph.Secret, ...]:
    bundle = hostconf.ca_bundle()
    return (graph.Secret("cacert", bundle),) if bundle else ()


def cmd_list(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    if args.check:
        engine.ensure(say=report.say)
        gone, _ = reach.check(plan)
        plan = plan.without(gone)
    if args.json:
        report.write_json(None, report.plan_json(plan))
    else:
        report.plan_table(plan)
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ConfigError("--count", None, "count", f"at least one job (got {args.count})")
    data = shards.matrix(load_plan(args), args.count)
    text = json.dumps(data, separators=(",", ":"))
    print(text)
    if args.github_output:
        target = os.environ.get("GITHUB_OUTPUT")
        if not target:
            raise DlenvError("--github-output: $GITHUB_OUTPUT is not set", "run it in a GitHub Actions step")
        with open(target, "a") as handle:
            handle.write(f"matrix={text}\n")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    args.allow_eol = True   # a later --allow-eol --locked build finds its bases locked too
    plan = load_plan(args)
    engine.ensure(say=report.say)
    path = lock.path_for(plan.matrix.file)
    old = lock.read(path)
    if args.check:
        if old is None:
            raise DlenvError(f"no lock file {path}", lock.FIX)
        new, unresolved = lock.make(plan, report.say, keep=False)
        moved = lock.compare(old, new)
        for problem in unresolved:
            report.console.print(f"[yellow]not checked:[/] {escape(str(problem))}")
        for problem in moved:
            report.console.print(f"[red]stale:[/] {escape(str(problem))}")
        if moved or unresolved:
            report.say(f"{path}: {len(moved)} bases moved since the lock, {len(unresolved)} could not be checked")
            return 1
        report.say(f"{path}: every base is as locked")
        return 0
    new, unresolved = lock.make(plan, report.say, besides=old if args.add_missing else None)
    for problem in unresolved:
        report.console.print(f"[yellow]not locked:[/] {escape(str(problem))}")
    if old is not None and not args.add_missing:
        # A base that cannot be resolved from here, or that a partial plan (--select, --shard)
        # does not use, keeps its entry.
        partial = any(s.strip() for s in [*args.select, *args.skip]) or bool(args.shard)
        keep = {p.what for p in unresolved}
        new = lock.Lock({**{k: v for k, v in old.images.items() if partial or k in keep}, **new.images},
                        {**(old.rootfs if partial else {}), **new.rootfs})
    added = sorted(set(new.images) - set(old.images if old else {})) + \
        sorted(set(new.rootfs) - set(old.rootfs if old else {}))
    lock.write(path, new)
    report.say(f"wrote {path}: {len(new.images)} images, {len(new.rootfs)} OS bootstraps"
               + (f"; added {', '.join(added)} (commit the lock file to keep them)" if args.add_missing and added
                  else ""))
    return 0


def cmd_bake(args: argparse.Namespace) -> int:
    plan, _ = pinned_plan(load_plan(args), strict=False)
    sys.stdout.write(graph.render(graph.definition(plan, "load" if args.load else "push", build_secrets(),
                                                   graph.Options(cache=plan.matrix.model.build.cache))))
    return 0


def build_cache(value: str) -> str:
    """--cache, validated like build.cache in matrix.yaml."""
    try:
        return config.BuildSettings(cache=value).cache
    except ValidationError as exc:
        raise ConfigError("--cache", None, "build.cache", exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


def cmd_build(args: argparse.Namespace) -> int:
    from dlenv import sbom
    from dlenv.build import Builder, capabilities, export_options

    plan = load_plan(args)
    cache = build_cache(args.cache) if args.cache is not None else None   # bad input: before anything starts
    if not plan.variants:
        raise DlenvError("nothing to build: every combination is left out", "see `nox -s list`")
    say = report.say
    engine.ensure(say=say)
    if not args.load:
        engine.ensure_registry(plan.matrix.model.registry, say=say)
    if not args.no_check:
        gone, _ = reach.check(plan)
        if gone:
            if args.strict:
                first = next(iter(gone.values()))
                raise DlenvError(f"{len(gone)} variants have unreachable sources, e.g. {first.id}: {first.detail}",
                                 first.fix)
            rows = {}
            for left in gone.values():
                rows.setdefault((left.detail, left.fix), []).append(left.id)
            for (detail, fix), ids in rows.items():
                report.console.print(f"[yellow]skipping {len(ids)} variants[/]: {escape(detail)}\n  fix: {escape(fix)}")
            plan = plan.without(gone)
            if not plan.variants:
                raise DlenvError("every selected variant has unreachable sources", "see the fixes above")
            say(f"building the {len(plan.variants)} reachable variants (--strict makes this an error)")
    plan, found = pinned_plan(plan, args.locked)
    if found:
        stale = lock.verify_rootfs(plan, found, say)
        if stale and args.locked:
            raise DlenvError(f"--locked: {stale[0]}", lock.FIX)
        for problem in stale:
            report.console.print(f"[yellow]lock:[/] {escape(str(problem))}")
    options = None
    if not args.load:
        settings = plan.matrix.model.build
        if args.cache is not None:
            settings = settings.model_copy(update={"cache": cache})
        caps = capabilities(args.builder)
        scanner = sbom.scanner(plan, caps, args.workdir, say) if caps.attestations else None
        options, notes = export_options(settings, caps, scanner, graph.credentials_in_args(plan))
        for note in notes:
            report.console.print(f"[yellow]{escape(note)}[/]")
    with report.LiveBoard(plan) as board:
        results = Builder(plan, args.workdir, "load" if args.load else "push", build_secrets(),
                          args.builder, board, say, options).run()
    skipped = [r for r in plan.left_out if r.reason == "unreachable"]
    from dlenv.build import Result

    results += [Result(left.id, "skipped", error=f"unreachable: {left.detail}") for left in skipped]
    report.summary_table(plan, results)
    data = report.results_json(plan, results)
    built = {r.variant for r in results if r.status == "built"}
    if built and not args.load and not args.no_promote:
        from dlenv import release, smoke

        runner = smoke.DockerRunner(plan, args.require_gpu)
        verdicts = [v for variant in plan.variants if variant.id in built for v in runner.variant(variant)]
        report.smoke_table(verdicts)
        statuses: dict[str, list[str]] = {}
        for v in verdicts:
            statuses.setdefault(v.variant, []).append(v.status)
        promotions = release.promote(plan, [v for v in plan.variants if v.id in built], statuses, runner.digests)
        report.promotions(promotions)
        data["smoke"] = [v.to_json() for v in verdicts]
        data["promotions"] = [p.to_json() for p in promotions]
    if args.metadata:
        report.write_json(args.metadata, data)
    failed = [r for r in results if r.status in ("failed", "not attempted")]
    held = [p for p in data.get("promotions", []) if not p["promoted"]]
    if failed:
        report.console.print(f"[bold red]{len(failed)} of {len(results)} variants did not build[/]")
    if held:
        report.console.print(f"[bold red]{len(held)} built variants were not promoted[/] (their floating tags "
                             "stay where they were)")
    return 1 if failed or held else 0


def cmd_smoke(args: argparse.Namespace) -> int:
    from dlenv import smoke

    plan = load_plan(args)
    engine.ensure(say=report.say)
    if args.export:
        have = smoke.read_inventory(args.have) if args.have else None
        folder = smoke.checks_folder()
        for devel in (v for v in plan.variants if v.flavor == "devel" and not v.stack):
            report.say(f"compiled {smoke.build_kernel(plan, devel, folder).name} with {devel.id}'s nvcc")
        for variant in plan.variants:
            bundle = smoke.export_bundle(plan, variant, args.export, folder, have)
            size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
            donor = " --donor DIR" if (bundle / "donated.json").exists() else ""
            report.say(f"{bundle}: {report.human_size(size)} "
                       f"(run: python3 {bundle.name}/rootfs_run.py {bundle.name}{donor})")
        return 0
    runner = smoke.DockerRunner(plan, args.require_gpu)
    verdicts = []
    for variant in plan.variants:
        mine = runner.variant(variant)
        verdicts += mine
        report.say(f"{variant.id}: " + ", ".join(f"{n} {s}" for s in ("passed", "failed", "skipped")
                                                   if (n := sum(v.status == s for v in mine))))
    report.smoke_table(verdicts)
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_text(smoke.junit(verdicts))
    if args.json:
        report.write_json(args.json, {"image": plan.image, "digests": runner.digests,
                                      "verdicts": [v.to_json() for v in verdicts]})
    return 1 if any(v.status == "failed" for v in verdicts) else 0


def cmd_promote(args: argparse.Namespace) -> int:
    from dlenv import release

    plan = load_plan(args)
    statuses, digests, gpu = release.read_verdicts(args.verdicts)
    if not engine.registry_answers(plan.matrix.model.registry):
        raise DlenvError(f"registry {plan.matrix.model.registry} is unreachable",
                         "promote against the registry the variants were pushed to (--registry)")
    # --require-gpu: every GPU check must have run somewhere (skipped everywhere holds it back).
    held = {vid: "a GPU check was skipped in every result (--require-gpu): floating tags left where they were"
            for vid, checks in gpu.items()
            if args.require_gpu and any(all(s == "skipped" for s in states) for states in checks.values())}
    promotions = release.promote(plan, [v for v in plan.variants if v.id not in held], statuses, digests)
    promotions += [release.Promotion(vid, False, "", (), why) for vid, why in held.items()
                   if any(v.id == vid for v in plan.variants)]
    report.promotions(promotions)
    if args.json:
        report.write_json(args.json, {"image": plan.image, "promotions": [p.to_json() for p in promotions]})
    held_back = [p for p in promotions if not p.promoted]
    if held_back:
        report.console.print(f"[bold red]{len(held_back)} of {len(promotions)} variants were not promoted[/]")
    return 1 if held_back else 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from dlenv import catalog

    args.allow_eol = True   # published images of a release past its end of life are listed, marked
    plan = load_plan(args)
    engine.ensure(say=report.say)
    entries, unpublished = catalog.gather(plan)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    md, js = catalog.write(args.output, entries, unpublished, now)
    report.say(f"wrote {md} and {js}: {len(entries)} published variants"
               + (f", {len(unpublished)} not published" if unpublished else ""))
    return 0 if entries else 1


def cmd_rehearse(args: argparse.Namespace) -> int:
    from dlenv import rehearsal

    return rehearsal.run(args)


def family(matrix: Path) -> config.MatrixModel | None:
    """The family in --matrix, for commands that also work without one."""
    return config.load(matrix).model if matrix.exists() else None


def image_ref(image: str | None, matrix: Path, model: config.MatrixModel | None) -> str | None:
    """A bare tag names an image of the family in matrix; anything else is a full reference."""
    if image and "/" not in image and ":" not in image:
        if model is None:
            raise ConfigError(str(matrix), None, "file", f"not found, so the bare tag {image!r} names no image")
        return f"{model.registry}/{model.repository}:{image}"
    return image


def cmd_doctor(args: argparse.Namespace) -> int:
    from dlenv import doctor

    return doctor.run(image_ref(args.image, args.matrix, family(args.matrix) if args.image else None), args.json)


def cmd_compose(args: argparse.Namespace) -> int:
    import subprocess

    from dlenv import compose

    for port in (args.ssh_port, args.web_port):
        if not 1 <= port <= 65535:
            raise ConfigError("--ssh-port/--web-port", None, "port", f"{port} is not a port number")
    model = family(args.matrix)
    mirrors = model.mirrors if model else config.Mirrors()
    if (args.sudo or args.gid is not None) and not (args.user or args.uid is not None):
        raise ConfigError("--sudo/--gid", None, "user", "they are about the non-root user: add --user or --uid")
    uid = args.uid if args.uid is not None else (os.getuid() if args.user else None)
    gid = args.gid if args.gid is not None else (os.getgid() if args.user and args.uid is None else None)
    options = compose.ComposeOptions(
        image=image_ref(args.image, args.matrix, model), name=args.name, gpus=args.gpus, host_ip=args.host_ip,
        ssh_port=args.ssh_port, web_port=args.web_port, models=args.models, code=args.code, cache=args.cache,
        restart=args.restart, ssh_key=compose.find_ssh_key(args.ssh_key), uid=uid, gid=gid, sudo=args.sudo,
        environment=compose.run_environment(args.hf_endpoint or mirrors.huggingface or "",
                                            args.pip_index or mirrors.pypi or ""))
    text = compose.render(options)   # a bad --gpus is an error here, before anything is written
    found = engine.find()
    if found:
        check = subprocess.run(["docker", "compose", "-f", "-", "config", "-q"], input=text, capture_output=True,
                               text=True, env=dict(os.environ, DOCKER_HOST=found[0]))
        if "is not a docker command" in check.stderr:
            report.say("docker compose is not installed here: the file was not validated")
        elif check.returncode != 0:
            raise DlenvError(f"docker compose rejects the file: {' '.join(check.stderr.split())[:300]}")
    path = compose.write(options, text, args.output)
    report.say(f"wrote {path}: `docker compose -f {path} up -d` (no GPU: `up -d {args.name}-cpu`), "
               f"then `ssh -p {args.ssh_port} {'dev' if uid is not None else 'root'}@localhost`")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    say = report.say
    if args.action == "up":
        found = engine.ensure(say=say)
        engine.ensure_registry(engine.DEFAULT_REGISTRY, say=say)
        say(f"engine: {found.host} (Docker {found.server_version}, buildx {found.buildx_version})")
        print(f"export DOCKER_HOST={found.host}")
    elif args.action == "down":
        engine.down(say=say)
    else:
        for key, value in engine.status().items():
            say(f"{key}: {value}")
    return 0


COMMANDS = {"list": cmd_list, "bake": cmd_bake, "build": cmd_build, "shards": cmd_shards, "lock": cmd_lock,
            "smoke": cmd_smoke, "promote": cmd_promote, "catalog": cmd_catalog, "rehearse": cmd_rehearse,
            "compose": cmd_compose, "doctor": cmd_doctor, "engine": cmd_engine}


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(raw)
    args.raw = raw[raw.index(args.command) + 1:]   # what followed the command (rehearse passes it on)
    try:
        return COMMANDS[args.command](args)
    except DlenvError as exc:
        # One line, however long: machines and people grep for it.
        report.console.print(f"[bold red]dlenv: error:[/] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        report.console.print("dlenv: interrupted")
        return 130
