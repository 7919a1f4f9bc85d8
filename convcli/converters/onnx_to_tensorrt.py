"""ONNX -> TensorRT serialized engine (GPU only).

TensorRT cannot be installed on CPU machines (PyPI's `tensorrt` is a stub that downloads NVIDIA's libraries at
install time), so this edge usually reports "unavailable: <reason>" and the planner keeps the target in the
report with that reason. Nothing here ever writes an engine it did not build. INT8 goes in as explicit
QuantizeLinear/DequantizeLinear nodes in the ONNX graph (TensorRT 11 removed the implicit INT8 calibrator and
the FP16/INT8 builder flags), so precision is a property of the ONNX input, not a builder switch here.

This module has not been run against a real GPU in this project's CI (no GPU is lent to it); it follows the
TensorRT 10/11 Python API (Builder, OnnxParser, build_serialized_network).
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, UnavailableError
from convcli.core.registry import Registry
from convcli.core.step import Availability, Converter, StepContext


class TensorrtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16"] = Field(default="fp32", description="fp16 enables FP16 kernels (TensorRT 10).")
    workspace_mb: int = Field(default=1024, ge=16, description="Builder workspace memory pool limit.")


@functools.cache
def tensorrt_availability() -> Availability:
    """Why TensorRT cannot run here, checked without importing anything heavy when it is simply absent."""
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "python package tensorrt not installed (needs NVIDIA's wheels and a GPU)",
                            {"tensorrt": None})
    try:
        import tensorrt
    except Exception as exc:  # the bindings wheel without its libraries fails here
        return Availability(False, f"tensorrt does not import: {exc}", {"tensorrt": None})
    if not (Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi")):
        return Availability(False, "no NVIDIA GPU on this machine", {"tensorrt": tensorrt.__version__})
    return Availability(True, "", {"tensorrt": tensorrt.__version__})


class TensorrtFromOnnx(Converter):
    name = "TensorrtFromOnnx"
    source = "onnx"
    target = "tensorrt"
    summary = "TensorRT engine build from ONNX (explicit Q/DQ for INT8); GPU only"
    requires = ("tensorrt",)
    precisions = ("fp32", "fp16")
    Options = TensorrtOptions

    @classmethod
    def availability(cls) -> Availability:
        return tensorrt_availability()

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        avail = self.availability()
        if not avail.available:
            raise UnavailableError(f"TensorRT unavailable: {avail.reason}")
        import tensorrt as trt

        opts: TensorrtOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(artifact.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ConversionError(f"TensorRT's ONNX parser rejected {artifact.path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
        if opts.precision == "fp16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise ConversionError(
                    "this TensorRT has no FP16 builder flag (TensorRT 11)",
                    hint="convert the ONNX model to fp16 first; TensorRT 11 follows the graph's types")
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for spec in artifact.inputs:
            if spec.dynamic_dims:
                example = spec.example_shape()
                low = tuple(1 if d.dynamic else d.size for d in spec.shape)
                high = tuple(max(2 * d.size, 1) if d.dynamic else d.size for d in spec.shape)
                profile.set_shape(spec.name, low, example, high)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise ConversionError("TensorRT failed to build an engine (see the TensorRT log above)")
        path = ctx.workdir / "model.engine"
        path.write_bytes(bytes(engine))
        return Artifact(format="tensorrt", path=path, inputs=artifact.inputs, output_names=artifact.output_names,
                        precision=opts.precision, details={"tensorrt": trt.__version__})


def register(registry: Registry) -> None:
    registry.add_step(TensorrtFromOnnx)
