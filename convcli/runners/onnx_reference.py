"""What the LiteRT and ncnn runners read from the reference ONNX graph to name their intermediate tensors.

Both runtimes run one sample at a time and rename tensors, so each needs, per reference tensor: its place in
topological order, the op that computes it, its shape, and which axis is the batch (a sequence-first
transformer keeps the batch in axis 1: samples must be joined there, not on axis 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convcli.core.intermediates import FLOAT_TYPES, ReferenceGraph


@dataclass
class ReferenceView:
    """The reference ONNX graph as the LiteRT and ncnn matchers need it (read through ``core``'s
    ``ReferenceGraph``).

    ``names``: inputs, then node outputs, in topological order. ``nodes``: (op type, inputs, output) per node
    output. ``shapes``: dims with -1 where shape inference knows no size. ``floats``: tensors of a float type
    (the ones compared). ``node_io``: each node's inputs and outputs by node name. ``batch_axis``: the axis
    carrying the graph input's batch symbol, None for a tensor without one (static: it does not depend on the
    sample). ``unjoinable``: tensors whose batch is folded into
    another axis (attention's (seq*batch, dim) or (batch*heads, seq, dim): a dim shape inference could not name)
    or unknown: samples run one at a time cannot be joined into the batch's tensor, because the fold's order
    (batch-major or not) is not recorded. Graphs with a static batch use axis 0 throughout.
    """

    names: list[str] = field(default_factory=list)
    nodes: list[tuple[str, list[str], str]] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    floats: set[str] = field(default_factory=set)
    batch_axis: dict[str, int | None] = field(default_factory=dict)
    unjoinable: set[str] = field(default_factory=set)
    node_io: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # node name -> inputs, outputs

    def axis(self, name: str) -> int | None:
        return self.batch_axis.get(name, 0)


def read_reference(reference: Path | None, feed: dict[str, np.ndarray] | None = None) -> ReferenceView:
    """Read ``reference`` (weights not loaded); None gives an empty view. With ``feed``, the inputs' symbolic
    dims take the feed's sizes in ``shapes`` (the batch symbol 1: the runners run one sample at a time)."""
    if reference is None:
        return ReferenceView()
    graph = ReferenceGraph.read(reference)
    out = ReferenceView()
    out.nodes = [(n.op, list(n.inputs), o) for n in graph.nodes for o in n.outputs]
    out.node_io = {n.name: (list(n.inputs), list(n.outputs)) for n in graph.nodes}
    out.names = [*graph.inputs, *(o for _, _, o in out.nodes)]
    out.floats = {name for name, t in graph.types.items() if t in FLOAT_TYPES}
    first = graph.shapes.get(graph.inputs[0], ()) if graph.inputs else ()
    batch = first[0] if first and isinstance(first[0], str) else None
    symbols = {d for name in graph.inputs for d in graph.shapes.get(name, ()) if isinstance(d, str)}
    sizes: dict[str, int] = {}
    for name in graph.inputs:
        arr = (feed or {}).get(name)
        if arr is not None and arr.ndim == len(graph.shapes.get(name, ())):
            sizes.update({d: int(n) for d, n in zip(graph.shapes[name], arr.shape, strict=True) if isinstance(d, str)})
    if batch is not None and batch in sizes:
        sizes[batch] = 1
    for name, dims in graph.shapes.items():
        out.shapes[name] = [d if isinstance(d, int) else sizes.get(d, -1) for d in dims]
        if batch is None:
            continue
        if batch not in dims and name in graph.outputs and dims and isinstance(dims[0], str):
            out.batch_axis[name] = 0  # parity reads every graph output as batch-first (tf2onnx renames the symbol)
            continue
        out.batch_axis[name] = dims.index(batch) if batch in dims else None
        if batch not in dims and any(isinstance(d, str) and d not in symbols for d in dims):
            out.unjoinable.add(name)
    return out


UNJOINABLE = "batch folded into another axis (samples run one at a time cannot be joined)"


def join_samples(per_sample: list[np.ndarray], axis: int) -> np.ndarray:
    """One batch from per-sample arrays (each with a batch of 1 at ``axis``)."""
    return per_sample[0] if len(per_sample) == 1 else np.concatenate(per_sample, axis=axis)
