"""Errors meant for users, with documented exit codes.

A ``ConvcliError`` is shown as one line (plus a hint) without a traceback; any other exception is a bug
and keeps its traceback. The exit codes are part of the CLI contract (docs/cli.md).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CONVERSION_FAILED = 3


class ConvcliError(Exception):
    """A problem the user can act on: a message naming the thing, and a hint saying what to do."""

    exit_code = EXIT_CONVERSION_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class InputError(ConvcliError):
    """Bad arguments, files or model spec, found before any conversion (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class ConversionError(ConvcliError):
    """A conversion step failed (exit 3)."""

    exit_code = EXIT_CONVERSION_FAILED


class UnavailableError(ConvcliError):
    """A step or runner cannot run on this machine (missing package, no GPU)."""

    exit_code = EXIT_CONVERSION_FAILED


class GateFailed(ConvcliError):
    """A parity, accuracy or latency gate failed (exit 1). Raised by the Python API with
    ``raise_on_failure=True``; ``report`` is the run's report."""

    exit_code = EXIT_GATE_FAILED

    def __init__(self, message: str, hint: str | None = None, report: Any = None) -> None:
        super().__init__(message, hint)
        self.report = report


class ConversionFailed(ConversionError):
    """A target's conversion failed or was unavailable with ``require_all`` (exit 3): raised by the Python API
    with ``raise_on_failure=True``, after the report was written; ``report`` is that report."""

    def __init__(self, message: str, hint: str | None = None, report: Any = None) -> None:
        super().__init__(message, hint)
        self.report = report


def first_line(exc: BaseException, limit: int = 300) -> str:
    """One readable line from any exception, for report rows (full text stays in --debug logs)."""
    if isinstance(exc, ConvcliError):
        text = exc.one_line()
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
