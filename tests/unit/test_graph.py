"""The bake graph: one target per distinct node, shared prefixes once, byte-identical output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dlenv import graph
from helpers import REPO, SMALL, expand, write


def test_shared_prefixes_appear_once(project):
    p = expand(project)
    d = graph.definition(p)
    targets = d["target"]
    # Every chain node is a target, and no two targets have the same name.
    assert set(targets) == {n for v in p.variants for n in v.chain}
    # The Debian rootfs, its OS set-up and the CUDA 13 base are built once for every variant of them.
    users = [v for v in p.variants if "13_0_2-base-debian12" in v.chain]
    assert users == [v for v in p.variants if (v.cuda, v.os) == ("13.0.2", "debian12")]
    assert sum(1 for name in targets if name == "13_0_2-base-debian12") == 1
    # Far fewer targets than the sum of the variants' chain lengths.
    assert len(targets) < sum(len(v.chain) for v in p.variants) / 2


def test_chains_link_through_named_contexts(project):
    p = expand(project)
    t = graph.definition(p)["target"]
    assert t["13_0_2-devel-debian12-py"]["contexts"] == {"base": "target:13_0_2-devel-debian12"}
    assert t["13_0_2-devel-debian12"]["contexts"] == {"base": "target:13_0_2-runtime-debian12"}
    assert t["os-debian12"]["contexts"] == {"base": "target:rootfs-debian12"}
    assert "contexts" not in t["rootfs-debian12"]
    assert t["rootfs-debian12"]["dockerfile"].endswith("images/os-bootstrap/Dockerfile")
    assert t["os-ubuntu24_04"]["contexts"] == {"base": "docker-image://ubuntu:24.04"}


def test_a_recipes_own_contexts_come_beside_base(project):
    # recipes/ssh.toml names images/common (the DLENV_UID user), relative to the project; the
    # bake file names it absolutely, like every context (bakes run side by side in one process).
    p = expand(project)
    ssh = dict(p.matrix.recipes["ssh"].contexts)
    assert ssh and all((project / folder).is_dir() for folder in ssh.values())
    t = graph.definition(p)["target"]
    assert t["13_0_2-devel-debian12-py-dev-ssh"]["contexts"] == \
        {"base": "target:13_0_2-devel-debian12-py-dev", **{k: str((project / f).resolve()) for k, f in ssh.items()}}
    assert t["13_0_2-devel-debian12-py-dev-ssh"]["context"] == str((project / "images/ssh").resolve())
    assert t["13_0_2-devel-debian12-py-dev"]["contexts"] == {"base": "target:13_0_2-devel-debian12-py"}


def test_only_variants_are_tagged_and_exported(project):
    p = expand(project, select=["cuda=13.0.2 os=debian12 flavor=devel stack=python"])
    t = graph.definition(p)["target"]
    assert p.variants[0].node == "13_0_2-devel-debian12-py"
    assert t["13_0_2-devel-debian12-py"]["output"] == ["type=image,oci-mediatypes=true"]
    for name in ("rootfs-debian12", "os-debian12", "13_0_2-base-debian12", "13_0_2-devel-debian12"):
        assert t[name]["output"] == ["type=cacheonly"]
        assert "tags" not in t[name]
    assert graph.definition(p)["group"]["default"]["targets"] == ["13_0_2-devel-debian12-py"]
    assert graph.definition(p, "load")["target"]["13_0_2-devel-debian12-py"]["output"] == ["type=docker"]


def test_labels_and_annotations_say_what_is_inside(project):
    p = expand(project)
    t = graph.definition(p)["target"]["13_0_2-runtime-debian12-py-dev-ssh"]
    labels = t["labels"]
    assert labels["io.dlenv.cuda"] == "13.0.2"
    assert labels["io.dlenv.flavor"] == "runtime"
    assert labels["io.dlenv.os"] == "debian12"
    assert labels["io.dlenv.recipes"] == "python,devtools,ssh"
    assert labels["org.opencontainers.image.revision"] == p.build.revision
    assert labels["org.opencontainers.image.created"] == "2026-01-01T00:00:00Z"
    assert labels["org.opencontainers.image.source"] == "https://example.invalid/dlenv"
    assert labels["org.opencontainers.image.version"] == "13.0.2-runtime-debian12-py-dev-ssh-20260101-abcdef0"
    assert "manifest:org.opencontainers.image.revision=" + p.build.revision in t["annotations"]
    assert t["args"]["SOURCE_DATE_EPOCH"] == "1767225600"


def test_secrets_only_where_pip_runs(project):
    p = expand(project)
    d = graph.definition(p, secrets=(graph.Secret("cacert", Path("/etc/ssl/certs/ca-certificates.crt")),))
    t = d["target"]
    assert t["13_0_2-base-debian12"]["secret"] == ["id=cacert,src=/etc/ssl/certs/ca-certificates.crt"]
    assert "secret" not in t["os-debian12"]
    assert "secret" not in t["rootfs-debian12"]


def test_same_input_same_bytes(project):
    a = graph.render(graph.definition(expand(project)))
    b = graph.render(graph.definition(expand(project)))
    assert a == b
    assert json.loads(a)["target"]


def test_bake_command_is_byte_identical_across_processes(project):
    write(project / "matrix.yaml", SMALL)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    runs = [subprocess.run([sys.executable, "-m", "dlenv", "bake", "--build-id", "20260101-test"], cwd=project,
                           env=env, capture_output=True, timeout=60) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert b'"13_0_2-devel-debian12-py-dev-ssh"' in runs[0].stdout


def test_a_changed_input_changes_only_what_depends_on_it(project):
    before = graph.definition(expand(project))["target"]
    after = graph.definition(expand(project, SMALL.replace("stacks:", "timezone: Asia/Shanghai\nstacks:")))["target"]
    assert before["13_0_2-base-debian12"]["args"] == after["13_0_2-base-debian12"]["args"]
    assert before["os-debian12"]["args"]["TZ"] == "Etc/UTC"
    assert after["os-debian12"]["args"]["TZ"] == "Asia/Shanghai"


def test_each_target_is_built_for_the_platforms_of_the_variants_above_it(project):
    one = graph.definition(expand(project))["target"]
    assert not any("platforms" in t for t in one.values())   # linux/amd64 alone: the bake file as before
    p = expand(project, SMALL + "platforms: [linux/amd64, linux/arm64]\n"
               "include:\n  - {cuda: 13.0.2, flavor: base, os: debian12, stack: [python, devtools, ssh], "
               "platforms: [linux/amd64]}\n")
    t = graph.definition(p)["target"]
    on = {name: tuple(t[name].get("platforms", ["linux/amd64"])) for name in t}
    assert on == {name: node.platforms for name, node in p.nodes.items()}
    amd64_only = p.variant("13.0.2-base-debian12-py-dev-ssh")
    assert "platforms" not in t[amd64_only.node]
    # Its python node is also the arm64 image of 13.0.2-base-debian12-py.
    assert t[amd64_only.chain[-3]]["platforms"] == ["linux/amd64", "linux/arm64"]
