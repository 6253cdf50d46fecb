"""Build selectors, as in cibuildwheel: `--select 'cuda=13.* flavor=devel'`, `--skip '*-ssh'`.

An expression is space-separated terms; every term must match. A term is `key=glob` over one
axis (cuda, flavor, os, stack, recipe, id) or a bare glob over the variant id. A variant is
selected if it matches any --select (all, if none is given) and no --skip. `--platform
linux/arm64` (repeatable, or comma separated) keeps only those platforms of each variant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from dlenv.config import PLATFORMS
from dlenv.errors import ConfigError

KEYS = ("id", "cuda", "flavor", "os", "stack", "recipe")


@dataclass(frozen=True)
class Term:
    key: str
    pattern: str

    def matches(self, axes: Mapping[str, object]) -> bool:
        value = axes[self.key]
        if self.key == "recipe":
            return any(fnmatchcase(name, self.pattern) for name in value)  # type: ignore[union-attr]
        return fnmatchcase(str(value), self.pattern)


@dataclass(frozen=True)
class Expression:
    text: str
    terms: tuple[Term, ...]

    def matches(self, axes: Mapping[str, object]) -> bool:
        return all(term.matches(axes) for term in self.terms)


def parse(text: str, option: str = "--select") -> Expression:
    terms = []
    for raw in text.split():
        key, sep, pattern = raw.partition("=")
        if not sep:
            key, pattern = "id", raw
        if key not in KEYS:
            guess = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; use one of {', '.join(KEYS)}"
            raise ConfigError(option, None, key, f"unknown selector key in {text!r}{hint}")
        if not pattern:
            raise ConfigError(option, None, key, f"empty pattern in {text!r}")
        terms.append(Term(key, pattern))
    if not terms:
        raise ConfigError(option, None, "expression", "empty selector")
    return Expression(text, tuple(terms))


def parse_platforms(texts: Iterable[str]) -> tuple[str, ...]:
    """--platform values (each may list several, comma separated), each one dlenv builds."""
    out: list[str] = []
    for platform in (p.strip() for text in texts for p in text.split(",")):
        if platform not in PLATFORMS:
            guess = difflib.get_close_matches(platform, PLATFORMS, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; dlenv builds {', '.join(PLATFORMS)}"
            raise ConfigError("--platform", None, "platform", f"unknown platform {platform!r}{hint}")
        if platform not in out:
            out.append(platform)
    return tuple(out)


@dataclass(frozen=True)
class Selection:
    select: tuple[Expression, ...] = ()
    skip: tuple[Expression, ...] = ()
    platforms: tuple[str, ...] = ()   # --platform: only these platforms of each variant (all, if none)

    @classmethod
    def parse(cls, select: Iterable[str] = (), skip: Iterable[str] = (), platforms: Iterable[str] = ()) -> Selection:
        return cls(tuple(parse(s, "--select") for s in select if s.strip()),
                   tuple(parse(s, "--skip") for s in skip if s.strip()),
                   parse_platforms(platforms))

    def on(self, platforms: tuple[str, ...]) -> tuple[str, ...]:
        """The platforms of a variant that --platform keeps."""
        return tuple(p for p in platforms if not self.platforms or p in self.platforms)

    def check_platforms(self, family: Iterable[str], buildable: set[str]) -> None:
        """A --platform the family does not build, or that no variant can be built for, is a mistake."""
        family = list(family)
        for platform in self.platforms:
            if platform not in family:
                raise ConfigError("--platform", None, "platform",
                                  f"{platform} is not one of the matrix's platforms ({', '.join(family)})")
            if platform not in buildable:
                raise ConfigError("--platform", None, "platform",
                                  f"no variant of the matrix can be built for {platform} (see `nox -s list`)")

    def wants(self, axes: Mapping[str, object]) -> bool:
        if self.select and not any(e.matches(axes) for e in self.select):
            return False
        return not any(e.matches(axes) for e in self.skip)

    def check_possible(self, known: Mapping[str, Iterable[str]], all_axes: list[Mapping[str, object]]) -> None:
        """A --select that can match nothing is a typo: say which term and what exists."""
        for expr in self.select:
            for term in expr.terms:
                values = sorted(set(known.get(term.key, ())))
                if term.key in known and not any(fnmatchcase(v, term.pattern) for v in values):
                    raise ConfigError("--select", None, term.key,
                                      f"{term.key}={term.pattern} matches none of: {', '.join(values)}")
            if not any(expr.matches(axes) for axes in all_axes):
                raise ConfigError("--select", None, "expression",
                                  f"{expr.text!r} selects no variant of the matrix (see `nox -s list`)")
