"""ONNX Runtime on CPU, with the thread count pinned."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
from convcli.core.intermediates import FLOAT_TYPES, Intermediates, ReferenceGraph, TensorInfo
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def ort_session(path: str, threads: int, optimization: str = "all") -> object:
    """An ORT CPU session; also used by steps that check their own output (e.g. SimplifyOnnx)."""
    ort = require("onnxruntime", "running ONNX models")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    opts.graph_optimization_level = levels[optimization]
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(f"ONNX Runtime cannot load {path}: {' '.join(str(exc).split())[:240]}") from None


class OrtSession(Session):
    def __init__(self, artifact: Artifact, threads: int) -> None:
        ort = require("onnxruntime")
        assert artifact.path is not None
        self.session = ort_session(str(artifact.path), threads)
        self.inputs = {i.name: ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}  # type: ignore[attr-defined]
        first = self.session.get_inputs()[0]  # type: ignore[attr-defined]
        self.fixed_batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) else None
        self.description = f"ONNX Runtime {ort.__version__} CPU, {threads} threads"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        cast: dict[str, np.ndarray] = {k: np.ascontiguousarray(v.astype(self.inputs[k], copy=False))
                                       for k, v in feed.items() if k in self.inputs}
        missing = set(self.inputs) - set(cast)
        if missing:
            raise ConversionError(f"ONNX model needs input(s) {', '.join(sorted(missing))} the source does not have")
        outs = self.session.run(None, cast)  # type: ignore[attr-defined]
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    formats = ("onnx",)
    requires = ("onnxruntime",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        return OrtSession(artifact, threads)

    def intermediates(self, artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                      wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
        """Every float tensor a node produces, added as a graph output of a shape-inferred copy (tensors whose
        element type stays unknown after inference are skipped and counted). ONNX keeps tensor names through
        convcli's passes, so a tensor maps to the reference tensor of the same name."""
        assert artifact.path is not None
        return onnx_intermediates(artifact.path, feed, threads, wanted, reference)


def qdq_views(graph: ReferenceGraph) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output of its QuantizeLinear, in a QDQ graph: what every consumer of the
    tensor really reads. It is the value to compare, not the float tensor before it: ORT's quantizer drops a Relu
    after a Conv and lets the activation's quantization range clip instead, so the tensor named after the Relu
    holds the Conv's unclipped output until it is quantized."""
    dq_of = {n.inputs[0]: n.outputs[0] for n in graph.nodes if n.op == "DequantizeLinear" and n.inputs and n.outputs}
    return {n.inputs[0]: dq_of[n.outputs[0]] for n in graph.nodes
            if n.op == "QuantizeLinear" and n.inputs and n.outputs and n.outputs[0] in dq_of}


def onnx_intermediates(path: Path, feed: dict[str, np.ndarray], threads: int, wanted: list[str] | None,
                       reference: Path | None) -> Intermediates:
    """``OnnxRuntimeRunner.intermediates`` for a model file (also used for the reference graph itself)."""
    onnx = require("onnx", "capturing intermediate tensors")
    graph = ReferenceGraph.read(path)
    ref_names = set(ReferenceGraph.read(reference).tensor_names()) if reference is not None else None
    want = set(wanted) if wanted is not None else None
    result = Intermediates()
    extra: list[str] = []
    seen = qdq_views(graph)
    constant = set(graph.initializers)
    for node in graph.nodes:
        if node.inputs and all(i in constant for i in node.inputs):  # weights (dequantized, cast): not activations
            constant.update(node.outputs)
            continue
        for name in node.outputs:
            elem = graph.types.get(name)
            if name in seen.values():
                continue  # captured under the tensor it is a quantized view of
            if elem is None:
                result.count_unmatched("element type unknown after shape inference")
                continue
            if elem not in FLOAT_TYPES:
                continue
            if ref_names is not None and name not in ref_names:
                result.count_unmatched("not in the reference graph")
                continue
            if want is not None and name not in want:
                continue
            captured = seen.get(name, name)
            extra.append(captured)
            result.reference[captured] = name
            result.info[captured] = TensorInfo(layer=node.name, op=node.op + ("+QDQ" if captured != name else ""),
                                               module=node.module, source_line=node.source_line)
    model = onnx.load(str(path))
    model = onnx.shape_inference.infer_shapes(model) if model.ByteSize() < 2**31 - 2**26 else model
    by_name = {vi.name: vi for vi in model.graph.value_info}
    present = {o.name for o in model.graph.output}
    for name in extra:
        if name in present:
            continue
        vi = by_name.get(name)
        model.graph.output.append(vi if vi is not None else
                                  onnx.helper.make_tensor_value_info(name, graph.types.get(name, 1), None))
    with tempfile.TemporaryDirectory(prefix="convcli-intermediates-") as tmp:
        copy = Path(tmp) / "model.onnx"
        large = model.ByteSize() > 2**31 - 2**26
        onnx.save(model, str(copy), save_as_external_data=large, location="model.onnx.data" if large else None)
        session: Any = ort_session(str(copy), threads)
        types = {i.name: ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        first = session.get_inputs()[0].shape
        fixed = first[0] if first and isinstance(first[0], int) else None
        n = next(iter(feed.values())).shape[0] if feed else 0
        step = fixed if fixed and n > fixed and n % fixed == 0 else max(n, 1)
        names = [o.name for o in session.get_outputs()]
        parts = []
        for i in range(0, max(n, 1), step):
            part: dict[str, np.ndarray] = {k: np.ascontiguousarray(feed[k][i : i + step].astype(types[k], copy=False))
                    for k in types if k in feed}
            parts.append(dict(zip(names, session.run(None, part), strict=True)))
    for name in extra:
        arr = np.concatenate([np.asarray(p[name]) for p in parts], axis=0) if len(parts) > 1 else parts[0][name]
        result.tensors[name] = np.asarray(arr).astype(np.float32, copy=False)
        result.order.append(name)
    return result


def register(registry: Registry) -> None:
    registry.add_runner(OnnxRuntimeRunner)
