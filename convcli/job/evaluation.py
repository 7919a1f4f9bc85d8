"""Measuring: the source and each artifact run on the same data (or cached measurements are reused), then every
row is judged (``judge.py``) and the report assembled."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import platform
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convcli import __version__
from convcli.core.artifact import Artifact
from convcli.core.cache import Cache
from convcli.core.errors import ConvcliError, InputError, UnavailableError, first_line
from convcli.core.executor import ProgressSink
from convcli.core.registry import Registry
from convcli.core.runner import Session
from convcli.job.data import LazyData
from convcli.job.divergence import ReferenceExport, fails_parity
from convcli.job.judge import exit_code, flag_speed, judge, same_run, within_noise
from convcli.job.output import jsonable
from convcli.job.source import LazySource
from convcli.parity.compare import DEFAULT_TOLERANCES, KindChoice, assume_kind
from convcli.parity.data import LabelledSplit
from convcli.parity.divergence import Divergence
from convcli.parity.evaluate import (
    EvalSettings,
    Measurement,
    evaluate_outputs,
    open_session,
    run_batches_float64,
    time_sessions,
)
from convcli.parity.latency import LatencyStats
from convcli.parity.rounding import compare_with_rounding_floor
from convcli.recipes.schema import JobSpec
from convcli.reports.model import (
    ArtifactReport,
    BestArtifact,
    Measured,
    Report,
    Settings,
    SourceReport,
    Status,
    StepRecord,
)


@dataclass
class Entry:
    """One report row to produce: an artifact to measure, or the error line of a target that failed."""

    id: str
    format: str
    precision: str
    chain: str
    artifact: Artifact | str
    key: str
    reference: Path | None = None  # the fp32 ONNX its chain started from (divergence localization)


@dataclass
class Pending:
    """A row whose outputs are judged and whose session stays open until it has been timed with the others."""

    row: ArtifactReport
    key: str
    session: Session


class Evaluation:
    """Measures the source and each artifact on the same data (or reuses cached measurements), then judges
    every artifact against its tolerances and gates. Judging always runs: changing a gate needs no re-run.

    Outputs and accuracy are computed one model at a time; latency is timed afterwards for the source and every
    artifact measured in this run together, in round-robin rounds (``parity.evaluate.time_sessions``). Each
    measured row stores the source latency from those same rounds, so its speedup is a like-for-like pair; a
    cached row keeps the pair it was measured with, and says from which run (``measured``)."""

    def __init__(self, registry: Registry, spec: JobSpec, source: LazySource, data: LazyData,
                 settings: EvalSettings, cache: Cache, progress: ProgressSink | None, outputs: list[str]) -> None:
        self.registry, self.spec, self.source, self.data = registry, spec, source, data
        self.settings, self.cache, self.progress, self.outputs = settings, cache, progress, outputs
        self.tolerances = {p: spec.tolerances.get(p, t) for p, t in DEFAULT_TOLERANCES.items()}  # merged in JobSpec
        self.run_id = new_run_id()
        self._ref: Measurement | None = None
        self._ref_session: Session | None = None
        self._ref64: tuple[list[np.ndarray] | None] | None = None  # computed once, when an fp32 row needs it
        self._open: list[Session] = []
        self._worst: dict[str, list[int]] = {}  # per row: the parity samples to trace if it fails
        self.repro_root: Path | None = None  # where rows' divergence/ folders go (OUTDIR or its staging folder)
        self.reference_export: ReferenceExport | None = None  # check/debug: the source exported on demand
        self.diagnose_all = False  # debug: every measured row, not only those failing parity

    def _begin(self, label: str) -> None:
        if self.progress:
            self.progress.begin(label)

    def _end(self, label: str, ok: bool, note: str = "") -> None:
        if self.progress:
            self.progress.end(label, ok, 0.0, note)

    def measured(self) -> Measured:
        """This run's provenance stamp, put on every row it measures."""
        m = machine()
        return Measured(run_id=self.run_id, at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        machine=machine_fingerprint(self.settings.threads, m), cpu=str(m.get("cpu", "")),
                        threads=self.settings.threads)

    def _keep(self, session: Session) -> Session:
        self._open.append(session)
        return session

    def close(self) -> None:
        """Close every session this evaluation opened."""
        while self._open:
            self._open.pop().close()

    def reference(self) -> Measurement:
        """The source's outputs and accuracy, once per run when anything needs them; its session stays open
        for the timing rounds."""
        if self._ref is None:
            artifact = self.source.get()
            data = self.data.get()
            label = f"run source ({artifact.format})"
            self._begin(label)
            try:
                name, session = open_session(self.registry, artifact, self.settings.threads)
                self._ref_session = self._keep(session)
                self._ref = evaluate_outputs(session, name, data.parity, data.labelled, self.settings)
            except ConvcliError:
                raise
            except Exception as exc:
                raise InputError(f"the source model fails on the parity data: {first_line(exc)}") from exc
            self._end(label, True)
        return self._ref

    def reference_float64(self) -> list[np.ndarray] | None:
        """The source's parity outputs computed in float64, the first time an fp32 row fails its elementwise
        limit (``parity/rounding.py``); None where the source's runtime has no float64 path."""
        if self._ref64 is None:
            self.reference()
            assert self._ref_session is not None
            label = "run source in float64 (the fp32 rounding floor)"
            self._begin(label)
            try:
                outputs = run_batches_float64(self._ref_session, self.data.get().parity, self.settings.parity_batch)
            except Exception:  # a model that cannot run in float64 keeps the plain tolerance
                outputs = None
            self._ref64 = (outputs,)
            self._end(label, outputs is not None, "" if outputs is not None else "not available for this source")
        return self._ref64[0]

    def kinds(self, ref: Measurement) -> list[KindChoice]:
        """How each output is judged: declared (``--output-kind``, recipe ``outputs:``), else assumed from evidence
        (compare.assume_kind). Accuracy is scored on the first output, so with a labelled set it is a classifier."""
        labelled = self.data.get().labelled is not None
        return [assume_kind(name, arr, self.spec.outputs.get(name), labelled and i == 0)
                for i, (name, arr) in enumerate(zip(self.outputs, ref.outputs, strict=False))]

    def pruning_summary(self, ref: Measurement, pruned: Artifact, before: Measurement) -> dict[str, Any]:
        """Parameters, MACs, weight size, latency and accuracy before and after pruning, measured side by side
        (the unpruned model is timed in the same rounds as the pruned one)."""
        info = dict(pruned.details.get("prune", {}))
        head_before, head_after = _headline(before.latency), _headline(ref.latency)
        info["before"] = {"params": info.get("params_before"), "macs": info.get("macs_before"),
                          "state_dict_bytes": info.get("state_dict_bytes_before"), "accuracy": before.accuracy,
                          "latency_ms": head_before.model_dump() if head_before else None}
        info["after"] = {"params": info.get("params_after"), "macs": info.get("macs_after"),
                         "state_dict_bytes": info.get("state_dict_bytes_after"), "accuracy": ref.accuracy,
                         "latency_ms": head_after.model_dump() if head_after else None}
        return info

    def prepare_entry(self, entry: Entry) -> ArtifactReport | Pending:
        """A finished row (unavailable, error, or cached), or a row with parity and accuracy whose session is
        kept open to be timed with the others (status passed/error; gates not applied yet)."""
        base: dict[str, Any] = dict(id=entry.id, format=entry.format, precision=entry.precision, chain=entry.chain)
        if isinstance(entry.artifact, str):
            status: Status = "unavailable" if entry.artifact.startswith("unavailable:") else "error"
            return ArtifactReport(**base, status=status, error=entry.artifact.removeprefix("unavailable: "))
        cached = self.cache.load_json("measure", entry.key)
        if cached is not None:
            row = ArtifactReport.model_validate(cached)
            row.cached = True
            self._end(f"measure {entry.id}", True, f"cached from run {row.measured.run_id}" if row.measured
                      else "cached")
            return row
        artifact = entry.artifact
        common: dict[str, Any] = dict(base, path=str(artifact.path.name) if artifact.path else None,
                      files=[f.name for f in artifact.files], size_bytes=artifact.size_bytes,
                      input_layout=artifact.layout, details=jsonable(artifact.details))
        ref = self.reference()
        data = self.data.get()
        self._begin(f"measure {entry.id}")
        try:
            name, session = open_session(self.registry, artifact, self.settings.threads)
            self._keep(session)
            got = evaluate_outputs(session, name, data.parity, data.labelled, self.settings)
        except ConvcliError as exc:
            row = ArtifactReport(**common, status="unavailable" if isinstance(exc, UnavailableError) else "error",
                                 error=exc.one_line())
            self._end(f"measure {entry.id}", False, row.error or "")
            return row
        except Exception as exc:
            row = ArtifactReport(**common, status="error", error=f"running the artifact failed: {first_line(exc)}")
            self._end(f"measure {entry.id}", False, row.error or "")
            return row
        tol = self.tolerances[artifact.precision]  # every Precision has a default: never an empty Tolerance
        names = artifact.output_names or self.outputs
        try:
            parity = compare_with_rounding_floor(names, ref.outputs, got.outputs, tol, self.kinds(ref),
                                                 (ref.rows, got.rows), float64=self.reference_float64)
        except Exception as exc:  # an output compare cannot handle is this row's error, never the run's crash
            row = ArtifactReport(**common, status="error", error=f"comparing the outputs failed: {first_line(exc)}")
            self._end(f"measure {entry.id}", False, row.error or "")
            return row
        if self.spec.divergence_budget > 0:  # two indices, not the outputs: passing rows hold no extra memory
            from convcli.parity.divergence import worst_samples

            samples = next(iter(data.parity.inputs.values())).shape[0]
            # An output whose first dim is not the batch (detections) cannot say which sample is worst.
            self._worst[entry.id] = [i for i in worst_samples(ref.outputs, got.outputs) if i < samples]
        row = ArtifactReport(**common, status="passed", runner=got.runner, parity=parity, accuracy=got.accuracy)
        self._end(f"measure {entry.id}", True)  # the verdict (tolerances, gates) is the report's
        return Pending(row, entry.key, session)

    def diagnose(self, row: ArtifactReport, entry: Entry, artifact: Artifact) -> Divergence:
        """Locate the first diverging tensor of a row that failed parity, on its worst parity samples. Whatever
        goes wrong becomes the Divergence's message: the row's verdict is never changed by it."""
        from convcli.parity.divergence import LocateRequest, locate

        label = f"locate divergence {row.id}"
        self._begin(label)
        try:
            reference = entry.reference
            if reference is None and self.reference_export is not None:
                reference = self.reference_export.get(artifact)
            if reference is None:
                raise UnavailableError("no fp32 ONNX reference graph for this row (its chain never passed "
                                       "through ONNX)")
            data = self.data.get()
            n = next(iter(data.parity.inputs.values())).shape[0]
            samples = self._worst.get(row.id) or list(range(min(2, n)))  # a cached row: the first samples
            feed = {k: v[samples] for k, v in data.parity.inputs.items()}
            repro = self.repro_root / row.id / "divergence" if self.repro_root is not None else None
            result = locate(LocateRequest(
                self.registry, self.source.get(), artifact, reference, feed, samples, self.settings.threads,
                artifact.precision, self.spec.divergence_budget, repro, f"{row.id}/divergence/"))
            if result.status == "not_found" and row.status == "failed":
                result.message += ("; the outputs still fail: the drift is in tensors that could not be matched, "
                                   "or small everywhere and only over the output tolerance")
            int8 = artifact.details.get("int8")
            if isinstance(int8, dict) and isinstance(int8.get("sensitivity"), list):
                result.quantization_sensitivity = jsonable(int8["sensitivity"])[:10]
        except ConvcliError as exc:
            result = Divergence(status="unavailable" if isinstance(exc, UnavailableError) else "error",
                                message=exc.one_line())
        except Exception as exc:  # never a crashed run: a note on the row
            result = Divergence(status="error", message=f"divergence localization failed: {first_line(exc)}")
        self._end(label, result.status in ("found", "not_found"), result.message)
        return result

    def measure_together(self, pending: list[Pending], source_key: str) -> SourceReport:
        """Time the source and every pending artifact in the same rounds, fill in their rows and the source
        report, and cache them. A cached source with nothing pending is reused as is; a cached source with
        artifacts pending is timed again, since a speedup only divides numbers from the same rounds; so is the
        unpruned source of a pruned one, so that the pruning summary's before/after pair and the source's
        latency come from the same rounds (a cached summary kept its own run's pair beside new source numbers)."""
        cached = self.cache.load_json("measure", source_key)
        src_cached = SourceReport.model_validate(cached) if cached is not None else None
        if src_cached is not None and not pending:
            src_cached.cached = True
            return src_cached
        ref = self.reference()
        assert self._ref_session is not None
        artifact = self.source.get()
        data = self.data.get()
        sessions: dict[str, Session] = {"source": self._ref_session}
        sessions.update({p.row.id: p.session for p in pending})
        before: Measurement | None = None
        if self.source.original is not None:
            self._begin("run unpruned source")
            name, session = open_session(self.registry, self.source.original, self.settings.threads)
            before = evaluate_outputs(self._keep(session), name, data.parity, data.labelled, self.settings)
            sessions["unpruned source"] = session
            self._end("run unpruned source", True)
        latency: dict[str, dict[int, LatencyStats]] = {}
        failed: dict[str, Exception] = {}
        if self.settings.measure_latency:
            label = f"time {len(sessions)} models together ({len(self.settings.latency_batches)} batch sizes)"
            self._begin(label)
            latency = time_sessions(sessions, data.parity, self.settings, failed.__setitem__)
            self._end(label, not failed, ", ".join(f"{k} failed" for k in failed))
        if "source" in failed:
            raise InputError(f"the source model fails on the latency feed: {first_line(failed['source'])}")
        stamp = self.measured()
        src_latency = latency.get("source", {})
        for p in pending:
            row = p.row
            if row.id in failed:
                row.status, row.error = "error", f"running the artifact failed: {first_line(failed[row.id])}"
                continue
            got = latency.get(row.id, {})
            row.latency_ms = _headline(got)
            row.latency_by_batch = {str(b): s for b, s in got.items()}
            row.source_latency_ms = _headline(src_latency)
            row.measured = stamp
            self.cache.store_json("measure", p.key, row.model_dump(mode="json"))
        if before is not None:
            before.latency = latency.get("unpruned source", {})
        ref.latency = src_latency
        if src_cached is not None:
            update: dict[str, Any] = dict(latency_ms=_headline(src_latency), measured=stamp,
                                          latency_by_batch={str(b): s for b, s in src_latency.items()})
            if before is not None:
                update["pruning"] = self.pruning_summary(ref, artifact, before)
            report = src_cached.model_copy(update=update)
        else:
            report = self._source_report(ref, artifact, before, stamp)
        self.cache.store_json("measure", source_key, report.model_dump(mode="json"))
        return report

    def _source_report(self, ref: Measurement, artifact: Artifact, before: Measurement | None,
                       stamp: Measured) -> SourceReport:
        size = artifact.size_bytes or None if (artifact.path is not None or artifact.files) else None
        params = None
        if artifact.obj is not None and hasattr(artifact.obj, "parameters"):
            params = int(sum(p.numel() for p in artifact.obj.parameters()))
        pruning = self.pruning_summary(ref, artifact, before) if before is not None else None
        return SourceReport(
            pruning=pruning, spec=self.spec.source.model, format=artifact.format,
            inputs=[s.text() for s in artifact.inputs],
            outputs=artifact.output_names, runner=ref.runner, accuracy=ref.accuracy, size_bytes=size,
            accuracy_samples=len(labelled) if (labelled := self.data.get().labelled) is not None else None,
            params=params, latency_ms=_headline(ref.latency),
            latency_by_batch={str(b): s for b, s in ref.latency.items()}, measured=stamp)

    def report(self, entries: list[Entry], steps: list[StepRecord], source_key: str) -> Report:
        try:
            prepared = [self.prepare_entry(e) for e in entries]
            src = self.measure_together([p for p in prepared if isinstance(p, Pending)], source_key)
        finally:
            self.close()
        rows = [p.row if isinstance(p, Pending) else p for p in prepared]
        target_gates = {f"{t.format}-{p}" + (f"@{t.via}" if t.via else ""): t.gates
                        for t in self.spec.targets for p in t.precisions if t.gates}
        for row in rows:
            judge(row, src, self.spec.gates.merged(target_gates.get(row.id)), strict=self.spec.strict)
        flag_speed(rows)
        by_id = {e.id: e for e in entries}
        for row in rows:
            entry = by_id.get(row.id)
            if entry is None or not isinstance(entry.artifact, Artifact) or self.spec.divergence_budget <= 0:
                continue
            if fails_parity(row) or (self.diagnose_all and row.status in ("passed", "failed")):
                row.divergence = self.diagnose(row, entry, entry.artifact)
        fastest = fastest_passed(rows)
        code = exit_code(rows, self.spec.require_all)
        d = self.spec.data
        parity_desc = str(d.parity) if d.parity else f"random (seed {d.seed}, {d.samples} samples)"
        settings_report = Settings(
            threads=self.settings.threads, parity_data=parity_desc, parity_samples=d.samples,
            accuracy_data=str(d.validation) if d.validation else None, accuracy_samples=src.accuracy_samples,
            **_split_settings(self.data.split, d.validation),
            latency_batches=self.settings.latency_batches if self.settings.measure_latency else [],
            warmup=self.settings.warmup, runs=self.settings.runs,
            tolerances={p: t.model_dump() for p, t in self.tolerances.items()},
            machine={**machine(), "fingerprint": machine_fingerprint(self.settings.threads)})
        counts = {s: sum(r.status == s for r in rows) for s in ("passed", "failed", "error", "unavailable")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        report = Report(convcli_version=__version__, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        run_id=self.run_id, name=self.spec.name, exit_code=code, summary=summary,
                        fastest_passed=fastest, source=src, settings=settings_report, steps=steps, artifacts=rows)
        report.best_artifact = best_artifact(rows, fastest)
        return report


def fastest_passed(rows: list[ArtifactReport]) -> str | None:
    """The passed row with the highest speedup over the source: each speedup is a pair timed in the same rounds,
    so rows cached from different runs still compare fairly. Raw p50 decides only when some row has no pair.
    Intermediate files another target is built from (``onnx-int8-for-tensorrt``) are inputs, not deployables."""
    passed = [r for r in rows if r.status == "passed" and r.latency_ms is not None and not r.intermediate]
    if not passed:
        return None
    if all(r.speedup_vs_source is not None for r in passed):
        return max(passed, key=lambda r: r.speedup_vs_source or 0.0).id
    return min(passed, key=lambda r: r.latency_ms.p50 if r.latency_ms else float("inf")).id


def best_artifact(rows: list[ArtifactReport], fastest: str | None) -> BestArtifact | None:
    """The report's ``best`` section: the fastest passed row (``fastest_passed``), or, when latency was not
    measured, the first passed row in target order; None when no row passed."""
    passed = [r for r in rows if r.status == "passed" and not r.intermediate]
    row = next((r for r in passed if r.id == fastest), None)
    if row is None and passed and all(r.latency_ms is None for r in passed):
        row = passed[0]
        why = f"latency not measured: the first of {len(passed)} passed artifacts in target order"
    elif row is None:
        return None
    elif len(passed) == 1:
        why = "the only artifact that passed"
    else:
        by_speedup = all(r.speedup_vs_source is not None for r in passed if r.latency_ms is not None)
        ranked = "speedup over the source, each timed in the same rounds as its source" if by_speedup else "p50 latency"
        if len(row.latency_by_batch) > 1:  # the headline is the first batch size timed; the others are in the rows
            ranked += f", at batch {next(iter(row.latency_by_batch))} (the first of --batch " \
                      f"{','.join(row.latency_by_batch)})"
        speed = f"{row.speedup_vs_source:.2f}x the source, " if row.speedup_vs_source is not None else ""
        p50 = f"p50 {row.latency_ms.p50:.3f} ms" if row.latency_ms is not None else ""
        why = f"fastest of {len(passed)} passed artifacts ({speed}{p50}), ranked by {ranked}"
        others = [r for r in passed if r is not row and r.latency_ms is not None]
        runner_up = (max(others, key=lambda r: r.speedup_vs_source or 0.0) if by_speedup else
                     min(others, key=lambda r: r.latency_ms.p50 if r.latency_ms else float("inf"))) if others else None
        if (runner_up is not None and runner_up.latency_ms is not None and row.latency_ms is not None
                and same_run(row, runner_up) and within_noise(row.latency_ms, runner_up.latency_ms)):
            why += (f"; within noise of {runner_up.id} (p50 {runner_up.latency_ms.p50:.3f} ms): either would do, "
                    "more --runs would tell them apart")
    return BestArtifact(id=row.id, path=row.path, folder=row.id, format=row.format, precision=row.precision,
                        p50_ms=row.latency_ms.p50 if row.latency_ms is not None else None,
                        speedup=row.speedup_vs_source, why=why)


def _split_settings(split: LabelledSplit | None, validation: Path | None) -> dict[str, Any]:
    """Which labelled samples tuned int8 steps and which measured accuracy (the report's Settings fields)."""
    if split is None or validation is None:
        return {}
    return {"accuracy_split": split.describe(validation.name), "tuning_fraction": split.fraction,
            "tuning_samples": len(split.tuning), "tuning_indices": list(split.tuning),
            "accuracy_indices": list(split.held_out)}


def _headline(latency: dict[int, Any]) -> Any:
    return next(iter(latency.values())) if latency else None


def new_run_id() -> str:
    """A run id that sorts by time and is unique enough: UTC timestamp plus 6 random hex digits."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def machine_fingerprint(threads: int, info: dict[str, Any] | None = None) -> str:
    """What makes latencies comparable: CPU model, CPU flags, core count, architecture and thread count. Part
    of the measurement cache key, so numbers from another machine (a CI cache restored elsewhere) or another
    thread count are measured again instead of being compared with this machine's."""
    m = info if info is not None else machine()
    blob = json.dumps(["machine", m.get("cpu"), m.get("cpu_flags"), m.get("cores"), platform.machine(), threads])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]  # not make_key: that one also hashes convcli's code


@functools.cache
def machine() -> dict[str, Any]:
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
        line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
        flags = [f for f in wanted if f" {f}" in line]
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": flags, "python": platform.python_version(),
            "platform": platform.platform()}


