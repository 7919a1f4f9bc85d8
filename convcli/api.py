"""The Python API: ``convcli.convert`` and ``convcli.check`` for notebooks and training scripts.

They take what the CLI takes (a spec string such as ``model.py:build`` or ``model.onnx``, and the same options)
and also an in-memory ``torch.nn.Module`` or Keras model; they build the same ``JobSpec`` through
``recipes/flags.py`` and run the same ``job.run_job`` / ``job.check_artifacts``, so judging, cache and
OUTDIR are the CLI's. The CLI's ``convert`` and ``check`` commands are built on these two functions.

Differences from the CLI, all in how results come back: bad input raises the ``InputError`` the CLI prints
(same one-line message), and the report comes back as a ``JobReport`` instead of an exit code. A failed gate
or conversion does not raise unless ``raise_on_failure=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from convcli.core.errors import (
    EXIT_CONVERSION_FAILED,
    EXIT_GATE_FAILED,
    ConversionFailed,
    GateFailed,
    InputError,
)
from convcli.core.executor import ProgressSink
from convcli.core.fsutil import atomic_write_text
from convcli.recipes.flags import build_job, parse_batches, parse_output_kinds, prune_options, step_option_list
from convcli.reports.model import ArtifactReport, Report

PathLike = str | Path
ModelArg = Any  # a spec string or Path, a torch.nn.Module, or a Keras model


class ArtifactRow(ArtifactReport):
    """A report row whose ``path`` and ``files`` are absolute (report.json keeps them relative to OUTDIR)."""

    @property
    def file(self) -> Path | None:
        """The artifact's main file (None when the row has none: error or unavailable)."""
        return Path(self.path) if self.path else None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class JobReport(Report):
    """The report of one ``convert``/``check`` call: report.json's model (``Report``) with accessors.

    ``report["onnx-fp32"]`` is a row by id; ``passed`` says whether the CLI would exit 0; ``best`` is the
    fastest passed row (the first passed one when latency was not measured); ``output`` is OUTDIR.
    """

    artifacts: list[ArtifactRow] = []  # type: ignore[assignment]
    _output: Path = PrivateAttr(default=Path())
    _written: Report | None = PrivateAttr(default=None)
    _tracebacks: list[str] = PrivateAttr(default_factory=list)

    @classmethod
    def of(cls, report: Report, output: Path, files_base: dict[str, Path],
           tracebacks: list[str] | None = None) -> JobReport:
        """``report`` with each row's paths resolved against ``files_base[row.id]`` (OUTDIR for convert)."""
        made = cls.model_validate(report.model_dump(by_alias=True))
        for row in made.artifacts:
            base = files_base.get(row.id, output)
            row.path = str((base / row.path).resolve()) if row.path else None
            row.files = [str((base / f).resolve()) for f in row.files]
        made._output, made._written, made._tracebacks = output, report, list(tracebacks or [])
        return made

    @property
    def output(self) -> Path:
        """OUTDIR: where report.json (and, for convert, the artifacts) were written."""
        return self._output

    @property
    def written(self) -> Report:
        """The report exactly as report.json holds it (paths relative to OUTDIR)."""
        return self._written if self._written is not None else self

    @property
    def tracebacks(self) -> list[str]:
        """Tracebacks of failed steps (what the CLI prints with --debug)."""
        return self._tracebacks

    @property
    def passed(self) -> bool:
        """Every requested target passed its tolerances and gates (exit code 0)."""
        return self.exit_code == 0

    @property
    def ids(self) -> list[str]:
        return [row.id for row in self.artifacts]

    def __getitem__(self, row_id: str) -> ArtifactRow:
        for row in self.artifacts:
            if row.id == row_id:
                return row
        raise KeyError(f"no artifact '{row_id}' in the report; its ids are {', '.join(self.ids) or 'none'}")

    def __contains__(self, row_id: object) -> bool:
        return any(row.id == row_id for row in self.artifacts)

    @property
    def fastest(self) -> ArtifactRow | None:
        """The passed row with the lowest p50 latency (``fastest_passed``); None when latency was not measured."""
        return self[self.fastest_passed] if self.fastest_passed else None

    @property
    def best(self) -> ArtifactRow | None:
        """The fastest passed row, else (latency not measured) the first passed row in target order."""
        return self.fastest or next((row for row in self.artifacts if row.passed), None)

    def problems(self) -> list[str]:
        """One line per row that is not passed: its id, status and error or failed gates."""
        lines = []
        for row in self.artifacts:
            if row.status != "passed":
                why = row.error or "; ".join(row.failures) or ", ".join(row.flags)
                lines.append(f"{row.id}: {row.status}" + (f": {why}" if why else ""))
        return lines


