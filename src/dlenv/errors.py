"""Errors a user sees as one line (never a traceback)."""

from __future__ import annotations


class DlenvError(Exception):
    """An error with a one-line message for the user and the exit code to leave with."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class ConfigError(DlenvError):
    """Bad input: a matrix, a recipe or a selector. Names file, line and field."""

    exit_code = 2

    def __init__(self, file: str, line: int | None, field: str, problem: str):
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {problem}")
        self.file, self.line, self.field, self.problem = file, line, field, problem


class EngineError(DlenvError):
    """No usable engine, builder or registry."""
