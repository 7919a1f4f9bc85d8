"""Keep backends' own chatter (exporter progress, tracer and deprecation warnings) out of convcli's output."""

from __future__ import annotations

import contextlib
import io
import warnings


def quiet() -> contextlib.ExitStack:
    """A context that swallows warnings and anything printed to stdout/stderr by Python code inside it."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack
