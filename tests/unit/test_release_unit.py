"""Reading smoke results for a promotion in a later job: statuses, tested digests, GPU checks."""

from __future__ import annotations

import json

import pytest

from dlenv import release
from dlenv.errors import ConfigError
from helpers import SMALL, expand


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_results_of_several_shards_and_the_rootfs_runner_add_up(tmp_path):
    cpu = write(tmp_path / "a.json", {"image": "r/x", "digests": {"v1": "sha256:1", "v2": "sha256:2"},
                                      "verdicts": [{"variant": "v1", "check": "c", "status": "passed", "gpu": False},
                                                   {"variant": "v1", "check": "g", "status": "skipped", "gpu": True},
                                                   {"variant": "v2", "check": "g", "status": "skipped", "gpu": True}]})
    gpu = write(tmp_path / "b.json", {"variant": "v2", "digest": "sha256:2",
                                      "verdicts": [{"variant": "v2", "check": "g", "status": "passed", "gpu": True}]})
    # An arm64 GPU runner's rootfs result: the platform is its file's.
    arm = write(tmp_path / "c.json", {"variant": "v2", "digest": "sha256:2", "platform": "linux/arm64",
                                      "verdicts": [{"variant": "v2", "check": "g", "status": "passed", "gpu": True}]})
    statuses, digests, gpu_statuses = release.read_verdicts([cpu, gpu, arm])
    # Files from before platforms are linux/amd64's.
    assert statuses == {"v1": {"linux/amd64": ["passed", "skipped"]},
                        "v2": {"linux/amd64": ["skipped", "passed"], "linux/arm64": ["passed"]}}
    assert digests == {"v1": "sha256:1", "v2": "sha256:2"}
    # v2's GPU check ran on the GPU runners; v1's ran nowhere.
    assert gpu_statuses == {"v1": {("linux/amd64", "g"): ["skipped"]},
                            "v2": {("linux/amd64", "g"): ["skipped", "passed"], ("linux/arm64", "g"): ["passed"]}}


def test_a_shard_that_tested_nothing_is_still_a_result(tmp_path):
    empty = write(tmp_path / "e.json", {"image": "r/x", "digests": {}, "verdicts": []})
    assert release.read_verdicts([empty]) == ({}, {}, {})


def test_one_variant_tested_at_two_digests_counts_as_untested_digest(tmp_path):
    a = write(tmp_path / "a.json", {"digests": {"v": "sha256:1"}, "verdicts": []})
    b = write(tmp_path / "b.json", {"digests": {"v": "sha256:2"}, "verdicts": []})
    assert release.read_verdicts([a, b])[1] == {"v": ""}


def test_a_file_that_is_not_a_smoke_result_is_bad_input_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="x.json: verdicts: not a smoke result"):
        release.read_verdicts([write(tmp_path / "x.json", {"promotions": []})])
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(ConfigError, match="y.json:1: verdicts: not a smoke result"):
        release.read_verdicts([tmp_path / "y.json"])
    # A result cut short (a job killed while writing it): the line where it stops.
    whole = json.dumps({"digests": {"v": "sha256:1"}, "verdicts": [{"variant": "v", "check": "c", "status": "passed"}]},
                       indent=1)
    (tmp_path / "z.json").write_text(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match="z.json:[0-9]+: verdicts: not a smoke result") as err:
        release.read_verdicts([tmp_path / "z.json"])
    assert err.value.exit_code == 2


@pytest.mark.parametrize("statuses, why", [([], "not smoke-tested"), (["passed", "failed"], "failed"),
                                           (["passed", "skipped"], "")])
def test_what_blocks_a_promotion(statuses, why):
    got = release.verdict_of(statuses)
    assert (why in got) if why else got == ""


def test_a_variant_is_promoted_only_when_every_platform_of_it_passed(project):
    p = expand(project, SMALL + "platforms: [linux/amd64, linux/arm64]\n")
    v = p.variants[0]
    assert v.platforms == ("linux/amd64", "linux/arm64")
    assert release.blocked(v, {"linux/amd64": ["passed"], "linux/arm64": ["passed", "skipped"]}) == ""
    assert release.blocked(v, {"linux/amd64": ["passed"]}) == "not smoke-tested on linux/arm64"
    assert release.blocked(v, {"linux/amd64": ["passed"], "linux/arm64": ["failed"]}) == \
        "failed its smoke checks on linux/arm64"
    one = expand(project).variants[0]
    assert release.blocked(one, {}) == "not smoke-tested"
