"""What was proven is named by what proved it: the checks' definitions and files, the runner's kind."""

from __future__ import annotations

import dataclasses

from dlenv import proven
from dlenv.config import builtin_checks


def test_the_fingerprint_changes_with_any_check_and_the_tag_names_digest_platform_kind_and_checks():
    checks = next(c for c in builtin_checks().values() if c)
    same = proven.fingerprint(checks)
    assert proven.fingerprint(checks) == same
    changed = (dataclasses.replace(checks[0], run=checks[0].run + " "), *checks[1:])
    assert proven.fingerprint(changed) != same
    assert proven.fingerprint(checks[1:]) != same
    digest = "sha256:" + "a" * 64
    tag = proven.tag(digest, "cpu", same, "linux/amd64")
    assert tag == f"sha256-{'a' * 64}.smoke-amd64-cpu-{same}" and len(tag) <= 128
    assert proven.tag(digest, "gpu", same, "linux/amd64") != tag
    assert proven.tag(digest, "cpu", same, "linux/arm64") not in (tag, proven.tag(digest, "gpu", same, "linux/amd64"))
