"""report.json: a versioned, documented schema (docs/report-schema.md). Bump SCHEMA_VERSION on any
incompatible change; consumers should check ``schema``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from convcli.parity.compare import ParityResult
from convcli.parity.divergence import Divergence
from convcli.parity.latency import LatencyStats

SCHEMA_VERSION = "convcli.report/v1"
Status = Literal["passed", "failed", "error", "unavailable"]


class StepRecord(BaseModel):
    id: str
    name: str
    source: str
    target: str
    status: Literal["ok", "error", "skipped"]
    cached: bool = Field(default=False, description="Reused from the cache; seconds are the original run's.")
    seconds: float = 0.0
    options: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class Measured(BaseModel):
    """Where and when a row's numbers were measured. Latencies are only compared (speedups, "slower than")
    between numbers with the same run id: the same rounds, on the same machine, at the same thread count."""

    run_id: str = Field(description="The run that measured these numbers (new for every run).")
    at: str = Field(description="When (UTC, ISO 8601).")
    machine: str = Field(description="Fingerprint of the machine: hash of CPU model, CPU flags, cores, threads.")
    cpu: str = Field(default="", description="CPU model, as /proc/cpuinfo names it.")
    threads: int = Field(default=0, description="Thread count the runtimes were given.")


class SourceReport(BaseModel):
    spec: str
    format: str
    inputs: list[str]
    outputs: list[str]
    runner: str | None = None
    latency_ms: LatencyStats | None = None
    latency_by_batch: dict[str, LatencyStats] = Field(default_factory=dict)
    measured: Measured | None = Field(default=None, description="Run, time and machine of these numbers.")
    cached: bool = Field(default=False, description="Numbers reused from the cache (see measured.run_id).")
    accuracy: float | None = None
    accuracy_samples: int | None = None
    size_bytes: int | None = None
    params: int | None = None
    pruning: dict[str, Any] | None = Field(
        default=None, description="When the job pruned the source: method, ratio, fine-tuning and params, MACs, "
                                  "weight size, latency and accuracy before and after.")


class ArtifactReport(BaseModel):
    id: str = Field(description="format-precision, unique in the report")
    format: str
    precision: str
    status: Status
    path: str | None = None
    files: list[str] = Field(default_factory=list)
    chain: str = ""
    runner: str | None = None
    input_layout: dict[str, str] = Field(default_factory=dict)
    parity: ParityResult | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    latency_ms: LatencyStats | None = None
    latency_by_batch: dict[str, LatencyStats] = Field(default_factory=dict)
    source_latency_ms: LatencyStats | None = Field(
        default=None, description="The source's headline latency timed in the same interleaved rounds as this "
                                  "row (same run, machine and threads): the denominator of speedup_vs_source.")
    speedup_vs_source: float | None = Field(
        default=None, description="source_latency_ms.p50 / latency_ms.p50: only from a pair measured together.")
    speed_within_noise: bool | None = Field(
        default=None, description="True when the p50 difference from the source is inside the two numbers' "
                                  "combined spread (the speedup is not a finding either way).")
    measured: Measured | None = Field(default=None, description="Run, time and machine of these numbers.")
    size_bytes: int | None = None
    error: str | None = None
    failures: list[str] = Field(default_factory=list, description="every gate that failed, one line each")
    cached: bool = Field(default=False, description="Measurements reused from the cache (same artifact, data, "
                                                    "settings and machine; measured.run_id says which run); "
                                                    "--no-cache measures again.")
    flags: list[str] = Field(default_factory=list, description="warnings such as 'slower than source'")
    details: dict[str, Any] = Field(default_factory=dict)
    divergence: Divergence | None = Field(
        default=None, description="Only on rows that failed parity: the first intermediate tensor that drifts "
                                  "from the reference (docs/debugging.md). Absent on passing rows.")

    @property
    def intermediate(self) -> bool:
        """A row the planner added for another target's input (``<format>-<precision>-for-<target>``, e.g. the
        Q/DQ ONNX a TensorRT engine is built from): judged like any row, but not a deployable of its own."""
        return "-for-" in self.id


class BestArtifact(BaseModel):
    """The one to ship: the fastest artifact that passed (``fastest_passed``), with what CI needs to publish it
    without reading the table. OUTDIR/best links to its folder (``link``)."""

    id: str = Field(description="The row's id (format-precision).")
    path: str | None = Field(default=None, description="Its primary file, relative to OUTDIR (as the row's path).")
    folder: str = Field(description="Its folder, relative to OUTDIR (what OUTDIR/best points at).")
    format: str
    precision: str
    p50_ms: float | None = Field(default=None, description="Its headline p50 latency (ms).")
    speedup: float | None = Field(default=None, description="speedup_vs_source of the row.")
    why: str = Field(description="Why it was chosen, in words: how many rows passed and how they were ranked.")
    link: str | None = Field(default=None, description="'best' when OUTDIR/best (a relative symlink to the folder) "
                                                       "was written; null where the filesystem has no symlinks or "
                                                       "for check/debug, which write no artifacts.")


class Settings(BaseModel):
    threads: int
    parity_data: str
    parity_samples: int
    accuracy_data: str | None = None
    accuracy_samples: int | None = Field(default=None, description="Labelled samples accuracy is measured on "
                                                                    "(the held-out part when the set is split).")
    accuracy_split: str | None = Field(
        default=None, description="When a step tuned on the labelled set: which samples tuned it and which were held "
                                  "out for accuracy, e.g. 'val: 360 samples, 180 for int8 tuning (every 2nd sample "
                                  "per class), 180 held out for accuracy'. Null: the whole set measured accuracy.")
    tuning_fraction: float | None = Field(default=None, description="data.tuning_fraction, when the set was split.")
    tuning_samples: int | None = Field(default=None, description="Labelled samples given to tuning steps.")
    tuning_indices: list[int] = Field(default_factory=list, description="Positions (in the labelled set's load "
                                      "order) of the samples given to tuning steps; empty when not split.")
    accuracy_indices: list[int] = Field(default_factory=list, description="Positions of the held-out samples "
                                        "accuracy is measured on; empty when not split (then: all of them).")
    precision_auto: str | None = Field(
        default=None, description="What --precision auto became per target and what it left out, e.g. 'auto: "
                                  "openvino: fp32, fp16, bf16; left out int8 (no calibration data: pass "
                                  "--calibration)'. Null when no target asked for auto.")
    latency_batches: list[int] = Field(default_factory=list)
    warmup: int = 0
    runs: int = 0
    tolerances: dict[str, Any] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)


class Report(BaseModel):
    schema_: str = Field(default=SCHEMA_VERSION, alias="schema")
    convcli_version: str
    created: str
    command: str = ""
    name: str | None = None
    exit_code: int = 0
    summary: str = ""
    fastest_passed: str | None = None
    # "best" in report.json; named best_artifact in Python, where JobReport.best is the row itself (api.py).
    best_artifact: BestArtifact | None = Field(
        default=None, alias="best", description="The artifact to ship: the fastest that passed (the first passed in "
                                                "target order when latency was not measured); null when none passed.")
    run_id: str | None = Field(default=None, description="This run's id; rows whose measured.run_id differs are "
                                                        "cached from that run.")
    source: SourceReport
    settings: Settings
    steps: list[StepRecord] = Field(default_factory=list)
    artifacts: list[ArtifactReport] = Field(default_factory=list)
    cache: dict[str, Any] = Field(default_factory=dict, description="Cache folder and hit counts of this run.")

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)
