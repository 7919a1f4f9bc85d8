"""convcli recipe validate / schema / init."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from convcli.cli.common import err, handle_errors, out

recipe_app = typer.Typer(help="Validate recipe files, print their JSON Schema, or write a starter recipe.",
                         no_args_is_help=True)


@recipe_app.command("validate")
def validate(files: list[Path] = typer.Argument(..., help="Recipe YAML files.")) -> None:
    """Validate recipes against the schema and check that the files they name exist.

    Example:\n
      convcli recipe validate recipes/*.yaml
    """
    handle_errors(_validate)(files)


def _validate(files: list[Path]) -> None:
    from convcli.core.errors import EXIT_BAD_INPUT, InputError
    from convcli.recipes.loader import load_recipe

    bad = 0
    for f in files:
        try:
            spec = load_recipe(f)
        except InputError as exc:
            bad += 1
            err.print(f"[bold red]invalid:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
            continue
        targets = ", ".join(f"{t.format}:{'+'.join(t.precisions)}" for t in spec.targets)
        out.print(f"[green]ok[/] {f} ({spec.name}: {targets})", highlight=False)
    if bad:
        raise typer.Exit(EXIT_BAD_INPUT)


@recipe_app.command("schema")
def schema(output: Path = typer.Option(None, "--output", "-o", help="Write to a file instead of stdout.")) -> None:
    """Print the recipe JSON Schema (built from the registry, plugins included) for YAML editors.

    Example:\n
      convcli recipe schema -o docs/recipe-schema.json
    """
    handle_errors(_schema)(output)


def _schema(output: Path | None) -> None:
    from convcli.core.fsutil import atomic_write_text
    from convcli.core.registry import default_registry
    from convcli.recipes.typed import recipe_json_schema

    text = json.dumps(recipe_json_schema(default_registry()), indent=2, sort_keys=True) + "\n"
    if output:
        atomic_write_text(output, text)
        err.print(f"wrote {output}")
    else:
        print(text, end="")


@recipe_app.command("init")
def init(
    model: str = typer.Argument(..., help="file.py:factory, package.module:factory, or a model file."),
    output: Path = typer.Option(Path("recipe.yaml"), "--output", "-o", help="Recipe file to write."),
    to: str = typer.Option(None, "--to", help="Targets (default: every target available on this machine)."),
    inputs: list[str] = typer.Option(None, "--input", "-i", help="NAME:SHAPE:DTYPE when the model has none."),
    weights: Path = typer.Option(None, "--weights", "-w", help="state_dict or .safetensors for a factory."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a starter recipe for a model: its inputs (read from the model), available targets, default gates.

    Example:\n
      convcli recipe init recipes/models/digits_cnn.py:build --weights recipes/models/digits_cnn.pt -o my.yaml
    """
    handle_errors(_init)(model, output, to, inputs, weights, force)


def _init(model: str, output: Path, to: str | None, inputs: list[str] | None, weights: Path | None,
          force: bool) -> None:
    import yaml

    from convcli.cli.common import build_job
    from convcli.core.errors import InputError
    from convcli.core.fsutil import atomic_write_text
    from convcli.core.planner import TargetRequest, plan
    from convcli.core.registry import default_registry
    from convcli.job import load_source

    if output.exists() and not force:
        raise InputError(f"{output} exists", hint="pass --force to overwrite it")
    registry = default_registry()
    spec = build_job(model, to or "onnx", inputs, weights, "fp32", None, Path("out"))
    source = load_source(registry, spec)
    if to:
        formats = [t.format for t in spec.targets]
    else:
        candidates = [f for f in ("onnx", "openvino", "ncnn", "tflite", "tensorrt") if f in registry.formats]
        the_plan = plan(registry, source.format, [TargetRequest(f) for f in candidates])
        formats = [t.request.format for t in the_plan.targets if not t.unavailable]
    base = output.resolve().parent

    def rel(p: str) -> str:
        path, sep, attr = p.rpartition(":") if ".py:" in p else (p, "", "")
        if Path(path).exists():
            path = os.path.relpath(Path(path).resolve(), base)
        return f"{path}{sep}{attr}"

    recipe = {
        "version": 1,
        "name": output.stem,
        "source": {"model": rel(model), **({"weights": rel(str(weights))} if weights else {}),
                   "inputs": [s.text() for s in source.inputs]},
        "targets": [{"format": f, "precisions": ["fp32"]} for f in formats],
        "data": {"samples": 16},
        "gates": {"max_accuracy_drop": {"fp32": 0.005, "fp16": 0.01, "int8": 0.01}},
        "reports": ["md", "html", "junit"],
        "output": f"out/{output.stem}",
    }
    header = ("# convcli recipe (schema: docs/recipe-schema.json; `convcli recipe validate` checks it).\n"
              "# Paths are relative to this file. Add data.validation (labelled images) for accuracy gates.\n")
    atomic_write_text(output, header + yaml.safe_dump(recipe, sort_keys=False))
    out.print(f"wrote {output} ({len(formats)} targets: {', '.join(formats)})", highlight=False)
