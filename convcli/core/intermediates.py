"""Intermediate tensors of one model run, named in the reference ONNX graph's terms (issue 10).

When an artifact fails parity, ``parity/divergence.py`` runs the reference graph and the artifact on a few failing
samples, asks each runner for its intermediate tensors (``Runner.intermediates``) and walks them in topological
order to find the first tensor that drifts. Every runtime names its tensors differently (ONNX Runtime keeps the
ONNX names, OpenVINO keeps them as friendly/tensor names, LiteRT and ncnn rename), so each runner maps what it
captured back to the **reference ONNX tensor name**: the one vocabulary the locator compares in.

The reference graph is the fp32 ONNX model the artifact's chain started from (for a PyTorch source: the exported
and simplified ONNX; for an ONNX source: the source file). A runner receives its path as ``reference`` and may
read it (``onnx.load(reference, load_external_data=False)``) to learn the names it should map to.

Contract for an implementation (a LiteRT or ncnn runner does exactly this):

* ``feed`` is a small batch (1-4 samples) keyed by the source's input names, in the source's layout, exactly as
  ``Session.run`` receives it. A fixed-batch runtime runs it one sample at a time and joins the results itself,
  on each tensor's batch axis (``runners/onnx_reference.py``: not always axis 0).
* ``wanted``: reference ONNX tensor names the caller wants (``None``: every tensor you can capture). Returning
  more is allowed (extras are ignored), returning fewer is expected (what you cannot match is counted, see below).
  On big graphs the locator first asks for a subset, then bisects with narrower ``wanted`` lists, so honouring it
  saves time.
* ``tensors``: backend tensor name -> numpy array for the whole batch, float32 (cast fp16/int8-dequantized data up;
  an int8 tensor must be **dequantized** with its scale/zero point, never returned raw), in the **reference ONNX
  tensor's layout**: transpose NHWC back to NCHW where the runtime changed the layout (the locator also accepts a
  rank-4 array whose (0, 3, 1, 2) transpose has the reference shape, but do it yourself when you know).
* ``order``: backend tensor names in the backend's execution (topological) order; every key of ``tensors`` appears.
* ``reference``: backend tensor name -> reference ONNX tensor name it corresponds to. Only tensors with an entry
  here are compared; a backend tensor without one is *unmatched*.
* ``info``: backend tensor name -> ``TensorInfo`` (the backend layer that produced it and its op type; source
  module/line where the runtime knows them). Optional but it makes the report readable.
* ``unmatched``: reason -> how many backend tensors had no reference name for that reason (e.g.
  ``{"fused by the converter": 12, "no ONNX name recorded": 3}``). The report prints the total and the reasons, so
  an artifact whose tensors match nothing says so in one line instead of reporting "no divergence".
* Raise ``UnavailableError`` (one line, with a hint) when the runtime cannot return intermediates at all (the
  default ``Runner.intermediates`` does); the locator then reports the row's divergence as unavailable with that
  line. Any other exception is caught by the locator and becomes a note on the row, never a crashed run.

Matching tips: onnx2tf keeps ONNX node names in TFLite tensor names (often with suffixes); pnnx/onnx2ncnn keep
ONNX output tensor names as ncnn blob names when converting from ONNX. Where a converter fuses ops (Conv+Relu),
map the fused output to the *last* ONNX tensor it covers (the Relu's output), and count the swallowed ones as
unmatched ("fused").
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TensorInfo:
    """Where a captured tensor came from, in the backend's own words."""

    layer: str = ""
    op: str = ""
    module: str | None = None
    source_line: str | None = None


@dataclass
class Intermediates:
    """Intermediate tensors of one run of one model on one feed (see the module docstring for the contract)."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    reference: dict[str, str] = field(default_factory=dict)
    info: dict[str, TensorInfo] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)

    def count_unmatched(self, reason: str, n: int = 1) -> None:
        self.unmatched[reason] = self.unmatched.get(reason, 0) + n

    def by_reference(self) -> dict[str, np.ndarray]:
        """Reference ONNX tensor name -> array, for every matched tensor (the first backend tensor wins when two
        map to the same reference name)."""
        out: dict[str, np.ndarray] = {}
        for name in self.order:
            ref = self.reference.get(name)
            if ref is not None and ref not in out and name in self.tensors:
                out[ref] = self.tensors[name]
        return out


@dataclass
class RefNode:
    """One node of the reference ONNX graph, with what the dynamo exporter recorded about its PyTorch origin."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    scopes: list[str] = field(default_factory=list)  # module names, outermost first ('stem', 'stem.conv')
    source_line: str | None = None

    @property
    def module(self) -> str | None:
        return self.scopes[-1] if self.scopes else None


FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


class ReferenceGraph:
    """The reference ONNX graph read once (weights not loaded): nodes in graph order (ONNX requires topological
    order), which node produced each tensor, shapes and element types after shape inference, and module scopes.

    Runners use it to learn the names to map to (``tensor_names``) and, for PyTorch, which ONNX tensor each module
    produced (``module_outputs``). ``ReferenceGraph.read`` reuses the last few graphs read: localization asks for
    the same reference once per side per round, and shape inference on a large graph takes seconds."""

    @staticmethod
    def read(path: Path) -> ReferenceGraph:
        """The graph at ``path``, parsed once per file version (path, size, modification time)."""
        p = Path(path).resolve()
        st = p.stat()
        return _read_reference_graph(p, st.st_size, st.st_mtime_ns)

    def __init__(self, path: Path) -> None:
        from convcli.core.lazy import require

        onnx = require("onnx", "reading the reference ONNX graph")
        self.path = Path(path)
        model = onnx.load(str(path), load_external_data=False)
        with contextlib.suppress(Exception):  # inference helps with names/types; it is never required
            model = onnx.shape_inference.infer_shapes(model)
        g = model.graph
        self.initializers = {t.name for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int | str, ...]] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                             for d in tt.shape.dim)
        self.nodes: list[RefNode] = []
        self.producer: dict[str, RefNode] = {}
        for i, n in enumerate(g.node):
            meta = {p.key: p.value for p in n.metadata_props}
            node = RefNode(name=n.name or f"{n.op_type}_{i}", op=n.op_type, inputs=[x for x in n.input if x],
                           outputs=[x for x in n.output if x], scopes=_scopes(meta),
                           source_line=_source_line(meta))
            self.nodes.append(node)
            for o in node.outputs:
                self.producer[o] = node

    @functools.cached_property
    def consumers(self) -> dict[str, list[RefNode]]:
        """Tensor -> the nodes that read it."""
        found: dict[str, list[RefNode]] = {}
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                found.setdefault(i, []).append(n)
        return found

    def tensor_names(self) -> list[str]:
        """Float tensors produced by nodes, in topological order (the names an Intermediates maps to)."""
        return [o for n in self.nodes for o in n.outputs if self.types.get(o) in FLOAT_TYPES]

    def module_outputs(self) -> dict[str, str]:
        """PyTorch module name -> the ONNX tensor it produced: the first output of the last node recorded in the
        module's scope (the dynamo exporter's ``pkg.torch.onnx.name_scopes``). Empty for graphs without scopes
        (the TorchScript exporter, or a simplifier that dropped node metadata)."""
        out: dict[str, str] = {}
        for n in self.nodes:
            if n.outputs and self.types.get(n.outputs[0]) in FLOAT_TYPES:
                for s in n.scopes:
                    out[s] = n.outputs[0]
        return out


def _scopes(meta: dict[str, str]) -> list[str]:
    import ast

    raw = meta.get("pkg.torch.onnx.name_scopes")
    if not raw:
        return []
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    # ['', 'stem', 'stem.conv', 'conv2d']: the root, then modules, then the op's own name (not a module)
    return [s for s in names[1:-1] if isinstance(s, str) and s]


def _source_line(meta: dict[str, str]) -> str | None:
    """``file.py:LINE: code`` of the innermost frame of the exporter's stack trace outside torch itself."""
    import re

    trace = meta.get("pkg.torch.onnx.stack_trace") or ""
    lines = trace.splitlines()
    best = None
    for i, ln in enumerate(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+)', ln)
        if m and "/torch/" not in m.group(1):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            best = f"{m.group(1)}:{m.group(2)}: {code}".rstrip(": ")
    return best


@functools.lru_cache(maxsize=4)
def _read_reference_graph(path: Path, size: int, mtime_ns: int) -> ReferenceGraph:
    """``ReferenceGraph.read``'s cache: size and mtime are part of the key, so a rewritten file is read again."""
    return ReferenceGraph(path)
