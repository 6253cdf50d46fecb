"""Bad input: every malformed matrix, recipe or selector exits 2 with one line naming file, line
and field, and builds and pushes nothing (the engine is never even looked for)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dlenv.cli import main
from helpers import REPO, SMALL, write

GOOD = SMALL

# (name, matrix text or None for GOOD, {recipe file: text}, extra argv, expected file, line, field, words)
CASES = [
    ("yaml-syntax", "os: [debian12\ncuda: {}\n", {}, [], "matrix.yaml", 2, "YAML syntax", "expected ',' or ']'"),
    ("not-a-mapping", "- a\n- b\n", {}, [], "matrix.yaml", 1, "document", "mapping"),
    ("unknown-top-key", GOOD + "registy: x\n", {}, [], "matrix.yaml", 16, "registy", "did you mean 'registry'"),
    ("duplicate-key", GOOD + "repository: again\n", {}, [], "matrix.yaml", 16, "YAML syntax", "duplicate key"),
    ("bad-os-source", GOOD.replace("source: bootstrap, suite", "source: docker, suite"), {}, [],
     "matrix.yaml", 4, "os.debian12.source", "'image' or 'bootstrap'"),
    ("image-os-without-image", GOOD.replace('source: image, image: "ubuntu:24.04"', "source: image"), {}, [],
     "matrix.yaml", 5, "os.ubuntu24.04", "needs `image`"),
    ("bootstrap-without-suite", GOOD.replace("source: bootstrap, suite: bookworm", "source: bootstrap"), {}, [],
     "matrix.yaml", 4, "os.debian12", "needs `suite`"),
    ("os-key-typo", GOOD.replace('image: "ubuntu:24.04"', 'imgae: "ubuntu:24.04"'), {}, [],
     "matrix.yaml", 5, "os.ubuntu24.04.imgae", "did you mean 'image'"),
    ("cuda-unquoted", GOOD.replace('"12.8.1": {source: pip}', "12.8: {source: pip}"), {}, [],
     "matrix.yaml", 6, "cuda", "quoted string"),
    ("cuda-short-version", GOOD.replace('"12.8.1"', '"12.8"'), {}, [], "matrix.yaml", 6, "cuda",
     "major.minor.patch"),
    ("cuda-bad-source", GOOD.replace('"12.8.1": {source: pip}', '"12.8.1": {source: conda}'), {}, [],
     "matrix.yaml", 8, "cuda.12.8.1.source", "'image' or 'pip'"),
    ("cuda-image-placeholder", GOOD.replace('"12.6.3": {source: image}',
                                            '"12.6.3": {source: image, image: "nvidia/cuda:{ver}"}'), {}, [],
     "matrix.yaml", 9, "cuda.12.6.3.image", "unknown placeholder"),
    ("unknown-flavor", GOOD + "flavors: [base, debug]\n", {}, [], "matrix.yaml", 16, "flavors.1",
     "'base', 'runtime' or 'devel'"),
    ("duplicate-flavor", GOOD + "flavors: [base, base]\n", {}, [], "matrix.yaml", 16, "flavors", "twice"),
    ("unknown-recipe", GOOD.replace("- [python]\n", "- [pyton]\n"), {}, [], "matrix.yaml", 12, "stacks.1.0",
     "did you mean 'python'"),
    ("stack-not-a-list", GOOD.replace("  - [python]\n", "  - python\n"), {}, [], "matrix.yaml", 12, "stacks.1",
     "valid list"),
    ("recipe-twice", GOOD.replace("- [python]\n", "- [python, python]\n"), {}, [], "matrix.yaml", 12,
     "stacks.1.1", "twice"),
    ("immutable-without-build", GOOD + "tags: {immutable: '{id}'}\n", {}, [], "matrix.yaml", 16,
     "tags.immutable", "would move"),
    ("tag-unknown-placeholder", GOOD + "tags:\n  floating: ['{cuda_version}-{flavor}']\n", {}, [],
     "matrix.yaml", 17, "tags.floating", "unknown placeholder {cuda_version}"),
    ("tag-renders-invalid", GOOD + "tags:\n  floating: ['{id}+extra']\n", {}, [], "matrix.yaml", 17,
     "tags.floating.0", "invalid tag"),
    ("floating-tags-collide", GOOD + "tags:\n  floating: ['latest']\n", {}, [], "matrix.yaml", 17,
     "tags.floating", "would name both"),
    ("exclude-unknown-key", GOOD.replace('{cuda: "12.6.*", os: "debian*"}', '{cuda: "12.6.*", flavour: base}'),
     {}, [], "matrix.yaml", 15, "exclude.0.flavour", "did you mean 'flavor'"),
    ("exclude-empty-rule", GOOD.replace('{cuda: "12.6.*", os: "debian*"}', "{}"), {}, [], "matrix.yaml", 15,
     "exclude.0", "at least one"),
    ("include-unknown-os", GOOD + "include:\n  - {cuda: '13.0.2', flavor: base, os: debian13}\n", {}, [],
     "matrix.yaml", 17, "include.0.os", "unknown os 'debian13'"),
    ("pypi-mirror-not-url", GOOD + "mirrors: {pypi: mirror.example/simple}\n", {}, [], "matrix.yaml", 16,
     "mirrors.pypi", "URL"),
    ("registry-with-scheme", GOOD.replace("registry: 127.0.0.1:5000", "registry: http://127.0.0.1:5000"), {}, [],
     "matrix.yaml", 1, "registry", "host[:port]"),
    ("repository-uppercase", GOOD.replace("repository: test/family", "repository: Test/Family"), {}, [],
     "matrix.yaml", 2, "repository", "not a valid repository"),
    ("pip-major-not-described", GOOD.replace('"12.8.1": {source: pip}', '"11.8.0": {source: pip}'), {}, [],
     "matrix.yaml", 8, "cuda.11.8.0.source", "not described"),
    ("os-not-a-mapping", GOOD.replace("  debian12: {source: bootstrap, suite: bookworm}\n",
                                      "  debian12: bootstrap\n"), {}, [], "matrix.yaml", 4, "os.debian12",
     "valid dictionary"),
    ("unhashable-key", GOOD + "[a, b]: 1\n", {}, [], "matrix.yaml", 16, "YAML syntax", "plain value"),
    ("cuda-image-format-spec", GOOD.replace('"12.6.3": {source: image}', '"12.6.3": {source: image, image: "x:{version:d}"}'),
     {}, [], "matrix.yaml", 9, "cuda.12.6.3.image", "not supported"),
    ("ids-collide", GOOD.replace("  ubuntu24.04:", "  debian12-py: {source: bootstrap, suite: bookworm}\n  ubuntu24.04:"),
     {}, [], "matrix.yaml", 5, "os.debian12-py", "both be called"),
    ("include-stack-requirement", GOOD + "include:\n  - {cuda: '13.0.2', flavor: base, os: debian12, stack: [needy]}\n",
     {"needy.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "n"\nrequires = ["python"]\n'}, [],
     "matrix.yaml", 17, "include.0.stack.0", "requires 'python' earlier"),
    ("bad-timezone", GOOD + "timezone: '$(reboot)'\n", {}, [], "matrix.yaml", 16, "timezone", "time zone"),
    ("bad-locale", GOOD + "locale: 'x y'\n", {}, [], "matrix.yaml", 16, "locale", "a locale is like"),
    ("bad-suite", GOOD.replace("suite: bookworm", "suite: book worm"), {}, [], "matrix.yaml", 4, "os.debian12.suite",
     "letters, digits"),
    ("apt-mirror-with-space", GOOD + "mirrors: {apt: 'http://a b/debian'}\n", {}, [], "matrix.yaml", 16, "mirrors.apt",
     "URL"),
    ("huge-nesting", "os: " + "[" * 3000 + "\n", {}, [], "matrix.yaml", None, "YAML", "cannot be read"),
    # recipes
    ("recipe-toml-syntax", None, {"broken.toml": 'description = "x"\ntag = [\n'}, [], "recipes/broken.toml", 3,
     "TOML syntax", "nvalid"),
    ("recipe-unknown-key", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                'tags = ["y"]\n'}, [],
     "recipes/extra.toml", 4, "tags", "did you mean 'tag'"),
    ("recipe-missing-field", None, {"extra.toml": 'dockerfile = "images/python"\ntag = "x"\n'}, [],
     "recipes/extra.toml", None, "description", "Field required"),
    ("recipe-bad-tag", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "X Y"\n'}, [],
     "recipes/extra.toml", 3, "tag", "lowercase"),
    ("recipe-no-dockerfile", None, {"extra.toml": 'description = "x"\ndockerfile = "images/nothing"\ntag = "x"\n'},
     [], "recipes/extra.toml", 2, "dockerfile", "no Dockerfile"),
    ("recipe-unknown-requirement", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\n'
                                                        'tag = "x"\nrequires = ["pyhton"]\n'}, [],
     "recipes/extra.toml", 4, "requires.0", "did you mean 'python'"),
    ("recipe-cycle", None, {"a.toml": 'description = "a"\ndockerfile = "images/python"\ntag = "a"\nrequires = ["b"]\n',
                            "b.toml": 'description = "b"\ndockerfile = "images/python"\ntag = "b"\nrequires = ["a"]\n'},
     [], "recipes/b.toml", 4, "requires", "cycle"),
    ("recipe-duplicate-tag", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "py"\n'}, [],
     "recipes/python.toml", 3, "tag", "already used"),
    ("recipe-bad-constraint", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                   '[constraints]\nflavors = ["gpu"]\n'}, [],
     "recipes/extra.toml", 5, "constraints.flavors.0", "'base', 'runtime' or 'devel'"),
    ("compat-missing-args", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                 '[[compat]]\ncuda = "13.0.*"\nindex = "cu130"\n'}, [],
     "recipes/extra.toml", 4, "compat.0.args", "Field required"),
    ("compat-bad-index", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                              '[[compat]]\ncuda = "13.0.*"\nindex = "../cu130"\nargs = {}\n'}, [],
     "recipes/extra.toml", 6, "compat.0.index", "folder name"),
    ("compat-lowercase-arg", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                  '[[compat]]\ncuda = "13.0.*"\nindex = "cu130"\n'
                                                  'args = { torch = "2.11.0" }\n'}, [],
     "recipes/extra.toml", 7, "compat.0.args", "UPPER_CASE"),
    ("recipe-context-missing", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                    'contexts = { common = "images/nothing" }\n'}, [],
     "recipes/extra.toml", 4, "contexts.common", "no folder 'images/nothing'"),
    ("recipe-context-named-base", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                       'contexts = { base = "images/common" }\n'}, [],
     "recipes/extra.toml", 4, "contexts", "not base"),
    ("pytorch-mirror-not-url", GOOD + "mirrors: {pytorch: torch.example/whl}\n", {}, [], "matrix.yaml", 16,
     "mirrors.pytorch", "URL"),
    ("stack-misses-requirement", GOOD.replace("- [python]\n", "- [needy]\n"),
     {"needy.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "n"\nrequires = ["python"]\n'}, [],
     "matrix.yaml", 12, "stacks.1.0", "requires 'python' earlier"),
    # selectors
    ("select-impossible-value", None, {}, ["--select", "flavor=gpu"], "--select", None, "flavor",
     "matches none of"),
    ("select-unknown-key", None, {}, ["--select", "colour=red"], "--select", None, "colour", "unknown selector key"),
    ("select-matches-nothing", None, {}, ["--select", "cuda=12.6.* os=debian12"], "--select", None, "expression",
     "selects no variant"),
    ("registry-option", None, {}, ["--registry", "not a registry"], "--registry", None, "registry", "host[:port]"),
    ("apt-mirror-option", None, {}, ["--apt-mirror", "mirror.example/debian"], "--apt-mirror", None, "mirrors.apt",
     "URL"),
    ("https-proxy-option", None, {}, ["--https-proxy", "proxy:3128"], "--https-proxy", None, "proxy.https_proxy",
     "URL"),
    ("ca-bundle-option-missing", None, {}, ["--ca-bundle", "/nonexistent/ca.pem"], "--ca-bundle", None,
     "proxy.ca_bundle", "no such file"),
    ("proxy-not-url", GOOD + "proxy: {http_proxy: 'proxy.example:3128'}\n", {}, [], "matrix.yaml", 16, "proxy.http_proxy",
     "URL"),
    ("no-proxy-bad", GOOD + "proxy: {no_proxy: 'a;b'}\n", {}, [], "matrix.yaml", 16, "proxy.no_proxy",
     "comma separated"),
    ("ca-bundle-missing", GOOD + "proxy: {ca_bundle: certs/proxy-ca.pem}\n", {}, [], "matrix.yaml", 16,
     "proxy.ca_bundle", "no such file"),
    # A file that is there but holds no certificate (relative to matrix.yaml; the flag's to the
    # current folder): any text file of the project will do.
    ("ca-bundle-not-pem", GOOD + "proxy:\n  ca_bundle: recipes/python.toml\n", {}, [], "matrix.yaml", 17,
     "proxy.ca_bundle", "not a PEM file"),
    ("ca-bundle-option-not-pem", None, {}, ["--ca-bundle", "recipes/python.toml"], "--ca-bundle", None,
     "proxy.ca_bundle", "not a PEM file"),
    ("ca-bundle-binary", GOOD + "proxy: {ca_bundle: /proc/self/exe}\n", {}, [], "matrix.yaml", 16,
     "proxy.ca_bundle", "cannot be read as a PEM file"),
    ("recipe-arg-newline", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                '[args]\nGOOD = "1"\nEVIL = "1\\nRUN rm -rf /"\n'}, [],
     "recipes/extra.toml", 6, "args.EVIL", "control character '\\n'"),
    ("compat-arg-control-character", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\n'
                                                          'tag = "x"\n[[compat]]\ncuda = "13.0.*"\nindex = "cu130"\n'
                                                          'args = { TORCH = "2.11\\u001b[2K" }\n'}, [],
     "recipes/extra.toml", 7, "compat.0.args.TORCH", "control character '\\x1b'"),
    ("hf-mirror-not-url", GOOD + "mirrors: {huggingface: hf-mirror}\n", {}, [], "matrix.yaml", 16,
     "mirrors.huggingface", "URL"),
    # Platforms: unknown ones, and a CUDA release, include or selection asking for one it cannot have.
    ("unknown-platform", GOOD + "platforms: [linux/amd64, linux/riscv64]\n", {}, [], "matrix.yaml", 16,
     "platforms.1", "'linux/amd64' or 'linux/arm64'"),
    ("platform-twice", GOOD + "platforms: [linux/arm64, linux/arm64]\n", {}, [], "matrix.yaml", 16, "platforms",
     "listed twice"),
    ("cuda-platform-not-in-family", GOOD.replace('"13.0.2": {source: pip}', '"13.0.2": {source: pip, platforms: [linux/arm64]}'),
     {}, [], "matrix.yaml", 7, "cuda.13.0.2.platforms.0", "not one of the family's platforms"),
    ("exclude-platform-matches-none", GOOD.replace('{cuda: "12.6.*", os: "debian*"}', "{platform: linux/arm}"), {}, [],
     "matrix.yaml", 15, "exclude.0.platform", "matches no platform"),
    ("recipe-unknown-platform", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                     '[constraints]\nplatforms = ["linux/arm64", "arm64"]\n'}, [],
     "recipes/extra.toml", 5, "constraints.platforms.1", "'linux/amd64' or 'linux/arm64'"),
    ("include-platform-recipe-cannot", GOOD + "platforms: [linux/amd64, linux/arm64]\ninclude:\n"
     "  - {cuda: '13.0.2', flavor: base, os: debian12, stack: [x86only], platforms: [linux/arm64]}\n",
     {"x86only.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                      '[constraints]\nplatforms = ["linux/amd64"]\n'}, [],
     "matrix.yaml", 18, "include.0.platforms.0", "recipe x86only cannot be built for linux/arm64"),
    ("compat-rows-differ-by-platform", None, {"extra.toml": 'description = "x"\ndockerfile = "images/python"\ntag = "x"\n'
                                                            '[[compat]]\ncuda = "13.0.*"\nindex = "cu130"\n'
                                                            'platforms = ["linux/amd64"]\nargs = { V = "1" }\n'
                                                            '[[compat]]\ncuda = "13.0.*"\nindex = "cu130"\n'
                                                            'platforms = ["linux/arm64"]\nargs = { V = "2" }\n'}, [],
     "recipes/extra.toml", 9, "compat", "differ in index or args"),
    ("platform-option-unknown", None, {}, ["--platform", "linux/arm"], "--platform", None, "platform",
     "did you mean 'linux/arm64'"),
    ("platform-option-not-in-family", None, {}, ["--platform", "linux/amd64,linux/arm64"], "--platform", None, "platform",
     "linux/arm64 is not one of the matrix's platforms"),
]


SAMPLE = [c for c in CASES if c[0] in ("yaml-syntax", "recipe-cycle", "select-unknown-key", "unknown-recipe")]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_file_line_field(case, project, capsys, monkeypatch):
    _check(case, "build", project, capsys, monkeypatch)


@pytest.mark.parametrize("case", SAMPLE, ids=[c[0] for c in SAMPLE])
@pytest.mark.parametrize("command", ["list", "bake"])
def test_every_command_rejects_bad_input_alike(case, command, project, capsys, monkeypatch):
    _check(case, command, project, capsys, monkeypatch)


def _check(case, command, project, capsys, monkeypatch):
    name, matrix, recipes, argv, file, line, field, words = case
    write(project / "matrix.yaml", matrix if matrix is not None else GOOD)
    for recipe, text in recipes.items():
        (project / "recipes" / recipe).write_text(text)
    monkeypatch.chdir(project)
    # If dlenv got as far as looking for an engine, this would make it fail with exit 1, not 2.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{project}/no-engine.sock")
    code = main([command, "--matrix", "matrix.yaml", *argv])
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    message = lines[0]
    where = f"{file}:{line}: " if line else f"{file}"
    assert where in message, message
    assert f"{field}" in message, message
    assert words in message, message
    assert "Traceback" not in err


def test_bad_input_from_the_shell_has_no_traceback_and_builds_nothing(project, tmp_path):
    write(project / "matrix.yaml", GOOD.replace("- [python]\n", "- [pyton]\n"))
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock", PYTHONPATH=str(REPO / "src"))
    out = subprocess.run([sys.executable, "-m", "dlenv", "build"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert re.fullmatch(r"dlenv: error: matrix\.yaml:12: stacks\.1\.0: unknown recipe 'pyton'; did you mean "
                        r"'python'\?\n", out.stderr), out.stderr
    assert out.stdout == ""
    assert not (project / "out").exists(), "a bake file was written for bad input"


@pytest.mark.parametrize("flag", ["--check-jobs", "--bake-jobs"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_count_flag_that_is_not_1_or_more_is_refused_before_anything_runs(project, tmp_path, flag, value):
    write(project / "matrix.yaml", GOOD)
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock", PYTHONPATH=str(REPO / "src"))
    out = subprocess.run([sys.executable, "-m", "dlenv", "build", flag, value], cwd=project, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"argument {flag}:" in out.stderr.splitlines()[-1], out.stderr
    assert "Traceback" not in out.stderr
    assert not (project / "out").exists()
