"""convcli run: run one or many recipe files."""

from __future__ import annotations

from pathlib import Path

import typer

from convcli.cli.common import STATE, echo_command, err, handle_errors, out, print_plan
from convcli.cli.progress import RichProgress


def run(
    recipes: list[Path] = typer.Argument(..., help="Recipe YAML files (globs are expanded by your shell)."),
    only: list[str] = typer.Option(None, "--only", help="Run only these targets (format or format-precision)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print each plan, convert nothing."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild every step and measure again."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache folder (default ~/.cache/convcli)."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (several recipes: OUTDIR/<name>)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Recipes run in parallel (child processes)."),
    shard: str = typer.Option(None, "--shard", help="I/N: run only the I-th of N stable shards (CI matrices)."),
    json_out: bool = typer.Option(False, "--json", help="Print each report.json instead of the table."),
) -> None:
    """Run recipe files: plan, convert, check, gate and report, with cached steps.

    Example:\n
      convcli run recipes/quickstart.yaml\n
      convcli run recipes/*.yaml --jobs 2 --shard 1/4 --only onnx

    Exit codes (worst over all recipes): 0 all passed, 1 a gate failed, 2 a recipe is invalid (nothing runs),
    3 a conversion failed.
    """
    handle_errors(_run)(**locals())


def _run(recipes: list[Path], only: list[str] | None, dry_run: bool, no_cache: bool, cache_dir: Path | None,
         output: Path | None, jobs: int, shard: str | None, json_out: bool) -> None:
    from convcli.core.registry import default_registry
    from convcli.job import check_calibration
    from convcli.recipes.batch import combined_exit_code, parse_shard, run_in_children, select_shard
    from convcli.recipes.loader import load_recipe

    registry = default_registry()
    if shard:
        index, count = parse_shard(shard)
        recipes = select_shard(list(recipes), index, count)
        err.print(f"shard {index}/{count}: {len(recipes)} recipe(s): {', '.join(p.name for p in recipes)}",
                  highlight=False)
    specs = [(path, load_recipe(path, registry)) for path in recipes]  # every recipe validated before any runs
    for path, spec in specs:
        _apply_overrides(spec, only, no_cache, cache_dir, output if len(specs) == 1 else
                         (output / (spec.name or path.stem) if output else None))
        check_calibration(spec, registry)  # int8 without calibration data: refused before any recipe runs
    if dry_run:
        for path, spec in specs:
            _print_plan(path, spec)
        raise typer.Exit(0)
    if jobs > 1 and len(specs) > 1:
        extra = [a for o in (only or []) for a in ("--only", o)]
        extra += ["--no-cache"] if no_cache else []
        extra += ["--cache-dir", str(cache_dir)] if cache_dir else []
        children = run_in_children([p for p, _ in specs], extra, jobs)
        for child in children:
            out.rule(f"{child.recipe} (exit {child.exit_code})")
            out.print(child.output, markup=False, highlight=False, end="")
        codes = [c.exit_code for c in children]
    else:
        codes = [_run_one(path, spec, json_out) for path, spec in specs]
    if len(specs) > 1:
        for (path, _), code in zip(specs, codes, strict=True):
            out.print(f"{'ok' if code == 0 else 'FAILED'} ({code}) {path}", highlight=False)
    raise typer.Exit(combined_exit_code(codes))


def _apply_overrides(spec: object, only: list[str] | None, no_cache: bool, cache_dir: Path | None,
                     output: Path | None) -> None:
    from convcli.core.errors import InputError
    from convcli.core.registry import default_registry
    from convcli.job.source import expand_auto
    from convcli.recipes.schema import JobSpec

    assert isinstance(spec, JobSpec)
    if only:
        wanted = {o.strip().lower() for item in only for o in item.split(",") if o.strip()}
        kept = []
        for t in spec.targets:
            if t.format not in wanted and "auto" in t.precisions:  # --only openvino-bf16 picks from what auto becomes
                t = expand_auto(default_registry(), spec.model_copy(update={"targets": [t]}))[0].targets[0]
            precs = [p for p in t.precisions if t.format in wanted or f"{t.format}-{p}" in wanted]
            if precs:
                kept.append(t.model_copy(update={"precisions": precs}))
        if not kept:
            raise InputError(f"--only {','.join(sorted(wanted))}: no target of recipe '{spec.name}' matches",
                             hint=f"its targets: {', '.join(t.format for t in spec.targets)}")
        spec.targets = kept
    if no_cache:
        spec.cache = False
    if cache_dir is not None:
        spec.cache_dir = cache_dir
    if output is not None:
        spec.output = output


def _print_plan(path: Path, spec: object) -> None:
    from convcli.core.planner import plan
    from convcli.core.registry import default_registry
    from convcli.job import find_loader, target_requests
    from convcli.recipes.schema import JobSpec

    assert isinstance(spec, JobSpec)
    registry = default_registry()
    loader = find_loader(registry, spec)
    the_plan = plan(registry, loader.format, target_requests(spec, registry), spec.step_options)
    print_plan(the_plan, f"[bold]{path}[/] ({spec.name}): {spec.source.model} ({loader.format}) -> {spec.output}")


def _run_one(path: Path, spec: object, json_out: bool) -> int:
    from convcli.job import run_job
    from convcli.recipes.schema import JobSpec
    from convcli.reports.terminal import render_terminal

    assert isinstance(spec, JobSpec)
    err.print(f"[bold]{path}[/] -> {spec.output}", highlight=False)
    result = run_job(spec, progress=RichProgress(err), command=echo_command(), debug=bool(STATE["debug"]))
    if STATE["debug"]:
        for tb in result.tracebacks:
            err.print(tb, markup=False, highlight=False)
    written = write_extra_reports(result.report, result.output, spec.reports)
    if json_out:
        out.print_json(result.report.to_json())
    else:
        render_terminal(result.report, out)
        for f in [result.output / "report.json", *written]:
            out.print(f"[dim]report: {f}[/]", highlight=False)
    return package_after_run(spec, result.output, result.report.exit_code, json_out)


def package_after_run(spec: object, outdir: Path, exit_code: int, json_out: bool = False) -> int:
    """The recipe's ``package:`` section: a Triton repository from the passed artifacts, only when the run
    passed. A packaging error is that recipe's exit code (2 or 3), printed as one line."""
    from convcli.cli.package import write_repository
    from convcli.core.errors import ConvcliError
    from convcli.recipes.schema import JobSpec

    assert isinstance(spec, JobSpec)
    if spec.package is None:
        return exit_code
    if exit_code != 0:
        err.print(f"package: skipped, the run did not pass (exit {exit_code}); {spec.package.triton} unchanged",
                  highlight=False)
        return exit_code
    try:
        write_repository(outdir, spec.package, err if json_out else out)  # --json: stdout is the report only
    except ConvcliError as exc:
        err.print(f"[bold red]error:[/] package: {exc.one_line()}", highlight=False, soft_wrap=True)
        return exc.exit_code
    return exit_code


def write_extra_reports(report: object, outdir: Path, formats: list[str]) -> list[Path]:
    """Markdown / HTML / JUnit beside report.json (renderers in convcli.reports)."""
    if not formats:
        return []
    from convcli.reports.render import write_reports

    return list(write_reports(report, outdir, formats))  # type: ignore[arg-type]
