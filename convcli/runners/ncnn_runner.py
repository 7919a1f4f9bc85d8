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

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, UnavailableError
from convcli.core.intermediates import Intermediates, TensorInfo
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session
from convcli.runners.onnx_reference import UNJOINABLE, ReferenceView, join_samples, read_reference

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
        results = self.extract(feed, [blob for _, blob in self.outputs])
        return [restore_shape(results[blob], self.output_shapes.get(name)) for name, blob in self.outputs]

    def extract(self, feed: dict[str, np.ndarray], blobs: list[str]) -> dict[str, np.ndarray]:
        """Feed one sample and return the named blobs as ncnn computes them (no batch axis). Light mode is
        off for more than one blob: it frees blobs once consumed, and an intermediate asked for later would
        then be computed again from inputs that are gone."""
        ncnn = self.ncnn
        keep: list[Any] = []  # ncnn Mats may borrow the numpy buffers: keep them alive until extraction
        with self.net.create_extractor() as ex:
            if len(blobs) > 1:
                ex.set_light_mode(False)
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
            results = {}
            for blob in blobs:
                ret, mat = ex.extract(blob)
                if ret != 0:
                    raise ConversionError(f"ncnn failed to compute blob '{blob}', error {ret}")
                results[blob] = np.array(mat, copy=True)
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


# ncnn layer type -> the ONNX op types whose output it computes. pnnx numbers ncnn blobs (1, 2, ...; in0/out0
# for the graph's inputs and outputs) after its own fusions, whether it converts TorchScript or ONNX, so an
# intermediate blob carries no ONNX or module name: blobs are matched to the reference graph by structure.
NCNN_TO_ONNX: dict[str, tuple[str, ...]] = {
    "Convolution": ("Conv",), "ConvolutionDepthWise": ("Conv",), "Convolution1D": ("Conv",),
    "Convolution3D": ("Conv",), "ConvolutionDepthWise1D": ("Conv",), "ConvolutionDepthWise3D": ("Conv",),
    "Deconvolution": ("ConvTranspose",), "DeconvolutionDepthWise": ("ConvTranspose",),
    "InnerProduct": ("Gemm", "MatMul", "Add"), "Gemm": ("Gemm", "MatMul", "Add"), "MatMul": ("MatMul", "Gemm"),
    "Pooling": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"),
    "Pooling1D": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"),
    "Reduction": ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"),
    "ReLU": ("Relu", "LeakyRelu"), "Clip": ("Clip",), "Sigmoid": ("Sigmoid",), "TanH": ("Tanh",),
    "HardSwish": ("HardSwish",), "HardSigmoid": ("HardSigmoid",), "Mish": ("Mish",), "Swish": ("Mul",),
    "GELU": ("Gelu", "Mul"), "ELU": ("Elu",), "PReLU": ("PRelu",), "Softmax": ("Softmax",),
    "BatchNorm": ("BatchNormalization",), "LayerNorm": ("LayerNormalization",),
    "GroupNorm": ("GroupNormalization", "InstanceNormalization"), "InstanceNorm": ("InstanceNormalization",),
    "Eltwise": ("Add", "Mul", "Max", "Sum"), "BinaryOp": ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"),
    "UnaryOp": ("Abs", "Neg", "Floor", "Ceil", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos", "Tan", "Tanh",
                "Round", "Erf"),
    "Flatten": ("Flatten", "Reshape"), "Reshape": ("Reshape", "Flatten", "Squeeze", "Unsqueeze"),
    "Squeeze": ("Squeeze", "Reshape"), "ExpandDims": ("Unsqueeze", "Reshape"), "Permute": ("Transpose",),
    "Concat": ("Concat",), "Slice": ("Slice", "Split"), "Crop": ("Slice",), "Interp": ("Resize", "Upsample"),
    "Padding": ("Pad",), "Dropout": ("Dropout", "Identity"), "Embed": ("Gather",), "Gather": ("Gather",),
    # The whole attention block: its output is the out-projection's (the first of these of its shape).
    "MultiHeadAttention": ("Gemm", "MatMul", "Add"),
}
# ncnn's fused activation (param 9 of Convolution*, Deconvolution*, InnerProduct) -> the ONNX op it absorbed.
FUSED_ACTIVATION = {1: ("Relu", "LeakyRelu"), 2: ("LeakyRelu",), 3: ("Clip",), 4: ("Sigmoid",), 5: ("Mish",),
                    6: ("HardSwish",)}
