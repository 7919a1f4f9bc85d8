"""ONNX fp32 -> fp16 (weights and activations), float inputs/outputs kept float32, numerically fragile ops kept
in fp32, checked against the fp32 graph before it is shipped.

Converter: ONNX Runtime's ``onnxruntime.transformers.float16.convert_float_to_float16`` rather than
onnxconverter-common's. Both insert Casts around blocked ops and keep I/O types, but ORT's:
- tracks each float initializer per use, so a weight shared by a blocked and an unblocked node is stored in
  both precisions (onnxconverter-common keeps any initializer a blocked node touches in fp32 for every user);
- keeps the inputs that must stay float32 as float32 (Resize scales, GroupNorm gamma/beta) while converting the
  op itself, where onnxconverter-common has to block Resize as a whole;
- converts the ``to`` of float Casts, ConstantOfShape and random ops, and handles contrib (com.microsoft) ops;
- ships with onnxruntime, which this step needs anyway for its check (no extra package).

Ops kept in fp32 (``FRAGILE_OPS``, on top of ORT's own default list of ops without fp16 kernels), and why:
- Exp, Pow: overflow first. exp(x) passes fp16's largest finite value 65504 at x = 11.1; x**2 at |x| = 256.
- ReduceMean/Sum/SumSquare/L2/LogSumExp/Prod: a sum over thousands of activations overflows 65504 or loses the
  small terms (fp16 has an 11-bit significand: 2048 + 1 == 2048).
- LayerNormalization and friends, InstanceNormalization, GroupNormalization: the variance is a mean of squares
  (both problems above), and a typical epsilon of 1e-5 is below fp16's smallest normal number (6.1e-5).
- Softmax, LogSoftmax: exp plus a row sum; attention rows over long sequences are where fp16 drifts first.
Resize is not blocked: ORT's converter keeps its scales input float32, which is all Resize needs. More ops or
single nodes can be kept in fp32 with ``keep_fp32_ops`` / ``keep_fp32_nodes``.

ONNX Runtime's CPU provider has fp16 kernels for few ops and casts the rest back to fp32 around them, so on
a CPU this halves the file size but does not make inference faster (docs: ENVIRONMENT measurements).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.step import Pass, StepContext
from convcli.parity.compare import DEFAULT_TOLERANCES, compare_outputs
from convcli.parity.data import DataSet, random_data

FRAGILE_OPS = (
    "Exp", "Pow",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "InstanceNormalization", "GroupNormalization",
    "Softmax", "LogSoftmax",
)
CHECK_SAMPLES = 16


class Fp16Options(BaseModel):
    """Options of ConvertOnnxFp16 (``-O ConvertOnnxFp16.KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
    keep_fp32_ops: list[str] = Field(
        default_factory=list, description="More op types to keep in fp32, on top of the built-in fragile list.")
    keep_fp32_nodes: list[str] = Field(default_factory=list, description="Node names to keep in fp32.")
    block_fragile_ops: bool = Field(
        default=True, description="Keep Exp, Pow, reductions, normalizations and Softmax in fp32 (see module doc).")
    check_samples: int = Field(default=CHECK_SAMPLES, ge=1, description="Samples for the fp16-vs-fp32 check.")


def fixed_batch(artifact: Artifact) -> int | None:
    """The first input's batch size when the graph fixes it, else None."""
    first = artifact.inputs[0].shape[0] if artifact.inputs and artifact.inputs[0].shape else None
    return first.size if first is not None and not first.dynamic else None


def check_data(artifact: Artifact, data: DataSet | None, samples: int, seed: int = 3) -> DataSet:
    """Samples for a step's own check: the given data (calibration/validation) or seeded random inputs; a
    model with a fixed batch gets exactly whole batches."""
    batch = fixed_batch(artifact)
    if data is None or len(data) == 0:
        data = random_data(artifact.inputs, batch or samples, seed=seed)
    data = data.take(samples)
    if batch is not None:
        whole = len(data) // batch * batch
        if whole == 0:
            raise ConversionError(f"the model's batch is fixed to {batch}, only {len(data)} check samples given")
        data = data.take(whole)
    return data


def ort_outputs(path: Path, data: DataSet, threads: int, batch: int | None = None,
                optimization: str = "all") -> tuple[list[str], list[np.ndarray]]:
    """Run an ONNX file on every sample of ``data`` (in batches) with ONNX Runtime; outputs stacked."""
    from convcli.runners.onnxruntime_runner import ORT_TYPES, ort_session

    session: Any = ort_session(str(path), threads, optimization=optimization)
    types = {i.name: ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    parts: list[list[np.ndarray]] = []
    for feed in data.batches(batch or 32):
        cast: dict[str, np.ndarray] = {k: np.ascontiguousarray(v.astype(types[k], copy=False))
                                       for k, v in feed.items() if k in types}
        parts.append([np.asarray(o, dtype=np.float32) if np.asarray(o).dtype == np.float16 else np.asarray(o)
                      for o in session.run(None, cast)])
    return names, [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


class ConvertOnnxFp16(Pass):
    """fp32 ONNX -> fp16 ONNX with float32 inputs/outputs; fragile ops stay fp32."""

    name = "ConvertOnnxFp16"
    source = "onnx"
    target = "onnx"
    summary = "fp16 weights and activations (ORT's float16 converter, float32 I/O, fragile ops kept fp32)"
    requires = ("onnx", "onnxruntime")
    output_precision = "fp16"
    Options = Fp16Options

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        onnx = require("onnx")
        require("onnxruntime", "converting ONNX to fp16")
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        opts: Fp16Options = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        model = onnx.load(str(artifact.path))
        present = {n.op_type for n in model.graph.node}
        names = {n.name for n in model.graph.node}
        unknown = [n for n in opts.keep_fp32_nodes if n not in names]
        if unknown:
            raise ConversionError(f"ConvertOnnxFp16: keep_fp32_nodes {unknown} are not nodes of "
                                  f"{artifact.path.name}", hint="node names are listed by `convcli plan`/netron")
        block = set(DEFAULT_OP_BLOCK_LIST) | set(opts.keep_fp32_ops)
        if opts.block_fragile_ops:
            block |= set(FRAGILE_OPS)
        try:
            converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(block),
                                                 node_block_list=opts.keep_fp32_nodes or None)
        except Exception as exc:
            raise ConversionError(f"ORT float16 converter failed on {artifact.path.name}: {first_line(exc)}",
                                  hint="keep the failing op in fp32: -O ConvertOnnxFp16.keep_fp32_ops=[OpType]"
                                  ) from None
        out = ctx.workdir / "model.onnx"
        onnx.save(converted, str(out))
        kept = sorted(present & block)
        fp32_nodes = [n.name or n.op_type for n in model.graph.node
                      if n.op_type in block or n.name in opts.keep_fp32_nodes]
        # Seeded random inputs: the output of this step does not depend on user data, nor may its cached details.
        data = check_data(artifact, None, opts.check_samples)
        batch = fixed_batch(artifact)
        out_names, ref = ort_outputs(artifact.path, data, ctx.threads, batch)
        _, got = ort_outputs(out, data, ctx.threads, batch)
        for name, r, g in zip(out_names, ref, got, strict=True):
            if not np.all(np.isfinite(g)) and np.all(np.isfinite(r)):
                raise ConversionError(f"fp16 model {out.name} gives NaN/inf in output '{name}' where fp32 does not",
                                      hint="an activation overflows fp16 (65504): keep the op producing it in fp32 "
                                           "with -O ConvertOnnxFp16.keep_fp32_ops=[OpType] or keep_fp32_nodes")
        check = compare_outputs(out_names, ref, got, DEFAULT_TOLERANCES["fp16"], ctx.kinds(out_names, ref))
        fp16_inits = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
        details = {
            "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
            "keep_io_types": True,
            "fp32_op_types_present": kept,
            "fp32_nodes": fp32_nodes,
            "fp16_initializers": fp16_inits,
            "ops_after": op_counts(converted),
            "size_bytes_before": artifact.path.stat().st_size,
            "size_bytes_after": out.stat().st_size,
            "check_vs_fp32": {"data": data.description, "samples": len(data), "max_abs_err": check.max_abs_err,
                              "cosine_min": check.cosine_min, "passed_fp16_tolerance": check.passed},
        }
        return artifact.derive(path=out, files=[out], precision="fp16",
                               details={**artifact.details, "fp16": details})


def register(registry: Registry) -> None:
    registry.add_step(ConvertOnnxFp16)
