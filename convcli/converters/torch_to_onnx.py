"""PyTorch, TorchScript and ExportedProgram -> ONNX.

The dynamo exporter goes first: it keeps dynamic dimensions symbolic. The TorchScript exporter is the
fallback (it handles data-dependent Python control flow by tracing one branch, and is the only exporter
for TorchScript archives), but it can bake example sizes into reshapes, so every export is re-run at a
second size of each dynamic dimension and rejected when it disagrees with PyTorch there.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.converters.torch_globals import torch_export_globals
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.lazy import require
from convcli.core.quiet import quiet
from convcli.core.registry import Registry
from convcli.core.step import Converter, KindsFor, StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.compare import DEFAULT_TOLERANCES
from convcli.parity.rounding import ROUNDING_COSINE, compare_with_rounding_floor, rounding_record
from convcli.sources.torch_sources import example_tensors, flatten_outputs, float64_outputs

TWO_GB = 2 * 1024**3


class TorchExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int | None = Field(default=None, ge=7, le=23,
                              description="ONNX opset; default: the exporter's own (dynamo 18+, torchscript 17).")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        default="auto", description="auto: dynamo, falling back to torchscript when dynamo fails.")
    check_dynamic: bool = Field(default=True, description="Re-run at a second size of each dynamic dimension.")


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {s.name: s.dynamic_dims for s in specs if s.dynamic_dims}


def _second_sizes(specs: list[TensorSpec]) -> dict[str, int]:
    """Another size for each named dynamic dim (example + 1), to catch sizes baked in at export."""
    sizes: dict[str, int] = {}
    for s in specs:
        for d in s.shape:
            if d.name:
                sizes[d.name] = d.size + 1
    return sizes


def _export_dynamo(model: Any, args: tuple[Any, ...], path: Path, specs: list[TensorSpec], outputs: list[str],
                   opset: int | None, large: bool) -> None:
    torch = require("torch")
    dims: dict[str, Any] = {}
    shapes = []
    for s in specs:
        spec_dims = {}
        for i, name in s.dynamic_dims.items():
            dims.setdefault(name, torch.export.Dim(name, min=1))
            spec_dims[i] = dims[name]
        shapes.append(spec_dims or None)
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    torch.onnx.export(model, args, str(path), dynamo=True, input_names=[s.name for s in specs],
                      output_names=outputs, dynamic_shapes=tuple(shapes) if dims else None,
                      external_data=large, verbose=False, report=False, **kwargs)


def _export_torchscript(model: Any, args: tuple[Any, ...], path: Path, specs: list[TensorSpec],
                        outputs: list[str], opset: int | None) -> None:
    torch = require("torch")
    torch.onnx.export(model, args, str(path), dynamo=False, input_names=[s.name for s in specs],
                      output_names=outputs, dynamic_axes=_dynamic_axes(specs) or None,
                      opset_version=opset or 17, do_constant_folding=True)


def verify_export(model: Any, path: Path, specs: list[TensorSpec], threads: int, check_dynamic: bool,
                  kinds: KindsFor | None = None) -> dict[str, Any]:
    """Run the ONNX file with ORT at the example sizes and at a second size of every dynamic dim.

    Raises ConversionError naming the sizes where ONNX and PyTorch disagree.
    """
    from convcli.runners.onnxruntime_runner import ort_session

    torch = require("torch")
    session: Any = ort_session(str(path), threads)
    checks: dict[str, Any] = {}
    cases: list[dict[str, int]] = [{}]
    second = _second_sizes(specs)
    if check_dynamic and second:
        cases.append(second)
    for overrides in cases:
        args = example_tensors(specs, overrides, seed=1)
        with torch.inference_mode():
            ref = [t.detach().numpy() for t in flatten_outputs(model(*args))]
        feed = {s.name: a.numpy() for s, a in zip(specs, args, strict=True)}
        try:
            got = session.run(None, feed)
        except Exception as exc:
            raise ConversionError(f"exported ONNX fails at {_sizes_text(overrides)}: {first_line(exc)}") from None
        names = [o.name for o in session.get_outputs()]
        result = compare_with_rounding_floor(names, ref, [np.asarray(g) for g in got], DEFAULT_TOLERANCES["fp32"],
                                             kinds(names, ref) if kinds else None,
                                             float64=functools.partial(float64_outputs, model, args))
        checks[_sizes_text(overrides)] = {"max_abs_err": result.max_abs_err, "passed": result.passed,
                                          **rounding_record(result)}
        if not result.passed:
            rounding = result.cosine_min is not None and result.cosine_min >= ROUNDING_COSINE
            hint = ("the outputs still agree in direction (cosine >= 0.99999): float32 rounding over a deep network "
                    "that crossed the fp32 tolerance (and twice PyTorch's own float32 error, where measured), not "
                    "a wrong graph; loosen tolerances if the error is acceptable"
                    if rounding else "a size was probably baked in at export" if overrides else
                    "a numerical difference at the export's own sizes: an op the exporter decomposes differently, "
                    "or a model whose outputs are large; compare with -O OnnxFromPytorch.exporter=torchscript or "
                    "loosen tolerances if the error is acceptable")
            raise ConversionError(f"exported ONNX disagrees with PyTorch at {_sizes_text(overrides)}: "
                                  f"{result.message}", hint=hint)
    return checks


def move_onnx(path: Path, final: Path) -> list[Path]:
    """Rename an ONNX file and, for a model over 2 GB, its external data file (``<name>.data``), whose name every
    tensor records as its ``location``: renaming only the file left vit_h_14's model pointing at a ``.data`` file
    that no longer existed. Returns the files of the moved model."""
    os.replace(path, final)
    data = Path(str(path) + ".data")
    if not data.exists():
        return [final]
    moved = Path(str(final) + ".data")
    os.replace(data, moved)
    onnx = require("onnx")
    from onnx.external_data_helper import _get_all_tensors  # every initializer and Constant, subgraphs included

    model = onnx.load(str(final), load_external_data=False)
    for tensor in _get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == data.name:
                entry.value = moved.name
    onnx.save(model, str(final))  # the graph only: the weights stay where they are
    return [final, moved]


def _sizes_text(overrides: dict[str, int]) -> str:
    return "example sizes" if not overrides else ", ".join(f"{k}={v}" for k, v in overrides.items())


def _param_bytes(model: Any) -> int:
    try:
        return sum(p.numel() * p.element_size() for p in model.parameters())
    except Exception:
        return 0


class OnnxFromPytorch(Converter):
    """nn.Module -> ONNX, dynamo first, TorchScript exporter as fallback."""

    name = "OnnxFromPytorch"
    source = "pytorch"
    target = "onnx"
    summary = "torch.onnx.export (dynamo, TorchScript fallback), checked at a second dynamic size"
    requires = ("torch", "onnx", "onnxscript", "onnxruntime")
    Options = TorchExportOptions
    exporters: tuple[str, ...] = ("dynamo", "torchscript")

    def model_for_export(self, artifact: Artifact) -> Any:
        return artifact.obj

    def reference_model(self, artifact: Artifact) -> Any:
        """The callable PyTorch model the exported ONNX is checked against."""
        return artifact.obj

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        torch = require("torch")
        opts: TorchExportOptions = self.options  # type: ignore[assignment]
        model = self.model_for_export(artifact)
        with torch_export_globals():
            return self._export(torch, model, artifact, ctx, opts)

    def _export(self, torch: Any, model: Any, artifact: Artifact, ctx: StepContext,
                opts: TorchExportOptions) -> Artifact:
        specs = artifact.inputs
        args = tuple(example_tensors(specs))
        large = _param_bytes(model) > TWO_GB
        order = self.exporters if opts.exporter == "auto" else (opts.exporter,)
        notes: dict[str, str] = {}
        for exporter in order:
            if exporter not in self.exporters:
                raise ConversionError(f"{self.name} cannot use the {exporter} exporter",
                                      hint=f"choose one of: {', '.join(self.exporters)}")
            path = ctx.workdir / f"model.{exporter}.onnx"
            try:
                with quiet(), torch.inference_mode(False), torch.no_grad():
                    if exporter == "dynamo":
                        _export_dynamo(model, args, path, specs, artifact.output_names, opts.opset, large)
                    else:
                        _export_torchscript(model, args, path, specs, artifact.output_names, opts.opset)
                checks = verify_export(self.reference_model(artifact), path, specs, ctx.threads,
                                       opts.check_dynamic, ctx.kinds)
            except Exception as exc:
                notes[exporter] = f"failed: {first_line(exc, 240)}"
                continue
            final = ctx.workdir / "model.onnx"
            files = move_onnx(path, final)
            notes[exporter] = "used"
            for other in order:
                notes.setdefault(other, "not needed (an earlier exporter succeeded)")
            onnx = require("onnx")
            opset = next((o.version for o in onnx.load(str(final), load_external_data=False).opset_import
                          if o.domain in ("", "ai.onnx")), None)
            return Artifact(format="onnx", path=final, inputs=specs, output_names=artifact.output_names,
                            files=files, details={"exporter": exporter, "exporters": notes, "opset": opset,
                                                  "export_checks": checks, "external_data": large})
        raise ConversionError(
            "every exporter failed: " + "; ".join(f"{k} {v}" for k, v in notes.items()),
            hint="run with --debug, or try --exporter torchscript or another --opset")


class OnnxFromTorchscript(OnnxFromPytorch):
    """TorchScript archive -> ONNX (only the TorchScript exporter reads ScriptModules)."""

    name = "OnnxFromTorchscript"
    source = "torchscript"
    summary = "torch.onnx.export (TorchScript exporter) of a ScriptModule"
    exporters = ("torchscript",)


class OnnxFromExportedProgram(OnnxFromPytorch):
    """ExportedProgram -> ONNX with the dynamo exporter (an ExportedProgram is already captured)."""

    name = "OnnxFromExportedProgram"
    source = "exported-program"
    summary = "torch.onnx.export of a torch.export ExportedProgram"
    exporters = ("dynamo",)

    def reference_model(self, artifact: Artifact) -> Any:
        return artifact.obj.module()


def register(registry: Registry) -> None:
    for step in (OnnxFromPytorch, OnnxFromTorchscript, OnnxFromExportedProgram):
        registry.add_step(step)
