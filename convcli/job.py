"""One conversion job, end to end: load the source, plan, convert, run, compare, report.

Data flows one way: JobSpec -> source artifact + plan -> executed steps -> measured artifacts -> Report.
All checks of user input happen before the first conversion (exit 2 with nothing written); artifacts are
built in a temporary folder beside OUTDIR and moved in only when the job is done.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
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
from convcli.core.cache import Cache, default_cache_dir, make_key
from convcli.core.errors import (
    EXIT_CONVERSION_FAILED,
    EXIT_GATE_FAILED,
    EXIT_OK,
    ConvcliError,
    InputError,
    UnavailableError,
    first_line,
)
from convcli.core.executor import ProgressSink, StepOutcome, execute
from convcli.core.fsutil import atomic_write_text, sha256_tree
from convcli.core.lazy import package_version
from convcli.core.planner import Plan, TargetRequest, plan
from convcli.core.registry import Registry, default_registry
from convcli.core.source import SourceLoader, SourceRequest
from convcli.core.step import StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.compare import DEFAULT_TOLERANCES, Tolerance, compare_outputs
from convcli.parity.data import DataSet, load_data, load_images, random_data
from convcli.parity.evaluate import EvalSettings, Measurement, measure_model
from convcli.recipes.schema import GateSpec, JobSpec
from convcli.reports.model import ArtifactReport, Report, Settings, SourceReport, Status, StepRecord

MANIFEST_SCHEMA = "convcli.manifest/v1"
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "onnxscript", "openvino", "nncf", "ncnn",
            "pnnx", "tensorflow", "ai_edge_litert", "onnx2tf", "tf2onnx", "numpy", "tensorrt")


def find_loader(registry: Registry, spec: JobSpec) -> type[SourceLoader]:
    """The loader that recognises the source (InputError when none does); nothing is loaded yet."""
    text = spec.source.model
    loaders = sorted((s for s in registry.sources.values() if s.matches(text)), key=lambda s: -s.priority)
    if not loaders:
        raise InputError(f"cannot tell what kind of model '{text}' is",
                         hint="give file.py:factory, package.module:factory, a .onnx/.pt/.pt2/.keras/.h5 file or a "
                              "SavedModel folder")
    loader = loaders[0]
    avail = loader.availability()
    if not avail.available:
        raise InputError(f"{text}: {loader.name} sources need {avail.reason}")
    if spec.source.weights is not None and loader.format != "pytorch":
        raise InputError(f"--weights {spec.source.weights}: weights go with a file.py:factory source, "
                         f"not a {loader.format} file")
    return loader


def with_source_layout(registry: Registry, spec: JobSpec, loader: type[SourceLoader]) -> JobSpec:
    """Image data laid out as the source's format usually takes it (NHWC for TensorFlow sources), unless the
    job sets ``data.preprocess.layout`` itself."""
    pre = spec.data.preprocess
    fmt = registry.formats.get(loader.format)
    usual = fmt.layout if fmt is not None else pre.layout
    if "layout" in pre.model_fields_set or usual == pre.layout:
        return spec
    data = spec.data.model_copy(update={"preprocess": pre.model_copy(update={"layout": usual})})
    return spec.model_copy(update={"data": data})


def load_source(registry: Registry, spec: JobSpec) -> Artifact:
    """Find the loader and load the source model."""
    loader = find_loader(registry, spec)
    return loader().load(SourceRequest(spec.source.model, spec.source.input_specs(), spec.source.weights))


class LazySource:
    """The source model, loaded only when a step or a measurement really needs it. Its input/output
    description is kept in the cache, so a fully cached re-run never imports the model's framework."""

    def __init__(self, registry: Registry, spec: JobSpec, cache: Cache, key: str) -> None:
        self.registry, self.spec, self.cache, self.key = registry, spec, cache, key
        self.loader = find_loader(registry, spec)
        self._artifact: Artifact | None = None
        self.original: Artifact | None = None  # the model before pruning, when the job prunes

    def get(self) -> Artifact:
        if self._artifact is None:
            loaded = self.loader().load(
                SourceRequest(self.spec.source.model, self.spec.source.input_specs(), self.spec.source.weights,
                              threads=self.spec.latency.threads or os.cpu_count() or 1))
            self._artifact = self._pruned(loaded) if self.spec.prune is not None else loaded
            self.cache.store_json("source", self.key, {
                "inputs": [s.model_dump() for s in self._artifact.inputs],
                "outputs": self._artifact.output_names, "format": self._artifact.format})
        return self._artifact

    def _pruned(self, loaded: Artifact) -> Artifact:
        """Prune the source (recipe key ``prune``); the original is kept for the before/after comparison."""
        from convcli.passes.prune_pytorch import PrunePytorch

        if loaded.format != "pytorch":
            raise InputError(f"prune: needs a PyTorch factory source, not a {loaded.format} file")
        self.original = loaded
        d = self.spec.data
        train = load_images(d.train, loaded.inputs, d.preprocess) if d.train is not None else None
        ctx = StepContext(workdir=Path(tempfile.gettempdir()))
        return PrunePytorch(self.spec.prune).run(loaded, ctx, train=train)

    def signature(self) -> tuple[list[TensorSpec], list[str]]:
        cached = self.cache.load_json("source", self.key)
        if cached is not None:
            return [TensorSpec.model_validate(s) for s in cached["inputs"]], list(cached["outputs"])
        artifact = self.get()
        return artifact.inputs, artifact.output_names


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


