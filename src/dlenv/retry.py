"""Bounded retries with backoff: the one policy for what fails for a moment.

A registry that answers 500, 502, 503, 504 or 429 (too many requests), a connection reset or
timed out, a mirror that drops a connection: each is tried again after 1, 2, then 4
seconds (a 429's or 503's Retry-After is honoured, up to MAX_DELAY), ATTEMPTS times in all, and
then the last error is raised with the number of attempts on it (`attempts(exc)`), so the one
line the user reads can say it was not a blip. Anything else (a 404, a refused login, an answer
that is not JSON, a connection refused: nothing listens there) is raised at once.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
from collections.abc import Callable
from typing import TypeVar

ATTEMPTS = 4
FIRST_DELAY = 1.0
MAX_DELAY = 15.0
TRANSIENT_STATUS = {429, 500, 502, 503, 504}

T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """Whether exc is worth another attempt."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in TRANSIENT_STATUS
    if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
        return False
    # Resets, timeouts, a server that hung up, a name that did not resolve for a moment.
    return isinstance(exc, (OSError, http.client.HTTPException))


# What docker's clients (`docker push`, `buildx imagetools create`) print when the registry
# failed for a moment: a status of TRANSIENT_STATUS with its reason ("503 Service Unavailable"),
# or a connection that went away. (The engine retries each layer a few times itself; a manifest
# it does not.)
CLIENT_WORDS = ("toomanyrequests", "connection refused", "connection reset", "EOF", "i/o timeout",
                "TLS handshake timeout")
CLIENT_STATUS = re.compile(r"\b(\d{3}) [A-Z]")


def transient_output(text: str) -> bool:
    """Whether what a docker client printed says the registry failed for a moment."""
    return (any(words in text for words in CLIENT_WORDS)
            or any(int(code) in TRANSIENT_STATUS for code in CLIENT_STATUS.findall(text)))


def delay(attempt: int, exc: BaseException | None = None) -> float:
    """Seconds to wait after the attempt-th failure (0 for the first): what the server asked
    for in Retry-After, else 1, 2, 4, ..., never more than MAX_DELAY."""
    if isinstance(exc, urllib.error.HTTPError) and exc.headers is not None:
        try:
            return min(MAX_DELAY, max(0.0, float(exc.headers.get("Retry-After", ""))))
        except ValueError:
            pass
    return min(MAX_DELAY, FIRST_DELAY * 2 ** attempt)


def call(fn: Callable[[], T], is_transient: Callable[[BaseException], bool] = transient,
         tries: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> T:
    """fn(), tried again while it raises a transient error, at most `tries` times in all."""
    for attempt in range(tries):
        try:
            return fn()
        except Exception as exc:
            if attempt == tries - 1 or not is_transient(exc):
                exc.dlenv_attempts = attempt + 1   # type: ignore[attr-defined]
                raise
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()   # the error body's connection, before the next attempt opens another
            sleep(delay(attempt, exc))
    raise AssertionError("unreachable")


def attempts(exc: BaseException) -> str:
    """' after N attempts' where exc was tried more than once, else ''."""
    n = getattr(exc, "dlenv_attempts", 1)
    return f" after {n} attempts" if n > 1 else ""
