"""Keep backends' own chatter (exporter progress, tracer and deprecation warnings) out of convcli's output."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


def quiet() -> contextlib.ExitStack:
    """A context that swallows warnings and anything printed to stdout/stderr by Python code inside it."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


@contextlib.contextmanager
def captured_fd2() -> Iterator[io.StringIO]:
    """Capture what native code writes to file descriptor 2 inside the block; the text is available after it.

    Native libraries print past Python's sys.stderr: TensorFlow's absl start-up lines (which
    TF_CPP_MIN_LOG_LEVEL does not silence), LiteRT's "Created TensorFlow Lite XNNPACK delegate" line (which would
    break the CLI's table). Their error lines are sometimes the only explanation of a failure, so they are kept
    for the error message instead of being thrown away.
    """
    said = io.StringIO()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.write(sink.read().decode(errors="replace"))
            said.seek(0)