_WITH_ACTIVATION = ("Convolution", "Deconvolution", "InnerProduct")


def param_layers(path: Path) -> list[tuple[str, str, list[str], list[str], dict[int, str]]]:
    """Layers of an ncnn .param: (type, name, bottoms, tops, params by id)."""
    lines = [ln.split() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    layers = []
    for tokens in lines[2:]:
        nb, nt = int(tokens[2]), int(tokens[3])
        params = {}
        for item in tokens[4 + nb + nt:]:
            key, _, value = item.partition("=")
            with contextlib.suppress(ValueError):
                params[int(key)] = value
        layers.append((tokens[0], tokens[1], tokens[4:4 + nb], tokens[4 + nb:4 + nb + nt], params))
    return layers


def _size_fits(ref_shape: list[int] | None, batch_axis: int | None, blob_shape: tuple[int, ...] | None) -> bool:
    """Whether a blob (one sample) can hold the reference tensor at batch 1: the same dims once size-1 dims are
    dropped (ncnn drops the batch and keeps c/h/w in ONNX's order) where every dim is known, else True."""
    if ref_shape is None or blob_shape is None:
        return True
    dims = [1 if i == batch_axis else d for i, d in enumerate(ref_shape)]
    return any(d < 0 for d in dims) or [d for d in dims if d != 1] == [d for d in blob_shape if d != 1]


def match_blobs(layers: list[tuple[str, str, list[str], list[str], dict[int, str]]], ref: ReferenceView,
                inputs: dict[str, str], outputs: list[tuple[str, str]],
                blob_shapes: dict[str, tuple[int, ...]] | None = None,
                ) -> tuple[dict[str, str], dict[str, int], dict[str, tuple[str, str]]]:
    """Which reference ONNX tensor each ncnn blob holds, by structure (blob names carry no ONNX names).

    Graph inputs and outputs match through the artifact's blob map. Every other layer, in file order, takes
    the earliest reference tensor not yet taken that (a) a node of a corresponding op type computes
    (``NCNN_TO_ONNX``; with a fused activation, the activation's op), (b) comes after the tensors matched to
    the layer's inputs, and (c) has the blob's dims, size-1 dims dropped (``_size_fits``; when ``blob_shapes``
    are known). ``InnerProduct``/``Gemm`` with a bias take the ``Add`` after a ``MatMul``. A fused
    activation swallows the tensor of the op before it (counted as fused). Split layers only copy a blob (ncnn
    inserts them where a blob has several consumers): their tops stand for the bottom's tensor.

    Returns blob -> reference name, reason -> count of blobs left unmatched, and blob -> (layer, type).
    """
    nodes = ref.nodes
    position = {out: i for i, (_, _, out) in enumerate(nodes)}
    producer = {out: (op, ins) for op, ins, out in nodes}
    found: dict[str, str] = {blob: name for name, blob in inputs.items()}
    found.update({blob: name for name, blob in outputs if name in position})
    taken = set(found.values())
    unmatched: dict[str, int] = {}
    where: dict[str, tuple[str, str]] = {}

    def count(reason: str, n: int = 1) -> None:
        unmatched[reason] = unmatched.get(reason, 0) + n

    for kind, name, bottoms, tops, params in layers:
        for top in tops:
            where[top] = (name, kind)
        if kind == "Input":
            continue
        if kind == "Split":
            for top in tops:
                if bottoms and bottoms[0] in found:
                    found.setdefault(top, found[bottoms[0]])
            continue
        for top in tops:
            if top in found:  # a graph output
                continue
            ops = NCNN_TO_ONNX.get(kind)
            activation = int(params.get(9, "0") or 0) if kind.startswith(_WITH_ACTIVATION) else 0
            if activation:
                ops = FUSED_ACTIVATION.get(activation)
            elif kind in ("InnerProduct", "Gemm"):
                # With a bias (InnerProduct: param 1; Gemm: a C operand, param 10 >= 0), a MatMul's output is not
                # this blob: the Add after it is.
                bias = params.get(1, "0") == "1" if kind == "InnerProduct" else params.get(10, "-1") != "-1"
                ops = ("Gemm", "Add") if bias else ("Gemm", "MatMul")
            if not ops:
                count(f"no ONNX counterpart known for ncnn {kind}")
                continue
            after = max((position.get(found.get(b, ""), -1) for b in bottoms), default=-1)
            shape = (blob_shapes or {}).get(top)
            hit = next((out for op, _, out in nodes[after + 1:] if op in ops and out not in taken
                        and _size_fits(ref.shapes.get(out), ref.axis(out), shape)), None)
            if hit is None:
                count("no reference tensor of that op type and size after its inputs")
                continue
            found[top] = hit
            taken.add(hit)
            if activation:
                swallowed = [i for i in producer[hit][1] if i in producer and i not in taken]
                count("fused by the converter (an ONNX tensor computed inside a later layer)", len(swallowed[:1]))
    return found, unmatched, where


def to_reference_shape(arr: np.ndarray, ref_shape: list[int] | None, batch_axis: int | None) -> np.ndarray:
    """One sample of an ncnn blob (no batch axis; c/h/w is ONNX's channel-first order) in the reference tensor's
    shape at batch 1: reshaped when the reference shape is fully known, else the batch axis put back."""
    if ref_shape is not None:
        known = [1 if i == batch_axis else d for i, d in enumerate(ref_shape)]
        if all(d >= 0 for d in known) and arr.size == math.prod(known):
            return arr.reshape(known)
        if batch_axis is not None and arr.ndim == len(ref_shape) - 1:
            return np.expand_dims(arr, batch_axis)
    return arr if batch_axis is None else np.expand_dims(arr, 0)


def ncnn_intermediates(artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                       wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
    """Every blob of the ncnn model for ``feed`` (one sample at a time), named after the reference ONNX tensor
    it holds (``match_blobs``), in that tensor's shape, samples joined on its batch axis. ncnn computes in
    float32 (fp16 storage and int8 layers are converted back when a blob is extracted), so nothing needs
    dequantizing here. Split blobs (copies) are not returned."""
    if reference is None:
        raise UnavailableError("ncnn blobs carry no ONNX names; matching them needs the reference ONNX graph",
                               hint="divergence on ncnn needs a chain that started from (or exported) ONNX")
    session = session_for(artifact, threads)
    try:
        assert artifact.path is not None
        layers = param_layers(artifact.path)
        ref = read_reference(reference, feed)
        blobs = [top for kind, _, _, tops, _ in layers if kind not in ("Input", "Split") for top in tops]
        n = next(iter(feed.values())).shape[0] if feed else 0
        samples = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(n)]
        first = session.extract(samples[0], blobs) if samples else {}
        shapes = {b: tuple(a.shape) for b, a in first.items()}
        found, unmatched, where = match_blobs(layers, ref, session.inputs, session.outputs, shapes)
        for blob in [b for b in blobs if n > 1 and found.get(b) in ref.unjoinable]:
            del found[blob]
            unmatched[UNJOINABLE] = unmatched.get(UNJOINABLE, 0) + 1
        keep = set(wanted) if wanted is not None else None
        chosen = [b for b in blobs if b in found and (keep is None or found[b] in keep)]
        got: dict[str, list[np.ndarray]] = {b: [] for b in chosen}
        for i, sample in enumerate(samples):
            raw = first if i == 0 else session.extract(sample, chosen)
            for b in chosen:
                name = found[b]
                got[b].append(to_reference_shape(raw[b], ref.shapes.get(name), ref.axis(name)).astype(np.float32))
        tensors = {b: got[b][0] if ref.axis(found[b]) is None else join_samples(got[b], ref.axis(found[b]) or 0)
                   for b in chosen}
        return Intermediates(tensors=tensors, order=list(chosen), reference={b: found[b] for b in chosen},
                             info={b: TensorInfo(layer=where[b][0], op=where[b][1]) for b in chosen},
                             unmatched=unmatched)
    finally:
        session.close()


class NcnnRunner(Runner):
    name = "ncnn"
    formats = ("ncnn",)
    requires = ("ncnn",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        return session_for(artifact, threads)

    def intermediates(self, artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                      wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
        return ncnn_intermediates(artifact, feed, threads, wanted, reference)


def register(registry: Registry) -> None:
    registry.add_runner(NcnnRunner)
