"""Measuring: the source and each artifact run on the same data (or cached measurements are reused), then every
row is judged (``judge.py``) and the report assembled."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convcli import __version__
from convcli.core.artifact import Artifact
from convcli.core.cache import Cache
from convcli.core.errors import ConvcliError, InputError, UnavailableError, first_line
from convcli.core.executor import ProgressSink
from convcli.core.registry import Registry
from convcli.job.data import LazyData
from convcli.job.judge import exit_code, flag_speed, judge
from convcli.job.output import jsonable
from convcli.job.source import LazySource
from convcli.parity.compare import DEFAULT_TOLERANCES, KindChoice, Tolerance, assume_kind, compare_outputs
from convcli.parity.data import LabelledSplit
from convcli.parity.evaluate import EvalSettings, Measurement, measure_model
from convcli.recipes.schema import JobSpec
from convcli.reports.model import ArtifactReport, Report, Settings, SourceReport, Status, StepRecord


@dataclass
class Entry:
    """One report row to produce: an artifact to measure, or the error line of a target that failed."""

    id: str
    format: str
    precision: str
    chain: str
    artifact: Artifact | str
    key: str


class Evaluation:
    """Measures the source and each artifact on the same data (or reuses cached measurements), then judges
    every artifact against its tolerances and gates. Judging always runs: changing a gate needs no re-run."""

    def __init__(self, registry: Registry, spec: JobSpec, source: LazySource, data: LazyData,
                 settings: EvalSettings, cache: Cache, progress: ProgressSink | None, outputs: list[str]) -> None:
        self.registry, self.spec, self.source, self.data = registry, spec, source, data
        self.settings, self.cache, self.progress, self.outputs = settings, cache, progress, outputs
        self.tolerances = {p: spec.tolerances.get(p, t) for p, t in DEFAULT_TOLERANCES.items()}  # merged in JobSpec
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

    def kinds(self, ref: Measurement) -> list[KindChoice]:
        """How each output is judged: declared (``--output-kind``, recipe ``outputs:``), else assumed from evidence
        (compare.assume_kind). Accuracy is scored on the first output, so with a labelled set it is a classifier."""
        labelled = self.data.get().labelled is not None
        return [assume_kind(name, arr, self.spec.outputs.get(name), labelled and i == 0)
                for i, (name, arr) in enumerate(zip(self.outputs, ref.outputs, strict=False))]

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
                      input_layout=artifact.layout, details=jsonable(artifact.details))
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
        parity = compare_outputs(names, ref.outputs, got.outputs, tol, self.kinds(ref))
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
            judge(row, src, self.spec.gates.merged(target_gates.get(row.id)), strict=self.spec.strict)
        flag_speed(rows)
        passed = [r for r in rows if r.status == "passed" and r.latency_ms]
        fastest = min(passed, key=lambda r: r.latency_ms.p50).id if passed else None  # type: ignore[union-attr]
        code = exit_code(rows, self.spec.require_all)
        d = self.spec.data
        parity_desc = str(d.parity) if d.parity else f"random (seed {d.seed}, {d.samples} samples)"
        settings_report = Settings(
            threads=self.settings.threads, parity_data=parity_desc, parity_samples=d.samples,
            accuracy_data=str(d.validation) if d.validation else None, accuracy_samples=src.accuracy_samples,
            **_split_settings(self.data.split, d.validation),
            latency_batches=self.settings.latency_batches if self.settings.measure_latency else [],
            warmup=self.settings.warmup, runs=self.settings.runs,
            tolerances={p: t.model_dump() for p, t in self.tolerances.items()}, machine=machine())
        counts = {s: sum(r.status == s for r in rows) for s in ("passed", "failed", "error", "unavailable")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return Report(convcli_version=__version__, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      name=self.spec.name, exit_code=code, summary=summary, fastest_passed=fastest, source=src,
                      settings=settings_report, steps=steps, artifacts=rows)


def _split_settings(split: LabelledSplit | None, validation: Path | None) -> dict[str, Any]:
    """Which labelled samples tuned int8 steps and which measured accuracy (the report's Settings fields)."""
    if split is None or validation is None:
        return {}
    return {"accuracy_split": split.describe(validation.name), "tuning_fraction": split.fraction,
            "tuning_samples": len(split.tuning), "tuning_indices": list(split.tuning),
            "accuracy_indices": list(split.held_out)}


def _headline(latency: dict[int, Any]) -> Any:
    return next(iter(latency.values())) if latency else None


def machine() -> dict[str, Any]:
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


