"""NCNN on CPU through the ``ncnn`` pip package.

ncnn blobs have no batch axis: the session runs one sample at a time (``fixed_batch = 1``), strips the batch
axis from each input and puts it back on each output, reshaped to the shape the source produced (recorded by
the converter), so a (1, 10) logit row stays (1, 10) instead of ncnn's flat (10,).

fp32 artifacts run with fp16/bf16 storage, fp16 arithmetic and fp16 packing off: ncnn turns them on by
default on CPUs that have them, which costs about three decimal digits (max abs err 2e-3 instead of 6e-6 on
the digits CNN) and would make an fp32 artifact fail fp32 parity. fp16 artifacts keep fp16 storage on; int8
artifacts (from ncnn2int8) keep fp16 off and int8 inference on, so only their quantized layers change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session

# What ncnn Mats hold: float inputs go in as float32, integer ones (token ids) as int32 (pnnx turns
# torch.long inputs into int; ncnn's Embed/Gather read int32).
_FLOAT_KINDS = "f"
_INT_KINDS = "iub"


def blob_map(artifact: Artifact) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Source input name -> ncnn blob, and (source output name, ncnn blob) in the source's order.

    Artifacts made by convcli record the mapping in ``details['ncnn_blobs']``; a bare .param (``convcli
    check``) gets pnnx's naming: in0, in1, ... and out0, out1, ... in the source's order.
    """
    recorded = artifact.details.get("ncnn_blobs") or {}
    inputs = recorded.get("inputs") or {s.name: f"in{i}" for i, s in enumerate(artifact.inputs)}
    names = artifact.output_names or ["output"]
    outputs_rec = recorded.get("outputs") or {}
    outputs = [(n, outputs_rec.get(n, f"out{i}")) for i, n in enumerate(names)]
    return dict(inputs), outputs


def restore_shape(arr: np.ndarray, ref_shape: list[int] | None) -> np.ndarray:
    """Give an ncnn output (no batch axis, size-1 axes possibly dropped) the source's shape for one sample.

    ``ref_shape`` is the source's output shape at batch 1 and the example sizes. When the element count
    matches it, reshape to it; otherwise (another size of a dynamic dim) put back the batch axis and any
    size-1 axes the source had.
    """
    if ref_shape:
        if arr.size == math.prod(ref_shape):
            return arr.reshape(ref_shape)
        squeezed = np.squeeze(arr)
        non_one = [i for i, d in enumerate(ref_shape) if d != 1]
        if squeezed.ndim == len(non_one):
            shape = [1] * len(ref_shape)
            for axis, size in zip(non_one, squeezed.shape, strict=True):
                shape[axis] = size
            return squeezed.reshape(shape)
    return arr[np.newaxis, ...]