def load_job_data(spec: JobSpec, inputs: list[TensorSpec]) -> JobData:
    d = spec.data
    parity = (load_data(d.parity, inputs, d.preprocess, d.samples) if d.parity
              else random_data(inputs, d.samples, d.seed))
    labelled = None
    if d.validation is not None:
        labelled = load_images(d.validation, inputs, d.preprocess, d.validation_samples)
        if labelled.labels is None:
            raise InputError(f"validation data {d.validation} has no labels",
                             hint="use class sub-folders or a CSV of file,label")
    calibration = (load_data(d.calibration, inputs, d.preprocess, d.calibration_samples)
                   if d.calibration else None)
    return JobData(parity, labelled, calibration)


def batch_sizes(inputs: list[TensorSpec], spec: JobSpec) -> tuple[int, list[int]]:
    """Parity batch and latency batches: a static first dim is the only size the model takes."""
    first = inputs[0].shape[0] if inputs and inputs[0].shape else None
    static = first.size if first is not None and not first.dynamic else None
    if static is not None:
        for b in spec.latency.batches or []:
            if b != static:
                raise InputError(f"latency batch {b}: the model's batch dimension is fixed to {static}")
        return static, [static]
    return min(spec.data.samples, 16), list(spec.latency.batches or [1])


# -- cache keys ------------------------------------------------------------------------------

def _file_digest(path: Path | None) -> str | None:
    return sha256_tree(path) if path is not None and path.exists() else None


def source_key(spec: JobSpec, loader: type[SourceLoader]) -> str:
    """From file contents only (no model import): the model file (and, for a factory, every .py file beside
    it, since it may import them), weights and the input description."""
    text = spec.source.model
    files: dict[str, str | None] = {}
    target = text.rpartition(":")[0] if ":" in text else text
    if target.endswith(".py") or Path(target).exists():
        path = Path(target)
        files["model"] = _file_digest(path)
        if path.suffix == ".py" and path.parent.is_dir():
            for py in sorted(path.parent.glob("*.py")):
                files[py.name] = _file_digest(py)
    else:
        found = importlib.util.find_spec(target.split(".")[0]) if target else None
        origin = found.origin if found else None
        files["module"] = _file_digest(Path(origin)) if origin else target
    return make_key("source", loader.name, text, files, _file_digest(spec.source.weights),
                    spec.source.inputs, package_version("torch"))


def data_key(spec: JobSpec) -> str:
    d = spec.data
    parity = _file_digest(d.parity) if d.parity else ("random", d.seed)
    return make_key("data", parity, d.samples, _file_digest(d.validation), d.validation_samples,
                    d.preprocess.model_dump())


def step_keys(the_plan: Plan, root_key: str, calibration_key: str | None,
              validation_key: str | None = None) -> dict[str, str]:
    keys: dict[str, str] = {}
    for sid, planned in the_plan.steps.items():
        upstream = root_key if planned.input_id == "source" else keys[planned.input_id]
        step = planned.step
        versions = {m: package_version(m) for m in step.requires}
        calibration, validation = step.data_inputs(planned.options)
        keys[sid] = make_key("step", upstream, step.name, planned.options.model_dump(mode="json"), versions,
                             calibration_key if calibration else None, validation_key if validation else None)
    return keys


