"""Platforms as an axis of the matrix: a variant is one tag whose platforms are its index's
entries; a platform a variant cannot have is left out with its reason and fix; --platform selects."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomli

from dlenv import build, config, engine, plan, report
from dlenv.cli import main
from dlenv.options import BuildRequest
from dlenv.selection import Selection
from helpers import BUILD, MIRRORS, REPO, SMALL, expand, write

BOTH = SMALL + "platforms: [linux/amd64, linux/arm64]\n"
TORCH = BOTH.replace("  - [python, devtools, ssh]\n", "  - [python, devtools, ssh]\n  - [python, pytorch]\n")
COMPONENTS = tomli.loads((REPO / "images/cuda-pip/components.toml").read_text())


def left(p: plan.Plan) -> dict[tuple[str, str], plan.LeftOut]:
    return {(x.id, x.platform): x for x in p.left_out}


def test_a_family_without_platforms_is_linux_amd64_as_before(project):
    p = expand(project)
    assert p.matrix.model.platforms == ["linux/amd64"]
    assert {v.platforms for v in p.variants} == {("linux/amd64",)}
    assert {n.platforms for n in p.nodes.values()} == {("linux/amd64",)}
    assert not any(x.platform for x in p.left_out)
    # opencl is a component of the runtime flavor as it always was.
    runtime = p.nodes["13_0_2-runtime-debian12"]
    assert dict(runtime.args)["COMPONENTS"].split() == COMPONENTS["cuda13"]["runtime"]


def test_every_variant_of_a_two_platform_family_is_one_tag_for_both(project):
    one, two = expand(project), expand(project, BOTH)
    assert [v.id for v in two.variants] == [v.id for v in one.variants]
    assert [v.tags for v in two.variants] == [v.tags for v in one.variants]
    assert {v.platforms for v in two.variants} == {("linux/amd64", "linux/arm64")}
    assert {n.platforms for n in two.nodes.values()} == {("linux/amd64", "linux/arm64")}


def test_a_component_pypi_has_for_some_platforms_is_named_for_them(project):
    cuda13 = COMPONENTS["cuda13"]
    partial = {name: platforms for name, platforms in cuda13["only"].items() if platforms != ["linux/arm64"]}
    assert partial, "components.toml names no component for some platforms only"
    for text, platforms in ((SMALL, ("linux/amd64",)), (BOTH, ("linux/amd64", "linux/arm64")),
                            (SMALL + "platforms: [linux/arm64]\n", ("linux/arm64",))):
        got = dict(expand(project, text).nodes["13_0_2-runtime-debian12"].args)["COMPONENTS"].split()
        want = []
        for name in cuda13["runtime"]:
            has = [p for p in platforms if p in cuda13["only"].get(name, platforms)]
            if len(has) == len(platforms):
                want.append(name)
            elif has:
                want.append(f"{name}@{','.join(p.split('/')[1] for p in has)}")
        assert got == want, (platforms, got)
    assert "opencl@amd64" in dict(expand(project, BOTH).nodes["13_0_2-runtime-debian12"].args)["COMPONENTS"].split()


def test_fetch_sh_installs_a_component_only_where_its_architecture_is_named(tmp_path):
    """images/cuda-pip/fetch.sh with a python3 on PATH that records what pip is asked for."""
    stub = write(tmp_path / "bin/python3", f"""#!/bin/sh
        [ "$1" = - ] && exit 0   # the metadata reader: no constraints
        echo "$*" >> {tmp_path}/pip.log
        """)
    stub.chmod(0o755)
    for arch, want in (("amd64", "cudart,opencl,nvtx"), ("arm64", "cudart,nvtx")):
        (tmp_path / "pip.log").unlink(missing_ok=True)
        env = dict(os.environ, PATH=f"{stub.parent}:{os.environ['PATH']}", COMPONENTS="cudart opencl@amd64 nvtx",
                   CUDA_VERSION="13.0.2", TARGETARCH=arch)
        subprocess.run(["sh", str(REPO / "images/cuda-pip/fetch.sh"), str(tmp_path / "dest")], env=env, check=True)
        install = (tmp_path / "pip.log").read_text().splitlines()[-1]
        assert f"cuda-toolkit[{want}]==13.0.2" in install.split(), install
    env.pop("TARGETARCH")
    out = subprocess.run(["sh", str(REPO / "images/cuda-pip/fetch.sh"), str(tmp_path / "dest")], env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "TARGETARCH" in out.stderr


def test_the_torch_row_pypi_lacks_for_arm64_leaves_only_that_platform_out(project):
    p = expand(project, TORCH)
    torch = p.variant("12.8.1-runtime-debian12-py-torch")
    assert torch.platforms == ("linux/amd64",)
    gone = left(p)[("12.8.1-runtime-debian12-py-torch", "linux/arm64")]
    assert gone.reason == "unsupported"
    assert "CPU-only" in gone.detail and "mirrors.pytorch" in gone.fix
    # Its own node is built for amd64 only; the python node below it for both (12.8.1-...-py has both).
    assert p.nodes[torch.node].platforms == ("linux/amd64",)
    assert p.nodes[torch.chain[-2]].platforms == ("linux/amd64", "linux/arm64")
    # 13.0's row is PyPI's on both.
    assert p.variant("13.0.2-runtime-debian12-py-torch").platforms == ("linux/amd64", "linux/arm64")
    # With a PyTorch index, arm64 is built too, from the same args (one tag, one set of build args).
    mirrored = expand(project, TORCH, mirrors=plan.Mirrors(bootstrap_apt=MIRRORS.bootstrap_apt,
                                                            pytorch="http://torch.invalid/whl"))
    assert mirrored.variant(torch.id).platforms == ("linux/amd64", "linux/arm64")
    assert not any(x.platform for x in mirrored.left_out)


def test_a_platform_every_platform_lacks_for_one_reason_leaves_the_variant_out_once(project):
    p = expand(project, TORCH)
    # No wheels index for cu126 (PyPI has none): the same reason for both platforms, said once.
    entries = [x for x in p.left_out if x.id == "12.6.3-runtime-ubuntu24.04-py-torch"]
    assert [(x.reason, x.platform) for x in entries] == [("unsupported", "")]


def test_an_exclude_rule_with_a_platform_leaves_out_that_platform_only(project):
    text = BOTH.replace("exclude:\n", 'exclude:\n  - {platform: linux/arm64, cuda: "12.6.*"}\n')
    p = expand(project, text)
    for v in p.variants:
        assert v.platforms == (("linux/amd64",) if v.cuda == "12.6.3" else ("linux/amd64", "linux/arm64")), v.id
    arm = [x for x in p.left_out if x.platform == "linux/arm64"]
    assert {x.reason for x in arm} == {"excluded"} and all(x.detail.endswith("matrix.yaml:15") for x in arm)
    # On Debian, the rule below (line 16) takes linux/amd64 as well: each platform says its own rule.
    amd = [x for x in p.left_out if x.platform == "linux/amd64"]
    assert amd and all(x.detail.endswith("matrix.yaml:16") and "debian" in x.id for x in amd)
    assert {x.id for x in arm} == {v.id for v in p.variants if v.cuda == "12.6.3"} | {x.id for x in amd}


def test_recipe_and_cuda_constraints_leave_out_a_platform_with_the_reason(project):
    write(project / "recipes/x86tool.toml", """
        description = "a tool with x86 binaries only"
        dockerfile = "images/python"
        tag = "x86"
        [constraints]
        platforms = ["linux/amd64"]
        """)
    text = BOTH.replace('"12.8.1": {source: pip}', '"12.8.1": {source: pip, platforms: [linux/amd64]}') \
        .replace("  - [python]\n", "  - [python]\n  - [x86tool]\n")
    p = expand(project, text)
    gone = left(p)
    assert p.variant("13.0.2-base-debian12-x86").platforms == ("linux/amd64",)
    assert gone[("13.0.2-base-debian12-x86", "linux/arm64")].detail == "recipe x86tool supports platforms linux/amd64 only"
    assert p.variant("12.8.1-base-debian12").platforms == ("linux/amd64",)
    cuda = gone[("12.8.1-base-debian12", "linux/arm64")]
    assert cuda.reason == "constraint" and "CUDA 12.8.1 is built for linux/amd64 only" in cuda.detail
    assert cuda.detail.endswith("matrix.yaml:8)")


def test_platform_selection_keeps_only_those_platforms(project):
    write(project / "matrix.yaml", BOTH)
    matrix = config.load(project / "matrix.yaml", root=project)
    p = plan.expand(matrix, BUILD, MIRRORS, Selection.parse(platforms=["linux/arm64"]))
    whole = expand(project, BOTH)
    assert [v.id for v in p.variants] == [v.id for v in whole.variants]
    assert {v.platforms for v in p.variants} == {("linux/arm64",)}
    assert {n.platforms for n in p.nodes.values()} == {("linux/arm64",)}
    # Node args follow the CUDA release's platforms, not the selection: a node is named by its content.
    assert {k: n.args for k, n in p.nodes.items()} == {k: n.args for k, n in whole.nodes.items()}
    # The bootstrap node's rootfs is made for the selected platforms' architectures only.
    assert p.nodes["rootfs-debian12"].rootfs.architectures == ("arm64",)
    assert whole.nodes["rootfs-debian12"].rootfs.architectures == ("amd64", "arm64")
    assert p.nodes["rootfs-debian12"].rootfs.key == whole.nodes["rootfs-debian12"].rootfs.key
    assert {(x.reason, x.platform) for x in p.left_out if x.reason == "unselected"} == {("unselected", "linux/amd64")}


def test_the_build_can_drop_a_platform_it_cannot_run(project):
    p = expand(project, TORCH)
    why = plan.LeftOut("", "unreachable", "this engine cannot run linux/arm64", "register qemu-aarch64")
    q = p.without_platforms({"linux/arm64": why})
    assert [v.id for v in q.variants] == [v.id for v in p.variants]
    assert {v.platforms for v in q.variants} == {("linux/amd64",)}
    assert {n.platforms for n in q.nodes.values()} == {("linux/amd64",)}
    dropped = [x for x in q.left_out if x.reason == "unreachable"]
    assert {(x.id, x.platform) for x in dropped} == {(v.id, "linux/arm64") for v in p.variants
                                                     if "linux/arm64" in v.platforms}
    # A variant with no other platform is left out, and its nodes go with it.
    only = expand(project, SMALL + "platforms: [linux/arm64]\n").without_platforms({"linux/arm64": why})
    assert not only.variants and not only.nodes
    assert {(x.reason, x.platform) for x in only.left_out if x.reason == "unreachable"} == {("unreachable", "")}


def test_a_platform_the_build_cannot_reach_is_said_in_one_line_and_its_only_variants_skipped(project, monkeypatch):
    """build's use of engine.emulation (which tests/engine/test_emulation.py runs for real): a
    platform it cannot set up is left out; a variant with no other platform is skipped."""
    p = expand(project, TORCH.replace("platforms: [linux/amd64, linux/arm64]", "platforms: [linux/amd64, linux/arm64]\n"
                                      "include:\n  - {cuda: 13.0.2, flavor: base, os: debian12, stack: [python], "
                                      "platforms: [linux/arm64]}"))
    arm64_only = [v.id for v in p.variants if v.platforms == ("linux/arm64",)]
    assert arm64_only
    unreachable = engine.Unreachable("linux/arm64", "linux/arm64 needs QEMU on this linux/amd64 host, and registering "
                                     "it needs root", "run dlenv as root")
    monkeypatch.setattr(engine, "host_platform", lambda: "linux/amd64")
    monkeypatch.setattr(engine, "emulation", lambda platforms, say, builder: [unreachable])
    warned, dropped = [], set()
    board = type("Board", (), {"drop": lambda self, ids: dropped.update(ids)})()
    q = build._reachable_platforms(p, BuildRequest(), board, print, warned.append)
    assert warned == [f"leaving linux/arm64 out of {sum('linux/arm64' in v.platforms for v in p.variants)} variants: "
                      f"{unreachable.detail} (fix: {unreachable.fix})"]
    assert {v.platforms for v in q.variants} == {("linux/amd64",)}
    assert dropped == set(arm64_only) == {x.id for x in q.left_out if x.reason == "unreachable" and not x.platform}


def test_list_json_names_each_variants_platforms_and_each_platform_left_out(project):
    p = expand(project, TORCH)
    data = report.plan_json(p)
    assert [v["platforms"] for v in data["variants"]] == [list(v.platforms) for v in p.variants]
    assert [x.get("platform", "") for x in data["left_out"]] == [x.platform for x in p.left_out]
    assert "platform" not in report.plan_json(expand(project))["left_out"][0]


def test_list_table_names_platforms(project, capsys, monkeypatch):
    write(project / "matrix.yaml", TORCH)
    monkeypatch.chdir(project)
    monkeypatch.setattr(report.console, "width", 400)
    assert main(["list", "--matrix", "matrix.yaml"]) == 0
    err = capsys.readouterr().err
    assert "linux/arm64" in err and "CPU-only" in err
    p = expand(project, TORCH)
    assert f"{sum(len(v.platforms) for v in p.variants)} images: linux/amd64, linux/arm64" in err


@pytest.fixture
def x86_only_cuda12(project: Path) -> Path:
    """A project whose components.toml gives CUDA 12's wheels linux/amd64 only."""
    images = project / "images"
    images.unlink()
    images.mkdir()
    for folder in (REPO / "images").iterdir():
        (images / folder.name).symlink_to(folder)
    (images / "cuda-pip").unlink()
    shutil.copytree(REPO / "images/cuda-pip", images / "cuda-pip")
    components = images / "cuda-pip/components.toml"
    text = components.read_text()
    head, cuda12 = text.split("[cuda12]")
    components.write_text(head + "[cuda12]" + cuda12.replace('platforms = ["linux/amd64", "linux/arm64"]',
                                                             'platforms = ["linux/amd64"]'))
    return project