class NcnnSession(Session):
    """One loaded ncnn Net; each ``run`` takes a batch of exactly one sample."""

    fixed_batch = 1

    def __init__(self, param: Path, weights: Path, precision: str, threads: int, inputs: dict[str, str],
                 outputs: list[tuple[str, str]], output_shapes: dict[str, list[int]] | None = None) -> None:
        ncnn = require("ncnn", "running NCNN models")
        self.ncnn = ncnn
        if not param.is_file() or not weights.is_file():
            missing = param if not param.is_file() else weights
            raise ConversionError(f"ncnn model file {missing} does not exist",
                                  hint="an ncnn model is a .param and a .bin of the same name side by side")
        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = threads
        opt.use_vulkan_compute = False
        opt.use_bf16_storage = False
        half = precision == "fp16"
        opt.use_fp16_storage = half
        opt.use_fp16_packed = half
        opt.use_fp16_arithmetic = half
        opt.use_int8_inference = True  # ncnn's default: layers ncnn2int8 quantized run in int8, others in fp32
        if net.load_param(str(param)) != 0:
            raise ConversionError(f"ncnn cannot load {param.name}: not a valid ncnn .param (or a layer type "
                                  "this ncnn build lacks)")
        if net.load_model(str(weights)) != 0:
            raise ConversionError(f"ncnn cannot load weights {weights.name}: file too short for {param.name}",
                                  hint="the .bin must come from the same conversion as the .param")
        self.net = net
        self.inputs = inputs
        self.outputs = outputs
        self.output_shapes = output_shapes or {}
        mode = ("fp16 storage/arithmetic" if half else
                "int8 layers (ncnn2int8), rest fp32 (fp16/bf16 off)" if precision == "int8" else "fp32 (fp16/bf16 off)")
        self.description = f"ncnn {package_version('ncnn') or ncnn.__version__} CPU, {threads} threads, {mode}"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        ncnn = self.ncnn
        keep: list[Any] = []  # ncnn Mats may borrow the numpy buffers: keep them alive until extraction
        with self.net.create_extractor() as ex:
            for name, blob in self.inputs.items():
                if name not in feed:
                    raise ConversionError(f"ncnn model needs input '{name}' (blob {blob}) the feed lacks")
                arr = feed[name]
                if arr.shape[0] != 1:
                    raise ConversionError(f"ncnn runs one sample at a time; got a batch of {arr.shape[0]}")
                sample = arr[0]
                if sample.ndim > 4:
                    raise ConversionError(f"input '{name}' has {sample.ndim} dims per sample; ncnn takes at most 4")
                kind = sample.dtype.kind
                dtype = np.float32 if kind in _FLOAT_KINDS else np.int32 if kind in _INT_KINDS else None
                if dtype is None:
                    raise ConversionError(f"input '{name}' of dtype {sample.dtype} cannot be fed to ncnn")
                data = np.ascontiguousarray(sample.astype(dtype, copy=False))
                mat = ncnn.Mat(data)
                keep += [data, mat]
                if ex.input(blob, mat) != 0:
                    raise ConversionError(f"ncnn model has no input blob '{blob}' (for input '{name}')")
            results = []
            for name, blob in self.outputs:
                ret, mat = ex.extract(blob)
                if ret != 0:
                    raise ConversionError(f"ncnn failed to compute output blob '{blob}' (for output '{name}'), "
                                          f"error {ret}")
                out = np.array(mat, copy=True)
                results.append(restore_shape(out, self.output_shapes.get(name)))
        return results

    def close(self) -> None:
        self.net.clear()


def session_for(artifact: Artifact, threads: int) -> NcnnSession:
    if artifact.path is None:
        raise ConversionError("ncnn artifact has no .param file")
    inputs, outputs = blob_map(artifact)
    shapes = artifact.details.get("ncnn_output_shapes") or {}
    return NcnnSession(artifact.path, artifact.path.with_suffix(".bin"), artifact.precision, threads, inputs,
                       outputs, shapes)


def run_request(request_file: str) -> None:
    """Child-process entry used by the converters' check: run the ncnn model on saved inputs.

    ``request_file`` is JSON: param, bin, precision, threads, inputs (name -> blob), outputs ([name, blob]),
    output_shapes, cases ({case: [inputs .npz, outputs .npz]}). Running in a child means a crash of the
    ncnn runtime on a bad conversion fails the conversion step instead of killing convcli.
    """
    req = json.loads(Path(request_file).read_text())
    session = NcnnSession(Path(req["param"]), Path(req["bin"]), req["precision"], req["threads"], req["inputs"],
                          [tuple(o) for o in req["outputs"]], req["output_shapes"])
    for src, dst in req["cases"].values():
        with np.load(src) as data:
            feed = {k: data[k] for k in data.files}
        outs = session.run(feed)
        np.savez(dst, *outs)


class NcnnRunner(Runner):
    name = "ncnn"
    formats = ("ncnn",)
    requires = ("ncnn",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        return session_for(artifact, threads)


def register(registry: Registry) -> None:
    registry.add_runner(NcnnRunner)
