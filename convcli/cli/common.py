"""What every command shares: the consoles, error handling (one line + exit code, traceback only with
--debug) and the options that build a JobSpec."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from convcli.core.errors import ConvcliError, InputError
from convcli.core.planner import PRECISIONS, Plan
from convcli.core.registry import Registry
from convcli.recipes.loader import validation_error
from convcli.recipes.schema import DataSpec, JobSpec, LatencySpec, SourceSpec, TargetSpec


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


def parse_key_values(items: list[str], flag: str) -> dict[str, dict[str, Any]]:
    """``PREFIX.KEY=VALUE`` -> {PREFIX: {KEY: VALUE}}; values are parsed as YAML scalars (1, true, [1,2])."""
    result: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        prefix, dot, key = head.partition(".")
        if not eq or not dot or not prefix or not key:
            raise InputError(f"{flag} '{item}': expected TARGET_OR_STEP.KEY=VALUE", hint=f"e.g. {flag} "
                             "OnnxFromPytorch.opset=18")
        result.setdefault(prefix, {})[key] = yaml.safe_load(value) if value else ""
    return result


def parse_targets(to: str, precision: str) -> list[TargetSpec]:
    """``--to onnx,openvino:fp16+int8,tflite@OnnxFromPytorch`` with ``--precision`` as the default list."""
    default_prec = [p.strip() for p in precision.split(",") if p.strip()]
    targets = []
    for chunk in [c.strip() for c in to.split(",") if c.strip()]:
        fmt, _, precs = chunk.partition(":")
        fmt, _, via = fmt.partition("@")
        for p in precs.split("+") if precs else default_prec:
            if p not in PRECISIONS:
                raise InputError(f"--to {chunk}: precision '{p}' is not one of {', '.join(PRECISIONS)}")
        targets.append(TargetSpec(format=fmt, precisions=precs.split("+") if precs else default_prec,
                                  via=via or None))
    if not targets:
        raise InputError("--to is empty", hint="e.g. --to onnx,openvino")
    return targets


def build_job(model: str, to: str, inputs: list[str] | None, weights: Path | None, precision: str,
              options: list[str] | None, output: Path, **extra: Any) -> JobSpec:
    """The CLI's flags as a JobSpec (the same model a recipe file validates against).

    ``-O FORMAT.KEY=VALUE`` sets an option of that target's converter; ``-O STEP.KEY=VALUE`` (e.g.
    OnnxFromPytorch.opset=18) sets an option of a step wherever the plan uses it.
    """
    from convcli.core.registry import default_registry

    registry = default_registry()
    try:
        return _build_job(registry, model, to, inputs, weights, precision, options, output, **extra)
    except ValidationError as exc:
        raise validation_error(exc, "options") from None


def _build_job(registry: Registry, model: str, to: str, inputs: list[str] | None, weights: Path | None,
               precision: str, options: list[str] | None, output: Path, **extra: Any) -> JobSpec:
    targets = parse_targets(to, precision)
    by_format = {registry.format_named(t.format).name: t for t in targets}
    step_options: dict[str, dict[str, Any]] = {}
    for prefix, values in parse_key_values(options or [], "-O/--option").items():
        try:
            fmt = registry.format_named(prefix).name
        except InputError:
            step_options[prefix] = values
            continue
        if fmt not in by_format:
            raise InputError(f"-O {prefix}.*: {fmt} is not among the targets given with --to")
        by_format[fmt].options.update(values)
    return JobSpec(
        source=SourceSpec(model=model, weights=weights, inputs=inputs or None),
        targets=targets, step_options=step_options, output=output,
        data=DataSpec(**{k: v for k, v in extra.items() if k in DataSpec.model_fields and v is not None}),
        latency=LatencySpec(**{k: v for k, v in extra.items() if k in LatencySpec.model_fields and v is not None}),
        **{k: v for k, v in extra.items() if k in JOB_FLAGS and v is not None},
    )


JOB_FLAGS = ("simplify", "require_all", "reports", "cache", "cache_dir", "prune", "outputs", "strict",
             "divergence_budget")
DIVERGENCE_HELP = ("Seconds each row that fails parity may spend locating the first diverging layer (default 60; "
                   "0: off). Passing rows never pay for it.")
OUTPUT_KIND_HELP = ("NAME:KIND, how an output is judged: logits|probabilities (top-1), embedding (cosine), "
                    "regression|boxes (elementwise); e.g. --output-kind output:embedding")


def parse_output_kinds(items: list[str] | None) -> dict[str, str] | None:
    """``--output-kind NAME:KIND`` (repeatable) -> {NAME: KIND}; the kind is checked here, the name against the
    source's outputs once it is known."""
    from convcli.parity.compare import OUTPUT_KINDS

    kinds: dict[str, str] = {}
    for item in items or []:
        name, colon, kind = item.rpartition(":")
        if not colon or not name or kind not in OUTPUT_KINDS:
            raise InputError(f"--output-kind '{item}': expected NAME:KIND with KIND one of {', '.join(OUTPUT_KINDS)}",
                             hint="e.g. --output-kind output:embedding")
        kinds[name] = kind
    return kinds or None


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
