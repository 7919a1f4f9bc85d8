"""convcli debug: where does an artifact start to differ from its source? (issue 10)"""

from __future__ import annotations

from pathlib import Path

import typer

from convcli.cli.check import run_check
from convcli.cli.common import DIVERGENCE_HELP, OUTPUT_KIND_HELP, handle_errors
from convcli.cli.convert import INPUT_HELP, MODEL_HELP


def debug(
    model: str = typer.Argument(..., help=MODEL_HELP),
    artifacts: list[Path] = typer.Argument(..., help="Artifact files (model.onnx, model.xml, ...)."),
    inputs: list[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP),
    weights: Path = typer.Option(None, "--weights", "-w", help="state_dict or .safetensors for a factory."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="Precision the artifacts are judged at "
                                                                    "(also picks the intermediate tolerance)."),
    data: Path = typer.Option(None, "--data", help="Parity inputs (.npy/.npz or image folder)."),
    validation: Path = typer.Option(None, "--validation", help="Labelled images for accuracy."),
    samples: int = typer.Option(None, "--samples", help="Parity samples (default 16); the 2 worst are traced."),
    threads: int = typer.Option(None, "--threads", help="Threads for every runtime."),
    latency: bool = typer.Option(False, "--latency", help="Also measure latency (off by default here)."),
    output_kind: list[str] = typer.Option(None, "--output-kind", help=OUTPUT_KIND_HELP),
    strict: bool = typer.Option(False, "--strict", help="Fail on a degenerate reference output instead of flagging."),
    output: Path = typer.Option(Path("convcli-debug"), "--output", "-o",
                                help="Where report.json and each row's divergence/ repro folder go."),
    divergence_budget: float = typer.Option(60.0, "--divergence-budget", min=1, help=DIVERGENCE_HELP),
) -> None:
    """Find the first layer where an artifact diverges from its source: the same job as `convcli check`, with
    intermediate tensors compared for every artifact (passing or not) and a one-node ONNX repro written to
    OUTDIR/<id>/divergence/.

    Example:\n
      convcli debug recipes/models/digits_cnn.py:build out/digits/openvino-fp32/model.xml \\\n
        --weights recipes/models/digits_cnn.pt -o debug-digits

    Exit codes as for check: 0 parity passed, 1 failed, 2 bad input, 3 the artifact did not run.
    """
    handle_errors(run_check)(model=model, artifacts=artifacts, inputs=inputs, weights=weights,
                             precision=precision, data=data, validation=validation, samples=samples,
                             threads=threads, no_latency=not latency, output_kind=output_kind, strict=strict,
                             output=output, divergence_budget=divergence_budget, diagnose_all=True)
