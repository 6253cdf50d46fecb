"""CUDA releases: what each needs from the host, and when NVIDIA's images of it reach end of life.

The one reader of data/cuda_releases.toml (its header says where every value comes from).
Standard library only, plus tomli before Python 3.11, because doctor uses it on bare GPU hosts.
"""

from __future__ import annotations

import datetime
from functools import cache
from pathlib import Path

from dlenv.errors import DlenvError

try:
    import tomllib
except ImportError:  # before Python 3.11: dlenv's own dependency, if installed
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

RELEASES = Path(__file__).parent / "data/cuda_releases.toml"


@cache
def table() -> dict:
    """The whole file: {"major": {...}, "release": {"13.0": {...}, ...}}."""
    if tomllib is None:
        raise DlenvError(f"reading {RELEASES.name} needs Python 3.11+ or tomli", "pip install tomli")
    with open(RELEASES, "rb") as f:
        return tomllib.load(f)


def requirements() -> dict:
    """What each release needs from the host (doctor's thresholds), without the EOL dates."""
    data = table()
    return {"major": data["major"],
            "release": {mm: {k: v for k, v in row.items() if k != "eol"} for mm, row in data["release"].items()}}


def major_minor(cuda: str) -> str:
    """13.0.2 -> 13.0 (13.0 stays 13.0)."""
    return ".".join(cuda.split(".")[:2])


def eol_date(cuda: str) -> datetime.date | None:
    """When NVIDIA's images of this CUDA release (13.0.2 or 13.0) reach end of life; None when no
    date is published or the release is not in the table."""
    mm = major_minor(cuda)
    value = table()["release"].get(mm, {}).get("eol")
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise DlenvError(f"{RELEASES.name}: release {mm}: eol = {value!r} is not a date",
                         'write it as eol = "YYYY-MM-DD"') from None


def is_eol(cuda: str, today: datetime.date) -> bool:
    """Whether this CUDA release's images are past their end of life on `today`."""
    eol = eol_date(cuda)
    return eol is not None and today >= eol
