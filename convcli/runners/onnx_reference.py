"""What the LiteRT and ncnn runners read from the reference ONNX graph to name their intermediate tensors.

Both runtimes run one sample at a time and rename tensors, so each needs, per reference tensor: its place in
topological order, the op that computes it, its shape, and which axis is the batch (a sequence-first
transformer keeps the batch in axis 1: samples must be joined there, not on axis 0).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convcli.core.lazy import require


@dataclass
class ReferenceGraph:
    """The reference ONNX graph as the matchers need it.

    ``names``: inputs, then node outputs, in topological order. ``nodes``: (op type, inputs, output) per node
    output. ``shapes``: dims with -1 where shape inference knows no size. ``batch_axis``: the axis holding the
    batch (the graph input's first dim, followed by its symbol), None for a tensor without one; 0 throughout
    when the graph's batch is static.
    """

    names: list[str] = field(default_factory=list)
    nodes: list[tuple[str, list[str], str]] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    batch_axis: dict[str, int | None] = field(default_factory=dict)

    def axis(self, name: str) -> int | None:
        return self.batch_axis.get(name, 0)


def read_reference(reference: Path | None) -> ReferenceGraph:
    """Read ``reference`` (shape inference on a copy in memory; external data is not loaded). None: empty."""
    if reference is None:
        return ReferenceGraph()
    onnx = require("onnx", "matching intermediate tensors to the reference ONNX graph")
    model = onnx.load(str(reference), load_external_data=False)
    with contextlib.suppress(Exception):  # shapes sharpen the match; names and op types work without them
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    first = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    batch_symbol = first[0].dim_param if len(first) and first[0].dim_param else None
    out = ReferenceGraph()
    for v in [*graph.input, *graph.value_info, *graph.output]:
        dims = v.type.tensor_type.shape.dim
        if not v.type.tensor_type.HasField("shape"):
            continue
        out.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        if batch_symbol is not None:
            out.batch_axis[v.name] = next((i for i, d in enumerate(dims) if d.dim_param == batch_symbol), None)
    out.nodes = [(n.op_type, [i for i in n.input if i], o) for n in graph.node for o in n.output if o]
    out.names = [i.name for i in graph.input] + [o for _, _, o in out.nodes]
    return out


def join_samples(per_sample: list[np.ndarray], axis: int) -> np.ndarray:
    """One batch from per-sample arrays (each with a batch of 1 at ``axis``)."""
    return per_sample[0] if len(per_sample) == 1 else np.concatenate(per_sample, axis=axis)