def convert(
    model: ModelArg,
    inputs: str | Sequence[str] | None = None,
    to: str | Sequence[str] = "onnx",
    *,
    output: PathLike = "convcli-out",
    calibration: PathLike | None = None,
    validation: PathLike | None = None,
    data: PathLike | None = None,
    weights: PathLike | None = None,
    precision: str | Sequence[str] = "fp32",
    options: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
    opset: int | None = None,
    exporter: str | None = None,
    tuning_fraction: float | None = None,
    calibration_samples: int | None = None,
    validation_samples: int | None = None,
    seed: int | None = None,
    prune: str | Mapping[str, Any] | None = None,
    train: PathLike | None = None,
    finetune_epochs: int = 0,
    samples: int | None = None,
    latency: bool = True,
    batch: str | int | Sequence[int] | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    max_seconds: float | None = None,
    threads: int | None = None,
    outputs: Mapping[str, str] | Sequence[str] | None = None,
    tolerances: Mapping[str, Mapping[str, Any]] | None = None,
    gates: Mapping[str, Any] | None = None,
    strict: bool = False,
    divergence_budget: float | None = None,
    simplify: bool = True,
    require_all: bool = False,
    cache: bool = True,
    cache_dir: PathLike | None = None,
    reports: Sequence[str] | None = None,
    name: str | None = None,
    raise_on_failure: bool = False,
    progress: ProgressSink | None = None,
    command: str | None = None,
    debug: bool = False,
) -> JobReport:
    """Convert ``model`` to every target, prove each artifact against it, write OUTDIR; return the report.

    Args:
        model: a ``torch.nn.Module`` or Keras model (converted without a factory file), or what the CLI takes:
            ``file.py:factory``, ``package.module:factory``, a .onnx/.pt/.pt2/.keras/.h5 file, a SavedModel folder.
        inputs: ``NAME:SHAPE:DTYPE[:LOW..HIGH]`` per input (``--input``), e.g. ``"x:batch=2x3x32x32:float32"``.
        to: ``"onnx,openvino:fp16"`` or ``["onnx", "openvino:fp16"]`` (``--to``); ``precision`` is the default.
        options: ``{"OnnxFromPytorch": {"opset": 18}, "openvino": {...}}`` or the CLI's ``"STEP.KEY=VALUE"``.
        outputs: declared output kinds, ``{"output": "embedding"}`` (``--output-kind``).
        tolerances, gates: the recipe's ``tolerances`` (per precision) and ``gates`` mappings.
        reports: also write report.md / report.html / report.junit.xml: any of "md", "html", "junit".
        latency: False is ``--no-latency``. ``batch``, ``runs``, ``warmup``, ``max_seconds``, ``threads``: timing.
        raise_on_failure: raise ``GateFailed`` (exit code 1) or ``ConversionFailed`` (3) carrying the report
            instead of returning it.
        progress: a ``ProgressSink`` (the CLI passes its rich display); default silent.

    The other arguments are the CLI's flags of the same name. Raises ``InputError`` for bad input, with the
    message the CLI prints, before anything is converted.
    """
    from convcli.job import run_job

    with _source(model, weights) as (text, note):
        spec = build_job(
            text, _joined(to, "to"), _strings(inputs, "inputs"), _path(weights), _joined(precision, "precision"),
            _options(options, opset, exporter), Path(output), parity=_path(data), validation=_path(validation),
            tuning_fraction=tuning_fraction, calibration=_path(calibration), calibration_samples=calibration_samples,
            validation_samples=validation_samples, seed=seed, train=_path(train),
            prune=prune_options(prune, finetune_epochs) if not isinstance(prune, Mapping) else dict(prune),
            samples=samples, batches=_batches(batch), runs=runs, warmup=warmup, max_seconds=max_seconds,
            threads=threads, enabled=latency, simplify=simplify, require_all=require_all,
            cache=cache and note is None, cache_dir=_path(cache_dir), outputs=_output_kinds(outputs),
            strict=strict or None, divergence_budget=divergence_budget, tolerances=_mapping(tolerances, "tolerances"),
            gates=_mapping(gates, "gates"), reports=list(reports) if reports else None, name=name)
        result = run_job(spec, progress=progress, command=command or f"convcli.convert({text}, to={to!r})",
                         debug=debug)
    if note is not None and cache:
        result.report.cache["note"] = note
        atomic_write_text(result.output / "report.json", result.report.to_json() + "\n")
        warnings.warn(f"convcli: {note}", stacklevel=2)
    if spec.reports:
        from convcli.reports.render import write_reports

        write_reports(result.report, result.output, spec.reports)
    report = JobReport.of(result.report, result.output, {}, result.tracebacks)
    return _judged(report, raise_on_failure)


