"""The CLI's flags, and the Python API's arguments, as a JobSpec: the one place that parses ``--to``,
``-O``, ``--output-kind``, ``--prune`` and ``--batch`` text, so both front ends build the same job and raise the
same ``InputError`` for the same mistake."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ValidationError

from convcli.core.errors import InputError
from convcli.core.planner import AUTO, PRECISIONS
from convcli.core.registry import Registry
from convcli.recipes.loader import validation_error
from convcli.recipes.schema import DataSpec, JobSpec, LatencySpec, PrecisionChoice, SourceSpec, TargetSpec

# JobSpec fields build_job takes as keyword arguments (the CLI sets the first eight; the API all of them).
JOB_FLAGS = ("simplify", "require_all", "reports", "cache", "cache_dir", "prune", "outputs", "strict",
             "divergence_budget", "tolerances", "gates", "name")
StepOptions = list[str] | Mapping[str, Mapping[str, Any]]


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
    """``--to onnx,openvino:fp16+int8,tflite@OnnxFromPytorch`` with ``--precision`` as the default list (``auto``
    is expanded per target later, once the registry and the data are known: ``job.source.expand_auto``)."""
    default_prec = [p.strip() for p in precision.split(",") if p.strip()]
    targets = []
    for chunk in [c.strip() for c in to.split(",") if c.strip()]:
        fmt, _, precs = chunk.partition(":")
        fmt, _, via = fmt.partition("@")
        chosen = precs.split("+") if precs else default_prec
        for p in chosen:
            if p not in (*PRECISIONS, AUTO):
                raise InputError(f"--to {chunk}: precision '{p}' is not one of {', '.join((*PRECISIONS, AUTO))}")
        targets.append(TargetSpec(format=fmt, precisions=cast(list[PrecisionChoice], chosen), via=via or None))
    if not targets:
        raise InputError("--to is empty", hint="e.g. --to onnx,openvino")
    return targets


def build_job(model: str, to: str, inputs: list[str] | None, weights: Path | None, precision: str,
              options: StepOptions | None, output: Path, **extra: Any) -> JobSpec:
    """The CLI's flags as a JobSpec (the same model a recipe file validates against).

    ``-O FORMAT.KEY=VALUE`` sets an option of that target's converter; ``-O STEP.KEY=VALUE`` (e.g.
    OnnxFromPytorch.opset=18) sets an option of a step wherever the plan uses it. ``options`` may also be the
    parsed form, ``{PREFIX: {KEY: VALUE}}`` (the Python API's), which keeps the values' types.
    """
    from convcli.core.registry import default_registry

    registry = default_registry()
    try:
        return _build_job(registry, model, to, inputs, weights, precision, options, output, **extra)
    except ValidationError as exc:
        raise validation_error(exc, "options") from None


def _build_job(registry: Registry, model: str, to: str, inputs: list[str] | None, weights: Path | None,
               precision: str, options: StepOptions | None, output: Path, **extra: Any) -> JobSpec:
    targets = parse_targets(to, precision)
    by_format: dict[str, list[TargetSpec]] = {}
    for t in targets:  # `--to openvino,openvino@OpenvinoFromPytorch`: both are openvino targets
        by_format.setdefault(registry.format_named(t.format).name, []).append(t)
    step_options: dict[str, dict[str, Any]] = {}
    parsed = ({str(k): dict(v) for k, v in options.items()} if isinstance(options, Mapping)
              else parse_key_values(list(options or []), "-O/--option"))
    for prefix, values in parsed.items():
        try:
            fmt = registry.format_named(prefix).name
        except InputError:
            step_options[prefix] = values
            continue
        if fmt not in by_format:
            raise InputError(f"-O {prefix}.*: {fmt} is not among the targets given with --to")
        for t in by_format[fmt]:
            t.options.update(values)
    return JobSpec(
        source=SourceSpec(model=model, weights=weights, inputs=inputs or None),
        targets=targets, step_options=step_options, output=output,
        data=DataSpec(**{k: v for k, v in extra.items() if k in DataSpec.model_fields and v is not None}),
        latency=LatencySpec(**{k: v for k, v in extra.items() if k in LatencySpec.model_fields and v is not None}),
        **{k: v for k, v in extra.items() if k in JOB_FLAGS and v is not None},
    )


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


def step_option_list(option: list[str] | None, opset: int | None, exporter: str | None) -> list[str]:
    """``-O`` items plus the ``--opset`` / ``--exporter`` shortcuts (options of OnnxFromPytorch)."""
    opts = list(option or [])
    if opset is not None:
        opts.append(f"OnnxFromPytorch.opset={opset}")
    if exporter is not None:
        opts.append(f"OnnxFromPytorch.exporter={exporter}")
    return opts


def prune_options(text: str | None, finetune_epochs: int) -> dict[str, object] | None:
    """``--prune METHOD:RATIO`` (+ ``--finetune-epochs``) as the recipe's ``prune`` mapping."""
    if not text:
        if finetune_epochs:
            raise InputError("--finetune-epochs is for recovery after --prune", hint="add --prune structured:0.3")
        return None
    method, _, ratio = text.partition(":")
    if method not in ("structured", "unstructured"):
        raise InputError(f"--prune '{text}': method must be structured or unstructured, e.g. --prune structured:0.3")
    try:
        value = float(ratio) if ratio else 0.3
    except ValueError:
        raise InputError(f"--prune '{text}': ratio '{ratio}' is not a number") from None
    return {"method": method, "ratio": value, "finetune_epochs": finetune_epochs}


def parse_batches(batch: str | None) -> list[int] | None:
    """``--batch 1,8`` -> [1, 8]."""
    if not batch:
        return None
    try:
        return [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--batch '{batch}': expected comma-separated integers, e.g. 1,8") from None
