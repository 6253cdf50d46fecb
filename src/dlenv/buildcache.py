"""What a bake of the main job leaves in BuildKit's build cache, and removing it.

Each variant above a chain's first builds on the image the variant below it pushed
(build.schedule), so what a finished bake made in the build cache is read by no later bake of
the run but through the image: the CUDA trees the fetch stages laid out go, the layers of an
image still in the store stay (prune) and go at a later prune, once the image has left the
store. Most of the data root's peak was that cache (docs/benchmarks.md; Docker 26.1 also kept
every layer its SBOM scanner read, hence Docker 28, engine.py). The chains'
first bakes keep what they made (their base flavor's CUDA too) until the last of them ends: the
OS layers every chain of that OS shares are among it.
The next run finds part of its cache in the pushed images themselves (inline cache,
graph.target): a step copying from another stage runs that stage again.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from dlenv.errors import DlenvError

# A prune's filter is one regular expression over record ids (`--filter id=` is a match, `~=`):
# a few hundred ids a call keep it short.
CHUNK = 200


@dataclass(frozen=True)
class Record:
    id: str
    size: int          # bytes, as `docker buildx du` rounds them
    kind: str          # regular, exec.cachemount, source.local, ...
    description: str


def records(builder: str | None = None) -> dict[str, Record]:
    """The build cache's records, by id (`docker buildx du --verbose`)."""
    return parse(_buildx(builder, "du", "--verbose"))


def parse(out: str) -> dict[str, Record]:
    """The records in what `docker buildx du --verbose` printed: a block of `Key: value` lines each."""
    found: dict[str, Record] = {}
    fields: dict[str, str] = {}
    for line in out.splitlines() + [""]:
        if not line.strip():
            if "ID" in fields:
                found[fields["ID"]] = Record(fields["ID"], size(fields.get("Size", "0B")), fields.get("Type", ""),
                                             fields.get("Description", ""))
            fields = {}
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return found


def size(text: str) -> int:
    """Bytes of a size as buildx prints it (e.g. 3.169GB, 262.5MB, 0B)."""
    match = re.match(r"([\d.]+)\s*([kKMGT]?)B", text)
    if not match:
        return 0
    return int(float(match.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[match.group(2)])


def prune(ids: set[str], builder: str | None = None) -> set[str]:
    """Remove these records, but those a build uses now (BuildKit leaves them: a bake beside
    goes on) and those whose snapshot an image in the store shares (no --all): an image's layers
    stay while the image does, for the bakes on it, whose inline cache reads every layer below
    (with them pruned, such an export failed `not found`). The ids left. A record goes only once
    those made on top of it are gone: a call whose chunk held a parent but not its child leaves
    it for the next round; a round that removed nothing is the last."""
    left = sorted(ids)
    for _ in range(3):
        for start in range(0, len(left), CHUNK):
            pattern = "^(" + "|".join(re.escape(i) for i in left[start:start + CHUNK]) + ")$"
            _buildx(builder, "prune", "--force", "--filter", f"id={pattern}")
        now = sorted(set(left) & set(records(builder)))
        if not now or now == left:
            return set(now)
        left = now
    return set(left)


def _buildx(builder: str | None, *args: str) -> str:
    out = subprocess.run(["docker", "buildx", *args, *(["--builder", builder] if builder else [])],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise DlenvError(f"docker buildx {args[0]} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}",
                         "see `docker buildx du`; --keep-cache leaves the build cache as it is")
    return out.stdout
