"""One conversion job, end to end: load the source, plan, convert, run, compare, report.

Data flows one way: JobSpec -> source artifact + plan -> executed steps -> measured artifacts -> Report.
All checks of user input happen before the first conversion (exit 2 with nothing written); artifacts are
built in a temporary folder beside OUTDIR and moved in only when the job is done.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcli import __version__
from convcli.core.artifact import Artifact
from convcli.core.errors import (
    EXIT_CONVERSION_FAILED,
    EXIT_GATE_FAILED,
    EXIT_OK,
    ConvcliError,
    InputError,
    first_line,
)
from convcli.core.executor import ProgressSink, StepOutcome, execute
from convcli.core.fsutil import atomic_write_text, sha256_tree
from convcli.core.lazy import package_version
from convcli.core.planner import Plan, TargetRequest, plan
from convcli.core.registry import Registry, default_registry
from convcli.core.source import SourceRequest
from convcli.core.step import StepContext
from convcli.parity.compare import DEFAULT_TOLERANCES, Tolerance, compare_outputs
from convcli.parity.data import DataSet, load_data, load_images, random_data
from convcli.parity.evaluate import EvalSettings, Measurement, measure_model
from convcli.recipes.schema import GateSpec, JobSpec
from convcli.reports.model import ArtifactReport, Report, Settings, SourceReport, StepRecord

MANIFEST_SCHEMA = "convcli.manifest/v1"
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "onnxscript", "openvino", "nncf", "ncnn",
            "pnnx", "tensorflow", "ai_edge_litert", "onnx2tf", "tf2onnx", "numpy", "tensorrt")


def load_source(registry: Registry, spec: JobSpec) -> Artifact:
    """Pick the loader that recognises the source and load it (InputError when none does)."""
    text = spec.source.model
    loaders = sorted((s for s in registry.sources.values() if s.matches(text)), key=lambda s: -s.priority)
    if not loaders:
        raise InputError(f"cannot tell what kind of model '{text}' is",
                         hint="give file.py:factory, package.module:factory, or a .onnx/.pt/.pt2 file")
    loader = loaders[0]
    avail = loader.availability()
    if not avail.available:
        raise InputError(f"{text}: {loader.name} sources need {avail.reason}")
    if spec.source.weights is not None and loader.format != "pytorch":
        raise InputError(f"--weights {spec.source.weights}: weights go with a file.py:factory source, "
                         f"not a {loader.format} file")
    return loader().load(SourceRequest(text, spec.source.input_specs(), spec.source.weights))


def target_requests(spec: JobSpec) -> list[TargetRequest]:
    requests = []
    seen: set[str] = set()
    for t in spec.targets:
        for p in t.precisions:
            req = TargetRequest(t.format, p, dict(t.options), t.via)
            if req.label in seen:
                continue
            seen.add(req.label)
            requests.append(req)
    if not requests:
        raise InputError("no targets given", hint="e.g. --to onnx,openvino")
    return requests


@dataclass
class JobData:
    parity: DataSet
    labelled: DataSet | None
    calibration: DataSet | None


def load_job_data(spec: JobSpec, source: Artifact) -> JobData:
    d = spec.data
    parity = (load_data(d.parity, source.inputs, d.preprocess, d.samples) if d.parity
              else random_data(source.inputs, d.samples, d.seed))
    labelled = None
    if d.validation is not None:
        labelled = load_images(d.validation, source.inputs, d.preprocess, d.validation_samples)
        if labelled.labels is None:
            raise InputError(f"validation data {d.validation} has no labels",
                             hint="use class sub-folders or a CSV of file,label")
    calibration = (load_data(d.calibration, source.inputs, d.preprocess, d.calibration_samples)
                   if d.calibration else None)
    return JobData(parity, labelled, calibration)


def batch_sizes(source: Artifact, spec: JobSpec) -> tuple[int, list[int]]:
    """Parity batch and latency batches: a static first dim is the only size the model takes."""
    first = source.inputs[0].shape[0] if source.inputs and source.inputs[0].shape else None
    static = first.size if first is not None and not first.dynamic else None
    if static is not None:
        return static, [static]
    return min(spec.data.samples, 16), list(spec.latency.batches or [1])


@dataclass
class JobResult:
    report: Report
    output: Path
    tracebacks: list[str] = field(default_factory=list)


def run_job(spec: JobSpec, registry: Registry | None = None, progress: ProgressSink | None = None,
            command: str = "", debug: bool = False) -> JobResult:
    registry = registry or default_registry()
    source = load_source(registry, spec)
    requests = target_requests(spec)
    skip = set() if spec.simplify else {p.name for p in registry.passes.values() if p.default_for_target}
    the_plan = plan(registry, source.format, requests, spec.step_options, skip)
    data = load_job_data(spec, source)
    threads = spec.latency.threads or os.cpu_count() or 1
    parity_batch, latency_batches = batch_sizes(source, spec)
    for b in latency_batches:
        if parity_batch != b and source.inputs[0].shape and not source.inputs[0].shape[0].dynamic:
            raise InputError(f"latency batch {b}: the model's batch dimension is fixed to {parity_batch}")

    output = spec.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.convcli-", dir=output.parent))
    try:
        ctx = StepContext(workdir=workdir, threads=threads, calibration=data.calibration, debug=debug)
        outcomes = execute(the_plan, source, workdir / "steps", ctx, progress)
        staged = _stage(the_plan, outcomes, source, workdir / "final")
        settings = EvalSettings(threads, parity_batch, latency_batches, spec.latency.warmup, spec.latency.runs,
                                spec.latency.max_seconds, spec.latency.enabled)
        entries = [({"id": t.request.label, "format": t.request.format, "precision": t.request.precision,
                     "chain": the_plan.chain_text(t)}, staged[t.request.label]) for t in the_plan.targets]
        report = _evaluate(registry, spec, source, entries, _step_records(the_plan, outcomes), data, settings,
                           progress)
        report.command = command
        _finalize(report, spec, workdir / "final", output)
        tracebacks = [o.traceback for o in outcomes.values() if o.traceback]
        return JobResult(report, output, tracebacks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _stage(the_plan: Plan, outcomes: dict[str, StepOutcome], source: Artifact,
           final: Path) -> dict[str, Artifact | str]:
    """Copy each target's files into final/<id>/ ; a failed target maps to its error line."""
    staged: dict[str, Artifact | str] = {}
    for target in the_plan.targets:
        label = target.request.label
        if target.unavailable:
            staged[label] = f"unavailable: {target.unavailable}"
            continue
        artifact = outcomes[target.final_step].artifact if target.final_step else source
        if artifact is None:
            assert target.final_step is not None
            failed = next(outcomes[s] for s in target.chain if outcomes[s].error and not outcomes[s].skipped)
            staged[label] = failed.error or "failed"
            continue
        folder = final / label
        folder.mkdir(parents=True, exist_ok=True)
        moved: list[Path] = []
        for f in artifact.all_files():
            dest = folder / f.name
            shutil.copy2(f, dest)
            moved.append(dest)
        primary = folder / artifact.path.name if artifact.path is not None else None
        staged[label] = artifact.derive(path=primary, files=moved, precision=target.request.precision)
    return staged


