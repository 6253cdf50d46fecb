"""Floating aliases across patch releases: a tag several variants render names the newest CUDA
among them (docker-library's convention); equal versions still collide."""

from __future__ import annotations

import pytest

from dlenv import report
from dlenv.errors import ConfigError
from helpers import expand

TWO_PATCHES = """
registry: 127.0.0.1:5000
repository: test/aliases
os:
  debian12: {{source: bootstrap, suite: bookworm}}
cuda:
{cuda}
flavors: [base, runtime]
stacks:
  - []
  - [python]
"""


def matrix(*versions: str, extra: str = "") -> str:
    return TWO_PATCHES.format(cuda="\n".join(f'  "{v}": {{source: pip}}' for v in versions)) + extra


def owners(plan) -> dict[str, str]:
    named = {}
    for v in plan.variants:
        for tag in v.tags:
            assert tag not in named, f"{tag} named twice"
            named[tag] = v.id
    return named


@pytest.mark.parametrize("older,newer", [("13.0.1", "13.0.2"), ("13.0.9", "13.0.10")])
def test_the_newest_patch_takes_the_alias_and_the_older_keeps_its_own_tags(project, older, newer):
    # Listed older first and newer first: the order in matrix.yaml decides nothing.
    for versions in ((older, newer), (newer, older)):
        p = expand(project, matrix(*versions))
        named = owners(p)
        for variant in (v for v in p.variants if v.cuda == older):
            twin = p.variant(variant.id.replace(older, newer, 1))
            alias = variant.id.replace(older, "13.0", 1)    # {cuda_mm}-{flavor}-{os}{stack}
            assert named[alias] == twin.id and alias in twin.floating
            assert variant.floating == (variant.id,)            # its own {id}, nothing else
            assert variant.newer == ((alias, twin.id),)
            assert named[variant.immutable] == variant.id
            assert twin.newer == ()


def test_a_selection_of_the_older_patch_does_not_take_the_newers_alias(project):
    p = expand(project, matrix("13.0.1", "13.0.2"), select=["cuda=13.0.1"])
    assert {v.cuda for v in p.variants} == {"13.0.1"}
    for variant in p.variants:
        assert variant.floating == (variant.id,)
        assert variant.newer == ((variant.id.replace("13.0.1", "13.0", 1), variant.id.replace("13.0.1", "13.0.2", 1)),)


def test_equal_versions_rendering_one_tag_still_collide(project):
    # {cuda_mm}-{flavor} without {stack}: the bare and the python variant of one CUDA both render it.
    text = matrix("13.0.1", "13.0.2", extra="tags:\n  floating: ['{id}', '{cuda_mm}-{flavor}']\n")
    with pytest.raises(ConfigError, match=r"tags\.floating: tag '13\.0-base' would name both "
                                          r"13\.0\.2-base-debian12 and 13\.0\.2-base-debian12-py"):
        expand(project, text)


def test_an_immutable_tag_is_never_an_alias(project):
    text = matrix("13.0.1", "13.0.2", extra="tags:\n  immutable: '{cuda_mm}-{flavor}-{os}{stack}-{build}'\n")
    with pytest.raises(ConfigError, match="would name both 13.0.1-base-debian12 and 13.0.2-base-debian12"):
        expand(project, text)


def test_list_says_which_variant_an_alias_names(project, capsys):
    p = expand(project, matrix("13.0.1", "13.0.2"))
    report.plan_table(p)
    table = capsys.readouterr().err
    assert "(13.0-base-debian12 names the newer 13.0.2-base-debian12)" in table
    data = report.plan_json(p)
    older = {v["id"]: v for v in data["variants"]}["13.0.1-runtime-debian12-py"]
    assert older["aliases_of_newer"] == {p.ref("13.0-runtime-debian12-py"): "13.0.2-runtime-debian12-py"}
    assert p.ref("13.0-runtime-debian12-py") not in older["tags"]
    assert all("aliases_of_newer" not in v for v in data["variants"] if v["cuda"] == "13.0.2")
