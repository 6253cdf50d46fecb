"""Plan expansion: axes, include/exclude, constraints, unsupported flavors, selectors, requirements."""

from __future__ import annotations

from fnmatch import fnmatch

import pytest

from dlenv import plan
from dlenv.errors import ConfigError
from helpers import SMALL, expand, reasons, write


def ids(p: plan.Plan) -> list[str]:
    return [v.id for v in p.variants]


def test_axes_expand_in_declaration_order(project):
    p = expand(project)
    m = p.matrix.model

    def left_out(os: str, cuda: str, flavor: str) -> bool:
        excluded = fnmatch(cuda, "12.6.*") and fnmatch(os, "debian*")             # SMALL's exclude rule
        no_nvcc = m.cuda[cuda].source == "pip" and cuda.startswith("12.") and flavor == "devel"
        return excluded or no_nvcc

    kept = [(os, cuda, flavor) for os in m.os for cuda in m.cuda for flavor in m.flavors if not left_out(os, cuda, flavor)]
    # OS, then CUDA, then flavor, then stack (innermost), each in the order matrix.yaml gives them.
    assert [(v.os, v.cuda, v.flavor, list(v.stack)) for v in p.variants] == [
        (*combination, stack) for combination in kept for stack in m.stacks]
    assert ids(p)[:4] == ["13.0.2-base-debian12", "13.0.2-base-debian12-py",
                          "13.0.2-base-debian12-py-dev-ssh", "13.0.2-runtime-debian12"]


def test_exclude_rule_leaves_combinations_out_with_its_line(project):
    p = expand(project)
    left = [x for x in p.left_out if x.reason == "excluded"]
    assert {x.id for x in left} >= {"12.6.3-base-debian12", "12.6.3-devel-debian12-py-dev-ssh"}
    assert all(x.detail.startswith("exclude rule at ") and x.detail.endswith("matrix.yaml:15") for x in left)


def test_pip_cuda_12_has_no_devel_and_says_why(project):
    p = expand(project)
    assert reasons(p)["12.8.1-devel-debian12"] == "unsupported"
    detail = next(x.detail for x in p.left_out if x.id == "12.8.1-devel-debian12")
    assert "nvcc" in detail
    assert "12.8.1-devel-debian12" not in ids(p)
    # The image source has devel.
    assert "12.6.3-devel-ubuntu24.04" in ids(p)


def test_include_adds_a_combination_an_exclude_removed(project):
    text = SMALL + "include:\n  - {cuda: '12.6.3', flavor: base, os: debian12, stack: [python]}\n"
    p = expand(project, text)
    assert "12.6.3-base-debian12-py" in ids(p)
    assert "12.6.3-base-debian12" not in ids(p)


def test_recipe_constraints_leave_out_with_reason(project):
    write(project / "recipes/cudaonly.toml", """
        description = "needs CUDA 13 devel"
        dockerfile = "images/python"
        tag = "c13"
        [constraints]
        cuda = ["13.*"]
        flavors = ["devel"]
    """)
    p = expand(project, SMALL.replace("  - [python]\n", "  - [python]\n  - [cudaonly]\n"))
    assert "13.0.2-devel-debian12-c13" in ids(p)
    assert reasons(p)["13.0.2-base-debian12-c13"] == "constraint"
    assert reasons(p)["12.8.1-runtime-debian12-c13"] == "constraint"
    detail = next(x.detail for x in p.left_out if x.id == "12.8.1-runtime-debian12-c13")
    assert "CUDA 13.*" in detail


def test_os_family_constraint(project):
    write(project / "recipes/debonly.toml", """
        description = "debian only"
        dockerfile = "images/python"
        tag = "deb"
        [constraints]
        os_family = ["debian"]
    """)
    p = expand(project, SMALL.replace("  - [python]\n", "  - [python]\n  - [debonly]\n"))
    assert "13.0.2-base-debian12-deb" in ids(p)
    assert reasons(p)["13.0.2-base-ubuntu24.04-deb"] == "constraint"


def test_requirements_must_come_earlier_in_the_stack(project):
    write(project / "recipes/needy.toml", """
        description = "needs python"
        dockerfile = "images/python"
        tag = "needy"
        requires = ["python"]
    """)
    p = expand(project, SMALL.replace("  - [python]\n", "  - [python, needy]\n"))
    assert "13.0.2-base-debian12-py-needy" in ids(p)
    with pytest.raises(ConfigError, match="requires 'python' earlier"):
        expand(project, SMALL.replace("  - [python]\n", "  - [needy, python]\n"))


