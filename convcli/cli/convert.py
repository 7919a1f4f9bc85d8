"""convcli convert / plan / check."""

from __future__ import annotations

from pathlib import Path

import typer

from convcli.cli.common import (
    DIVERGENCE_HELP,
    OUTPUT_KIND_HELP,
    build_job,
    echo_command,
    err,
    handle_errors,
    out,
    parse_output_kinds,
    print_plan,
)
from convcli.cli.progress import RichProgress
from convcli.core.errors import InputError

MODEL_HELP = "file.py:factory, package.module:factory, or a .onnx / .pt (TorchScript) / .pt2 file."
TO_HELP = "Targets, comma-separated: FORMAT[:PREC+PREC][@Converter], e.g. onnx,openvino:fp16."
INPUT_HELP = ("NAME:SHAPE:DTYPE[:LOW..HIGH], dims int or name[=size], separated by x after a number or by ','; "
              "e.g. ids:batch=2xmax_len=16:int64:0..1000 or ids:batch=2,max_len:int64")
OPTION_HELP = "FORMAT.KEY=VALUE (that target's converter) or STEP.KEY=VALUE, e.g. OnnxFromPytorch.opset=18."


def convert(
    model: str = typer.Argument(..., help=MODEL_HELP),
    to: str = typer.Option("onnx", "--to", "-t", help=TO_HELP),
    output: Path = typer.Option(Path("convcli-out"), "--output", "-o", help="Output folder."),
    inputs: list[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP),
    weights: Path = typer.Option(None, "--weights", "-w", help="state_dict (.pt) or .safetensors for a factory."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="Default precisions, e.g. fp32,fp16."),
    option: list[str] = typer.Option(None, "--option", "-O", help=OPTION_HELP),
    opset: int = typer.Option(None, "--opset", help="ONNX opset for exports from PyTorch."),
    exporter: str = typer.Option(None, "--exporter", help="auto (dynamo, then torchscript), dynamo or torchscript."),
    data: Path = typer.Option(None, "--data", help="Parity inputs: .npy/.npz or an image folder (default: random)."),
    validation: Path = typer.Option(None, "--validation", help="Labelled images (class folders or CSV) for accuracy."),
    tuning_fraction: float = typer.Option(
        None, "--tuning-fraction", help="Share of each class of --validation that accuracy-aware INT8 tunes on "
                                        "(default 0.5); the rest is held out for the reported accuracy."),
    calibration: Path = typer.Option(None, "--calibration", help="Calibration data for INT8 steps."),
    calibration_samples: int = typer.Option(None, "--calibration-samples", min=1,
                                            help="Calibration samples for INT8 steps (default 64)."),
    prune: str = typer.Option(None, "--prune", help="Prune before export: structured:RATIO or unstructured:RATIO."),
    train: Path = typer.Option(None, "--train", help="Labelled images for recovery fine-tuning after pruning."),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Recovery fine-tuning epochs (needs --train)."),
    samples: int = typer.Option(None, "--samples", help="Parity samples (default 16)."),
    batch: str = typer.Option(None, "--batch", help="Latency batch sizes, e.g. 1,8 (default 1)."),
    runs: int = typer.Option(None, "--runs", help="Timed runs per artifact (default 30)."),
    threads: int = typer.Option(None, "--threads", help="Threads for every runtime (default: all cores)."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip latency measurement."),
    output_kind: list[str] = typer.Option(None, "--output-kind", help=OUTPUT_KIND_HELP),
    strict: bool = typer.Option(False, "--strict", help="Fail rows whose reference output is degenerate "
                                                        "(constant, input-independent, tiny) instead of flagging."),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip the default simplification passes."),
    require_all: bool = typer.Option(False, "--require-all", help="Exit 3 when a target is unavailable here."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild every step and measure again."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache folder (default ~/.cache/convcli)."),
    json_out: bool = typer.Option(False, "--json", help="Print report.json to stdout instead of the table."),
    divergence_budget: float = typer.Option(None, "--divergence-budget", min=0, help=DIVERGENCE_HELP),
) -> None:
    """Convert a model to every target, prove each artifact against the source, and write OUTDIR/report.json.

    Example:\n
      convcli convert recipes/models/digits_cnn.py:build --weights recipes/models/digits_cnn.pt \\\n
        --to onnx --validation calibration_data/digits/val -o out/digits

    Exit codes: 0 all passed, 1 a parity/accuracy/latency gate failed, 2 bad input, 3 a conversion failed.
    """
    handle_errors(_convert)(**locals())


def _step_options(option: list[str] | None, opset: int | None, exporter: str | None) -> list[str]:
    opts = list(option or [])
    if opset is not None:
        opts.append(f"OnnxFromPytorch.opset={opset}")
    if exporter is not None:
        opts.append(f"OnnxFromPytorch.exporter={exporter}")
    return opts


def _prune_options(text: str | None, finetune_epochs: int) -> dict[str, object] | None:
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


def _batches(batch: str | None) -> list[int] | None:
    if not batch:
        return None
    try:
        return [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"--batch '{batch}': expected comma-separated integers, e.g. 1,8") from None


def _convert(model: str, to: str, output: Path, inputs: list[str] | None, weights: Path | None, precision: str,
             option: list[str] | None, opset: int | None, exporter: str | None, data: Path | None,
             validation: Path | None, tuning_fraction: float | None, calibration: Path | None,
             calibration_samples: int | None, prune: str | None, train: Path | None, finetune_epochs: int,
             samples: int | None, batch: str | None, runs: int | None, threads: int | None, no_latency: bool,
             output_kind: list[str] | None, strict: bool, no_simplify: bool, require_all: bool, no_cache: bool,
             cache_dir: Path | None, json_out: bool, divergence_budget: float | None) -> None:
    from convcli.cli.common import STATE
    from convcli.job import run_job
    from convcli.reports.terminal import render_terminal

    spec = build_job(model, to, inputs, weights, precision, _step_options(option, opset, exporter), output,
                     parity=data, validation=validation, tuning_fraction=tuning_fraction, calibration=calibration,
                     calibration_samples=calibration_samples, train=train,
                     prune=_prune_options(prune, finetune_epochs), samples=samples,
                     batches=_batches(batch), runs=runs, threads=threads, enabled=not no_latency,
                     simplify=not no_simplify, require_all=require_all, cache=not no_cache, cache_dir=cache_dir,
                     outputs=parse_output_kinds(output_kind), strict=strict or None,
                     divergence_budget=divergence_budget)
    result = run_job(spec, progress=RichProgress(err), command=echo_command(), debug=bool(STATE["debug"]))
    if STATE["debug"]:
        for tb in result.tracebacks:
            err.print(tb, markup=False, highlight=False)
    if json_out:
        out.print_json(result.report.to_json())
    else:
        render_terminal(result.report, out)
        out.print(f"[dim]report: {result.output / 'report.json'}[/]", highlight=False)
    raise typer.Exit(result.report.exit_code)


def plan_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    to: str = typer.Option("onnx", "--to", "-t", help=TO_HELP),
    inputs: list[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP),
    weights: Path = typer.Option(None, "--weights", "-w", help="state_dict or .safetensors for a factory."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="Default precisions."),
    option: list[str] = typer.Option(None, "--option", "-O", help=OPTION_HELP),
) -> None:
    """Print the planned steps from SOURCE to each target, without converting anything.

    Example:\n
      convcli plan recipes/models/digits_cnn.py:build --to onnx,openvino,tflite
    """
    handle_errors(_plan)(model, to, inputs, weights, precision, option)


def _plan(model: str, to: str, inputs: list[str] | None, weights: Path | None, precision: str,
          option: list[str] | None) -> None:
    from convcli.core.planner import plan
    from convcli.core.registry import default_registry
    from convcli.job import load_source, target_requests

    registry = default_registry()
    spec = build_job(model, to, inputs, weights, precision, option, Path("unused"))
    source = load_source(registry, spec)
    the_plan = plan(registry, source.format, target_requests(spec), spec.step_options)
    inputs_text = ", ".join(s.text() for s in source.inputs)
    print_plan(the_plan, f"[bold]source[/] {model} ({source.format}); inputs: {inputs_text}")
