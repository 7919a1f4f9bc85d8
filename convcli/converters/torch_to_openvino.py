"""PyTorch / ExportedProgram -> OpenVINO IR directly, through OpenVINO's PyTorch frontend.

The planner prefers pytorch -> ONNX -> OpenVINO (the ONNX export is checked at a second dynamic size and
simplified); this edge costs more and is taken on request (``--to openvino@OpenvinoFromPytorch``), e.g. to
compare both paths or for an operator the ONNX exporter lacks. It traces the model (TorchScript tracing for
nn.Module), which can bake example sizes in, so the IR is run against PyTorch at the example sizes and at
a second size of every dynamic dimension, and rejected when they disagree.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from pydantic import Field

from convcli.converters.onnx_to_openvino import OpenvinoOptions, save_ir
from convcli.converters.torch_globals import torch_export_globals
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.lazy import require
from convcli.core.quiet import quiet
from convcli.core.registry import Registry
from convcli.core.step import Converter, KindsFor, StepContext
from convcli.core.tensors import TensorSpec, numpy_dtype
from convcli.parity.compare import DEFAULT_TOLERANCES
from convcli.parity.rounding import compare_with_rounding_floor, rounding_record
from convcli.runners.openvino_runner import compile_cpu, match_outputs, require_openvino
from convcli.sources.torch_sources import example_tensors, flatten_outputs, float64_outputs


class OpenvinoTorchOptions(OpenvinoOptions):
    check_dynamic: bool = Field(default=True, description="Also check the IR at a second size of each dynamic dim.")


def _input_signature(ov: Any, specs: list[TensorSpec]) -> list[tuple[Any, Any]]:
    """Positional (shape, type) per input, -1 for dynamic dims: names are set afterwards, because the
    frontend only accepts forward()'s own argument names."""
    return [(ov.PartialShape([-1 if d.dynamic else d.size for d in s.shape]), ov.Type(numpy_dtype(s.dtype)))
            for s in specs]


def _name_ports(model: Any, specs: list[TensorSpec], outputs: list[str]) -> None:
    """Give the IR the source's input and output names, so runners feed and match by name."""
    if len(model.inputs) == len(specs):
        for port, spec in zip(model.inputs, specs, strict=True):
            port.get_tensor().set_names({spec.name})
    if len(model.outputs) == len(outputs):
        for port, name in zip(model.outputs, outputs, strict=True):
            port.get_tensor().set_names({name})


def _size_cases(specs: list[TensorSpec], check_dynamic: bool) -> list[dict[str, int]]:
    second = {d.name: d.size + 1 for s in specs for d in s.shape if d.name}
    return [{}, second] if check_dynamic and second else [{}]


def _sizes_text(overrides: dict[str, int]) -> str:
    return "example sizes" if not overrides else ", ".join(f"{k}={v}" for k, v in overrides.items())


def verify_ir(model: Any, reference: Any, specs: list[TensorSpec], outputs: list[str], threads: int,
              check_dynamic: bool, where: str, kinds: KindsFor | None = None) -> dict[str, Any]:
    """Run the in-memory IR (f32) and PyTorch on seeded inputs at each size; ConversionError on a mismatch."""
    torch = require("torch")
    compiled = compile_cpu(model, threads)
    order = match_outputs(list(compiled.outputs), outputs, where)
    checks: dict[str, Any] = {}
    for overrides in _size_cases(specs, check_dynamic):
        args = example_tensors(specs, overrides, seed=1)
        with torch.inference_mode():
            ref = [t.detach().numpy() for t in flatten_outputs(reference(*args))]
        try:
            res = compiled({i: a.numpy() for i, a in enumerate(args)})
        except Exception as exc:
            raise ConversionError(f"{where}: the OpenVINO model fails at {_sizes_text(overrides)}: "
                                  f"{first_line(exc)}") from None
        got = [np.asarray(res[compiled.outputs[i]]) for i in order]
        names = outputs or [f"output_{i}" for i in range(len(ref))]
        result = compare_with_rounding_floor(names, ref, got, DEFAULT_TOLERANCES["fp32"],
                                             kinds(names, ref) if kinds else None,
                                             float64=functools.partial(float64_outputs, reference, args))
        checks[_sizes_text(overrides)] = {"max_abs_err": result.max_abs_err, "passed": result.passed,
                                          **rounding_record(result)}
        if not result.passed:
            raise ConversionError(f"{where}: the OpenVINO model disagrees with PyTorch at {_sizes_text(overrides)}: "
                                  f"{result.message}", hint="a size was probably baked in by tracing; use the "
                                                            "default path through ONNX (--to openvino)")
    return checks


class OpenvinoFromPytorch(Converter):
    """nn.Module -> OpenVINO IR with openvino.convert_model(model, example_input=..., input=...)."""

    name = "OpenvinoFromPytorch"
    source = "pytorch"
    target = "openvino"
    summary = "openvino.convert_model on the nn.Module (traced), checked at a second dynamic size"
    requires = ("torch", "openvino")
    cost = 3.0  # above OnnxFromPytorch + OpenvinoFromOnnx (2.0): the checked, simplified ONNX path is the default
    precisions = ("fp32", "fp16")
    Options = OpenvinoTorchOptions

    def convert(self, ov: Any, artifact: Artifact, signature: list[tuple[Any, Any]]) -> Any:
        args = tuple(example_tensors(artifact.inputs))
        return ov.convert_model(artifact.obj, example_input=args, input=signature)

    def reference_model(self, artifact: Artifact) -> Any:
        return artifact.obj

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        torch = require("torch")
        ov = require_openvino()
        opts: OpenvinoTorchOptions = self.options  # type: ignore[assignment]
        where = self.name
        try:
            with torch_export_globals(), quiet(), torch.inference_mode(False), torch.no_grad():
                model = self.convert(ov, artifact, _input_signature(ov, artifact.inputs))
        except Exception as exc:
            raise ConversionError(f"{where}: OpenVINO's PyTorch frontend failed: {first_line(exc)}",
                                  hint="an operator OpenVINO lacks is named above; the ONNX path "
                                       "(--to openvino) may convert it") from None
        _name_ports(model, artifact.inputs, artifact.output_names)
        checks = verify_ir(model, self.reference_model(artifact), artifact.inputs, artifact.output_names,
                           ctx.threads, opts.check_dynamic, where, ctx.kinds)
        result = save_ir(model, artifact.inputs, artifact.output_names, opts.precision, ctx, where)
        result.details = {**result.details, "export_checks": checks}
        return result


class OpenvinoFromExportedProgram(OpenvinoFromPytorch):
    """torch.export ExportedProgram -> OpenVINO IR (already captured: no tracing)."""

    name = "OpenvinoFromExportedProgram"
    source = "exported-program"
    summary = "openvino.convert_model on a torch.export ExportedProgram"

    def convert(self, ov: Any, artifact: Artifact, signature: list[tuple[Any, Any]]) -> Any:
        return ov.convert_model(artifact.obj, input=signature)

    def reference_model(self, artifact: Artifact) -> Any:
        return artifact.obj.module()


def register(registry: Registry) -> None:
    for step in (OpenvinoFromPytorch, OpenvinoFromExportedProgram):
        registry.add_step(step)