@pytest.mark.parametrize("expr, expected", [
    ("cuda=13.* flavor=devel", {"13.0.2-devel-debian12", "13.0.2-devel-debian12-py",
                                "13.0.2-devel-debian12-py-dev-ssh", "13.0.2-devel-ubuntu24.04",
                                "13.0.2-devel-ubuntu24.04-py", "13.0.2-devel-ubuntu24.04-py-dev-ssh"}),
    ("13.0.2-runtime-debian12*", {"13.0.2-runtime-debian12", "13.0.2-runtime-debian12-py",
                                  "13.0.2-runtime-debian12-py-dev-ssh"}),
    ("os=debian12 stack=none cuda=12.*", {"12.8.1-base-debian12", "12.8.1-runtime-debian12"}),
    ("recipe=ssh os=ubuntu* cuda=12.6.3", {"12.6.3-base-ubuntu24.04-py-dev-ssh", "12.6.3-runtime-ubuntu24.04-py-dev-ssh",
                                           "12.6.3-devel-ubuntu24.04-py-dev-ssh"}),
    ("stack=python os=debian12 flavor=base cuda=13.0.2", {"13.0.2-base-debian12-py"}),
])
def test_select(project, expr, expected):
    assert set(ids(expand(project, select=[expr]))) == expected


def test_select_is_or_and_skip_removes(project):
    p = expand(project, select=["cuda=12.8.1 os=debian12 stack=none", "cuda=12.6.3 flavor=devel stack=none"],
               skip=["flavor=runtime"])
    assert ids(p) == ["12.8.1-base-debian12", "12.6.3-devel-ubuntu24.04"]
    assert reasons(p)["12.8.1-runtime-debian12"] == "unselected"


def test_skip_with_no_match_is_fine_but_impossible_select_is_an_error(project):
    assert expand(project, skip=["os=nothing*"]).variants == expand(project).variants
    with pytest.raises(ConfigError, match="os=centos matches none of: debian12, ubuntu24.04"):
        expand(project, select=["os=centos"])


def test_tags_immutable_and_floating(project):
    p = expand(project)
    v = p.variant("13.0.2-devel-debian12-py")
    assert v.immutable == "13.0.2-devel-debian12-py-20260101-abcdef0"
    assert v.floating == ("13.0.2-devel-debian12-py", "13.0-devel-debian12-py")
    assert p.ref(v.immutable) == "127.0.0.1:5000/test/family:13.0.2-devel-debian12-py-20260101-abcdef0"


def test_tag_templates_with_every_placeholder(project):
    text = SMALL + ("tags:\n  immutable: '{cuda_major}.x-{cuda}-{flavor}-{os}{stack}-{date}.{sha}'\n"
                    "  floating: ['{recipes}-{cuda}-{flavor}-{os}', '{id}-latest']\n")
    v = expand(project, text).variant("12.8.1-runtime-debian12-py-dev-ssh")
    assert v.immutable == "12.x-12.8.1-runtime-debian12-py-dev-ssh-20260101.abcdef0"
    assert v.floating == ("python-devtools-ssh-12.8.1-runtime-debian12", "12.8.1-runtime-debian12-py-dev-ssh-latest")
    bare = expand(project, text).variant("12.8.1-runtime-debian12")
    assert bare.floating[0] == "none-12.8.1-runtime-debian12"


def test_pip_chain_layers_flavors_and_image_chain_starts_from_nvidia(project):
    p = expand(project)
    assert p.variant("13.0.2-devel-debian12-py").chain == (
        "rootfs-debian12", "os-debian12", "13_0_2-base-debian12", "13_0_2-runtime-debian12",
        "13_0_2-devel-debian12", "13_0_2-devel-debian12-py")
    image = p.variant("12.6.3-runtime-ubuntu24.04-py")
    assert image.chain == ("12_6_3-runtime-ubuntu24_04", "12_6_3-runtime-ubuntu24_04-py")
    assert p.nodes[image.chain[0]].base_image == "nvidia/cuda:12.6.3-runtime-ubuntu24.04"
    assert p.nodes["os-ubuntu24_04"].base_image == "ubuntu:24.04"


def test_registry_mirror_prefixes_base_images(project):
    p = expand(project, mirrors=plan.Mirrors(bootstrap_apt="http://a.invalid/debian", registry="mirror.invalid:5000"))
    assert p.nodes["os-ubuntu24_04"].base_image == "mirror.invalid:5000/library/ubuntu:24.04"
    assert p.nodes["12_6_3-base-ubuntu24_04"].base_image == "mirror.invalid:5000/nvidia/cuda:12.6.3-base-ubuntu24.04"


