"""Smoke verdicts without an engine: judging a check, inheriting checks, JUnit output."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from dlenv.config import Check, builtin_checks
from dlenv.smoke import Verdict, junit
from dlenv.smoke import judge as judge_dict
from helpers import expand


def check(**kw) -> Check:
    base = dict(name="c", run="true", expect_exit=0, expect_output=None, gpu=False, timeout=5, origin="x.toml")
    base.update(kw)
    return Check(**base)


def judge(check: Check, code: int, output: str):
    return judge_dict(dataclasses.asdict(check), code, output)


def test_judge():
    assert judge(check(), 0, "") == ("passed", "")
    assert judge(check(), 1, "")[0] == "failed"
    assert judge(check(expect_exit=3), 3, "")[0] == "passed"
    assert judge(check(expect_output=r"uv \d"), 0, "uv 0.9.1")[0] == "passed"
    status, why = judge(check(expect_output=r"uv \d"), 0, "nothing")
    assert status == "failed" and "does not match" in why
    assert judge(check(timeout=7), 124, "") == ("failed", "timed out after 7s")


def test_checks_are_inherited_along_the_chain(project):
    p = expand(project)
    names = lambda vid: [c.name for c in p.variant(vid).checks]  # noqa: E731
    base, runtime, devel = (names(f"13.0.2-{f}-debian12") for f in ("base", "runtime", "devel"))
    assert base[:4] == runtime[:4] == devel[:4]            # the global checks first
    assert set(base) < set(runtime) < set(devel)
    assert "nvcc compiles and links a kernel" in devel and "nvcc compiles and links a kernel" not in runtime
    full = names("13.0.2-devel-debian12-py-dev-ssh")
    assert full[: len(devel)] == devel
    assert [c.origin for c in p.variant("13.0.2-devel-debian12-py-dev-ssh").checks][-3:] == [
        "recipes/python.toml", "recipes/devtools.toml", "recipes/ssh.toml"]
    gpu = [c.name for c in p.variant("13.0.2-devel-debian12").checks if c.gpu]
    shipped = builtin_checks()
    assert gpu == [c.name for slot in ("global", "base", "runtime", "devel") for c in shipped[slot] if c.gpu]


def test_junit_reports_skips_as_skips_not_passes():
    qemu = "linux/arm64 runs under QEMU on this linux/amd64 host: its GPU checks need a linux/arm64 host with a GPU"
    verdicts = [Verdict("v1", "a", "passed", 0.5, "ok", False, "x", platform="linux/amd64"),
                Verdict("v1", "b", "skipped", 0.0, "no GPU on this host", True, "x", platform="linux/amd64"),
                Verdict("v1", "a", "passed", 2.5, "ok", False, "x", platform="linux/arm64"),
                Verdict("v1", "b", "skipped", 0.0, qemu, True, "x", platform="linux/arm64"),
                Verdict("v2", "c", "failed", 1.0, "exit 1, expected 0\nboom", False, "x", platform="linux/amd64")]
    root = ET.fromstring(junit(verdicts).split("?>", 1)[1])
    # A suite per variant and platform.
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {f"{v.variant} ({v.platform})" for v in verdicts}
    v1 = suites["v1 (linux/amd64)"]
    assert v1.get("skipped") == "1" and v1.get("failures") == "0"
    assert suites["v2 (linux/amd64)"].get("failures") == "1"
    skipped = v1.find("testcase[@name='b']/skipped")
    assert skipped is not None and skipped.get("message") == "no GPU on this host"
    assert suites["v1 (linux/arm64)"].find("testcase[@name='b']/skipped").get("message") == qemu
    assert suites["v2 (linux/amd64)"].find("testcase/failure").get("message") == "exit 1, expected 0"
    assert {v.to_json()["platform"] for v in verdicts} == {"linux/amd64", "linux/arm64"}
