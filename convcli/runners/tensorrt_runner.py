"""TensorRT engines (``.plan``) on an NVIDIA GPU, with CUDA tensors from torch as device buffers (no pycuda).

Each feed: inputs copied to the GPU, ``set_input_shape`` per input (the engine's optimization profile bounds
them; a feed whose batch exceeds the profile's max is run in chunks), outputs allocated at the shapes the
context then reports, ``execute_async_v3`` on a private CUDA stream, outputs copied back and returned in the
source's output order. Latency measured through ``Session`` therefore includes the host<->device copies: the
number a caller feeding numpy arrays gets.

Unavailable (with the reason) without the tensorrt package, without an NVIDIA GPU, or without a CUDA-enabled
torch. Not run in this project's CPU-only sessions; ``tests/test_tensorrt.py`` exercises it where it can run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convcli.converters.onnx_to_tensorrt import tensorrt_availability
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, UnavailableError
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session
from convcli.core.step import Availability


def cuda_torch_availability() -> Availability:
    """TensorRT usable, and torch sees a CUDA device (its tensors are the device buffers)."""
    avail = tensorrt_availability()
    if not avail.available:
        return avail
    try:
        import torch
    except ImportError as exc:
        return Availability(False, f"torch (device buffers) does not import: {exc}", avail.versions)
    if not torch.cuda.is_available():
        return Availability(False, f"no CUDA device visible to torch {torch.__version__} (a CPU-only build, or "
                                   "CUDA_VISIBLE_DEVICES hides the GPU)", avail.versions)
    return Availability(True, "", {**avail.versions, "torch": torch.__version__})


class TensorrtSession(Session):
    def __init__(self, artifact: Artifact) -> None:
        avail = cuda_torch_availability()
        if not avail.available:
            raise UnavailableError(f"TensorRT runner unavailable: {avail.reason}")
        trt = require("tensorrt")
        torch = require("torch")
        assert artifact.path is not None
        self.torch: Any = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(artifact.path.read_bytes())
        if self.engine is None:
            raise ConversionError(f"TensorRT cannot load {artifact.path.name}: an engine runs only on the TensorRT "
                                  "version and GPU model that built it")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.types = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        # The source's output order when the engine kept the ONNX names (it does), else the engine's order.
        wanted = list(artifact.output_names)
        self.order = wanted if sorted(wanted) == sorted(self.outputs) else self.outputs
        self.max_batch = self._profile_max_batch()
        first: list[int] = list(self.engine.get_tensor_shape(self.inputs[0])) if self.inputs else []
        self.fixed_batch = first[0] if first and first[0] > 0 else None
        self.description = (f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}, host<->device copies "
                            "included")

    def _profile_max_batch(self) -> int | None:
        """The smallest max of a dynamic leading dimension over the inputs (profile 0), or None."""
        tops = []
        for name in self.inputs:
            if self.engine.get_tensor_shape(name)[0] < 0:
                tops.append(int(self.engine.get_tensor_profile_shape(name, 0)[2][0]))
        return min(tops) if tops else None

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise ConversionError(f"TensorRT engine needs input(s) {', '.join(missing)} the source does not have")
        n = next(iter(feed.values())).shape[0] if feed else 0
        top = self.max_batch
        if top and n > top:
            parts = [self._run_once({k: v[i:i + top] for k, v in feed.items()}) for i in range(0, n, top)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        return self._run_once(feed)

    def _run_once(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        buffers: dict[str, Any] = {}
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                array = np.ascontiguousarray(feed[name].astype(self.types[name], copy=False))
                tensor = torch.from_numpy(array).to("cuda")
                if not self.context.set_input_shape(name, tuple(array.shape)):
                    raise ConversionError(f"TensorRT: input '{name}' shape {tuple(array.shape)} is outside the "
                                          "engine's optimization profile (rebuild with -O TensorrtFromOnnx."
                                          "profile_max=...)")
                self.context.set_tensor_address(name, tensor.data_ptr())
                buffers[name] = tensor
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ConversionError(f"TensorRT: output '{name}' has a data-dependent shape {shape}; this "
                                          "runner allocates outputs before running")
                dtype = torch.from_numpy(np.empty(0, dtype=self.types[name])).dtype
                tensor = torch.empty(shape, dtype=dtype, device="cuda")
                self.context.set_tensor_address(name, tensor.data_ptr())
                buffers[name] = tensor
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ConversionError("TensorRT: execute_async_v3 failed (its log is above)")
            self.stream.synchronize()
        outs = [buffers[name].cpu().numpy() for name in self.order]
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]

    def close(self) -> None:
        # Context before engine before runtime: TensorRT requires that order of destruction.
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                delattr(self, attr)


class TensorrtRunner(Runner):
    name = "tensorrt"
    formats = ("tensorrt",)
    requires = ("tensorrt", "torch")

    @classmethod
    def availability(cls) -> Availability:
        return cuda_torch_availability()

    def load(self, artifact: Artifact, threads: int) -> Session:
        return TensorrtSession(artifact)


def register(registry: Registry) -> None:
    registry.add_runner(TensorrtRunner)