# -- the job -----------------------------------------------------------------------------------

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
    requests = target_requests(spec)
    skip = set() if spec.simplify else {p.name for p in registry.passes.values() if p.default_for_target}
    the_plan = plan(registry, loader.format, requests, spec.step_options, skip)
    for p in (spec.data.parity, spec.data.validation, spec.data.calibration):
        if p is not None and not Path(p).exists():
            raise InputError(f"data path {p} does not exist")
    src_key = source_key(spec, loader)
    if spec.prune is not None:
        src_key = make_key(src_key, "prune", spec.prune.model_dump(), _file_digest(spec.data.train))
    source = LazySource(registry, spec, cache, src_key)
    inputs, outputs = source.signature()
    threads = spec.latency.threads or os.cpu_count() or 1
    parity_batch, latency_batches = batch_sizes(inputs, spec)
    settings = EvalSettings(threads, parity_batch, latency_batches, spec.latency.warmup, spec.latency.runs,
                            spec.latency.max_seconds, spec.latency.enabled)
    calib_key = _file_digest(spec.data.calibration) if spec.data.calibration else None
    calib_key = make_key("calibration", calib_key, spec.data.calibration_samples) if calib_key else None
    valid_key = make_key("validation", _file_digest(spec.data.validation), spec.data.validation_samples,
                         spec.data.preprocess.model_dump())
    keys = step_keys(the_plan, src_key, calib_key, valid_key)
    data = LazyData(spec, inputs)

    output = spec.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.convcli-", dir=output.parent))
    try:
        ctx = StepContext(workdir=workdir, threads=threads, debug=debug,
                          calibration_source=lambda: data.get().calibration,
                          validation_source=lambda: data.get().labelled)
        outcomes = execute(the_plan, source.get, workdir / "steps", ctx, progress, cache, keys)
        staged = _stage(the_plan, outcomes, source, workdir / "final")
        measure_base = make_key("measure", data_key(spec), settings.__dict__, spec.tolerances)
        entries = []
        for t in the_plan.targets:
            k = keys.get(t.final_step) if t.final_step else src_key
            entries.append(Entry(t.request.label, t.request.format, t.request.precision, the_plan.chain_text(t),
                                 staged[t.request.label], make_key(measure_base, k, t.request.label)))
        evaluation = Evaluation(registry, spec, source, data, settings, cache, progress, outputs)
        report = evaluation.report(entries, _step_records(the_plan, outcomes),
                                   make_key(measure_base, src_key, "source"))
        report.command = command
        report.cache = {"dir": str(cache.root), "enabled": cache.enabled,
                        "steps_cached": sum(o.cached for o in outcomes.values()),
                        "steps_run": sum(not o.cached and not o.skipped for o in outcomes.values()),
                        "corrupt_entries_rebuilt": len(cache.rebuilt)}
        _finalize(report, spec, workdir / "final", output)
        tracebacks = [o.traceback for o in outcomes.values() if o.traceback]
        return JobResult(report, output, tracebacks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class LazyData:
    """Parity, labelled and calibration data, read on first use (a fully cached run never reads it)."""

    def __init__(self, spec: JobSpec, inputs: list[TensorSpec]) -> None:
        self.spec, self.inputs = spec, inputs
        self._data: JobData | None = None

    def get(self) -> JobData:
        if self._data is None:
            self._data = load_job_data(self.spec, self.inputs)
        return self._data


@dataclass
class Entry:
    """One report row to produce: an artifact to measure, or the error line of a target that failed."""

    id: str
    format: str
    precision: str
    chain: str
    artifact: Artifact | str
    key: str


def _stage(the_plan: Plan, outcomes: dict[str, StepOutcome], source: LazySource,
           final: Path) -> dict[str, Artifact | str]:
    """Copy each target's files into final/<id>/ ; a failed target maps to its error line."""
    staged: dict[str, Artifact | str] = {}
    for target in the_plan.targets:
        label = target.request.label
        if target.unavailable:
            staged[label] = f"unavailable: {target.unavailable}"
            continue
        artifact = outcomes[target.final_step].artifact if target.final_step else source.get()
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


def _step_records(the_plan: Plan, outcomes: dict[str, StepOutcome]) -> list[StepRecord]:
    records = []
    for sid, planned in the_plan.steps.items():
        o = outcomes[sid]
        records.append(StepRecord(id=sid, name=planned.step.name, source=planned.step.source,
                                  target=planned.step.target,
                                  status="skipped" if o.skipped else ("error" if o.error else "ok"),
                                  cached=o.cached, seconds=round(o.seconds, 3),
                                  options=planned.options.model_dump(mode="json"),
                                  details=_jsonable(o.details), error=o.error))
    return records


class Evaluation:
    """Measures the source and each artifact on the same data (or reuses cached measurements), then judges
    every artifact against its tolerances and gates. Judging always runs: changing a gate needs no re-run."""

    def __init__(self, registry: Registry, spec: JobSpec, source: LazySource, data: LazyData,
                 settings: EvalSettings, cache: Cache, progress: ProgressSink | None, outputs: list[str]) -> None:
        self.registry, self.spec, self.source, self.data = registry, spec, source, data
        self.settings, self.cache, self.progress, self.outputs = settings, cache, progress, outputs
        self.tolerances = {p: spec.tolerances.get(p, t) for p, t in DEFAULT_TOLERANCES.items()}
        self._ref: Measurement | None = None

    def _begin(self, label: str) -> None:
        if self.progress:
            self.progress.begin(label)

    def _end(self, label: str, ok: bool, note: str = "") -> None:
        if self.progress:
            self.progress.end(label, ok, 0.0, note)

    def reference(self) -> Measurement:
        """The source's outputs, accuracy and latency, measured once per run when anything needs them."""
        if self._ref is None:
            artifact = self.source.get()
            data = self.data.get()
            label = f"run source ({artifact.format})"
            self._begin(label)
            try:
                self._ref = measure_model(self.registry, artifact, data.parity, data.labelled, self.settings)
            except ConvcliError:
                raise
            except Exception as exc:
                raise InputError(f"the source model fails on the parity data: {first_line(exc)}") from exc
            self._end(label, True)
        return self._ref

    def source_report(self, key: str) -> SourceReport:
        cached = self.cache.load_json("measure", key)
        if cached is not None:
            return SourceReport.model_validate(cached)
        ref = self.reference()
        artifact = self.source.get()
        size = artifact.size_bytes or None if (artifact.path is not None or artifact.files) else None
        params = None
        if artifact.obj is not None and hasattr(artifact.obj, "parameters"):
            params = int(sum(p.numel() for p in artifact.obj.parameters()))
        pruning = self.pruning_summary(ref, artifact) if self.source.original is not None else None
        report = SourceReport(
            pruning=pruning, spec=self.spec.source.model, format=artifact.format,
            inputs=[s.text() for s in artifact.inputs],
            outputs=artifact.output_names, runner=ref.runner, accuracy=ref.accuracy, size_bytes=size,
            accuracy_samples=len(labelled) if (labelled := self.data.get().labelled) is not None else None,
            params=params, latency_ms=_headline(ref.latency),
            latency_by_batch={str(b): s for b, s in ref.latency.items()})
        self.cache.store_json("measure", key, report.model_dump(mode="json"))
        return report

    def pruning_summary(self, ref: Measurement, pruned: Artifact) -> dict[str, Any]:
        """Parameters, MACs, weight size, latency and accuracy before and after pruning, measured side by side."""
        assert self.source.original is not None
        data = self.data.get()
        self._begin("run unpruned source")
        before = measure_model(self.registry, self.source.original, data.parity, data.labelled, self.settings)
        self._end("run unpruned source", True)
        info = dict(pruned.details.get("prune", {}))
        head_before, head_after = _headline(before.latency), _headline(ref.latency)
        info["before"] = {"params": info.get("params_before"), "macs": info.get("macs_before"),
                          "state_dict_bytes": info.get("state_dict_bytes_before"), "accuracy": before.accuracy,
                          "latency_ms": head_before.model_dump() if head_before else None}
        info["after"] = {"params": info.get("params_after"), "macs": info.get("macs_after"),
                         "state_dict_bytes": info.get("state_dict_bytes_after"), "accuracy": ref.accuracy,
                         "latency_ms": head_after.model_dump() if head_after else None}
        return info

    def measure_entry(self, entry: Entry) -> ArtifactReport:
        """The row with measurements only (status passed/error/unavailable; gates not applied yet)."""
        base: dict[str, Any] = dict(id=entry.id, format=entry.format, precision=entry.precision, chain=entry.chain)
        if isinstance(entry.artifact, str):
            status: Status = "unavailable" if entry.artifact.startswith("unavailable:") else "error"
            return ArtifactReport(**base, status=status, error=entry.artifact.removeprefix("unavailable: "))
        cached = self.cache.load_json("measure", entry.key)
        if cached is not None:
            row = ArtifactReport.model_validate(cached)
            row.cached = True
            self._end(f"measure {entry.id}", True, "cached")
            return row
        artifact = entry.artifact
        common: dict[str, Any] = dict(base, path=str(artifact.path.name) if artifact.path else None,
                      files=[f.name for f in artifact.files], size_bytes=artifact.size_bytes,
                      input_layout=artifact.layout, details=_jsonable(artifact.details))
        ref = self.reference()
        data = self.data.get()
        self._begin(f"measure {entry.id}")
        try:
            got = measure_model(self.registry, artifact, data.parity, data.labelled, self.settings)
        except ConvcliError as exc:
            row = ArtifactReport(**common, status="unavailable" if isinstance(exc, UnavailableError) else "error",
                                 error=exc.one_line())
            self._end(f"measure {entry.id}", False, row.error or "")
            return row
        except Exception as exc:
            row = ArtifactReport(**common, status="error", error=f"running the artifact failed: {first_line(exc)}")
            self._end(f"measure {entry.id}", False, row.error or "")
            return row
        tol = self.tolerances.get(artifact.precision, Tolerance())
        names = artifact.output_names or self.outputs
        parity = compare_outputs(names, ref.outputs, got.outputs, tol)
        row = ArtifactReport(**common, status="passed", runner=got.runner, parity=parity, accuracy=got.accuracy,
                             latency_ms=_headline(got.latency),
                             latency_by_batch={str(b): s for b, s in got.latency.items()})
        self.cache.store_json("measure", entry.key, row.model_dump(mode="json"))
        self._end(f"measure {entry.id}", True)  # the verdict (tolerances, gates) is the report's
        return row

    def report(self, entries: list[Entry], steps: list[StepRecord], source_key: str) -> Report:
        rows = [self.measure_entry(e) for e in entries]
        src = self.source_report(source_key)
        target_gates = {f"{t.format}-{p}" + (f"@{t.via}" if t.via else ""): t.gates
                        for t in self.spec.targets for p in t.precisions if t.gates}
        for row in rows:
            judge(row, src, self.spec.gates.merged(target_gates.get(row.id)))
        _flag_speed(rows)
        passed = [r for r in rows if r.status == "passed" and r.latency_ms]
        fastest = min(passed, key=lambda r: r.latency_ms.p50).id if passed else None  # type: ignore[union-attr]
        exit_code = _exit_code(rows, self.spec.require_all)
        d = self.spec.data
        parity_desc = str(d.parity) if d.parity else f"random (seed {d.seed}, {d.samples} samples)"
        settings_report = Settings(
            threads=self.settings.threads, parity_data=parity_desc, parity_samples=d.samples,
            accuracy_data=str(d.validation) if d.validation else None, accuracy_samples=src.accuracy_samples,
            latency_batches=self.settings.latency_batches if self.settings.measure_latency else [],
            warmup=self.settings.warmup, runs=self.settings.runs,
            tolerances={p: t.model_dump() for p, t in self.tolerances.items()}, machine=_machine())
        counts = {s: sum(r.status == s for r in rows) for s in ("passed", "failed", "error", "unavailable")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return Report(convcli_version=__version__, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      name=self.spec.name, exit_code=exit_code, summary=summary, fastest_passed=fastest, source=src,
                      settings=settings_report, steps=steps, artifacts=rows)


def judge(row: ArtifactReport, src: SourceReport, gates: GateSpec) -> None:
    """Apply parity tolerances and gates to a measured row: sets status, failures, accuracy drop, speedup."""
    if row.status not in ("passed", "failed"):
        return
    failures: list[str] = []
    parity = row.parity
    judged_on_accuracy = row.precision == "int8" and row.accuracy is not None
    if parity is not None and not parity.passed and not judged_on_accuracy:
        failures.append(f"parity: {parity.message}")
    row.accuracy_drop = None
    if row.accuracy is not None and src.accuracy is not None:
        row.accuracy_drop = src.accuracy - row.accuracy
        limit = gates.accuracy_limit(row.precision)
        if limit is not None and row.accuracy_drop > limit + 1e-12:
            failures.append(f"accuracy drop {row.accuracy_drop * 100:.2f} points > {limit * 100:.2f}")
    head, ref_head = row.latency_ms, src.latency_ms
    row.speedup_vs_source = ref_head.p50 / head.p50 if head and ref_head and head.p50 > 0 else None
    g = gates
    if parity is not None:
        if g.max_abs_err is not None and parity.max_abs_err is not None and parity.max_abs_err > g.max_abs_err:
            failures.append(f"max abs err {parity.max_abs_err:.3g} > {g.max_abs_err:g}")
        if g.min_cosine is not None and parity.cosine_min is not None and parity.cosine_min < g.min_cosine:
            failures.append(f"cosine {parity.cosine_min:.6f} < {g.min_cosine:g}")
        if g.min_top1 is not None and parity.top1_agreement is not None and parity.top1_agreement < g.min_top1:
            failures.append(f"top-1 agreement {parity.top1_agreement:.3f} < {g.min_top1:g}")
    if g.max_p50_ms is not None and head and head.p50 > g.max_p50_ms:
        failures.append(f"p50 {head.p50:.2f} ms > {g.max_p50_ms} ms")
    if g.min_speedup is not None and row.speedup_vs_source is not None and row.speedup_vs_source < g.min_speedup:
        failures.append(f"speedup {row.speedup_vs_source:.2f}x < {g.min_speedup}x")
    if g.max_size_mb is not None and row.size_bytes is not None and row.size_bytes / 1e6 > g.max_size_mb:
        failures.append(f"size {row.size_bytes / 1e6:.2f} MB > {g.max_size_mb} MB")
    row.failures = failures
    row.status = "failed" if failures else "passed"


def check_artifacts(spec: JobSpec, files: list[Path], registry: Registry | None = None,
                    progress: ProgressSink | None = None, command: str = "", debug: bool = False) -> Report:
    """Parity/accuracy/latency of artifacts that already exist (``convcli check``). Nothing is converted or
    cached; the report is written to ``spec.output``."""
    registry = registry or default_registry()
    cache = Cache(Path(tempfile.gettempdir()), enabled=False)
    loader = find_loader(registry, spec)
    spec = with_source_layout(registry, spec, loader)
    source = LazySource(registry, spec, cache, source_key(spec, loader))
    artifact_src = source.get()
    precision = spec.targets[0].precisions[0] if spec.targets else "fp32"
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
    report = evaluation.report(entries, [], "")
    report.command = command
    for row in report.artifacts:
        row.path = row.chain
    atomic_write_text(spec.output / "report.json", report.to_json() + "\n")
    return report


def _headline(latency: dict[int, Any]) -> Any:
    return next(iter(latency.values())) if latency else None


SLOWER_MARGIN = 1.10  # latency differences under 10% are noise on a shared machine, not a finding


def _flag_speed(rows: list[ArtifactReport]) -> None:
    """Flag 'optimized' artifacts that are slower: than the source, or than a higher-precision sibling of the
    same format (int8 slower than fp32 is the classic). Only differences above SLOWER_MARGIN count."""
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    for row in rows:
        if row.latency_ms is None:
            continue
        if row.speedup_vs_source is not None and row.speedup_vs_source * SLOWER_MARGIN < 1.0:
            row.flags.append(f"slower than the source ({row.speedup_vs_source:.2f}x)")
        for other in rows:
            if (other is not row and other.format == row.format and other.latency_ms is not None
                    and order.get(other.precision, 0) < order.get(row.precision, 0)
                    and other.latency_ms.p50 * SLOWER_MARGIN < row.latency_ms.p50):
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
