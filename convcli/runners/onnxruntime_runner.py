"""ONNX Runtime on CPU, with the thread count pinned."""

from __future__ import annotations

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
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
        cast = {k: np.ascontiguousarray(v.astype(self.inputs[k], copy=False)) for k, v in feed.items()
                if k in self.inputs}
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


def register(registry: Registry) -> None:
    registry.add_runner(OnnxRuntimeRunner)
