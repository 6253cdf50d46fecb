"""Loading the repository's own matrix and recipes, and host configuration parsing."""

from __future__ import annotations

from pathlib import Path

from dlenv import config, hostconf
from helpers import REPO, write


def test_repository_matrix_loads():
    matrix = config.load(REPO / "matrix.yaml", root=REPO)
    model = matrix.model
    assert set(model.os) >= {"debian12", "ubuntu22.04", "ubuntu24.04"}
    assert {v.split(".")[0] for v in model.cuda} >= {"12", "13"}
    assert model.flavors == ["base", "runtime", "devel"]
    assert [] in model.stacks and ["python", "devtools", "ssh"] in model.stacks
    assert set(matrix.recipes) >= {"python", "devtools", "ssh"}


def test_recipes_are_data(project):
    matrix = config.load(REPO / "matrix.yaml", root=REPO)
    python = matrix.recipes["python"]
    assert python.dockerfile == "images/python" and python.tag == "py"
    assert (REPO / python.dockerfile / "Dockerfile").is_file()


def test_defaults(project):
    write(project / "matrix.yaml", "os: {d: {source: bootstrap, suite: bookworm}}\ncuda: {'13.0.2': {source: pip}}\n")
    model = config.load(project / "matrix.yaml", root=project).model
    assert model.registry == "127.0.0.1:5000"
    assert model.stacks == [[]]
    assert model.tags.immutable == "{id}-{build}"


def test_where_finds_lines(project):
    write(project / "matrix.yaml", "os:\n  d:\n    source: bootstrap\n    suite: bookworm\ncuda: {'13.0.2': {source: pip}}\n")
    matrix = config.load(project / "matrix.yaml", root=project)
    assert matrix.where("os", "d", "suite").line == 4
    assert matrix.where("cuda", "13.0.2").line == 5


def test_apt_sources_parsing(tmp_path, monkeypatch):
    (tmp_path / "sources.list.d").mkdir()
    write(tmp_path / "sources.list", "# comment\ndeb [arch=amd64] http://one.invalid/debian bookworm main\n")
    write(tmp_path / "sources.list.d/x.sources", """
        Types: deb
        URIs: http://two.invalid/debian
        Suites: bookworm
        Components: main

        Types: deb
        URIs: http://off.invalid/debian
        Suites: bookworm
        Enabled: no

        Types: deb
        URIs: http://two.invalid/debian-security
        Suites: bookworm-security
    """)
    monkeypatch.setattr(hostconf, "APT_DIRS", (tmp_path / "sources.list", tmp_path / "sources.list.d"))
    assert hostconf.apt_uris() == ["http://one.invalid/debian", "http://two.invalid/debian",
                                   "http://two.invalid/debian-security"]
    monkeypatch.setattr(hostconf, "os_release", lambda root=Path("/"): {"ID": "debian"})
    assert hostconf.debian_mirror() == "http://one.invalid/debian"
    monkeypatch.setattr(hostconf, "os_release", lambda root=Path("/"): {"ID": "fedora"})
    assert hostconf.debian_mirror() is None


def test_pip_index_from_environment(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.invalid/simple")
    assert hostconf.pip_index() == "https://pypi.invalid/simple"


def test_toml_lines_of_array_tables_and_dotted_keys():
    from dlenv.sources import TomlDoc

    doc = TomlDoc()
    doc.text = ('[cuda13]\nbase = ["cudart"]\nextra.runtime = ["nccl"]\n\n'
                '[[checks]]\nname = "a"\nrun = "true"\n\n[[checks]]\nname = "b"\n')
    assert doc.line_of(("cuda13", "base")) == 2
    assert doc.line_of(("cuda13", "extra")) == 3            # a dotted key below beats the table above
    assert doc.line_of(("checks", 1, "name")) == 10         # the second [[checks]], not the first
    assert doc.line_of(("checks", 1, "run")) == 9           # missing there: its table's line
    assert doc.line_of(("nothing",)) == 1
