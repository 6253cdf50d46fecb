"""Failure isolation, replayed: isolate's loop driven by bake and probe callables that answer from
recorded bake progress (tests/unit/data/isolate/README.md says how each was recorded).

The replay asks the loop to make exactly the bakes the recording made, in its order, each from
the bake file it was made from; what the loop concludes is checked against what the recipes do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dlenv import bake, config, plan
from dlenv import graph as plan_graph
from dlenv.isolate import isolate
from dlenv.results import Result
from dlenv.selection import Selection
from helpers import BUILD, MIRRORS, REGISTRY, TINY, new_project

DATA = Path(__file__).parent / "data" / "isolate"

IMAGES = {"broken": "FROM base\nRUN echo 'about to fail: dlenv-broken-marker' && exit 3\n",
          "leafbad": "FROM base\nRUN echo 'a leaf fails: dlenv-leaf-marker' && exit 4\n",
          "marker": "FROM base\nRUN echo built > /dlenv-marker\n"}
RECIPES = {f"{name}.toml": f'description = "{name}"\ndockerfile = "images/{name}"\ntag = "{name}"\n' for name in IMAGES}
STACKS = {"shared-parent": ["[]", "[python]", "[broken, python]", "[broken, marker]"],
          "leaf": ["[]", "[python]", "[python, leafbad]"],
          "independent": ["[]", "[broken]", "[broken, python]", "[python]", "[python, leafbad]", "[marker]"],
          "export": ["[]", "[python]", "[marker]"]}
EXPORT_FAILS = "13_0_2-base-debian12-py"   # the target whose export export.log fails (its README)


class Replay:
    """bake and probe answering from a recorded build.log, one recorded bake per call, in order."""

    def __init__(self, name: str):
        text = (DATA / f"{name}.log").read_text()
        self.recorded = [section.partition("\n") for section in text.split("### bake ")[1:]]
        self.asked: list[list[str]] = []

    def _answer(self, targets: list[str], file: str) -> bake.Outcome:
        assert len(self.asked) < len(self.recorded), f"baked {targets} after the recording ended"
        head, _, body = self.recorded[len(self.asked)]
        self.asked.append(targets)
        assert targets == head.split(), f"baked {targets} where the recording baked {head}"
        assert f"/{file} " in body, f"baked {head} from {file}, the recording did not"
        progress = bake.Progress()
        for line in body.splitlines():
            progress.read(line)
        # A failed bake's last line is buildx's error, also the end of what it printed on stderr.
        return progress.failed(body) if body.strip().splitlines()[-1].startswith("ERROR") else progress.outcome

    def bake(self, targets: list[str]) -> bake.Outcome:
        return self._answer(targets, "bake.json")

    def probe(self, targets: list[str]) -> bake.Outcome:
        return self._answer(targets, "bake-probe.json")


def family(tmp_path: Path, name: str) -> plan.Plan:
    matrix = TINY.format(registry=REGISTRY, repository="test/isolate", stacks="".join(f"  - {s}\n" for s in STACKS[name]))
    project = new_project(tmp_path / name, matrix, images=IMAGES, recipes=RECIPES)
    return plan.expand(config.load(project / "matrix.yaml", root=project), BUILD, MIRRORS, Selection())


def replayed(tmp_path: Path, name: str):
    p = family(tmp_path, name)
    replay = Replay(name)
    settled: dict[str, Result] = {}
    found: list[str] = []
    built, outcome = isolate(p, list(p.variants), replay.bake, replay.probe, {},
                             lambda r: settled.setdefault(r.variant, r), found.append)
    assert len(replay.asked) == len(replay.recorded), "the loop stopped before the recording did"
    return p, built, outcome, settled, found


def failing_nodes(p: plan.Plan) -> dict[str, str]:
    """node -> the Dockerfile of a recipe that exits non-zero, for the nodes of the plan made from one."""
    return {name: IMAGES[Path(node.dockerfile).name] for name, node in p.nodes.items()
            if Path(node.dockerfile).name in IMAGES and re.search(r"exit [1-9]", IMAGES[Path(node.dockerfile).name])}


@pytest.mark.parametrize("name", ["shared-parent", "leaf", "independent"])
def test_the_failing_node_is_found_and_only_what_stands_on_it_is_lost(tmp_path, name):
    p, built, outcome, settled, found = replayed(tmp_path, name)
    failing = failing_nodes(p)
    assert failing and sorted(found) == sorted(failing)
    for variant in p.variants:
        culprit = next((n for n in variant.chain if n in failing), None)
        if culprit is None:
            assert variant in built and variant.id not in settled
            continue
        result = settled[variant.id]
        assert result.node == culprit
        assert result.status == ("failed" if culprit == variant.node else "not attempted")
        # The failing step's own output and exit code, read from the progress, go with every result.
        marker = re.search(r"(dlenv-\w+-marker)", failing[culprit]).group(1)
        code = re.search(r"exit (\d+)", failing[culprit]).group(1)
        assert marker in result.error and f"exit code: {code}" in result.error
        if result.status == "not attempted":
            assert result.error.endswith(f"depends on {culprit}, which failed")
    assert outcome is not None and outcome.ok
    assert {v.node for v in built} <= set(outcome.ready), "the last bake exported every target it built"


def test_a_failure_in_a_shared_parent_leaves_every_variant_above_it_not_attempted(tmp_path):
    p, built, _, settled, found = replayed(tmp_path, "shared-parent")
    above = [v for v in p.variants if found[0] in v.chain]
    assert found[0] not in {v.node for v in p.variants}, "the recording's broken node is no variant's own"
    assert above and all(settled[v.id].status == "not attempted" for v in above)
    assert built == [v for v in p.variants if v not in above]


def test_an_export_that_fails_fails_only_its_variant(tmp_path):
    p, built, outcome, settled, found = replayed(tmp_path, "export")
    assert found == [], "every node of the chain built: no node is to blame"
    assert list(settled) == [v.id for v in p.variants if v.node == EXPORT_FAILS]
    result = settled[next(iter(settled))]
    assert (result.status, result.node) == ("failed", EXPORT_FAILS)
    assert "no space left on device" in result.error
    assert built == [v for v in p.variants if v.node != EXPORT_FAILS] and outcome is not None and outcome.ok


def test_a_node_known_broken_before_baking_settles_its_variants_without_a_bake(tmp_path):
    p = family(tmp_path, "leaf")
    first = p.variants[0].chain[0]
    settled: list[Result] = []

    def never(targets):
        raise AssertionError(f"baked {targets}")

    built, outcome = isolate(p, list(p.variants), never, never, {first: ["mmdebstrap failed"]}, settled.append)
    assert (built, outcome) == ([], None)
    assert [(r.variant, r.status, r.node) for r in settled] == [(v.id, "not attempted", first) for v in p.variants]
    assert all(r.error.startswith("mmdebstrap failed") for r in settled)


def test_a_failure_the_bake_names_no_node_of_is_baked_once_more_then_fails_every_variant(tmp_path):
    p = family(tmp_path, "leaf")
    settled: list[Result] = []
    baked: list[list[str]] = []
    said: list[str] = []
    lines = ["ERROR: failed to dial gRPC: cannot connect to the Docker daemon"]
    built, outcome = isolate(p, list(p.variants), lambda targets: baked.append(targets) or bake.Progress().failed(
        "\n".join(lines)), lambda targets: pytest.fail("probed"), {}, settled.append, again=said.append)
    assert (built, outcome) == ([], None)
    assert len(baked) == 2 and said == lines
    assert [(r.variant, r.status, r.node, r.error) for r in settled] == [(v.id, "failed", "?", lines[0])
                                                                          for v in p.variants]


def test_a_bake_that_lost_its_session_once_is_baked_again_and_builds(tmp_path):
    # What the main job met on this machine (2 cores, a bootstrap under QEMU beside the bake).
    p = family(tmp_path, "leaf")
    answers = [bake.Progress().failed("ERROR: failed to solve: DeadlineExceeded: context deadline exceeded"),
               bake.Outcome(ok=True)]
    settled: list[Result] = []
    built, outcome = isolate(p, list(p.variants), lambda targets: answers.pop(0), lambda targets: pytest.fail("probed"),
                             {}, settled.append)
    assert outcome is not None and outcome.ok and built == list(p.variants) and not settled and not answers



@pytest.mark.parametrize("recording", ["independent", "leaf", "shared-parent", "export"])
def test_progress_says_when_each_image_was_exported_from_a_recorded_bake(recording):
    """In each recorded bake, every exported target is reported as it is done; the one whose
    step failed is not."""
    for section in (DATA / f"{recording}.log").read_text().split("### bake ")[1:]:
        done: list[str] = []
        progress = bake.Progress(done=lambda target, seconds, done=done: done.append(target))
        for line in section.splitlines():
            progress.read(line)
        exported = {m.group(1) for m in re.finditer(r"^#\d+ \[([^\] ]+)\] exporting to image$", section, re.M)}
        assert set(done) == set(progress.outcome.ready) <= exported
        assert not progress.outcome.error_target or progress.outcome.error_target not in done


def test_nodes_an_earlier_shard_pushed_are_not_probed(tmp_path):
    """A shard of a later stage takes its parent from the registry: probing the failing chain
    node by node asks only for the nodes its bake file has."""
    whole = family(tmp_path, "leaf")
    base = whole.variants[0]
    p = whole.unselect({base.id}, "in another shard").pull({base.node: base.immutable})
    top = p.variants[-1].node
    probed: list[list[str]] = []

    def probe(targets):
        probed.append(targets)
        return bake.Progress().failed(f"ERROR: target {targets[0]}: failed to solve")

    isolate(p, list(p.variants), lambda targets: bake.Progress().failed(f"ERROR: target {top}: failed to solve"),
            probe, {}, lambda r: None)
    below = set(plan_graph.ancestors(whole, base.node))
    assert probed and not below & {t for targets in probed for t in targets}
    assert set(plan_graph.definition(p)["target"]) == set(p.nodes) - below


def test_a_cache_the_registry_does_not_have_yet_is_no_failing_step():
    progress = bake.Progress()
    for line in ["#9 [13_0_2-devel-debian12] importing cache manifest from 127.0.0.1:5000/fam:13.0.2-devel-debian12",
                 "#9 ERROR: failed to configure registry cache importer: 127.0.0.1:5000/fam:13.0.2-devel-debian12: "
                 "not found",
                 "#12 [13_0_2-devel-debian12-py stage-0 1/2] RUN exit 3",
                 "#12 ERROR: process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"]:
        progress.read(line)
    outcome = progress.failed("ERROR: failed to solve: process did not complete successfully")
    assert outcome.error_target == "13_0_2-devel-debian12-py"
    assert "exit code: 3" in outcome.error_lines[-1]
