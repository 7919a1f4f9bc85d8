"""convcli check: parity and latency of artifacts that already exist, against their source."""

from __future__ import annotations

from pathlib import Path

import typer

from convcli.cli.common import DIVERGENCE_HELP, OUTPUT_KIND_HELP, err, handle_errors, out
from convcli.cli.convert import INPUT_HELP, MODEL_HELP
from convcli.cli.progress import RichProgress


def check(
    model: str = typer.Argument(..., help=MODEL_HELP),
    artifacts: list[Path] = typer.Argument(..., help="Artifact files (model.onnx, ...)."),
    inputs: list[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP),
    weights: Path = typer.Option(None, "--weights", "-w", help="state_dict or .safetensors for a factory."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="Precision the artifacts are judged at."),
    data: Path = typer.Option(None, "--data", help="Parity inputs (.npy/.npz or image folder)."),
    validation: Path = typer.Option(None, "--validation", help="Labelled images for accuracy."),
    samples: int = typer.Option(None, "--samples", help="Parity samples (default 16)."),
    threads: int = typer.Option(None, "--threads", help="Threads for every runtime."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip latency measurement."),
    output_kind: list[str] = typer.Option(None, "--output-kind", help=OUTPUT_KIND_HELP),
    strict: bool = typer.Option(False, "--strict", help="Fail on a degenerate reference output instead of flagging."),
    output: Path = typer.Option(Path("convcli-check"), "--output", "-o", help="Where report.json goes."),
    divergence_budget: float = typer.Option(None, "--divergence-budget", min=0, help=DIVERGENCE_HELP),
) -> None:
    """Run parity, accuracy and latency of existing artifacts against the source model.

    Example:\n
      convcli check recipes/models/digits_cnn.py:build out/digits/onnx-fp32/model.onnx \\\n
        --weights recipes/models/digits_cnn.pt
    """
    handle_errors(run_check)(**locals())


def run_check(model: str, artifacts: list[Path], inputs: list[str] | None, weights: Path | None, precision: str,
              data: Path | None, validation: Path | None, samples: int | None, threads: int | None,
              no_latency: bool, output_kind: list[str] | None, strict: bool, output: Path,
              divergence_budget: float | None, diagnose_all: bool = False) -> None:
    """``check`` and ``debug``: the same job; ``debug`` locates the divergence of every row, passed or not."""
    from convcli import api
    from convcli.cli.common import STATE, echo_command
    from convcli.reports.terminal import render_terminal

    report = api.check(model, artifacts, inputs, output=output, weights=weights, precision=precision, data=data,
                       validation=validation, samples=samples, threads=threads, latency=not no_latency,
                       outputs=output_kind, strict=strict, divergence_budget=divergence_budget,
                       diagnose_all=diagnose_all, progress=RichProgress(err), command=echo_command(),
                       debug=bool(STATE["debug"]))
    render_terminal(report.written, out)
    raise typer.Exit(report.exit_code)
