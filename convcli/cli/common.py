"""What every command shares: the consoles, error handling (one line + exit code, traceback only with
--debug) and the options that build a JobSpec."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from convcli.core.errors import ConvcliError
from convcli.core.planner import Plan
from convcli.recipes.flags import (  # noqa: F401 - re-exported: the commands build jobs through these
    JOB_FLAGS,
    build_job,
    parse_key_values,
    parse_output_kinds,
    parse_targets,
)


def _console(stderr: bool = False) -> Console:
    """A console that is wide enough for the report table even when output goes to a CI log or a pipe."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=None if probe.is_terminal else 160)


out = _console()
err = _console(stderr=True)
STATE = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn ConvcliError into one red line and its exit code; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConvcliError as exc:
            if STATE["debug"]:
                err.print(traceback.format_exc(), markup=False, highlight=False)
            err.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


DIVERGENCE_HELP = ("Seconds each row that fails parity may spend locating the first diverging layer (default 60; "
                   "0: off). Passing rows never pay for it.")
OUTPUT_KIND_HELP = ("NAME:KIND, how an output is judged: logits|probabilities (top-1), embedding (cosine), "
                    "regression|boxes (elementwise), segmentation (per-pixel top-1), detections (paired by "
                    "class and IoU; rows [x1,y1,x2,y2,score,class]); e.g. --output-kind output:embedding")


def echo_command() -> str:
    return " ".join(["convcli", *sys.argv[1:]])


def print_plan(the_plan: Plan, header: str) -> None:
    """The planned steps (shared prefixes once) and each target's chain or why it is unavailable."""
    out.print(header, highlight=False)
    for sid, step in the_plan.steps.items():
        out.print(f"  {sid}: {step.describe()}  [dim]<- {step.input_id}[/]", highlight=False)
    for t in the_plan.targets:
        if t.unavailable:
            out.print(f"  [yellow]{t.request.label}[/]: unavailable: {t.unavailable}", highlight=False)
        else:
            out.print(f"  [green]{t.request.label}[/]: {the_plan.chain_text(t)}", highlight=False)
