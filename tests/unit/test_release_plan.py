"""The pure parts of a release: shards, the lock file, what the bake exports, end of life."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import tarfile
from pathlib import Path

import pytest

from dlenv import graph, hostconf, lock, options, shards
from dlenv.build import Capabilities, export_options
from dlenv.cli import make_parser
from dlenv.config import BuildSettings
from dlenv.errors import ConfigError
from dlenv.options import BuildRequest, PlanRequest, PromoteRequest
from helpers import REPO, SMALL, expand, reasons

# --- shards -----------------------------------------------------------------------------------


# A runner with room for any group of SMALL: groups stay whole (test_fit.py cuts them).
ROOMY = SMALL + "build: {runner_disk: 1000}\n"


def test_shards_cover_every_variant_once_and_keep_a_cuda_base_in_one_shard(project):
    p = expand(project, ROOMY)
    for count in (1, 2, 3, 5, 8):
        parts = shards.split(p, count)
        assert len(parts) == count
        ids = [v.id for part in parts for v in part]
        assert sorted(ids) == sorted(v.id for v in p.variants)
        # No CUDA base node is built by two shards.
        owners: dict[str, int] = {}
        for index, part in enumerate(parts):
            for v in part:
                for node in v.chain:
                    if p.nodes[node].kind == "cuda" or (p.nodes[node].kind == "os" and p.nodes[node].upstream
                                                        and "cuda" in p.nodes[node].upstream):
                        assert owners.setdefault(node, index) == index, (node, count)


def test_shards_are_balanced_by_distinct_nodes_and_deterministic(project):
    p = expand(project)
    parts = shards.split(p, 3)
    assert parts == shards.split(expand(project), 3)
    weights = [len({n for v in part for n in v.chain}) for part in parts]
    assert max(weights) - min(weights) <= max(weights) // 2, weights


def test_more_shards_than_groups_leaves_some_empty_and_the_ci_matrix_skips_them(project):
    p = expand(project, ROOMY, select=["cuda=13.0.2 os=debian12"])
    data = shards.matrix(p, 4)
    assert [e["shard"] for e in data["include"]] == ["1/4"]
    assert data["include"][0]["count"] == len(p.variants)
    assert data["include"][0]["variants"].split() == [v.id for v in p.variants]


def test_only_keeps_its_shard_and_says_where_the_rest_went(project):
    p = expand(project)
    mine = shards.only(p, shards.parse("2/3"))
    assert [v.id for v in mine.variants] == [v.id for v in shards.split(p, 3)[1]]
    other = [x for x in mine.left_out if x.reason == "unselected"]
    assert other and all("another shard than 2/3" in x.detail for x in other)
    assert set(mine.nodes) == {n for v in mine.variants for n in v.chain}


TWO_PLATFORMS = SMALL + """platforms: [linux/amd64, linux/arm64]
include:
  - {cuda: 13.0.2, flavor: base, os: debian12, stack: [python, devtools, ssh], platforms: [linux/amd64]}