def check(
    model: ModelArg,
    artifacts: PathLike | Sequence[PathLike],
    inputs: str | Sequence[str] | None = None,
    *,
    output: PathLike = "convcli-check",
    weights: PathLike | None = None,
    precision: str = "fp32",
    data: PathLike | None = None,
    validation: PathLike | None = None,
    samples: int | None = None,
    seed: int | None = None,
    latency: bool = True,
    batch: str | int | Sequence[int] | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    max_seconds: float | None = None,
    threads: int | None = None,
    outputs: Mapping[str, str] | Sequence[str] | None = None,
    tolerances: Mapping[str, Mapping[str, Any]] | None = None,
    gates: Mapping[str, Any] | None = None,
    strict: bool = False,
    divergence_budget: float | None = None,
    diagnose_all: bool = False,
    raise_on_failure: bool = False,
    progress: ProgressSink | None = None,
    command: str | None = None,
    debug: bool = False,
) -> JobReport:
    """Parity, accuracy and latency of existing artifact files against ``model`` (``convcli check``); the report
    goes to ``output``/report.json. ``model`` and the options are as for ``convert``; ``precision`` is the one
    the artifacts are judged at. Nothing is converted or cached. ``divergence_budget``: seconds a failing row may
    spend locating its first diverging layer (``docs/debugging.md``); ``diagnose_all`` locates it for every row
    (``convcli debug``)."""
    from convcli.job import check_artifacts

    files = [Path(artifacts)] if isinstance(artifacts, (str, Path)) else [Path(a) for a in artifacts]
    if not files:
        raise InputError("no artifacts given", hint="e.g. check(model, ['out/onnx-fp32/model.onnx'])")
    with _source(model, weights) as (text, _note):
        spec = build_job(text, "onnx", _strings(inputs, "inputs"), _path(weights), precision, None, Path(output),
                         parity=_path(data), validation=_path(validation), samples=samples, seed=seed,
                         batches=_batches(batch), runs=runs, warmup=warmup, max_seconds=max_seconds, threads=threads,
                         enabled=latency, outputs=_output_kinds(outputs), strict=strict or None,
                         divergence_budget=divergence_budget, tolerances=_mapping(tolerances, "tolerances"),
                         gates=_mapping(gates, "gates"))
        written = check_artifacts(spec, files, progress=progress, debug=debug, diagnose_all=diagnose_all,
                                  command=command or f"convcli.check({text}, {[str(f) for f in files]!r})")
    # A check row's path is the file as given; its other files lie beside it.
    bases = {row.id: Path(row.path).parent for row in written.artifacts if row.path}
    report = JobReport.of(written, Path(output).resolve(), bases)
    for row, given in zip(report.artifacts, written.artifacts, strict=True):
        row.path = str(Path(given.path).resolve()) if given.path else None
    return _judged(report, raise_on_failure)


