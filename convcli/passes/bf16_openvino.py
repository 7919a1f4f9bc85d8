"""OpenVINO IR -> the same IR run in bf16: OpenVINO's CPU plugin computes in bf16 when compiled with
``INFERENCE_PRECISION_HINT=bf16``, so a bf16 artifact is the fp32 IR (or, with ``weights=fp16``, its
FP16-compressed form) with that hint recorded in it (``rt_info`` ``runtime_options``). OpenVINO 2026.4's
``compile_model`` does not apply that record by itself (checked: an IR marked f32 still compiled to bf16 on a bf16
CPU), so it documents intent only: whoever deploys the file must pass ``INFERENCE_PRECISION_HINT`` when compiling
(the Triton model card says so). The OpenVINO runner compiles bf16 rows with the hint and checks after compiling
that the plugin really uses bf16: it ignores the hint silently on a CPU without bf16 instructions.

Available only where the CPU runs bf16 natively (``avx512_bf16`` or ``amx_bf16``, ``core/cpu.py``): elsewhere a
bf16 row would be fp32 under another name, or an emulation slower than fp32, so it is ``unavailable`` with the
reason instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.cpu import cpu_bf16_support
from convcli.core.errors import ConversionError, first_line
from convcli.core.registry import Registry
from convcli.core.step import Availability, Pass, StepContext, check_packages
from convcli.runners.openvino_runner import BF16_HINT, require_openvino


class Bf16Options(BaseModel):
    """Options of HintOpenvinoBf16 (``-O HintOpenvinoBf16.KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
    weights: Literal["fp32", "fp16"] = Field(
        default="fp32", description="Weights stored in the IR: fp32, or fp16-compressed (half the .bin; the CPU "
                                    "plugin converts them to bf16 when compiling).")


class HintOpenvinoBf16(Pass):
    """fp32 OpenVINO IR -> the same model, marked to run with bf16 inference on CPUs with native bf16."""

    name = "HintOpenvinoBf16"
    source = "openvino"
    target = "openvino"
    summary = "INFERENCE_PRECISION_HINT=bf16 on the fp32 IR (CPUs with avx512_bf16 or amx_bf16 only)"
    requires = ("openvino",)
    precisions = ("bf16",)
    output_precision = "bf16"
    Options = Bf16Options

    @classmethod
    def availability(cls) -> Availability:
        packages = check_packages(cls.requires)
        if not packages.available:
            return packages
        native, why = cpu_bf16_support()
        return Availability(native, "" if native else why, packages.versions)

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        ov = require_openvino()
        opts: Bf16Options = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        where = f"{self.name} ({Path(artifact.path).name})"
        try:
            model = ov.Core().read_model(str(artifact.path))
            model.set_rt_info(BF16_HINT, ["runtime_options", "INFERENCE_PRECISION_HINT"])
            xml = ctx.workdir / "model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=opts.weights == "fp16")
        except Exception as exc:
            raise ConversionError(f"{where}: could not write the bf16 IR: {first_line(exc)}") from None
        binary = xml.with_suffix(".bin")
        details = {**artifact.details, "inference_precision_hint": BF16_HINT, "weights": opts.weights,
                   "compress_to_fp16": opts.weights == "fp16", "cpu_bf16": cpu_bf16_support()[1],
                   "weights_bytes": binary.stat().st_size if binary.exists() else 0}
        return artifact.derive(path=xml, files=[xml, *([binary] if binary.exists() else [])], precision="bf16",
                               details=details)


def register(registry: Registry) -> None:
    registry.add_step(HintOpenvinoBf16)
