"""convcli package: a run's passed artifacts as a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from convcli.cli.common import err, handle_errors, out


def package(
    outdir: Path = typer.Argument(..., help="The -o folder of a convert/check/run (holds report.json, manifest.json)."),
    triton: Path = typer.Option(..., "--triton", help="Triton model repository folder (created when missing)."),
    name: str = typer.Option(None, "--name", help="Model name prefix (default: the recipe name, else the model "
                                                  "file's name); models are <name>_<format>_<precision>."),
    version_policy: str = typer.Option("latest:1", "--version-policy",
                                       help="Which versions Triton serves: latest:N, all, or specific:V1,V2."),
    instance_count: int = typer.Option(1, "--instance-count", min=1, help="instance_group count."),
    dynamic_batching: bool = typer.Option(False, "--dynamic-batching",
                                          help="Add dynamic_batching {} to models with a dynamic batch dimension."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1,
                                       help="max_batch_size of models whose first dimension is a dynamic batch."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup",
                                help="model_warmup from one sample of the run's parity data."),
) -> None:
    """Write the passed onnx/openvino/tensorrt artifacts of a run as a Triton model repository.

    One Triton model per artifact (<name>_<format>_<precision>); each package run adds version N+1 and never
    touches existing versions. Every config.pbtxt is parsed against Triton's schema and its inputs/outputs are
    checked against the model file as its runtime loads it, before anything is moved into REPO.

    Exit codes: 0 written, 2 bad input (no report, no passed artifact, REPO is a file; nothing written),
    3 a config did not match its model file (nothing written).

    Example:\n
      convcli convert model.py:build --to onnx,openvino -o out/digits\n
      convcli package out/digits --triton models/ --dynamic-batching\n
      tritonserver --model-repository models/
    """
    handle_errors(_package)(outdir, triton, name, version_policy, instance_count, dynamic_batching, max_batch_size,
                            warmup)


def _package(outdir: Path, triton: Path, name: str | None, version_policy: str, instance_count: int,
             dynamic_batching: bool, max_batch_size: int, warmup: bool) -> None:
    from pydantic import ValidationError

    from convcli.recipes.loader import validation_error
    from convcli.recipes.schema import PackageSpec

    try:
        spec = PackageSpec(triton=triton, name=name, version_policy=version_policy, instance_count=instance_count,
                           dynamic_batching=dynamic_batching, max_batch_size=max_batch_size, warmup=warmup)
    except ValidationError as exc:
        raise validation_error(exc, "options") from None
    write_repository(outdir, spec)


def write_repository(outdir: Path, spec: object, console: Console = out) -> None:
    """Package and print what was written and skipped (shared with `convcli run`'s package: section)."""
    from convcli.deploy.triton import package
    from convcli.recipes.schema import PackageSpec

    assert isinstance(spec, PackageSpec)
    result = package(outdir, spec)
    for m in result.models:
        console.print(f"[green]{m.name}[/] version {m.version} ({m.platform}, max_batch_size {m.max_batch_size}, "
                  f"{m.inputs} input(s), {m.outputs} output(s); checked against the model file) <- {m.artifact}; "
                  f"warm-up: {m.warmup}", highlight=False)
    for artifact, why in result.skipped:
        console.print(f"[yellow]skipped[/] {artifact}: {why}", highlight=False)
    err.print(f"wrote Triton model repository {result.repo}; serve it with: tritonserver --model-repository "
              f"{result.repo}", highlight=False, soft_wrap=True)