def _measure_source(registry: Registry, source: Artifact, data: JobData, settings: EvalSettings,
                    progress: ProgressSink | None) -> Measurement:
    label = f"run source ({source.format})"
    if progress:
        progress.begin(label)
    try:
        result = measure_model(registry, source, data.parity, data.labelled, settings)
    except ConvcliError:
        raise
    except Exception as exc:
        raise InputError(f"the source model fails on the parity data: {first_line(exc)}") from exc
    if progress:
        progress.end(label, True, 0.0)
    return result


def _step_records(the_plan: Plan, outcomes: dict[str, StepOutcome]) -> list[StepRecord]:
    records = []
    for sid, planned in the_plan.steps.items():
        o = outcomes[sid]
        records.append(StepRecord(id=sid, name=planned.step.name, source=planned.step.source,
                                  target=planned.step.target,
                                  status="skipped" if o.skipped else ("error" if o.error else "ok"),
                                  seconds=round(o.seconds, 3), options=planned.options.model_dump(mode="json"),
                                  details=_jsonable(o.details), error=o.error))
    return records


def _evaluate(registry: Registry, spec: JobSpec, source: Artifact,
              entries: list[tuple[dict[str, Any], Artifact | str]], steps: list[StepRecord], data: JobData,
              settings: EvalSettings, progress: ProgressSink | None) -> Report:
    """Measure the source, then every entry (an artifact, or the error line of a target that failed)."""
    ref = _measure_source(registry, source, data, settings, progress)
    target_gates = {f"{t.format}-{p}" + (f"@{t.via}" if t.via else ""): t.gates
                    for t in spec.targets for p in t.precisions if t.gates}
    tolerances = {p: spec.tolerances.get(p, t) for p, t in DEFAULT_TOLERANCES.items()}
    src_size = source.size_bytes or None if (source.path is not None or source.files) else None
    params = None
    if source.obj is not None and hasattr(source.obj, "parameters"):
        params = int(sum(p.numel() for p in source.obj.parameters()))
    source_report = SourceReport(
        spec=spec.source.model, format=source.format, inputs=[s.text() for s in source.inputs],
        outputs=source.output_names, runner=ref.runner, accuracy=ref.accuracy, size_bytes=src_size, params=params,
        latency_ms=_headline(ref.latency), latency_by_batch={str(b): s for b, s in ref.latency.items()})
    rows: list[ArtifactReport] = []
    for base, entry in entries:
        label = base["id"]
        if isinstance(entry, str):
            status = "unavailable" if entry.startswith("unavailable:") else "error"
            rows.append(ArtifactReport(**base, status=status, error=entry.removeprefix("unavailable: ")))
            continue
        if progress:
            progress.begin(f"check {label}")
        gates = spec.gates.merged(target_gates.get(label))
        row = _check_artifact(registry, entry, base, ref, data, settings,
                              tolerances.get(entry.precision, Tolerance()), gates)
        if progress:
            progress.end(f"check {label}", row.status == "passed", 0.0, row.error or "; ".join(row.failures))
        rows.append(row)
    _flag_speed(rows)
    passed = [r for r in rows if r.status == "passed" and r.latency_ms]
    fastest = min(passed, key=lambda r: r.latency_ms.p50).id if passed else None  # type: ignore[union-attr]
    exit_code = _exit_code(rows, spec.require_all)
    settings_report = Settings(
        threads=settings.threads, parity_data=data.parity.description, parity_samples=len(data.parity),
        accuracy_data=data.labelled.description if data.labelled else None,
        accuracy_samples=len(data.labelled) if data.labelled else None,
        latency_batches=settings.latency_batches if settings.measure_latency else [],
        warmup=settings.warmup, runs=settings.runs,
        tolerances={p: t.model_dump() for p, t in tolerances.items()}, machine=_machine())
    counts = {s: sum(r.status == s for r in rows) for s in ("passed", "failed", "error", "unavailable")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return Report(convcli_version=__version__, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  exit_code=exit_code, summary=summary, fastest_passed=fastest, source=source_report,
                  settings=settings_report, steps=steps, artifacts=rows)


def check_artifacts(spec: JobSpec, files: list[Path], registry: Registry | None = None,
                    progress: ProgressSink | None = None, command: str = "", debug: bool = False) -> Report:
    """Parity/accuracy/latency of artifacts that already exist (``convcli check``). Nothing is converted;
    the report is written to ``spec.output``."""
    registry = registry or default_registry()
    source = load_source(registry, spec)
    entries: list[tuple[dict[str, Any], Artifact | str]] = []
    precision = spec.targets[0].precisions[0] if spec.targets else "fp32"
    for i, f in enumerate(files):
        if not f.exists():
            raise InputError(f"artifact {f} does not exist")
        fmt = next((fs.name for fs in registry.formats.values() if f.suffix in fs.suffixes and fs.name not in
                    ("torchscript",)), None)
        if fmt is None:
            suffixes = sorted({s for x in registry.formats.values() for s in x.suffixes})
            raise InputError(f"cannot tell the format of {f}", hint=f"known suffixes: {', '.join(suffixes)}")
        siblings = [p for p in f.parent.iterdir() if p.is_file() and p.name.startswith(f.stem + ".")]
        artifact = Artifact(format=fmt, path=f, inputs=source.inputs, output_names=source.output_names,
                            precision=precision, files=sorted(siblings))
        entries.append(({"id": f"{fmt}-{precision}-{i}", "format": fmt, "precision": precision,
                         "chain": str(f)}, artifact))
    data = load_job_data(spec, source)
    threads = spec.latency.threads or os.cpu_count() or 1
    parity_batch, latency_batches = batch_sizes(source, spec)
    settings = EvalSettings(threads, parity_batch, latency_batches, spec.latency.warmup, spec.latency.runs,
                            spec.latency.max_seconds, spec.latency.enabled)
    report = _evaluate(registry, spec, source, entries, [], data, settings, progress)
    report.command = command
    for row in report.artifacts:
        row.path = row.chain
    atomic_write_text(spec.output / "report.json", report.to_json() + "\n")
    return report


def _headline(latency: dict[int, Any]) -> Any:
    return next(iter(latency.values())) if latency else None


def _check_artifact(registry: Registry, artifact: Artifact, base: dict[str, Any], ref: Measurement, data: JobData,
                    settings: EvalSettings, tol: Tolerance, gates: GateSpec) -> ArtifactReport:
    size = artifact.size_bytes
    common = dict(base, path=str(artifact.path.name) if artifact.path else None,
                  files=[f.name for f in artifact.files], size_bytes=size, input_layout=artifact.layout,
                  details=_jsonable(artifact.details))
    try:
        got = measure_model(registry, artifact, data.parity, data.labelled, settings)
    except ConvcliError as exc:
        status = "unavailable" if type(exc).__name__ == "UnavailableError" else "error"
        return ArtifactReport(**common, status=status, error=exc.one_line())
    except Exception as exc:
        return ArtifactReport(**common, status="error", error=f"running the artifact failed: {first_line(exc)}")
    parity = compare_outputs(artifact.output_names or ref_names(ref), ref.outputs, got.outputs, tol)
    failures: list[str] = []
    judged_on_accuracy = artifact.precision == "int8" and got.accuracy is not None
    if not parity.passed and not judged_on_accuracy:
        failures.append(f"parity: {parity.message}")
    drop = None
    if got.accuracy is not None and ref.accuracy is not None:
        drop = ref.accuracy - got.accuracy
        limit = gates.accuracy_limit(artifact.precision)
        if limit is not None and drop > limit + 1e-12:
            failures.append(f"accuracy drop {drop * 100:.2f} points > {limit * 100:.2f}")
    head = _headline(got.latency)
    ref_head = _headline(ref.latency)
    speedup = ref_head.p50 / head.p50 if head and ref_head and head.p50 > 0 else None
    g = gates
    if g.max_abs_err is not None and parity.max_abs_err is not None and parity.max_abs_err > g.max_abs_err:
        failures.append(f"max abs err {parity.max_abs_err:.3g} > {g.max_abs_err:g}")
    if g.min_cosine is not None and parity.cosine_min is not None and parity.cosine_min < g.min_cosine:
        failures.append(f"cosine {parity.cosine_min:.6f} < {g.min_cosine:g}")
    if g.min_top1 is not None and parity.top1_agreement is not None and parity.top1_agreement < g.min_top1:
        failures.append(f"top-1 agreement {parity.top1_agreement:.3f} < {g.min_top1:g}")
    if g.max_p50_ms is not None and head and head.p50 > g.max_p50_ms:
        failures.append(f"p50 {head.p50:.2f} ms > {g.max_p50_ms} ms")
    if g.min_speedup is not None and speedup is not None and speedup < g.min_speedup:
        failures.append(f"speedup {speedup:.2f}x < {g.min_speedup}x")
    if g.max_size_mb is not None and size / 1e6 > g.max_size_mb:
        failures.append(f"size {size / 1e6:.2f} MB > {g.max_size_mb} MB")
    return ArtifactReport(**common, status="failed" if failures else "passed", runner=got.runner, parity=parity,
                          accuracy=got.accuracy, accuracy_drop=drop, latency_ms=head,
                          latency_by_batch={str(b): s for b, s in got.latency.items()},
                          speedup_vs_source=speedup, failures=failures)


def ref_names(ref: Measurement) -> list[str]:
    return [f"output_{i}" for i in range(len(ref.outputs))]


def _flag_speed(rows: list[ArtifactReport]) -> None:
    """Flag 'optimized' artifacts that are slower: than the source, or than a higher-precision sibling."""
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    for row in rows:
        if row.latency_ms is None:
            continue
        if row.speedup_vs_source is not None and row.speedup_vs_source < 1.0:
            row.flags.append(f"slower than the source ({row.speedup_vs_source:.2f}x)")
        for other in rows:
            if (other is not row and other.format == row.format and other.latency_ms is not None
                    and order.get(other.precision, 0) < order.get(row.precision, 0)
                    and other.latency_ms.p50 < row.latency_ms.p50):
                row.flags.append(f"slower than {other.id} ({row.latency_ms.p50:.2f} vs {other.latency_ms.p50:.2f} ms)")


def _exit_code(rows: list[ArtifactReport], require_all: bool) -> int:
    if any(r.status == "error" for r in rows) or (require_all and any(r.status == "unavailable" for r in rows)):
        return EXIT_CONVERSION_FAILED
    if any(r.status == "failed" for r in rows):
        return EXIT_GATE_FAILED
    return EXIT_OK


def _machine() -> dict[str, Any]:
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
        line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8")
        flags = [f for f in wanted if f" {f}" in line]
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": flags, "python": platform.python_version(),
            "platform": platform.platform()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _finalize(report: Report, spec: JobSpec, final: Path, output: Path) -> None:
    """Move artifacts into OUTDIR (replacing earlier runs' folders of the same id), then write the
    manifest and report atomically."""
    output.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    for folder in sorted(p for p in final.iterdir() if p.is_dir()) if final.exists() else []:
        dest = output / folder.name
        if dest.exists():
            trash = output / f".{folder.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, dest)
        for f in sorted(dest.iterdir()):
            outputs[f"{folder.name}/{f.name}"] = sha256_tree(f)
    for row in report.artifacts:
        if row.path:
            row.path = f"{row.id}/{row.path}"
        row.files = [f"{row.id}/{f}" for f in row.files]
    inputs: dict[str, str] = {}
    model_file = spec.source.model.split(":")[0]
    for key, p in (("model", Path(model_file)), ("weights", spec.source.weights), ("parity", spec.data.parity),
                   ("validation", spec.data.validation), ("calibration", spec.data.calibration)):
        if p is not None and Path(p).exists():
            inputs[key] = sha256_tree(Path(p))
    manifest = {
        "schema": MANIFEST_SCHEMA, "convcli_version": __version__, "created": report.created,
        "command": report.command, "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": {m: package_version(m) for m in PACKAGES if package_version(m)},
        "job": spec.model_dump(mode="json"), "inputs_sha256": inputs, "outputs_sha256": outputs,
    }
    import json

    atomic_write_text(output / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    atomic_write_text(output / "report.json", report.to_json() + "\n")
