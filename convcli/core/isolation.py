"""Run crash-prone backends (pnnx, onnx2tf/TensorFlow, ...) in a child process with a timeout, so a
segfault, abort or hang fails only that target. A child that dies by a signal or times out becomes a
ConversionError naming the tool, the signal and the last lines it printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from convcli.core.errors import ConversionError


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-400:]


def run_tool(cmd: Sequence[str], what: str, cwd: Path | None = None, timeout_s: float = 900.0,
             env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a child process; raise ConversionError on a signal, a timeout or (with ``check``) a
    non-zero exit. The child's stdout/stderr are captured and their last lines quoted in the error."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{what} did not finish within {timeout_s:.0f} s and was stopped",
                              hint="raise the step's timeout_s option or check the model") from None
    except FileNotFoundError:
        raise ConversionError(f"{what}: program '{cmd[0]}' not found") from None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise ConversionError(f"{what} crashed ({name}): {_tail(proc.stderr + proc.stdout)}")
    if check and proc.returncode != 0:
        raise ConversionError(f"{what} failed (exit {proc.returncode}): {_tail(proc.stderr + proc.stdout)}")
    return proc


def run_python(code: str, what: str, cwd: Path | None = None, timeout_s: float = 900.0,
               env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``run_tool`` for a Python snippet run by this interpreter (so the same venv and packages)."""
    return run_tool([sys.executable, "-c", code], what, cwd=cwd, timeout_s=timeout_s, env=env, check=check)
