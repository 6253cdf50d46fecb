"""Reading YAML and TOML so that every value remembers the line it came from.

Errors in a matrix or a recipe must name file, line and field; pydantic gives the field path,
these loaders give the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tomli
import yaml

from dlenv.errors import ConfigError


class LineDict(dict):
    """A mapping that knows the line of itself and of each of its keys."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (list, dict)):
            raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                       "a key must be a plain value, not a list or mapping", key_node.start_mark)
        if key in result:
            raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                       f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(label, None, "file", "not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(label, None, "file", f"cannot be read: {exc}") from None


def load_yaml(path: Path, label: str) -> Any:
    text = read_text(path, label)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(label, line, "YAML syntax", " ".join(str(exc.problem or exc.context).split())) from None
    except yaml.YAMLError as exc:
        raise ConfigError(label, None, "YAML syntax", " ".join(str(exc).split())) from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(label, None, "YAML", f"cannot be read: {' '.join(str(exc).split())[:160]}") from None
    if not isinstance(data, LineDict):
        raise ConfigError(label, getattr(data, "line", 1), "document", "must be a mapping of settings")
    return data


class TomlDoc(dict):
    """A TOML document with a way to find the line of a dotted key (tomli keeps no positions)."""

    text: str

    def line_of(self, path: tuple) -> int:
        """Best-effort line of a key path like ('constraints', 'cuda') or ('checks', 2, 'run').

        The deepest key or table header on the path wins: a missing field points at its table.
        Integers count [[array]] tables (or index an inline array, whose key line is taken).
        1 when nothing matches.
        """
        want = list(path)
        if not want:
            return 1
        table: list = []
        counts: dict[tuple, int] = {}
        best, depth, loose = None, 0, None
        for number, raw in enumerate(self.text.splitlines(), start=1):
            line = raw.strip()
            header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]", line)
            if header:
                table = [part.strip().strip('"') for part in header.group(2).split(".")]
                if header.group(1) == "[[":
                    counts[tuple(table)] = counts.get(tuple(table), -1) + 1
                    table = table + [counts[tuple(table)]]
                found = table
            else:
                key = re.match(r'^"?([A-Za-z0-9_.-]+)"?\s*=', line)
                if not key:
                    continue
                found = table + [part.strip('"') for part in key.group(1).split(".")]
                if loose is None and found[: len(want)] == want:
                    loose = number   # a dotted key inside the table asked for
            if len(found) > depth and found == want[: len(found)]:
                best, depth = number, len(found)
        # A dotted key below the path beats a table header above it.
        if loose is not None and depth < len(want):
            return loose
        return best or 1


def load_toml(path: Path, label: str) -> TomlDoc:
    text = read_text(path, label)
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None:
            match = re.search(r"line (\d+)", str(exc))
            line = int(match.group(1)) if match else None
        message = getattr(exc, "msg", None) or re.sub(r"\s*\(at line.*\)$", "", str(exc))
        raise ConfigError(label, line, "TOML syntax", message) from None
    doc = TomlDoc(data)
    doc.text = text
    return doc