"""


def test_the_build_matrix_has_a_job_per_shard_and_platform_and_the_merge_matrix_one_per_shard(project):
    p = expand(project, TWO_PLATFORMS)
    amd64_only = [v.id for v in p.variants if v.platforms == ("linux/amd64",)]
    assert amd64_only and len(p.platforms) == 2
    for count in (1, 2, 3):
        parts = [part for part in shards.split(p, count) if part]
        merges = shards.merges(p, count)["include"]
        assert [e["variants"].split() for e in merges] == [[v.id for v in part] for part in parts]
        jobs = shards.matrix(p, count)["include"]
        assert [(e["shard"], e["platform"], e["variants"].split()) for e in jobs] == [
            (m["shard"], platform, [v.id for v in part if platform in v.platforms])
            for m, part in zip(merges, parts, strict=True) for platform in p.platforms
            if any(platform in v.platforms for v in part)]
        assert all(e["count"] == len(e["variants"].split()) for e in jobs)


def test_a_platforms_job_of_a_shard_holds_that_shards_variants_which_have_the_platform(project):
    """The split is the whole family's: --platform narrows a shard's variants, never moves them
    to another shard (each platform's build job and the shard's merge job must agree)."""
    from dlenv import plan

    (project / "matrix.yaml").write_text(TWO_PLATFORMS)
    for count in (2, 3):
        for index in range(1, count + 1):
            shard = f"{index}/{count}"
            whole = plan.load(PlanRequest(matrix=project / "matrix.yaml", root=project, shard=shard))
            arm = plan.load(PlanRequest(matrix=project / "matrix.yaml", root=project, shard=shard,
                                        platform=("linux/arm64",)))
            assert [v.id for v in arm.variants] == [v.id for v in whole.variants if "linux/arm64" in v.platforms]


def test_a_per_platform_build_tags_each_image_with_its_platform_and_moves_no_floating_tag(project):
    from dlenv import plan
    from dlenv.tags import platform_tag

    (project / "matrix.yaml").write_text(TWO_PLATFORMS)
    request = PlanRequest(matrix=project / "matrix.yaml", root=project, build_id="20260101-abc")
    whole = plan.load(request)
    for platform in whole.platforms:
        one = plan.load(dataclasses.replace(request, platform=(platform,), per_platform=True))
        assert [v.id for v in one.variants] == [v.id for v in whole.variants if platform in v.platforms]
        for v in one.variants:
            assert v.immutable == platform_tag(whole.variant(v.id).immutable, platform)
            assert v.immutable.endswith("-" + platform.split("/")[1]) and v.floating == () and v.tags == (v.immutable,)
    with pytest.raises(ConfigError, match=r"--per-platform: platform: .* \(add --platform"):
        plan.load(dataclasses.replace(request, per_platform=True))


def test_merge_has_no_per_platform_flag_it_joins_what_such_builds_pushed(capsys):
    parser = make_parser()
    assert parser.parse_args(["build", "--per-platform"]).per_platform
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["merge", "--per-platform"])
    assert exit_.value.code == 2 and "unrecognized arguments: --per-platform" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "1/0", ""])
def test_bad_shard_specs_are_config_errors(text):
    with pytest.raises(ConfigError, match="I/N"):
        shards.parse(text)


# --- the lock file ----------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64


def rootfs_tar(path: Path, packages: dict[str, str]) -> Path:
    status = "\n\n".join(f"Package: {n}\nStatus: install ok installed\nVersion: {v}\nDescription: x\n y"
                         for n, v in packages.items())
    status += "\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("./var/lib/dpkg/status")
        info.size = len(status.encode())
        tar.addfile(info, io.BytesIO(status.encode()))
    return path


def test_dpkg_packages_lists_installed_packages_only(tmp_path):
    tar = rootfs_tar(tmp_path / "rootfs.tar", {"libc6": "2.36-9", "bash": "5.2"})
    assert lock.dpkg_packages(tar) == ("bash=5.2", "libc6=2.36-9")


def test_lock_round_trips_and_names_its_file(tmp_path):
    written = lock.Lock({"ubuntu:24.04": DIGEST},
                        {("debian12", "linux/amd64"): lock.RootfsLock("bookworm", ("a=1",), "f" * 64),
                         ("debian12", "linux/arm64"): lock.RootfsLock("bookworm", ("b=1",), "e" * 64)})
    path = lock.path_for(tmp_path / "matrix.yaml")
    assert path.name == "matrix.lock.json"
    lock.write(path, written)
    assert json.loads(path.read_text())["version"] == lock.VERSION
    assert lock.read(path) == written
    assert lock.read(tmp_path / "none.lock.json") is None


def test_a_version_1_lock_is_read_as_linux_amd64s(tmp_path):
    path = tmp_path / "matrix.lock.json"
    path.write_text(json.dumps({"version": 1, "images": {"ubuntu:24.04": DIGEST},
                                "rootfs": {"debian12": {"suite": "bookworm", "sha256": "f" * 64, "packages": ["a=1"]}}}))
    assert lock.read(path) == lock.Lock({"ubuntu:24.04": DIGEST},
                                        {("debian12", "linux/amd64"): lock.RootfsLock("bookworm", ("a=1",), "f" * 64)})


def test_a_lock_pins_each_platforms_bootstrap_and_an_index_with_each_platform(project, tmp_path):
    p = expand(project, SMALL + "platforms: [linux/amd64, linux/arm64]\n")
    amd64 = lock.RootfsLock("bookworm", ("a=1",), "f" * 64)
    _, problems = lock.pin(p, lock.Lock({}, {("debian12", "linux/amd64"): amd64}), Path("matrix.lock.json"))
    assert "debian12 linux/arm64" in {x.what for x in problems}
    assert "debian12 linux/amd64" not in {x.what for x in problems}


@pytest.mark.parametrize("text, expected", [
    ("{", "line 1"),
    ('{"version": 9, "images": {}, "rootfs": {}}', "version 9"),
    ('{"version": 1, "images": {"x": "latest"}, "rootfs": {}}', "images.x is not a sha256 digest"),
    ('{"version": 1, "images": {}}', "rootfs"),
])
def test_a_malformed_lock_is_a_config_error_with_the_fix(tmp_path, text, expected):
    path = tmp_path / "matrix.lock.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        lock.read(path)
    assert expected in str(err.value) and "nox -s lock" in str(err.value)


def test_pin_pulls_locked_images_by_digest_and_reports_what_the_lock_lacks(project):
    p = expand(project)
    locked = lock.Lock({"ubuntu:24.04": DIGEST}, {})
    pinned, problems = lock.pin(p, locked, Path("matrix.lock.json"))
    assert pinned.nodes["os-ubuntu24_04"].base_image == f"ubuntu:24.04@{DIGEST}"
    assert graph.definition(pinned)["target"]["os-ubuntu24_04"]["contexts"]["base"] == \
        f"docker-image://ubuntu:24.04@{DIGEST}"
    missing = {x.what for x in problems}
    assert "nvidia/cuda:12.6.3-base-ubuntu24.04" in missing and "debian12 linux/amd64" in missing
    assert "ubuntu:24.04" not in missing
    _, none = lock.pin(p, None, Path("matrix.lock.json"))
    assert len(none) == 1 and "no lock file" in str(none[0])


def test_pin_keys_images_by_their_upstream_name_through_a_registry_mirror(project):
    p = expand(project, mirrors=dataclasses.replace(expand(project).mirrors, registry="mirror.invalid:5000"))
    pinned, _ = lock.pin(p, lock.Lock({"ubuntu:24.04": DIGEST}, {}), Path("x.lock.json"))
    assert pinned.nodes["os-ubuntu24_04"].base_image == f"mirror.invalid:5000/library/ubuntu:24.04@{DIGEST}"


def test_differences_and_compare_say_what_moved():
    old = lock.RootfsLock("bookworm", ("bash=5.2", "libc6=2.36-9", "old=1"), "a" * 64)
    new = lock.RootfsLock("bookworm", ("bash=5.2", "libc6=2.36-10", "new=2"), "b" * 64)
    diff = lock.differences(old, new)
    assert diff.startswith("3 packages differ") and "libc6 2.36-9 -> 2.36-10" in diff and "+new" in diff
    assert lock.differences(old, old) is None
    key = ("debian12", "linux/arm64")
    moved = lock.compare(lock.Lock({"ubuntu:24.04": DIGEST}, {key: old}),
                         lock.Lock({"ubuntu:24.04": "sha256:" + "b" * 64, "ubuntu:22.04": DIGEST}, {key: new}))
    text = [str(m) for m in moved]
    assert any(t.startswith("ubuntu:24.04: moved upstream") for t in text)
    assert "ubuntu:22.04: not in the lock" in text
    assert any(t.startswith("debian12 linux/arm64: 3 packages differ") for t in text)


def test_the_repositorys_own_locks_are_valid_and_cover_their_bootstraps():
    root = REPO
    for matrix in (root / "matrix.yaml", root / "tests/family.yaml", root / "tests/release-family.yaml"):
        found = lock.read(lock.path_for(matrix))
        assert found and ("debian12", "linux/amd64") in found.rootfs, matrix
        assert any(p.startswith("libc6=") for p in found.rootfs[("debian12", "linux/amd64")].packages)
        # The mirror a lock was made with is this host's choice, not part of the lock.
        assert "://" not in lock.path_for(matrix).read_text()


# --- what the bake exports --------------------------------------------------------------------


def test_cache_imports_every_node_below_and_exports_its_own(project):
    p = expand(project)
    options = graph.Options(cache="reg.invalid:5000/fam-cache")
    t = graph.definition(p, "push", (), options)["target"]
    assert t["os-debian12"]["cache-from"] == ["type=registry,ref=reg.invalid:5000/fam-cache:rootfs-debian12",
                                              "type=registry,ref=reg.invalid:5000/fam-cache:os-debian12"]
    assert t["13_0_2-runtime-debian12"]["cache-to"] == [
        "type=registry,ref=reg.invalid:5000/fam-cache:13_0_2-runtime-debian12,mode=max,oci-mediatypes=true,"
        "ignore-error=true"]
    # The failure probe only reads the cache.
    assert "cache-to" not in graph.definition(p, "cache", (), options)["target"]["os-debian12"]
    assert "cache-from" not in graph.definition(p)["target"]["os-debian12"]


def test_without_a_cache_repository_each_pushed_image_carries_its_cache_and_reads_the_last_ones(project):
    p = expand(project, select=["cuda=13.0.2 os=debian12 flavor=runtime"])
    t = graph.definition(p, "push", (), graph.Options())["target"]
    for v in p.variants:   # inline: the next run's cache, once the main job pruned its own
        assert t[v.node]["cache-to"] == ["type=inline"]
        assert t[v.node]["cache-from"] == [f"type=registry,ref={p.ref(v.floating[0])}"]
    assert "cache-from" not in t["os-debian12"]   # no image of its own: nothing to read
    assert "cache-to" not in graph.definition(p, "load", (), graph.Options())["target"][p.variants[0].node]
    registry = graph.definition(p, "push", (), graph.Options(cache="reg.invalid:5000/fam-cache"))["target"]
    assert all("type=inline" not in registry[v.node]["cache-to"] for v in p.variants)


def test_attestations_and_pushing_follow_the_options(project):
    p = expand(project, select=["cuda=13.0.2 os=debian12 flavor=runtime stack=none"])
    node = p.variants[0].node
    plain = graph.definition(p)["target"][node]
    assert plain["attest"] == ["type=provenance,disabled=true"]
    image = f"{p.matrix.model.registry}/{p.matrix.model.repository}"
    assert plain["tags"] == [f"{image}:{tag}" for tag in p.variants[0].tags]
    assert plain["output"] == ["type=image,oci-mediatypes=true"]
    full = graph.definition(p, "push", (), graph.Options(provenance="max", sbom="reg/scan:1", rewrite_timestamp=True,
                                                         push=True))["target"][node]
    assert full["attest"] == ["type=provenance,mode=max", "type=sbom,generator=reg/scan:1"]
    assert full["output"] == ["type=image,oci-mediatypes=true,rewrite-timestamp=true,push=true"]
    # BuildKit pushes: only the immutable tag; floating tags move after the smoke checks.
    assert full["tags"] == [p.ref(p.variants[0].immutable)]
    # matrix.yaml's compression (zstd unless it says gzip) reaches the exporter, level and all.
    options, _ = export_options(BuildSettings(), DOCKER, None)
    zstd = graph.definition(p, "push", (), options)["target"][node]["output"][0]
    assert "compression=zstd" in zstd and "compression-level" not in zstd
    options, _ = export_options(BuildSettings(compression="gzip", compression_level=9), DOCKER, None)
    assert "compression=gzip,compression-level=9" in graph.definition(p, "push", (), options)["target"][node]["output"][0]
    default_scanner = graph.definition(p, "push", (), graph.Options(sbom=""))["target"][node]
    assert "type=sbom" in default_scanner["attest"]
    assert graph.definition(p, "load", (), graph.Options(provenance="max"))["target"][node]["attest"] == \
        ["type=provenance,disabled=true"]


DOCKER = Capabilities("default", "docker", True)


def test_export_options_say_what_the_builder_cannot_do():
    options, notes = export_options(BuildSettings(), DOCKER, "reg/scan:1")
    assert options.provenance == "max" and options.sbom == "reg/scan:1" and not options.push
    assert not options.rewrite_timestamp and any("timestamps not rewritten" in n for n in notes)
    classic = Capabilities("default", "docker", False)
    options, notes = export_options(BuildSettings(cache="r.invalid/c"), classic, "reg/scan:1")
    assert options.provenance == "off" and options.sbom is None and options.cache == ""
    assert any(n.startswith("attestations and registry cache off") and "containerd" in n for n in notes)
    options, notes = export_options(BuildSettings(), DOCKER, None)
    assert options.sbom is None and any(n.startswith("SBOM off") for n in notes)
    remote = Capabilities("k8s", "kubernetes", False)
    options, notes = export_options(BuildSettings(cache="r.invalid/c"), remote, "")
    assert options.push and options.rewrite_timestamp and options.provenance == "max" and options.sbom == ""
    assert options.cache == "r.invalid/c" and not notes


def test_a_password_in_a_build_arg_keeps_provenance_to_min(project):
    p = expand(project, select=["cuda=13.0.2 os=debian12 flavor=runtime stack=none"])
    assert not graph.credentials_in_args(p)
    secret = dataclasses.replace(p, mirrors=dataclasses.replace(
        p.mirrors, network=hostconf.Network((("HTTPS_PROXY", "http://user:pw@proxy.invalid:3128"),))))
    assert graph.credentials_in_args(secret)
    token = dataclasses.replace(p, mirrors=dataclasses.replace(
        p.mirrors, network=hostconf.Network((("HTTPS_PROXY", "http://proxy.invalid:3128"),))))
    assert not graph.credentials_in_args(token)
    index = expand(project, select=["cuda=13.0.2 os=debian12 flavor=runtime stack=python"],
                   mirrors=dataclasses.replace(p.mirrors, pypi="https://TOKEN@pypi.invalid/simple"))
    assert graph.credentials_in_args(index)   # a bare token in a PyPI mirror URL counts too
    options, notes = export_options(BuildSettings(), DOCKER, "", graph.credentials_in_args(secret))
    assert options.provenance == "min" and any("mode=min" in n for n in notes)


@pytest.mark.parametrize("field, value, expected", [
    ("cache", "no-path", "registry repository"),
    ("provenance", "full", "'off', 'min' or 'max'"),
])
def test_bad_build_settings_name_the_field(project, field, value, expected):
    with pytest.raises(ConfigError) as err:
        expand(project, SMALL + f"build:\n  {field}: {value}\n")
    assert f"build.{field}" in str(err.value) and expected in str(err.value)
    assert ":" in str(err.value).split(" ")[0]   # file:line


# --- end of life ------------------------------------------------------------------------------


def test_cuda_past_its_end_of_life_is_left_out_unless_allowed(project):
    from dlenv import config, plan
    from dlenv.selection import Selection
    from helpers import BUILD, MIRRORS

    expand(project)  # writes matrix.yaml
    matrix = config.load(project / "matrix.yaml", root=project)
    after = datetime.date(2026, 11, 29)   # CUDA 12.8's images reached end of life on 2026-02-01
    p = plan.expand(matrix, BUILD, MIRRORS, Selection(), today=after)
    eol = {x.id: x for x in p.left_out if x.reason == "eol"}
    assert "12.8.1-runtime-debian12" in eol and not [v for v in p.variants if v.cuda == "12.8.1"]
    assert "2026-02-01" in eol["12.8.1-runtime-debian12"].detail and "--allow-eol" in eol["12.8.1-runtime-debian12"].fix
    assert any(v.cuda == "13.0.2" for v in p.variants)
    allowed = plan.expand(matrix, BUILD, MIRRORS, Selection(), today=after, allow_eol=True)
    assert any(v.cuda == "12.8.1" for v in allowed.variants)
    before = plan.expand(matrix, BUILD, MIRRORS, Selection(), today=datetime.date(2026, 1, 31))
    assert "eol" not in reasons(before).values()


def test_allow_eol_on_a_cuda_row_builds_it(project):
    from dlenv import config, plan
    from dlenv.selection import Selection
    from helpers import BUILD, MIRRORS

    expand(project, SMALL.replace('"12.8.1": {source: pip}', '"12.8.1": {source: pip, allow_eol: true}'))
    matrix = config.load(project / "matrix.yaml", root=project)
    p = plan.expand(matrix, BUILD, MIRRORS, Selection(), today=datetime.date(2026, 11, 29))
    assert any(v.cuda == "12.8.1" for v in p.variants)


# --- the rehearsal's arguments ----------------------------------------------------------------


def test_each_step_of_the_rehearsal_is_shown_as_the_command_line_that_gives_its_requests():
    """The rehearsal calls the stages' front doors; the command it shows parses back to the same
    requests (the options are declared once)."""
    plan_request = PlanRequest(matrix=Path("m.yaml"), select=("cuda=13.*",), registry="127.0.0.1:5000",
                               shard="1/2")
    build = BuildRequest(cache="r/c", locked=True, no_promote=True, workdir=Path("out/r/build-0"))
    line = ["build", *options.argv(plan_request), *options.argv(build)]
    assert line[:3] == ["build", "--matrix", "m.yaml"]
    args = make_parser().parse_args(line)
    assert options.from_args(PlanRequest, args) == plan_request
    assert options.from_args(BuildRequest, args) == build
    promote = PromoteRequest(verdicts=(Path("a.json"), Path("b.json")), require_gpu=True)
    args = make_parser().parse_args(["promote", *options.argv(promote)])
    assert options.from_args(PromoteRequest, args) == promote


def test_the_rehearsal_runs_every_shard_so_it_refuses_one(monkeypatch, capsys):
    from dlenv.cli import main

    monkeypatch.chdir(REPO)
    assert main(["rehearse", "--matrix", "tests/release-family.yaml", "--shard", "1/2"]) == 2
    assert "--shards N" in capsys.readouterr().err


def test_an_empty_registry_is_an_error_not_the_default(monkeypatch, capsys):
    from dlenv.cli import main

    monkeypatch.chdir(REPO)
    assert main(["list", "--registry", ""]) == 2
    assert "--registry" in capsys.readouterr().err


def test_a_bad_cache_is_one_line_before_anything_starts(monkeypatch, capsys):
    from dlenv.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")   # nothing may be reached for
    assert main(["build", "--matrix", "tests/family.yaml", "--cache", "bad ref"]) == 2
    err = capsys.readouterr().err
    assert "--cache: build.cache: a cache is a registry repository" in err and "Traceback" not in err


def test_a_build_suffix_is_appended_to_the_build_id(monkeypatch, capsys):
    from dlenv.cli import main

    monkeypatch.chdir(REPO)
    assert main(["list", "--matrix", "tests/release-family.yaml", "--build-id", "20260101-abc", "--build-suffix",
                 "w7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["build"] == "20260101-abc-w7"
    assert main(["list", "--build-suffix", "/bad"]) == 2


def test_the_shards_command_writes_the_matrix_for_github_actions(tmp_path, monkeypatch, capsys):
    from dlenv.cli import main

    root = REPO
    output = tmp_path / "github-output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.chdir(root)
    assert main(["shards", "--count", "2", "--github-output", "--matrix", "tests/release-family.yaml"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # matrix: the build jobs (a shard and platform each); shards: the merge jobs (a shard each).
    from dlenv import plan

    family = plan.load(PlanRequest(matrix=Path("tests/release-family.yaml")))
    merges = shards.merges(family, 2)
    assert output.read_text() == (f"matrix={json.dumps(printed, separators=(',', ':'))}\n"
                                  f"shards={json.dumps(merges, separators=(',', ':'))}\n"
                                  + "".join(f"{k}={v}\n" for k, v in shards.stages(family, 2).items()))
    assert [e["variants"] for e in printed["include"]] == ["13.0.2-base-debian12", "13.0.2-base-debian13"]
    assert [(e["shard"], e["platform"]) for e in printed["include"]] == [
        (e["shard"], p) for e in merges["include"] for p in family.platforms]
