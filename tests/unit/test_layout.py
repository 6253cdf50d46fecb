"""The package's shape: imports point one way (no cycles), the command line loads no engine
client, every module says what it owns, and every option is declared once."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

from dlenv import options
from dlenv.cli import MATRIX_COMMANDS, make_parser
from helpers import REPO

PACKAGE = REPO / "src" / "dlenv"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """dlenv modules path imports, anywhere in it (a function's import counts too), except
    under `if TYPE_CHECKING:` (annotations only)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dlenv")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dlenv"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in trail:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, trail + [dep])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, cycles


def test_every_module_says_what_it_owns():
    missing = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
               if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing


def test_every_option_has_a_flag_and_help_and_parses_to_its_default():
    parser = make_parser()
    for name, command in MATRIX_COMMANDS.items():
        for cls in (options.PlanRequest, command.request):
            for f in dataclasses.fields(cls):
                option = f.metadata["option"]
                assert option.flags and option.help, (cls.__name__, f.name)
        required = [arg for f in dataclasses.fields(command.request)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    for arg in ((f.metadata["option"].flags[0], "1") if f.metadata["option"].flags[0].startswith("-")
                                else ("x.json",))]
        args = parser.parse_args([name, *required])
        assert options.from_args(options.PlanRequest, args) == options.PlanRequest()


def test_a_flag_over_matrix_yaml_over_the_environment():
    env = {"HTTP_PROXY": "http://env.invalid:1"}
    assert options.fallback(options.PlanRequest, "http_proxy", None, env) == "http://env.invalid:1"
    assert options.fallback(options.PlanRequest, "http_proxy", "http://yaml.invalid:2", env) == "http://yaml.invalid:2"
    given = options.PlanRequest(http_proxy="http://flag.invalid:3", apt_mirror="")
    assert options.overrides(given) == {"proxy.http_proxy": ("http://flag.invalid:3", "--http-proxy"),
                                        "mirrors.apt": ("", "--apt-mirror")}


def test_importing_the_command_line_loads_no_engine_client():
    code = "import dlenv.cli, sys; assert 'python_on_whales' not in sys.modules, 'python_on_whales loaded'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
