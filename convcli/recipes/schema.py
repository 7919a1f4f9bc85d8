"""One model for one conversion job. The CLI builds it from flags; a recipe file is its YAML form.

Every field has a description and unknown keys are errors (extra="forbid"), so a typo names its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from convcli.core.tensors import TensorSpec, parse_input_spec
from convcli.parity.compare import DEFAULT_TOLERANCES, OutputKind, Tolerance, merge_tolerance
from convcli.parity.data import ImagePreprocess
from convcli.passes.prune_pytorch import PruneOptions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    model: str = Field(description="file.py:factory, package.module:factory, or a model file (.onnx, .pt, .pt2).")
    weights: Path | None = Field(default=None, description="state_dict (.pt/.pth) or .safetensors for a factory.")
    inputs: list[str] | None = Field(
        default=None, description="NAME:SHAPE:DTYPE[:LOW..HIGH] per input, e.g. x:batch=2x3x224x224:float32.")

    @field_validator("inputs")
    @classmethod
    def _parse(cls, value: list[str] | None) -> list[str] | None:
        for text in value or []:
            parse_input_spec(text)
        return value

    def input_specs(self) -> list[TensorSpec] | None:
        return [parse_input_spec(t) for t in self.inputs] if self.inputs else None


Precision = Literal["fp32", "fp16", "bf16", "int8"]
# ``auto``: every precision the target has a step for, expanded per target before planning (job/source.py).
PrecisionChoice = Literal["fp32", "fp16", "bf16", "int8", "auto"]


def _auto_as_list(value: Any) -> Any:
    """``precisions: auto`` (a recipe's shorthand) is ``[auto]``."""
    return [value] if value == "auto" else value


Precisions = Annotated[list[PrecisionChoice], BeforeValidator(
    _auto_as_list, json_schema_input_type=list[PrecisionChoice] | Literal["auto"])]


class GateSpec(Strict):
    """Pass/fail limits on top of the per-precision parity tolerances. None disables a gate. Set on the job,
    they apply to every artifact; set on a target, they override the job's for that target."""

    max_abs_err: float | None = Field(default=None, description="Largest max-abs-error vs the source.")
    min_cosine: float | None = Field(default=None, description="Smallest per-sample cosine similarity.")
    min_top1: float | None = Field(default=None, description="Smallest top-1 agreement with the source (0..1).")
    max_accuracy_drop: float | dict[str, float] | None = Field(
        default=None, description="Largest accuracy drop vs the source (fraction: 0.01 = 1 point); one number, or "
                                  "one per precision. Default: fp32 0.005, fp16 0.01, bf16 0.01, int8 0.01.")
    max_p50_ms: float | None = Field(default=None, description="Largest p50 latency of the artifact (ms).")
    min_speedup: float | None = Field(default=None, description="Smallest speedup vs the source.")
    max_size_mb: float | None = Field(default=None, description="Largest artifact size (MB).")

    def merged(self, override: GateSpec | None) -> GateSpec:
        """Field by field: a target's gate replaces the job's for that field only; per-precision accuracy limits
        merge per precision."""
        if override is None:
            return self
        update = override.model_dump(exclude_unset=True)
        mine, theirs = self.max_accuracy_drop, update.get("max_accuracy_drop")
        if isinstance(mine, dict) and isinstance(theirs, dict):
            update["max_accuracy_drop"] = {**mine, **theirs}
        return self.model_copy(update=update)

    def accuracy_limit(self, precision: str) -> float | None:
        limit = self.max_accuracy_drop
        if limit is None:
            return DEFAULT_ACCURACY_DROP.get(precision)
        if isinstance(limit, dict):
            return limit.get(precision, DEFAULT_ACCURACY_DROP.get(precision))
        return limit


DEFAULT_ACCURACY_DROP = {"fp32": 0.005, "fp16": 0.01, "bf16": 0.01, "int8": 0.01}


class TargetSpec(Strict):
    format: str = Field(description="Target format: onnx, openvino, ncnn, tflite, tensorrt, ...")
    precisions: Precisions = Field(
        default_factory=lambda: list[PrecisionChoice](["fp32"]),
        description="Any of fp32, fp16, bf16, int8; or auto: every precision this target has a step for (bf16 "
                    "listed unavailable where the CPU has no native bf16; int8 only with data.calibration).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of this target's converter.")
    via: str | None = Field(default=None, description="A converter the path must use, e.g. OpenvinoFromPytorch.")
    gates: GateSpec | None = Field(default=None, description="Gates for this target, overriding the job's.")


class DataSpec(Strict):
    parity: Path | None = Field(default=None, description="Inputs for parity: .npy/.npz or an image folder. "
                                                           "Default: seeded random data in each input's range.")
    validation: Path | None = Field(default=None, description="Labelled set for accuracy: image folder with "
                                                               "class sub-folders, or a CSV of file,label.")
    calibration: Path | None = Field(default=None, description="Calibration data for INT8 (.npy/.npz or images).")
    train: Path | None = Field(default=None, description="Labelled training images for recovery fine-tuning "
                                                          "after pruning.")
    samples: int = Field(default=16, ge=1, description="Samples for the parity comparison.")
    validation_samples: int | None = Field(default=None, ge=1, description="Cap on labelled samples used.")
    tuning_fraction: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="When a planned step tunes on the labelled set (accuracy-aware "
        "INT8), the share of each class it gets; the rest is held out and is all the report's accuracy and the "
        "accuracy gate are measured on. Without such a step the whole set measures accuracy.")
    calibration_samples: int = Field(default=64, ge=1, description="Samples used to calibrate INT8 steps.")
    seed: int = Field(default=0, description="Seed of generated random inputs.")
    preprocess: ImagePreprocess = Field(default_factory=ImagePreprocess,
                                        description="How image files become model inputs.")


