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
    print_plan,
)
from convcli.cli.progress import RichProgress

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


def _convert(model: str, to: str, output: Path, inputs: list[str] | None, weights: Path | None, precision: str,
             option: list[str] | None, opset: int | None, exporter: str | None, data: Path | None,
             validation: Path | None, tuning_fraction: float | None, calibration: Path | None,
             calibration_samples: int | None, prune: str | None, train: Path | None, finetune_epochs: int,
             samples: int | None, batch: str | None, runs: int | None, threads: int | None, no_latency: bool,
             output_kind: list[str] | None, strict: bool, no_simplify: bool, require_all: bool, no_cache: bool,
             cache_dir: Path | None, json_out: bool, divergence_budget: float | None) -> None:
    from convcli import api
    from convcli.cli.common import STATE
    from convcli.reports.terminal import render_terminal

    report = api.convert(model, inputs, to, output=output, weights=weights, precision=precision, options=option,
                         opset=opset, exporter=exporter, data=data, validation=validation,
                         tuning_fraction=tuning_fraction, calibration=calibration,
                         calibration_samples=calibration_samples, prune=prune, train=train,
                         finetune_epochs=finetune_epochs, samples=samples, batch=batch, runs=runs, threads=threads,
                         latency=not no_latency, outputs=output_kind, strict=strict, simplify=not no_simplify,
                         divergence_budget=divergence_budget,
                         require_all=require_all, cache=not no_cache, cache_dir=cache_dir,
                         progress=RichProgress(err), command=echo_command(), debug=bool(STATE["debug"]))
    if STATE["debug"]:
        for tb in report.tracebacks:
            err.print(tb, markup=False, highlight=False)
    if json_out:
        out.print_json(report.written.to_json())
    else:
        render_terminal(report.written, out)
        out.print(f"[dim]report: {report.output / 'report.json'}[/]", highlight=False)
    raise typer.Exit(report.exit_code)


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
    the_plan = plan(registry, source.format, target_requests(spec, registry), spec.step_options)
    inputs_text = ", ".join(s.text() for s in source.inputs)
    print_plan(the_plan, f"[bold]source[/] {model} ({source.format}); inputs: {inputs_text}")