def test_a_pip_cuda_release_pypi_lacks_for_a_platform_leaves_that_platform_out(x86_only_cuda12):
    p = expand(x86_only_cuda12, BOTH)
    assert p.variant("12.8.1-base-debian12").platforms == ("linux/amd64",)
    gone = left(p)[("12.8.1-base-debian12", "linux/arm64")]
    assert gone.reason == "unsupported" and "components.toml" in gone.detail and "components.toml" in gone.fix


def test_a_cuda_release_asking_for_a_platform_its_source_lacks_exits_2(x86_only_cuda12, capsys, monkeypatch):
    write(x86_only_cuda12 / "matrix.yaml",
          BOTH.replace('"12.8.1": {source: pip}', '"12.8.1": {source: pip, platforms: [linux/arm64]}'))
    monkeypatch.chdir(x86_only_cuda12)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{x86_only_cuda12}/no-engine.sock")
    assert main(["build", "--matrix", "matrix.yaml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "matrix.yaml:8: cuda.12.8.1.platforms.0: CUDA 12.8.1 from PyPI cannot be built for linux/arm64" in lines[0]
    assert not (x86_only_cuda12 / "out").exists()


def test_a_rootfs_folder_holds_one_tarball_per_architecture(tmp_path, monkeypatch):
    from dlenv import bootstrap

    monkeypatch.setenv("DLENV_CACHE", str(tmp_path))
    made: list[str] = []

    def make(spec, architecture, tar, say=print, env=None):
        made.append(architecture)
        tar.write_bytes(architecture.encode())
        return tar

    monkeypatch.setattr(bootstrap, "make_rootfs", make)
    spec = bootstrap.RootfsSpec("bookworm", "http://apt.invalid/debian", ())
    both = dataclasses.replace(spec, architectures=("amd64", "arm64"))
    assert both.key == spec.key, "the architectures share one folder: the bootstrap node's context"
    folder = bootstrap.rootfs_dir(spec)
    folder.mkdir(parents=True)
    bootstrap.rootfs_tar(spec, "amd64").write_bytes(b"bootstrapped before")
    assert bootstrap.ensure_rootfs(both) == folder
    # What the cache holds is kept; only what it lacks is bootstrapped.
    assert made == ["arm64"]
    assert bootstrap.rootfs_tar(spec, "amd64").read_bytes() == b"bootstrapped before"
    bootstrap.ensure_rootfs(both)
    assert made == ["arm64"]
    # The Dockerfile ADDs each architecture's tarball by the name rootfs_tar gives it, in a stage
    # named for BuildKit's TARGETARCH (amd64's by its name from before platforms: its cache key stays).
    assert bootstrap.rootfs_tar(spec, "amd64").name == "rootfs.tar"
    dockerfile = (REPO / "images/os-bootstrap/Dockerfile").read_text()
    for architecture in both.architectures:
        assert (f"FROM scratch AS rootfs-{architecture}\nADD {bootstrap.rootfs_tar(spec, architecture).name} /"
                in dockerfile), architecture
        assert bootstrap.rootfs_tar(spec, architecture).exists()
    assert "FROM rootfs-${TARGETARCH}" in dockerfile


def test_under_qemu_only_the_variants_build_emulate_selects_get_the_other_platform(project):
    p = expand(project, BOTH + "build:\n  emulate: ['stack=none', 'stack=python']\n")
    chosen = {v.id for v in p.variants if v.stack in ((), ("python",))}
    assert chosen and chosen != {v.id for v in p.variants}
    q = p.emulating("linux/amd64")
    assert [v.id for v in q.variants] == [v.id for v in p.variants]   # every variant still built natively
    assert {v.id: v.platforms for v in q.variants} == {
        v.id: v.platforms if v.id in chosen else ("linux/amd64",) for v in p.variants}
    assert {(x.id, x.platform) for x in q.left_out if "build.emulate" in x.detail} == \
        {(v.id, "linux/arm64") for v in p.variants if v.id not in chosen}
    # Nothing is emulated on an arm64 host's own platform: amd64 is the one run under QEMU there.
    on_arm = p.emulating("linux/arm64")
    assert {v.id: v.platforms for v in on_arm.variants} == {
        v.id: v.platforms if v.id in chosen else ("linux/arm64",) for v in p.variants}
    # '*' (the default) keeps everything; --emulate puts a selector over matrix.yaml's.
    assert expand(project, BOTH).emulating("linux/amd64") == expand(project, BOTH)


def test_a_bad_build_emulate_selector_is_one_line_with_file_line_and_field(project, capsys):
    matrix = project / "matrix.yaml"
    write(matrix, BOTH + "build:\n  emulate: ['colour=red']\n")
    assert main(["list", "--matrix", str(matrix)]) == 2
    err = capsys.readouterr().err.strip()
    line = next(i for i, text in enumerate(matrix.read_text().splitlines(), 1) if "colour" in text)
    assert err.splitlines()[-1].startswith(f"dlenv: error: {matrix}:{line}: build.emulate.0: unknown selector key"), err
    write(matrix, BOTH)
    assert main(["build", "--matrix", str(matrix), "--emulate", "stack=none", "--emulate", "colour=red"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("dlenv: error: --emulate: build.emulate.1: unknown selector key"), err