class LatencySpec(Strict):
    enabled: bool = Field(default=True, description="Measure latency of the source and every artifact.")
    batches: list[int] | None = Field(default=None, description="Batch sizes to time; the first is the headline. "
                                                                 "Default: the input's static batch, else 1.")
    warmup: int = Field(default=5, ge=0, description="Untimed runs first.")
    runs: int = Field(default=30, ge=1, description="Timed runs (fewer if max_seconds is reached).")
    max_seconds: float = Field(default=10.0, gt=0, description="Time budget for the timed runs of one artifact.")
    threads: int | None = Field(default=None, ge=1, description="Threads for every runtime; default all cores.")


ReportFormat = Literal["md", "html", "junit"]


def parse_version_policy(text: str) -> tuple[str, list[int]]:
    """``latest:N`` (the N highest versions), ``all``, or ``specific:1,3`` -> (kind, numbers)."""
    kind, _, rest = text.strip().partition(":")
    try:
        numbers = [int(n) for n in rest.split(",") if n.strip()]
    except ValueError:
        numbers = []
    if kind == "all" and not rest:
        return kind, []
    if kind == "latest" and len(numbers) == 1 and numbers[0] >= 1:
        return kind, numbers
    if kind == "specific" and numbers and all(n >= 1 for n in numbers):
        return kind, numbers
    raise ValueError(f"version_policy '{text}': expected latest:N (N >= 1), all, or specific:V1,V2")


