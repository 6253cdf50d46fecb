"""What building each variant came to, and where its progress goes while it builds.

A Result per variant (built, failed, not attempted, skipped) is made by the build stage's parts
(isolate, publish, build) and read by the report and the command line; a Board is what those
parts tell as they go (report.LiveBoard draws it). Plain data: nothing here drives the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Status = Literal["built", "failed", "not attempted", "skipped"]


@dataclass
class Result:
    variant: str
    status: Status
    tags: tuple[str, ...] = ()
    digest: str = ""
    size: int | None = None
    seconds: float = 0.0
    error: str = ""
    node: str = ""
    # The index's images: (platform, image manifest digest, compressed size); size is the first's.
    images: tuple[tuple[str, str, int], ...] = ()

    def to_json(self) -> dict:
        return {"variant": self.variant, "status": self.status, "tags": list(self.tags),
                "digest": self.digest, "size": self.size, "seconds": round(self.seconds, 1),
                "error": self.error, "node": self.node,
                **({"platforms": {p: {"digest": d, "size": n} for p, d, n in self.images}} if self.images else {})}


class Board(Protocol):
    """Where progress goes (a rich live table, or nothing)."""

    def step(self, variant: str, text: str) -> None: ...
    def finish(self, variant: str, status: str) -> None: ...
    def node_done(self, node: str, seconds: float | None = None) -> None: ...
    def drop(self, variants: set[str]) -> None: ...
