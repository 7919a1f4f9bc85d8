"""One conversion job, end to end: plan, convert, measure, judge, write.

Data flows one way: JobSpec -> source artifact + plan -> executed steps -> measured artifacts -> Report.
All checks of user input happen before the first conversion (exit 2 with nothing written); artifacts are
built in a temporary folder beside OUTDIR and moved in only when the job is done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from convcli.core.artifact import Artifact
from convcli.core.cache import Cache, default_cache_dir, make_key
from convcli.core.errors import InputError
from convcli.core.executor import ProgressSink, execute
from convcli.core.fsutil import atomic_write_text, sha256_file
from convcli.core.planner import Plan, plan
from convcli.core.registry import Registry, default_registry
from convcli.core.step import StepContext
from convcli.core.tensors import TensorSpec
from convcli.job.data import LazyData, batch_sizes, check_job_data, plan_split
from convcli.job.divergence import ReferenceExport, chain_reference
from convcli.job.evaluation import Entry, Evaluation, machine_fingerprint
from convcli.job.keys import data_key, file_digest, source_key, step_keys
from convcli.job.output import finalize, stage, step_records
from convcli.job.source import (
    LazySource,
    check_declared_outputs,
    expand_auto,
    find_loader,
    target_requests,
    with_source_layout,
)
from convcli.parity.evaluate import EvalSettings
from convcli.recipes.schema import JobSpec
from convcli.reports.model import Report


@dataclass
class JobResult:
    report: Report
    output: Path
    tracebacks: list[str] = field(default_factory=list)


def open_cache(spec: JobSpec) -> Cache:
    return Cache(spec.cache_dir or default_cache_dir(), enabled=spec.cache)


def run_job(spec: JobSpec, registry: Registry | None = None, progress: ProgressSink | None = None,
            command: str = "", debug: bool = False) -> JobResult:
    """Plan, convert (reusing cached steps), measure (reusing cached measurements), judge and report."""
    registry = registry or default_registry()
    cache = open_cache(spec)
    loader = find_loader(registry, spec)
    spec = with_source_layout(registry, spec, loader)
    spec, auto_note = expand_auto(registry, spec)  # the manifest's job then lists the precisions auto became
    requests = target_requests(spec)
    skip = set() if spec.simplify else {p.name for p in registry.passes.values() if p.default_for_target}
    the_plan = plan(registry, loader.format, requests, spec.step_options, skip)
    for p in (spec.data.parity, spec.data.validation, spec.data.calibration):
        if p is not None and not Path(p).exists():
            raise InputError(f"data path {p} does not exist")
    undecided = require_calibration(the_plan, spec, None)
    # A step that tunes on the labelled set gets only its tuning part; accuracy is measured on the rest.
    split = plan_split(spec, any(s.step.data_inputs(s.options)[1] for s in the_plan.steps.values()))
    split_key = [split.fraction, split.rule] if split is not None else None
    src_key = source_key(spec, loader)
    if spec.prune is not None:
        src_key = make_key(src_key, "prune", spec.prune.model_dump(), file_digest(spec.data.train))
    source = LazySource(registry, spec, cache, src_key)
    inputs, outputs = source.signature()
    check_declared_outputs(spec, outputs)
    check_job_data(spec, inputs)
    if undecided:
        require_calibration(the_plan, spec, inputs)
    threads = spec.latency.threads or os.cpu_count() or 1
    parity_batch, latency_batches = batch_sizes(inputs, spec)
    settings = EvalSettings(threads, parity_batch, latency_batches, spec.latency.warmup, spec.latency.runs,
                            spec.latency.max_seconds, spec.latency.enabled)
    calib_key = file_digest(spec.data.calibration) if spec.data.calibration else None
    calib_key = make_key("calibration", calib_key, spec.data.calibration_samples) if calib_key else None
    valid_key = make_key("validation", file_digest(spec.data.validation), spec.data.validation_samples,
                         spec.data.preprocess.model_dump(), split_key)
    # Declared output kinds decide how steps check themselves (which exporter is kept): part of every step key.
    keys = step_keys(the_plan, make_key("kinds", src_key, spec.outputs) if spec.outputs else src_key, calib_key,
                     valid_key)
    data = LazyData(spec, inputs, split)

    output = spec.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.convcli-", dir=output.parent))
    try:
        ctx = StepContext(workdir=workdir, threads=threads, debug=debug,
                          cache_dir=cache.root if cache.enabled else None,
                          calibration_source=lambda: data.get().calibration,
                          validation_source=data.for_steps, output_kinds=dict(spec.outputs))
        outcomes = execute(the_plan, source.get, workdir / "steps", ctx, progress, cache, keys)
        staged = stage(the_plan, outcomes, source, workdir / "final")
        measure_base = make_key("measure", data_key(spec), split_key, settings.__dict__, spec.tolerances,
                                spec.outputs, machine_fingerprint(settings.threads))
        entries = []
        onnx_source = Path(spec.source.model) if loader.format == "onnx" else None
        notes = {sid: str(o.artifact.details["chain_note"]) for sid, o in outcomes.items()
                 if o.artifact is not None and o.artifact.details.get("chain_note")}
        for t in the_plan.targets:
            k = keys.get(t.final_step) if t.final_step else src_key
            entries.append(Entry(t.request.label, t.request.format, t.request.precision,
                                 the_plan.chain_text(t, notes),
                                 staged[t.request.label],
                                 make_key(measure_base, k, t.request.label, staged_digest(staged[t.request.label])),
                                 chain_reference(the_plan, t, outcomes, onnx_source)))
        evaluation = Evaluation(registry, spec, source, data, settings, cache, progress, outputs)
        evaluation.repro_root = workdir / "final"
        evaluation.reference_export = ReferenceExport(registry, source.get, threads)  # rows without an ONNX chain
        try:
            report = evaluation.report(entries, step_records(the_plan, outcomes),
                                       make_key(measure_base, src_key, "source"))
        finally:
            evaluation.reference_export.close()
        report.command = command
        report.settings.precision_auto = auto_note
        report.cache = {"dir": str(cache.root), "enabled": cache.enabled,
                        "steps_cached": sum(o.cached for o in outcomes.values()),
                        "steps_run": sum(not o.cached and not o.skipped for o in outcomes.values()),
                        "corrupt_entries_rebuilt": len(cache.rebuilt)}
        finalize(report, spec, workdir / "final", output)
        tracebacks = [o.traceback for o in outcomes.values() if o.traceback]
        return JobResult(report, output, tracebacks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_calibration(spec: JobSpec, registry: Registry | None = None) -> None:
    """The planning-time calibration check alone (no model loaded): ``convcli run`` asks it of every recipe
    before running any, so a batch does not stop half-way on a missing ``data.calibration``."""
    registry = registry or default_registry()
    loader = find_loader(registry, spec)
    require_calibration(plan(registry, loader.format, target_requests(spec, registry), spec.step_options), spec, None)


def require_calibration(the_plan: Plan, spec: JobSpec, inputs: list[TensorSpec] | None) -> bool:
    """InputError (exit 2, before any conversion) when an int8 target's planned steps need calibration data and
    the job has none: int8 is never calibrated on random data, and failing after every other target was built
    would hide a missing flag behind minutes of work. Returns whether a step could not tell without the source's
    ``inputs`` (then call again once they are known)."""
    if spec.data.calibration is not None:
        return False
    needing: list[str] = []
    undecided = False
    for target in the_plan.targets:
        if target.unavailable or target.request.precision != "int8":
            continue
        for sid in target.chain:
            planned = the_plan.steps[sid]
            need = planned.step.needs_calibration(planned.options, inputs)
            undecided = undecided or need is None
            if need:
                needing.append(f"{target.request.label} ({planned.step.name})")
                break
    if needing:
        verb = "needs" if len(needing) == 1 else "need"
        raise InputError(f"--calibration: {', '.join(needing)} {verb} calibration data and the job has none",
                         hint="pass --calibration (recipe: data.calibration): a folder of images, .npy for a "
                              "model with one input, or .npz keyed by input name; int8 is never calibrated on "
                              "random data")
    return undecided


def staged_digest(artifact: Artifact | str) -> str | None:
    """The staged files' content in the measurement key: a rebuilt step (a dropped cache entry, a non-deterministic
    build) must be measured again, never reported with the numbers of the files it replaced."""
    if isinstance(artifact, str):
        return None
    return make_key(*[sha256_file(f) for f in sorted(artifact.files)])


def check_artifacts(spec: JobSpec, files: list[Path], registry: Registry | None = None,
                    progress: ProgressSink | None = None, command: str = "", debug: bool = False,
                    diagnose_all: bool = False) -> Report:
    """Parity/accuracy/latency of artifacts that already exist (``convcli check``). Nothing is converted or
    cached; the report is written to ``spec.output``. ``diagnose_all`` (``convcli debug``): locate the divergence
    of every measured row, not only of those that fail parity."""
    registry = registry or default_registry()
    cache = Cache(Path(tempfile.gettempdir()), enabled=False)
    loader = find_loader(registry, spec)
    spec = with_source_layout(registry, spec, loader)
    source = LazySource(registry, spec, cache, source_key(spec, loader))
    artifact_src = source.get()
    check_declared_outputs(spec, artifact_src.output_names)
    check_job_data(spec, artifact_src.inputs)
    precision = spec.targets[0].precisions[0] if spec.targets else "fp32"
    if precision == "auto":
        raise InputError("check judges existing files at one precision; 'auto' is for convert",
                         hint="give the precision the files were built at, e.g. --precision fp16")
    entries: list[Entry] = []
    for i, f in enumerate(files):
        if not f.exists():
            raise InputError(f"artifact {f} does not exist")
        fmt = next((fs.name for fs in registry.formats.values() if f.suffix in fs.suffixes and fs.name not in
                    ("torchscript",)), None)
        if fmt is None:
            suffixes = sorted({s for x in registry.formats.values() for s in x.suffixes})
            raise InputError(f"cannot tell the format of {f}", hint=f"known suffixes: {', '.join(suffixes)}")
        siblings = [p for p in f.parent.iterdir() if p.is_file() and p.name.startswith(f.stem + ".")]
        artifact = Artifact(format=fmt, path=f, inputs=artifact_src.inputs, output_names=artifact_src.output_names,
                            precision=precision, files=sorted(siblings))
        entries.append(Entry(f"{fmt}-{precision}-{i}", fmt, precision, str(f), artifact, ""))
    threads = spec.latency.threads or os.cpu_count() or 1
    parity_batch, latency_batches = batch_sizes(artifact_src.inputs, spec)
    settings = EvalSettings(threads, parity_batch, latency_batches, spec.latency.warmup, spec.latency.runs,
                            spec.latency.max_seconds, spec.latency.enabled)
    evaluation = Evaluation(registry, spec, source, LazyData(spec, artifact_src.inputs), settings, cache, progress,
                            artifact_src.output_names)
    evaluation.repro_root = spec.output
    evaluation.reference_export = ReferenceExport(registry, artifact_src, threads)
    evaluation.diagnose_all = diagnose_all
    try:
        report = evaluation.report(entries, [], "")
    finally:
        evaluation.reference_export.close()
    report.command = command
    for row in report.artifacts:
        row.path = row.chain
    best = report.best_artifact
    if best is not None:  # check writes no artifacts: best names the file it was given, and no link is made
        best.path = next(r.path for r in report.artifacts if r.id == best.id)
        best.folder = str(Path(best.path).parent) if best.path else ""
    atomic_write_text(spec.output / "report.json", report.to_json() + "\n")
    return report


