"""ONNX -> OpenVINO IR (model.xml + model.bin) with openvino.convert_model and openvino.save_model.

fp32 IR keeps fp32 weights: save_model compresses weights to FP16 unless told not to, so the flag is always
passed explicitly. fp16 IR stores FP16 weights (half the .bin) that the CPU plugin decompresses and runs in
f32. Dynamic dimensions stay dynamic; an IR that lost one is rejected rather than shipped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.offline import block_telemetry_imports
from convcli.core.registry import Registry
from convcli.core.step import Converter, StepContext
from convcli.core.tensors import TensorSpec
from convcli.runners.openvino_runner import port_names, require_openvino

STRUCTURAL_OPS = ("Constant", "Parameter", "Result")


class OpenvinoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16"] = Field(
        default="fp32", description="fp32: fp32 weights; fp16: weights compressed to FP16 (compute stays f32).")


def _check_dynamic(model: Any, specs: list[TensorSpec], where: str) -> dict[str, str]:
    """Input shapes of the IR as text; ConversionError when a dimension the source has dynamic is static."""
    shapes: dict[str, str] = {}
    for i, port in enumerate(model.inputs):
        names = port_names(port)
        spec = next((s for s in specs if s.name in names), specs[i] if len(specs) == len(model.inputs) else None)
        shape = port.get_partial_shape()
        shapes[spec.name if spec else (sorted(names) or [str(i)])[0]] = str(shape)
        if spec is None or shape.rank.is_dynamic:
            continue
        for axis, dim_name in spec.dynamic_dims.items():
            if axis < len(shape) and shape[axis].is_static:
                raise ConversionError(f"{where}: input {spec.name} dimension {axis} ({dim_name}) became static "
                                      f"{shape[axis].get_length()} in the OpenVINO model ({shape})",
                                      hint="the source graph probably bakes this size in; export it with a "
                                           "dynamic dimension")
    return shapes


def save_ir(model: Any, specs: list[TensorSpec], output_names: list[str], precision: str, ctx: StepContext,
            where: str) -> Artifact:
    """Write ``model`` as ctx.workdir/model.xml + model.bin and describe it (ops, compression, shapes)."""
    ov = require_openvino()
    late = block_telemetry_imports()  # idempotent: reports whether the block came in time
    shapes = _check_dynamic(model, specs, where)
    ops = Counter(op.get_type_name() for op in model.get_ops())
    compress = precision == "fp16"
    xml = ctx.workdir / "model.xml"
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress)
    except Exception as exc:
        raise ConversionError(f"{where}: openvino.save_model failed: {first_line(exc)}") from None
    binary = xml.with_suffix(".bin")
    files = [xml, *([binary] if binary.exists() else [])]
    details = {"openvino": ov.__version__.split("-")[0], "compress_to_fp16": compress,
               "op_count": sum(n for op, n in ops.items() if op not in STRUCTURAL_OPS),
               "ops": dict(sorted(ops.items())), "input_shapes": shapes,
               "weights_bytes": binary.stat().st_size if binary.exists() else 0,
               "telemetry": "off" if not late else f"on: {', '.join(late)} was imported before convcli could block it"}
    return Artifact(format="openvino", path=xml, inputs=specs, output_names=output_names, precision=precision,
                    files=files, details=details)


class OpenvinoFromOnnx(Converter):
    """ONNX file -> OpenVINO IR through OpenVINO's ONNX frontend."""

    name = "OpenvinoFromOnnx"
    source = "onnx"
    target = "openvino"
    summary = "openvino.convert_model + save_model (fp32, or FP16-compressed weights)"
    requires = ("openvino",)
    precisions = ("fp32", "fp16")
    Options = OpenvinoOptions

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        ov = require_openvino()
        opts: OpenvinoOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        where = f"{self.name} ({Path(artifact.path).name})"
        try:
            model = ov.convert_model(str(artifact.path))
        except Exception as exc:
            raise ConversionError(f"{where}: OpenVINO's ONNX frontend failed: {first_line(exc)}",
                                  hint="an operator OpenVINO lacks is named above; try another --opset") from None
        result = save_ir(model, artifact.inputs, artifact.output_names, opts.precision, ctx, where)
        result.details = {**result.details, "from_onnx": Path(artifact.path).name}
        return result


def register(registry: Registry) -> None:
    registry.add_step(OpenvinoFromOnnx)
