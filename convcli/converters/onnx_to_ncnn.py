"""ONNX -> NCNN (.param + .bin) through the pnnx binary, in a child process.

This edge serves ONNX sources (and ``--to ncnn@NcnnFromOnnx`` for comparing paths); PyTorch sources take the
direct NcnnFromPytorch edge, which the planner prefers by cost.

pnnx segfaults on some ONNX files it could convert: with tensors in external data (``model.onnx.data``; its
embedded ONNX Runtime fails shape inference on external shape constants, then pnnx crashes) and with an IR
version newer than that ONNX Runtime reads. Both are detected up front: external data under protobuf's 2 GB
limit is re-saved inline (above it the step refuses with a clear error), and the IR version is lowered, in a
copy in the step's folder. The copy is made in any case: pnnx writes ``<name>.pnnxsim.onnx`` beside its
input, and the user's folder must stay untouched. Crashes this cannot foresee (pnnx segfaults on the tiny
transformer's ONNX with a dynamic sequence length) are caught by the child-process isolation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convcli.converters.torch_to_ncnn import PnnxConverter
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.step import StepContext
from convcli.core.tensors import TensorSpec


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # 2 GB, less room for the graph itself
# pnnx 20261020 embeds ONNX Runtime 1.30, which reads ONNX IR versions up to 13 ("Unsupported model IR version:
# 14, max supported IR version: 13", then SIGSEGV); onnx 1.23's helpers write IR 14.
PNNX_MAX_IR_VERSION = 13


def external_data_files(path: Path) -> list[str]:
    """Names of the external data files ``path`` refers to (empty when all weights are inline)."""
    onnx = require("onnx", "ONNX files")
    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            files.add(location)
    return sorted(files)


def prepare_for_pnnx(path: Path, dest: Path, where: str, specs: list[TensorSpec] | None = None,
                     threads: int = 1) -> dict[str, Any]:
    """Write the ONNX at ``path`` to ``dest`` in a form pnnx does not crash on; return what was changed.

    Two measured traps, both a SIGSEGV inside pnnx after its embedded ONNX Runtime fails to load the model:
    external data (re-saved inline when under 2 GB, refused above) and an IR version above what that ONNX
    Runtime reads (lowered in the copy; the numeric check against the original file then proves the copy).
    With ``specs``, a graph with tensors above rank 4 or strided slices is rewritten for ncnn's 4-D tensors
    (``lower_rank_for_ncnn``).
    """
    onnx = require("onnx", "ONNX files")
    external = external_data_files(path)
    notes: dict[str, Any] = {}
    if external:
        missing = [f for f in external if not (path.parent / f).is_file()]
        if missing:
            raise ConversionError(f"{where}: {path.name} refers to external data {', '.join(missing)}, which is "
                                  f"not beside it in {path.parent}")
        size = sum((path.parent / f).stat().st_size for f in external)
        if size > PROTOBUF_LIMIT:
            raise ConversionError(
                f"{where}: {path.name} keeps {size / 1024**3:.1f} GB of weights in external data "
                f"({', '.join(external)}); pnnx crashes (SIGSEGV) on external data, and weights over 2 GB cannot "
                "be inlined", hint="convert from the PyTorch source (--to ncnn) instead of its ONNX export")
        notes["onnx_external_data_inlined"] = external
    model = onnx.load(str(path), load_external_data=bool(external))
    if model.ir_version > PNNX_MAX_IR_VERSION:
        notes["onnx_ir_version_lowered"] = f"{model.ir_version} -> {PNNX_MAX_IR_VERSION}"
        model.ir_version = PNNX_MAX_IR_VERSION
    if notes:
        onnx.save_model(model, str(dest))
    else:
        shutil.copyfile(path, dest)
    if specs is not None and needs_rank_lowering(model):
        notes["onnx_rank_lowering"] = lower_rank_for_ncnn(dest, specs, threads, where)
    return notes


def needs_rank_lowering(model: Any) -> bool:
    """Whether the graph has a tensor above rank 4 or a Slice with steps (ranks are known with a dynamic batch)."""
    onnx = require("onnx", "ONNX files")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    if any(len(v.type.tensor_type.shape.dim) > 4 for v in [*inferred.graph.value_info, *inferred.graph.output]):
        return True
    consts = {i.name: i for i in model.graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return any(n.op_type == "Slice" and len(n.input) >= 5 and n.input[4] in consts
               and (onnx.numpy_helper.to_array(consts[n.input[4]]) != 1).any() for n in model.graph.node)


def lower_rank_for_ncnn(dest: Path, specs: list[TensorSpec], threads: int, where: str) -> dict[str, Any]:
    """Rewrite the ONNX at ``dest`` (pnnx's copy) for ncnn's tensors of at most 4 dims: shapes fixed at batch 1
    (ncnn's; onnxslim folds the constants that depend on them), then ``onnx_rank.lower_rank``. The result must
    compute what the copy computed: both run in ONNX Runtime on one random batch-1 input before pnnx sees it.
    Returns what was done: the rewrites and their counts, the largest difference, what is left above rank 4."""
    import contextlib
    import io

    onnx = require("onnx", "ONNX files")
    onnxslim = require("onnxslim", "fixing ONNX input shapes for ncnn")
    from convcli.converters.onnx_rank import high_rank_ops, lower_rank
    from convcli.converters.torch_to_ncnn import batch_overrides, example_inputs
    from convcli.runners.onnxruntime_runner import ort_session

    batch = batch_overrides(specs)
    other = sorted({d.name for s in specs for d in s.shape if d.name and d.name not in batch})
    if other:
        return {"skipped": f"dynamic dim(s) {', '.join(other)} other than the batch: the rewrite needs static "
                           "shapes"}
    shapes = [f"{s.name}:{','.join(str(n) for n in s.example_shape(batch))}" for s in specs]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = onnxslim.slim(str(dest), input_shapes=shapes)
        model, rewrites = lower_rank(model)
    except Exception as exc:
        return {"skipped": f"rewrite failed: {type(exc).__name__}: {first_line(exc)}"}
    left = high_rank_ops(model)
    original = dest.with_name(dest.stem + ".before-rank-lowering.onnx")
    os.replace(dest, original)
    onnx.save_model(model, str(dest))
    feed = example_inputs(specs, batch, seed=3)
    want = ort_session(str(original), threads).run(None, feed)  # type: ignore[attr-defined]
    got = ort_session(str(dest), threads).run(None, feed)  # type: ignore[attr-defined]
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                for a, b in zip(want, got, strict=True)), default=0.0)
    scale = max((float(np.max(np.abs(a))) for a in want if a.size), default=1.0)
    if diff > 1e-6 * max(scale, 1.0):
        raise ConversionError(f"{where}: lowering the ONNX graph to rank 4 for ncnn changed its outputs (max abs "
                              f"difference {diff:.3g} in ONNX Runtime); this is a bug in convcli's rewrite",
                              hint="convert to another target (onnx, openvino), and report the model")
    original.unlink()
    return {"input_shapes": shapes, "rewrites": rewrites, "ort_max_abs_diff": diff, "left_above_rank_4": left}


class NcnnFromOnnx(PnnxConverter):
    """ONNX -> ncnn with pnnx, on a copy of the file that avoids pnnx's known crashes."""

    name = "NcnnFromOnnx"
    source = "onnx"
    summary = "pnnx (child process) on a copy of the ONNX file (weights inlined) -> ncnn .param/.bin"
    requires = ("onnx", "onnxruntime", "pnnx", "ncnn")
    cost = 1.0
    pnnx_input_name = "model.onnx"

    def write_pnnx_input(self, artifact: Artifact, dest: Path, ctx: StepContext) -> dict[str, Any]:
        if artifact.path is None or not artifact.path.is_file():
            raise ConversionError(f"ncnn target ({self.name}): the ONNX model file is missing")
        return prepare_for_pnnx(artifact.path, dest, f"ncnn target ({self.name})", artifact.inputs, ctx.threads)

    def reference(self, artifact: Artifact, feed: dict[str, np.ndarray], ctx: StepContext) -> list[np.ndarray]:
        from convcli.runners.onnxruntime_runner import ort_session

        assert artifact.path is not None
        session: Any = ort_session(str(artifact.path), ctx.threads)
        return [np.asarray(o) for o in session.run(None, feed)]

    def crash_hint(self, dynamic: dict[str, int]) -> str:
        if dynamic:
            dims = ", ".join(dynamic)
            return (f"pnnx cannot convert this ONNX with dynamic dim(s) {dims}: convert from the PyTorch source "
                    f"(--to ncnn), or make {dims} static with --input")
        return "convert from the PyTorch source (--to ncnn), or try another target (onnx, openvino)"


def register(registry: Registry) -> None:
    registry.add_step(NcnnFromOnnx)
