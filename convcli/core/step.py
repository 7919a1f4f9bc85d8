"""The step interface: converters (edges between formats) and passes (same-format transforms).

Each step declares its source and target format, the packages it needs, the precisions it can produce and
an options model (pydantic, extra="forbid", so an unsupported flag is an error naming the step and the flag).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from convcli.core.errors import ConversionError
from convcli.core.lazy import is_installed, package_version

if TYPE_CHECKING:
    from convcli.core.artifact import Artifact
    from convcli.core.tensors import TensorSpec
    from convcli.parity.data import DataSet


class NoOptions(BaseModel):
    """A step without options."""

    model_config = ConfigDict(extra="forbid")


CALIBRATION_HINT = "int8 is calibrated on real inputs, never on random data"


@dataclass(frozen=True)
class Availability:
    """Whether a step or runner can run here, and why not."""

    available: bool
    reason: str = ""
    versions: dict[str, str | None] = field(default_factory=dict)


def check_packages(requires: tuple[str, ...]) -> Availability:
    versions = {m: package_version(m) for m in requires}
    missing = [m for m in requires if not is_installed(m)]
    if missing:
        return Availability(False, f"python package {', '.join(missing)} not installed", versions)
    return Availability(True, "", versions)


# How a step's own check learns each output's kind: (output names, reference arrays) -> KindChoice per output.
KindsFor = Callable[[list[str], list[Any]], list[Any]]


@dataclass
class StepContext:
    """What a step may use while it runs: its own empty work folder, thread count, data, limits."""

    workdir: Path
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    calibration_source: Callable[[], DataSet | None] | None = None
    validation_source: Callable[[], DataSet | None] | None = None
    timeout_s: float = 900.0
    debug: bool = False
    cache_dir: Path | None = None  # convcli's cache folder (None: caching off), for a tool's own caches
    # Output name -> declared kind (--output-kind, recipe outputs:): a step's own check judges each output as the
    # job will (detections pair by IoU; an elementwise check would reject a correct export whose near-tied
    # detections come out in another order).
    output_kinds: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def kinds(self, names: list[str], refs: list[Any]) -> list[Any]:
        """``compare_outputs``'s kinds for a step's own check: declared ones, else assumed as the judge would."""
        from convcli.parity.compare import assume_kind

        return [assume_kind(n, r, self.output_kinds.get(n)) for n, r in zip(names, refs, strict=False)]

    @property
    def calibration(self) -> DataSet | None:
        """Calibration data, read on first use (steps that need none never trigger the read)."""
        return self.calibration_source() if self.calibration_source is not None else None

    @property
    def validation(self) -> DataSet | None:
        """The labelled samples a step may judge its own output on (accuracy-aware quantization): only the
        tuning part of --validation, so the report's accuracy comes from samples no step has seen."""
        return self.validation_source() if self.validation_source is not None else None

    def require_calibration(self, where: str, hint: str = CALIBRATION_HINT) -> DataSet:
        """The calibration data, or ConversionError naming the step: INT8 is never calibrated on random data."""
        data = self.calibration
        if data is None or len(data) == 0:
            raise ConversionError(f"{where} needs calibration data: pass --calibration (a folder of images, or "
                                  ".npy/.npz of preprocessed inputs named like the model's inputs)", hint=hint)
        return data


class Step:
    """Base of converters and passes. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    target: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    cost: ClassVar[float] = 1.0
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # Why a precision this step's format has elsewhere is not made here (planner: the target's unavailable reason).
    precision_gaps: ClassVar[dict[str, str]] = {}
    Options: ClassVar[type[BaseModel]] = NoOptions
    default_for_target: ClassVar[bool] = False  # passes: applied whenever a plan passes through the format
    uses_calibration: ClassVar[bool] = False  # its output depends on the calibration data (part of its cache key)
    uses_validation: ClassVar[bool] = False  # its output depends on the labelled set (accuracy-aware steps)
    job_level: ClassVar[bool] = False  # configured by its own JobSpec field, never placed by the planner

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def data_inputs(cls, options: BaseModel) -> tuple[bool, bool]:
        """Whether this step's output, with these options, depends on the calibration data and on the labelled
        set (each then goes into its cache key). Default: the class flags; a step whose precisions differ
        (a converter that also writes int8) narrows it to the options that read the data."""
        return cls.uses_calibration, cls.uses_validation

    @classmethod
    def needs_calibration(cls, options: BaseModel, inputs: list[TensorSpec] | None) -> bool | None:
        """Whether this step, with these options, cannot run without calibration data; asked of the steps of
        int8 targets right after planning, so a job without ``--calibration`` fails before any conversion.
        ``inputs``: the source's inputs when known, else None; a step that can only tell from them (a mode
        chosen by input dtype) returns None until they are known. Default: it reads calibration data."""
        return cls.data_inputs(options)[0]

    @classmethod
    def kind(cls) -> str:
        return "pass" if cls.source == cls.target else "converter"

    @classmethod
    def availability(cls) -> Availability:
        return check_packages(cls.requires)

    @classmethod
    def machine_key(cls) -> Any:
        """What about this machine, beyond package versions, the step's output depends on (part of its cache
        key when not None): a TensorRT engine is valid only on the GPU model, driver and TensorRT that built it."""
        return None

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def parse_options(cls, values: dict[str, Any], where: str) -> BaseModel:
        from pydantic import ValidationError

        from convcli.core.errors import InputError

        try:
            return cls.Options.model_validate(values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "not supported by this target" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"'{loc}': {msg}")
            allowed = ", ".join(cls.Options.model_fields) or "none"
            raise InputError(
                f"{where} ({cls.name}): option {'; '.join(problems)}", hint=f"options it accepts: {allowed}"
            ) from None


class Converter(Step):
    """An edge of the graph: source format -> a different target format."""

    # Precisions this converter takes from its input instead of producing them: for each, the options its source
    # format's precision pass must run with, by pass name (TensorRT: int8 -> symmetric int8 Q/DQ from
    # QuantizeOnnxInt8). The planner puts that pass before the converter and reports its file as a row.
    input_precision: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}


class Pass(Step):
    """A transform within one format (simplify, fp16, int8, prune)."""

    output_precision: ClassVar[str | None] = None