def _judged(report: JobReport, raise_on_failure: bool) -> JobReport:
    if raise_on_failure and report.exit_code in (EXIT_GATE_FAILED, EXIT_CONVERSION_FAILED):
        error = GateFailed if report.exit_code == EXIT_GATE_FAILED else ConversionFailed
        raise error(f"{report.summary}: {'; '.join(report.problems())}",
                    hint=f"report: {report.output / 'report.json'}", report=report)
    return report


@contextmanager
def _source(model: ModelArg, weights: PathLike | None) -> Iterator[tuple[str, str | None]]:
    """The JobSpec's ``source.model`` for ``model``, and a note when the job must run without the cache. An
    in-memory model is held (loadable by token) for the block; a torch module's training mode is restored."""
    if isinstance(model, (str, Path)):
        yield str(model), None
        return
    from convcli.sources.objects import hold, object_kind

    kind = object_kind(model)
    if kind is None:
        raise InputError(f"model: a {type(model).__module__}.{type(model).__qualname__} is not a model convcli "
                         "can take", hint="pass a torch.nn.Module, a Keras model, or a spec string such as "
                                          "'model.py:build' or 'model.onnx'")
    if weights is not None:
        raise InputError("weights: go with a file.py:factory source, not an in-memory model",
                         hint="load them into the module first (model.load_state_dict(...))")
    training = getattr(model, "training", None) if kind == "pytorch" else None
    try:
        with hold(model, kind) as (token, digest):
            note = None if digest is not None else (
                f"{type(model).__qualname__}: a class in it has a method that is no function (e.g. a "
                "functools.partial), so no cache key can tell its versions apart; this job ran without the cache")
            yield token, note
    finally:
        if isinstance(training, bool):
            model.train(training)


def _strings(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not all(isinstance(v, str) for v in value):
        raise InputError(f"{what}: expected a string or a list of strings, got {value!r}")
    return list(value)


def _joined(value: str | Sequence[str], what: str) -> str:
    return ",".join(_strings(value, what) or [])


def _path(value: PathLike | None) -> Path | None:
    return Path(value) if value is not None else None


def _options(options: Sequence[str] | Mapping[str, Mapping[str, Any]] | None, opset: int | None,
             exporter: str | None) -> list[str] | dict[str, dict[str, Any]]:
    if not isinstance(options, Mapping):
        return step_option_list(_strings(options, "options"), opset, exporter)
    parsed = {str(k): dict(v) for k, v in options.items()}
    for key, value in (("opset", opset), ("exporter", exporter)):
        if value is not None:
            parsed.setdefault("OnnxFromPytorch", {})[key] = value
    return parsed


def _batches(batch: str | int | Sequence[int] | None) -> list[int] | None:
    if batch is None or isinstance(batch, str):
        return parse_batches(batch)
    return parse_batches(",".join(str(b) for b in ([batch] if isinstance(batch, int) else batch)))


def _output_kinds(outputs: Mapping[str, str] | Sequence[str] | None) -> dict[str, str] | None:
    if isinstance(outputs, Mapping):
        return parse_output_kinds([f"{name}:{kind}" for name, kind in outputs.items()])
    return parse_output_kinds(_strings(outputs, "outputs"))


def _mapping(value: Mapping[str, Any] | None, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(f"{what}: expected a mapping, got {type(value).__name__}")
    return dict(value)