class PackageSpec(Strict):
    """A Triton model repository made from the run's passed artifacts (what ``convcli package`` does), written
    only when the run passed."""

    triton: Path = Field(description="Triton model repository folder (created when missing; relative to the recipe). "
                                     "Each run adds a new version of each model; existing versions are never touched.")
    name: str | None = Field(default=None, description="Model name prefix (default: the recipe name); models are "
                                                       "named <name>_<format>_<precision>.")
    version_policy: str = Field(default="latest:1", description="Which versions Triton serves: latest:N, all, or "
                                                                "specific:V1,V2.")
    instance_count: int = Field(default=1, ge=1, description="Model instances (instance_group count).")
    dynamic_batching: bool = Field(default=False, description="Add dynamic_batching {} (models with a dynamic batch "
                                                              "dimension only).")
    max_batch_size: int = Field(default=8, ge=1, description="max_batch_size of models whose first dimension is a "
                                                             "dynamic batch (others get 0 and their full shape).")
    warmup: bool = Field(default=True, description="Add model_warmup with one sample of the run's parity data.")

    @field_validator("version_policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        parse_version_policy(value)
        return value.strip()


class JobSpec(Strict):
    """One model's conversion. ``version`` is the recipe schema version (bumped on incompatible changes)."""

    version: Literal[1] = Field(default=1, description="Recipe schema version.")
    name: str | None = Field(default=None, description="A name for reports and CI (default: the file name).")
    source: SourceSpec
    targets: list[TargetSpec] = Field(description="What to produce.")
    step_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options by step name, e.g. {OnnxFromPytorch: {opset: 18}}.")
    prune: PruneOptions | None = Field(default=None, description="Prune the PyTorch source before export; every "
                                       "target is built from and checked against the pruned model.")
    simplify: bool = Field(default=True, description="Run the default simplification passes (SimplifyOnnx).")
    data: DataSpec = Field(default_factory=DataSpec, description="Parity, validation and calibration data.")
    latency: LatencySpec = Field(default_factory=LatencySpec, description="Latency measurement settings.")
    tolerances: dict[str, Tolerance] = Field(
        default_factory=dict, description="Per precision overrides of the default parity tolerances, merged field "
                                          "by field: {fp16: {atol: 0.05}} keeps fp16's cosine and top-1 checks; "
                                          "null disables a check.")
    outputs: dict[str, OutputKind] = Field(
        default_factory=dict, description="Declared kind per output name: logits/probabilities (top-1 judged), "
                                          "embedding (cosine, no top-1), regression/boxes (elementwise), segmentation "
                                          "(per-pixel top-1), detections (paired by class and IoU). Undeclared "
                                          "outputs are judged as a classifier only on evidence (docs/cli.md).")
    strict: bool = Field(default=False, description="Fail rows whose reference output is degenerate (constant, "
                                                    "input-independent or too small to tell right from wrong) "
                                                    "instead of only flagging them.")
    gates: GateSpec = Field(default_factory=GateSpec, description="Accuracy, latency and size gates.")
    require_all: bool = Field(default=False, description="Fail (exit 3) when a target is unavailable here.")
    divergence_budget: float = Field(
        default=60.0, ge=0, description="Seconds each row that fails parity may spend locating the first diverging "
                                        "intermediate tensor (docs/debugging.md); 0 turns localization off.")
    output: Path = Field(default=Path("convcli-out"), description="Output folder.")
    reports: list[ReportFormat] = Field(
        default_factory=list, description="Reports written beside report.json: md, html, junit.")
    cache: bool = Field(default=True, description="Reuse cached step outputs and measurements.")
    cache_dir: Path | None = Field(default=None, description="Cache folder (default: ~/.cache/convcli or "
                                                              "$CONVCLI_CACHE_DIR).")
    package: PackageSpec | None = Field(
        default=None, description="After a run that passed, write its passed artifacts into a Triton model "
                                  "repository (convcli package; docs/deploy.md).")

    @field_validator("tolerances")
    @classmethod
    def _merge_tolerances(cls, value: dict[str, Tolerance]) -> dict[str, Tolerance]:
        """Stored merged with the defaults, so the spec (and the manifest) says the tolerance in force, and a
        re-validated dump means the same thing."""
        unknown = sorted(set(value) - set(DEFAULT_TOLERANCES))
        if unknown:
            raise ValueError(f"tolerances: unknown precision {', '.join(unknown)}; one of "
                             f"{', '.join(DEFAULT_TOLERANCES)}")
        return {p: merge_tolerance(p, t) for p, t in value.items()}