def test_mirrors_reach_node_args(project):
    p = expand(project, mirrors=plan.Mirrors(apt="http://apt.invalid/debian", bootstrap_apt="http://b.invalid/debian",
                                             pypi="https://pypi.invalid/simple"))
    assert dict(p.nodes["os-debian12"].args)["APT_MIRROR"] == "http://apt.invalid/debian"
    assert p.nodes["rootfs-debian12"].rootfs.mirror == "http://b.invalid/debian"
    assert dict(p.nodes["13_0_2-base-debian12"].args)["PIP_INDEX_URL"] == "https://pypi.invalid/simple"
    assert dict(p.nodes["13_0_2-base-debian12-py"].args)["PIP_INDEX_URL"] == "https://pypi.invalid/simple"


def test_cuda_pip_components_come_from_data(project):
    p = expand(project)
    base = dict(p.nodes["13_0_2-base-debian12"].args)
    runtime = dict(p.nodes["13_0_2-runtime-debian12"].args)
    assert base["COMPONENTS"] == "cudart" and base["FLAVOR"] == "base"
    assert "cublas" in runtime["COMPONENTS"].split() and "cudart" not in runtime["COMPONENTS"].split()
    assert runtime["EXTRA_PACKAGES"] == "nvidia-nccl-cu13==2.28.9"


def test_without_moves_variants_to_left_out_and_drops_unused_nodes(project):
    p = expand(project)
    gone = {v.id: plan.LeftOut(v.id, "unreachable", "x", "fix") for v in p.variants if v.os == "ubuntu24.04"}
    q = p.without(gone)
    assert all(v.os == "debian12" for v in q.variants)
    assert not any("ubuntu" in n for n in q.nodes)
    assert sum(1 for x in q.left_out if x.reason == "unreachable") == len(gone)


TORCH = SMALL.replace("  - [python]\n", "  - [python]\n  - [python, pytorch]\n")


def test_pytorch_versions_and_index_come_from_its_compatibility_table(project):
    p = expand(project, TORCH)
    args = dict(p.nodes["13_0_2-runtime-debian12-py-torch"].args)
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == ("2.11.0", "0.26.0")
    assert args["WHEEL_INDEX_URL"] == ""          # PyPI (pip's default), whose torch 2.11.0 is CUDA 13.0
    assert dict(p.nodes["12_8_1-runtime-debian12-py-torch"].args)["TORCH_VERSION"] == "2.10.0"


def test_a_pytorch_index_mirror_is_used_with_the_cuda_folder(project):
    mirrors = plan.Mirrors(bootstrap_apt="http://a.invalid/debian", pypi="https://pypi.invalid/simple",
                           pytorch="https://torch.invalid/whl")
    p = expand(project, TORCH, mirrors=mirrors)
    assert dict(p.nodes["13_0_2-runtime-debian12-py-torch"].args)["WHEEL_INDEX_URL"] == "https://torch.invalid/whl/cu130"
    assert dict(p.nodes["12_6_3-runtime-ubuntu24_04-py-torch"].args)["WHEEL_INDEX_URL"] == "https://torch.invalid/whl/cu126"
    # Without that mirror, PyPI: the host's index.
    p = expand(project, TORCH, mirrors=plan.Mirrors(pypi="https://pypi.invalid/simple"))
    assert dict(p.nodes["13_0_2-runtime-debian12-py-torch"].args)["WHEEL_INDEX_URL"] == "https://pypi.invalid/simple"


def test_pytorch_for_a_cuda_pypi_has_no_wheels_of_needs_the_index_mirror(project):
    p = expand(project, TORCH)
    left = {x.id: x for x in p.left_out}
    x = left["12.6.3-runtime-ubuntu24.04-py-torch"]
    assert x.reason == "unsupported"
    assert "cu126 wheel index" in x.detail and "mirrors.pytorch" in x.fix
    assert "12.6.3-runtime-ubuntu24.04-py" in ids(p)   # the same CUDA without torch is fine


def test_pytorch_for_a_cuda_outside_its_table_is_left_out_saying_so(project):
    text = TORCH.replace('"12.6.3": {source: image}', '"12.4.1": {source: image}').replace("12.6.*", "12.4.*")
    p = expand(project, text)
    x = next(x for x in p.left_out if x.id == "12.4.1-runtime-ubuntu24.04-py-torch")
    assert x.reason == "unsupported"
    assert "no wheels for CUDA 12.4.1" in x.detail and "recipes/pytorch.toml" in x.detail
    assert "12.4.1-runtime-ubuntu24.04-py" in ids(p)
