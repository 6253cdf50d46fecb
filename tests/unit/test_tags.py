"""Build ids from git, tag validity, and what a dirty tree does to the immutable tag."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dlenv import tags


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_DATE": "2026-03-04T05:06:07Z", "GIT_COMMITTER_DATE": "2026-03-04T05:06:07Z",
                               "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a").write_text("1\n")
    git(repo, "add", "a")
    git(repo, "commit", "-qm", "x")
    git(repo, "remote", "add", "origin", "https://user:token@example.invalid/org/dlenv.git")
    return repo


def test_build_id_from_commit(tmp_path):
    repo = make_repo(tmp_path)
    info = tags.build_info(repo)
    sha = git(repo, "rev-parse", "HEAD")
    assert info.build == f"20260304-{sha[:7]}"
    assert info.revision == sha
    assert info.created == "2026-03-04T05:06:07Z"
    assert info.epoch == 1772600767
    # A token in the remote URL never reaches a label.
    assert info.source == "https://example.invalid/org/dlenv"


def test_dirty_tree_gets_its_own_id_stable_for_the_same_change(tmp_path):
    repo = make_repo(tmp_path)
    clean = tags.build_info(repo).build
    (repo / "a").write_text("2\n")
    dirty = tags.build_info(repo).build
    assert dirty.startswith(clean + "-d") and dirty == tags.build_info(repo).build
    (repo / "a").write_text("3\n")
    assert tags.build_info(repo).build != dirty
    # A new file not yet added (a recipe, a Dockerfile) changes the build too.
    (repo / "a").write_text("1\n")
    assert tags.build_info(repo).build == clean
    (repo / "new.toml").write_text("x\n")
    with_new = tags.build_info(repo).build
    assert with_new.startswith(clean + "-d")
    (repo / "new.toml").write_text("y\n")
    assert tags.build_info(repo).build != with_new


def test_outside_git_and_override(tmp_path):
    info = tags.build_info(tmp_path)
    assert info.build == "00000000-local" and info.epoch == 0
    assert tags.build_info(tmp_path, override="rc1").build == "rc1"


def test_valid_tag():
    assert tags.valid_tag("13.0.2-devel-debian12-py-20260101-abcdef0")
    assert not tags.valid_tag("-leading-dash")
    assert not tags.valid_tag("a+b")
    assert not tags.valid_tag("x" * 129)


def test_each_platform_has_a_tag_of_its_own_that_no_two_platforms_share():
    from dlenv.config import PLATFORMS

    made = {p: tags.platform_tag("13.0.2-base-debian12-20260101-abc", p) for p in PLATFORMS}
    assert len(set(made.values())) == len(PLATFORMS)
    for platform, tag in made.items():
        assert tag == f"13.0.2-base-debian12-20260101-abc-{platform.split('/')[1]}" and tags.valid_tag(tag)
