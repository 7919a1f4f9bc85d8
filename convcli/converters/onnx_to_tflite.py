"""ONNX -> TFLite (LiteRT flatbuffer) through onnx2tf, run in a child process.

onnx2tf imports TensorFlow (seconds of start-up, gigabytes of libraries, and crashes we cannot catch), so
it never runs in the convcli process: ``run_python`` starts a child with a timeout, and a crash, hang or
error becomes this target's one-line ConversionError. What the child needs and why:

* **Static shapes.** onnx2tf fixes the batch to 1 and fails on dynamic transformer shapes. Its own fix
  (``-ois``) only rewrites the graph inputs and relies on the ``onnxsim`` program to propagate them; that
  program is not installed here (and onnxsim 0.8 makes network lookups). So convcli fixes the shapes
  itself with onnxslim (``input_shapes``): a dynamic batch becomes 1, every other dynamic dimension its
  example size (give another size with ``--input``), recorded in ``details["fixed shapes"]``; onnx2tf
  then runs with ``not_use_onnxsim``.
* **No download.** For any image-like input (4-D, 3 channels, batch <= 20) onnx2tf fetches a sample file
  from GitHub unless ``calibration_image_sample_data_20x128x128x3_float32.npy`` is in its working folder.
  convcli always writes that file there (from the calibration images when they are 3-channel, else seeded
  random data), and the child also blocks non-local DNS look-ups and connections, so an unexpected
  download attempt fails loudly instead of leaving the machine.
* **Layouts.** onnx2tf turns channel-first inputs and outputs into channel-last ones (unless
  ``keep_nchw``, onnx2tf's ``-kat``, keeps the inputs as they are). Which tensor ended up in which layout
  is read from the shapes and, where shapes cannot tell (e.g. 1x3x3x3), from running the TFLite model
  against ONNX Runtime on seeded data; the result is ``artifact.layout`` / ``artifact.output_layout``,
  which the LiteRT runner uses to map tensors back, and the check's error is in ``details``.
  Inputs that are channel-last already (ONNX exported from TensorFlow, e.g. by tf2onnx: the input's only
  consumer is a Transpose, or for one channel a Reshape, to channel-first) are kept as they are (``-kat``
  for those inputs): onnx2tf would otherwise move their dim 1 to the end as if it were the channels
  (1x8x8x1 -> 1x8x1x8 plus a TRANSPOSE op). They take the source's own feed (no layout recorded).

* **INT8.** Full-integer quantization (onnx2tf ``-oiqt``) calibrates on the job's ``--calibration`` data,
  never on onnx2tf's downloaded or random images: each input's samples are written as one .npy per input
  in the layout the TF model takes (channel-last for 3-5-D inputs unless ``keep_nchw``) and passed with
  ``-cind NAME FILE 0 1`` (mean 0, std 1: convcli's data is already preprocessed). onnx2tf writes
  ``model_integer_quant.tflite`` (int8 inside, float32 inputs/outputs) and ``model_full_integer_quant.tflite``
  (int8 inputs/outputs too) in one run; ``int8_io`` picks one. The LiteRT runner quantizes float feeds and
  dequantizes int8 outputs with each tensor's scale and zero point, so parity still compares floats.

One onnx2tf run writes every file (float32, float16 and, with ``-oiqt``, the int8 ones), so a step reuses
the output folder of an earlier run in this process with the same static ONNX, onnx2tf options and data
(``_RUNS``, keyed by content): ``--to tflite:fp32+fp16`` runs onnx2tf once, and so do int8 with and without
``int8_io``. The float runs never share with the int8 ones: ``-cind`` also changes the data onnx2tf checks
its own conversion with.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shutil
import sys
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.cache import make_key
from convcli.core.errors import ConversionError, first_line
from convcli.core.fsutil import sha256_file
from convcli.core.isolation import run_python
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.step import Availability, Converter, StepContext
from convcli.core.tensors import Dim, TensorSpec
from convcli.parity.data import DataSet, random_data
from convcli.runners.tflite_runner import (
    CHANNEL_FIRST,
    CHANNEL_LAST,
    LAYER_MAP_SUFFIX,
    TfliteSession,
    arrangements,
    is_channel_last,
    layout_candidates,
    op_histogram,
)

SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
CHECK_SAMPLES = 2
MAX_LAYOUT_COMBOS = 64
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MARK = "CONVCLI_CHILD_ERROR:"
_PYTHON_ERROR = re.compile(r"^(\w+(Error|Exception)): (.+)$")
# onnx2tf's file for each shipped precision (int8: float32 I/O, or int8 I/O with int8_io).
# What the child writes beside onnx2tf's files: ONNX tensor -> Keras layer (see ``write_layer_names``); shipped
# beside the .tflite under the runner's ``LAYER_MAP_SUFFIX`` so intermediates can be matched to ONNX names.
LAYER_NAMES = "convcli_onnx2tf_layers.json"
PRODUCED = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite", "int8": "model_integer_quant.tflite",
            "int8-io": "model_full_integer_quant.tflite"}

# The child: block non-local network use, then run onnx2tf.convert with the JSON keyword arguments.
_CHILD = r'''
import json, socket, sys

def _local(host):
    if isinstance(host, bytes):
        host = host.decode()
    return host in (None, "", "localhost", "127.0.0.1", "::1")

_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect

def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        raise OSError(f"convcli blocks network access in the onnx2tf child (lookup of {host})")
    return _getaddrinfo(host, *args, **kwargs)

def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise OSError(f"convcli blocks network access in the onnx2tf child (connect to {address[0]})")
    return _connect(self, address)

socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect
kwargs = json.loads(__KWARGS__)
names_file = __NAMES__


def write_layer_names(layers):
    """ONNX tensor -> the Keras layer that computes it (TFLite tensors are named after those layers), in
    conversion (topological) order, with the ONNX shape: what the LiteRT runner needs to match intermediates."""
    import re
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(kwargs["input_onnx_file_path"]))
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    lead = kwargs.get("output_signaturedefs") or kwargs.get("output_integer_quantized_tflite")
    original = {}
    for node in model.graph.node:
        for out in node.output:
            clean = out.replace(":", "__")
            original[re.sub("^/", "wa/", clean) if lead else clean] = out
    rows = []
    for key, info in layers.items():
        layer = getattr(getattr(info.get("tf_node") if isinstance(info, dict) else None, "node", None), "layer", None)
        name = original.get(key)
        if layer is not None and name is not None:
            rows.append([name, layer.name, shapes.get(name)])
    with open(names_file, "w") as f:
        json.dump({"onnx2tf_layers": rows}, f)

def skip_keras_metadata():
    """onnx2tf saves its tf_keras model as a SavedModel three times (its own copy, then once per TFLiteConverter
    run: float32, float16). Each save serialises every layer's Python config as JSON metadata for Keras to
    reload the model later; onnx2tf's layers carry their constants in those configs, so that is ~90% of the time
    (ResNet-18: 190 of 197 s, in deepcopy and json). Nothing here reloads the SavedModel as Keras: the TFLite
    converter and tf.saved_model.load ignore the metadata, and the .tflite files come out byte-identical."""
    try:
        from tf_keras.src.saving.legacy.saved_model import base_serialization
        base_serialization.SavedModelSaver.tracking_metadata = property(lambda self: "{}")
        return True
    except Exception as exc:  # another tf_keras layout: convert at the old speed
        print(f"warning: Keras SavedModel metadata kept (slower conversion): {exc}", file=sys.stderr, flush=True)
        return False

try:
    if __SKIP_KERAS_METADATA__:
        skip_keras_metadata()
    import onnx2tf
    captured = []
    if __LAYER_MAP__:  # the Keras layers onnx2tf builds (its TensorFlow path only)
        import onnx2tf.ops.Input as input_op
        make_input = input_op.make_node

        def capturing_make_node(*args, **kw):
            captured.append(kw.get("tf_layers_dict"))
            return make_input(*args, **kw)

        input_op.make_node = capturing_make_node
    onnx2tf.convert(**kwargs)
    if captured and captured[0] is not None:
        try:  # a debugging aid: it must never fail a conversion that worked
            write_layer_names(captured[0])
        except Exception as exc:
            print(f"warning: no onnx2tf layer map for divergence localization: {exc}", file=sys.stderr, flush=True)
except SystemExit as exc:
    if exc.code not in (0, None):
        print(f"__MARK__ onnx2tf exited with status {exc.code}", file=sys.stderr, flush=True)
    raise
except BaseException as exc:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    print("__MARK__ " + type(exc).__name__ + ": " + " / ".join(lines[:2])[:400], file=sys.stderr, flush=True)
    sys.exit(1)
'''


class Onnx2tfOptions(BaseModel):
    """The options both onnx2tf paths take."""

    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="Which onnx2tf file to ship: float32, float16 weights (float32 I/O), or "
                                    "full-integer int8 calibrated on --calibration data. Set by the target's "
                                    "precision (--to tflite:int8).")
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds onnx2tf may run before it is stopped.")
    keep_nchw: bool = Field(default=False, description="Keep the inputs' channel-first layout (onnx2tf -kat); "
                                                       "default: onnx2tf's channel-last (NHWC) inputs.")
    int8_io: bool = Field(default=False, description="int8 only: int8 inputs and outputs (the runner quantizes "
                                                     "and dequantizes with each tensor's scale/zero point); "
                                                     "default: float32 inputs/outputs with int8 inside.")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="int8 only: calibrate on the first N calibration samples; default: all "
                                        "the job loaded (--calibration-samples).")


class TfliteOptions(Onnx2tfOptions):
    direct_fallback: bool = Field(
        default=True, description="When onnx2tf 1.x fails on a model (an op it cannot convert, a time-out), convert "
                                  "it with onnx2tf 2.x's flatbuffer_direct (TfliteFromOnnxDirect) instead, fp32 and "
                                  "int8 only; the row's chain and details say so (tflite_route).")
    keras_metadata: bool = Field(
        default=False, description="Let TensorFlow write the Keras metadata of the SavedModels onnx2tf saves on its "
                                   "way to TFLite (onnx2tf's own behaviour, ~10x slower; the .tflite files are the "
                                   "same). Default: skipped.")


def fixed_specs(specs: list[TensorSpec]) -> tuple[list[TensorSpec], dict[str, dict[str, int]]]:
    """Static input specs for onnx2tf: a dynamic batch (dim 0) becomes 1, any other dynamic dim its example
    size. Also returns, per input, what was fixed ({dim name: size})."""
    fixed: list[TensorSpec] = []
    what: dict[str, dict[str, int]] = {}
    for s in specs:
        dims = []
        for i, d in enumerate(s.shape):
            size = 1 if (i == 0 and d.dynamic) else d.size
            if d.name:
                what.setdefault(s.name, {})[d.name] = size
            dims.append(Dim(size=size))
        fixed.append(s.model_copy(update={"shape": dims}))
    return fixed, what


def sample_images(specs: list[TensorSpec], calibration: DataSet | None) -> tuple[np.ndarray, str]:
    """The 20x128x128x3 float32 array onnx2tf otherwise downloads: the calibration images of a 3-channel
    image input (resized by nearest neighbour, NHWC, repeated to 20), else seeded uniform [0, 1) data."""
    if calibration is not None:
        for s in specs:
            arr = calibration.inputs.get(s.name)
            if arr is None or arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating) or len(arr) == 0:
                continue
            if arr.shape[1] == 3:
                nhwc = arr.transpose(0, 2, 3, 1)
            elif arr.shape[3] == 3:
                nhwc = arr
            else:
                continue
            ys = np.arange(128) * nhwc.shape[1] // 128
            xs = np.arange(128) * nhwc.shape[2] // 128
            img = nhwc[:, ys][:, :, xs]
            img = np.concatenate([img] * -(-20 // len(img)))[:20]
            return np.ascontiguousarray(img, dtype=np.float32), f"calibration data ({s.name})"
    rng = np.random.default_rng(0)
    return rng.random(SAMPLE_SHAPE, dtype=np.float32), "seeded random (seed 0)"


def _failure(output: str) -> tuple[str | None, str]:
    """From the child's log: the ONNX node onnx2tf names (if any) and its exception (or exit status)."""
    lines = [_ANSI.sub("", ln).strip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln]
    node = next((ln.split("onnx_op_name:", 1)[1].strip() for ln in lines if "onnx_op_name:" in ln), None)
    marks = [ln.removeprefix(_MARK).strip() for ln in lines if ln.startswith(_MARK)]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")
              and "trace log" not in ln and "onnx_op_name" not in ln and "input_onnx_file_path" not in ln]
    reason = marks[-1] if marks else (errors[0] if errors else " | ".join(lines[-3:]))
    return node, reason[:400]


def _fix_shapes(path: Path, fixed: list[TensorSpec], out: Path) -> None:
    """Rewrite the inputs to static shapes and propagate them (what onnx2tf's -ois expects onnxsim to do)."""
    onnx = require("onnx")
    onnxslim = require("onnxslim", "fixing ONNX input shapes for onnx2tf")
    shapes = [f"{s.name}:{','.join(str(d.size) for d in s.shape)}" for s in fixed if s.shape]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = onnxslim.slim(str(path), input_shapes=shapes or None)
    except Exception as exc:
        raise ConversionError(f"fixing the input shapes ({' '.join(shapes)}) of {path.name} with onnxslim "
                              f"failed: {first_line(exc)}") from None
    large = model.ByteSize() > 2 * 1024**3 - 1
    onnx.save(model, str(out), save_as_external_data=large)


def _ort_outputs(path: Path, data: DataSet, batch: int, threads: int) -> tuple[list[str], list[np.ndarray]]:
    from convcli.runners.onnxruntime_runner import ort_session

    session: Any = ort_session(str(path), threads)
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(None, feed) for feed in data.batches(batch)]
    return names, [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


def _as_layout(arr: np.ndarray, layout: str) -> np.ndarray:
    """A raw TFLite output read back into the source's layout under the candidate ``layout``."""
    return np.transpose(arr, (0, arr.ndim - 1, *range(1, arr.ndim - 1))) if is_channel_last(layout) else arr


def _max_err(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) if ref.size else 0.0


# FlatBuffers address their buffer with 32-bit offsets: a .tflite file cannot exceed 2 GB.
FLATBUFFER_LIMIT = 2 * 1024**3


def channel_last_inputs(path: Path, specs: list[TensorSpec]) -> list[str]:
    """3-5-D inputs the ONNX graph itself turns channel-first first: every consumer is a Transpose with
    perm (0, last, 1, ...), or a Reshape to (N, 1, *spatial) of a one-channel input (tf2onnx's form then)."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    # Reshape targets only: small, never stored outside the file. A 1-D weight of a model over 2 GB is (its bytes
    # live in model.onnx.data, which to_array would look for in the working directory: regnet_y_128gf failed so).
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
              if len(i.dims) == 1 and i.data_location != onnx.TensorProto.EXTERNAL}
    found = []
    for s in specs:
        rank = len(s.shape)
        if rank not in CHANNEL_LAST:
            continue
        perm = [0, rank - 1, *range(1, rank - 1)]
        dims = s.example_shape()
        flat = [-1, 1, *dims[1:-1]] if dims[-1] == 1 and not s.shape[-1].dynamic else None

        def to_channel_first(node: Any, perm: list[int] = perm, flat: list[int] | None = flat) -> bool:
            if node.op_type == "Transpose":
                return [list(a.ints) for a in node.attribute if a.name == "perm"] == [perm]
            if node.op_type == "Reshape" and flat is not None and len(node.input) > 1:
                shape = consts.get(node.input[1])
                return shape is not None and [int(v) for v in shape][1:] == flat[1:]
            return False

        users = [n for n in model.graph.node if s.name in n.input]
        if users and all(to_channel_first(n) for n in users):
            found.append(s.name)
    return found


def resolve_layouts(tflite: Artifact, onnx_path: Path, fixed: list[TensorSpec], threads: int,
                    keep_nchw: bool, as_source: Collection[str] = ()) -> tuple[dict[str, str], dict[str, str],
                                                                                dict[str, Any]]:
    """Which layout each input and output has in the TFLite file, and how far it is from ONNX Runtime.

    Shapes decide where only one layout fits; otherwise every combination of input layouts is run on
    seeded data and each output takes the layout closest to ONNX Runtime's output.
    """
    batch = fixed[0].shape[0].size if fixed and fixed[0].shape else 1
    data = random_data(fixed, CHECK_SAMPLES * batch, seed=3)
    names, ref = _ort_outputs(onnx_path, data, batch, threads)
    probe = TfliteSession(tflite, threads)
    in_choices: dict[str, list[str]] = {}
    for s in fixed:
        det = probe.in_map[s.name]
        found = layout_candidates(s.example_shape(), det["shape"])
        if not found:
            raise ConversionError(f"TFLite input {s.name} has shape {tuple(int(d) for d in det['shape'])}, "
                                  f"neither the ONNX shape {s.example_shape()} nor its channel-last form")
        if keep_nchw and CHANNEL_FIRST.get(len(s.shape)) in found:
            found = [CHANNEL_FIRST[len(s.shape)]]
        elif s.name in as_source and CHANNEL_FIRST.get(len(s.shape)) in found:
            found = ["same"]  # kept channel-last input: takes the source's feed as it is
        in_choices[s.name] = found
    out_choices: dict[str, list[str]] = {}
    for name, r in zip(names, ref, strict=True):
        det = probe.out_map[name]
        found = layout_candidates(r.shape, det["shape"])
        if not found:
            raise ConversionError(f"TFLite output {name} has shape {tuple(int(d) for d in det['shape'])}, "
                                  f"neither the ONNX shape {tuple(r.shape)} (batch {batch}) nor its channel-last form")
        out_choices[name] = found
    probe.close()
    combos = list(itertools.islice(itertools.product(*in_choices.values()), MAX_LAYOUT_COMBOS))
    best: tuple[float, dict[str, str], dict[str, str], dict[str, float], dict[str, str]] | None = None
    for combo in combos:
        layouts = dict(zip(in_choices, combo, strict=True))
        session = TfliteSession(tflite, threads, input_layouts=layouts, output_layouts={})
        raw = [session.run(feed) for feed in data.batches(batch)]
        got = [np.concatenate([r[i] for r in raw]) for i in range(len(names))]
        matched = session.matched_by
        session.close()
        out_layouts, errs = {}, {}
        for name, r, g in zip(names, ref, got, strict=True):
            err, layout = min((_max_err(r, _as_layout(g, lay)), lay) for lay in out_choices[name])
            out_layouts[name], errs[name] = layout, err
        total = max(errs.values(), default=0.0)
        if best is None or total < best[0]:
            best = (total, layouts, out_layouts, errs, matched)
    assert best is not None
    total, layouts, out_layouts, errs, matched = best
    ambiguous = [n for n, c in {**in_choices, **out_choices}.items() if len(c) > 1]
    check = {"samples": len(data), "max_abs_err": total, "outputs": errs, "matched_by": matched,
             "decided_by_numbers": ambiguous}
    keep = {n: lay for n, lay in layouts.items() if lay != "same"}
    keep_out = {n: lay for n, lay in out_layouts.items() if lay != "same"}
    return keep, keep_out, check


# How far (max abs error / max |ONNX|) a TFLite tensor may be from its ONNX tensor at conversion and still count
# as the same tensor: wrong matches are off by O(1); int8 layers legitimately by tens of percent.
ARRANGEMENT_MAX_REL = {"fp32": 1e-2, "fp16": 0.1, "int8": 0.5}


def check_arrangements(tflite: Artifact, static: Path, fixed: list[TensorSpec], threads: int, precision: str) -> None:
    """Record in the layer map beside ``tflite`` how each matched TFLite tensor is arranged relative to its ONNX
    tensor, checked on seeded data against ONNX Runtime (``tflite_runner.arrangements``). A model without a
    layer map (onnx2tf changed how it names layers) is left as it is: intermediates then guess from shapes."""
    from convcli.runners.onnxruntime_runner import onnx_intermediates

    assert tflite.path is not None
    sidecar = tflite.path.with_suffix(LAYER_MAP_SUFFIX)
    if not sidecar.is_file():
        return
    batch = fixed[0].shape[0].size if fixed and fixed[0].shape else 1
    feed = next(random_data(fixed, batch, seed=5).batches(batch))
    values = onnx_intermediates(static, feed, threads, None, None).by_reference()
    data = json.loads(sidecar.read_text())
    data["checked"] = arrangements(tflite, static, feed, values, threads, ARRANGEMENT_MAX_REL[precision])
    sidecar.write_text(json.dumps(data))


def _io_dtypes(tflite: Artifact, threads: int) -> dict[str, dict[str, str]]:
    """The dtype of each input and output of the TFLite file, under the source's names."""
    probe = TfliteSession(tflite, threads)
    dtypes = {"inputs": {n: np.dtype(d["dtype"]).name for n, d in probe.in_map.items()},
              "outputs": {n: np.dtype(d["dtype"]).name for n, d in probe.out_map.items()}}
    probe.close()
    return dtypes


def tf_layout(spec: TensorSpec, keep_nchw: bool, as_source: Collection[str] = ()) -> str:
    """The layout onnx2tf gives an input: channel-last for 3-5-D inputs unless kept (its ops/Input.py)."""
    rank = len(spec.shape)
    if rank not in CHANNEL_LAST or spec.name in as_source:
        return "same"
    return CHANNEL_FIRST[rank] if keep_nchw else CHANNEL_LAST[rank]


def calibration_arrays(fixed: list[TensorSpec], calibration: DataSet, samples: int | None,
                       keep_nchw: bool, as_source: Collection[str] = ()) -> tuple[dict[str, np.ndarray], DataSet]:
    """Per input, the calibration samples in the layout of the TF model's input (what ``-cind`` reads).

    Raises ConversionError when the data does not fit an input.
    """
    data = calibration.take(samples)
    arrays: dict[str, np.ndarray] = {}
    for s in fixed:
        arr = data.inputs.get(s.name)
        if arr is None:
            raise ConversionError(f"calibration data {data.description} has no array for input {s.name}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ConversionError(f"tflite int8: input {s.name} is {arr.dtype}; onnx2tf's full-integer "
                                  "calibration feeds float32 to every input", hint="use --to tflite:fp32 or fp16")
        want = tuple(s.example_shape()[1:])
        if tuple(arr.shape[1:]) != want:
            raise ConversionError(f"calibration data for {s.name} has sample shape {tuple(arr.shape[1:])}; the "
                                  f"TFLite model is converted at {want}")
        if is_channel_last(tf_layout(s, keep_nchw, as_source)):
            arr = np.transpose(arr, (0, *range(2, arr.ndim), 1))
        arrays[s.name] = np.ascontiguousarray(arr, dtype=np.float32)
    return arrays, data


# Output folders of this process's onnx2tf runs, by run key (content of the static ONNX, the sample file and
# calibration files, the onnx2tf options and version). An entry is used only while its folder still holds
# the file wanted: a job deletes its folders when it ends, and later lookups of those entries then miss.
_RUNS: dict[str, Path] = {}


def run_key(kwargs: dict[str, Any], files: list[Path], version: str | None) -> str:
    """What decides onnx2tf's output: its options (paths replaced by the content of the files they name)."""
    contents = {p.name: sha256_file(p) for p in files}
    options = {k: v for k, v in kwargs.items() if k not in ("input_onnx_file_path", "output_folder_path",
                                                            "custom_input_op_name_np_data_path")}
    calib = [[str(c[0]), Path(c[1]).name, *c[2:]] for c in kwargs.get("custom_input_op_name_np_data_path") or []]
    return make_key("onnx2tf-run", version, contents, options, calib)


def _missing_file_reason(log: str) -> str:
    """Why onnx2tf exited 0 without a file: it logs failed exports (e.g. full-integer quantization) as a
    warning with a traceback; the last 'XxxError: ...' line says why."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.splitlines()]
    errors = [m.group(0) for ln in lines if (m := _PYTHON_ERROR.match(ln))]
    failed = [ln.removeprefix("WARNING:").strip() for ln in lines if "output failed" in ln]
    return " / ".join([*failed[-1:], *errors[-1:]])[:400] or _failure(log)[1]


class TfliteFromOnnx(Converter):
    """ONNX -> .tflite with onnx2tf in a child process; static shapes, layouts recorded, checked vs ORT."""

    name = "TfliteFromOnnx"
    source = "onnx"
    target = "tflite"
    summary = "onnx2tf (child process) with static shapes, NHWC layout recorded, checked against ORT; int8 " \
              "calibrated on --calibration data"
    requires = ("onnx", "onnxslim", "onnxruntime", "onnx2tf", "tensorflow", "tf_keras", "onnx_graphsurgeon",
                "ai_edge_litert")
    precisions = ("fp32", "fp16", "int8")
    Options: type[BaseModel] = TfliteOptions
    # int8 calibrates on the calibration data; the sample images onnx2tf checks its conversion with come from it.
    uses_calibration = True
    backend_kwargs: dict[str, Any] = {}  # onnx2tf.convert arguments that choose its path
    reached_onnx2tf = False  # set by convert_here once its inputs are checked and onnx2tf is about to run
    layer_map = True  # onnx2tf builds Keras layers on this path: their names map TFLite tensors back to ONNX

    @classmethod
    def onnx2tf_version(cls) -> str | None:
        return package_version("onnx2tf")

    def child_env(self) -> dict[str, str]:
        return {}

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        """onnx2tf 1.x through TensorFlow's converter; where it fails, the direct path (``direct_fallback``), as the
        NCNN step falls back to the ONNX route: the faster files when 1.x can make them, a file at all when not."""
        opts = self.options
        self.reached_onnx2tf = False
        try:
            return self.convert_here(artifact, ctx)
        except ConversionError as exc:
            # Only onnx2tf's own failures (and files LiteRT cannot run) fall back: bad calibration data or inputs
            # fail the same way on either path. TfliteFromOnnxDirect's options have no direct_fallback.
            fallback = getattr(opts, "direct_fallback", False) and self.reached_onnx2tf
            precision = getattr(opts, "precision", "fp32")
            direct = TfliteFromOnnxDirect.availability()
            if not fallback or precision not in TfliteFromOnnxDirect.precisions or not direct.available:
                why = ("" if not fallback else f"; no fallback: {TfliteFromOnnxDirect.name} makes no {precision}"
                       if precision not in TfliteFromOnnxDirect.precisions else
                       f"; no fallback: {direct.reason}" if not direct.available else "")
                raise ConversionError(exc.message + why, hint=exc.hint) from None
            reason = exc.message
        values = {k: v for k, v in opts.model_dump().items() if k in Onnx2tfOptions.model_fields}
        step = TfliteFromOnnxDirect(Onnx2tfOptions.model_validate(values))
        try:
            out = step.convert_here(artifact, replace(ctx, workdir=ctx.workdir / "direct-fallback"))
        except ConversionError as exc:
            raise ConversionError(f"{reason}; the fallback {TfliteFromOnnxDirect.name} (onnx2tf "
                                  f"{onnx2tf_direct_version()} flatbuffer_direct) failed too: {exc.message}",
                                  hint=exc.hint) from None
        out.details.update({"tflite_route": f"onnx2tf {onnx2tf_direct_version()} flatbuffer_direct (fallback)",
                            "tflite_route_reason": reason, "chain_note": f"via {TfliteFromOnnxDirect.name}: onnx2tf "
                                                                        "1.x failed"})
        return out

    def convert_here(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        """This step's own onnx2tf path, without fallback."""
        opts: Onnx2tfOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        weights = artifact.size_bytes  # the .onnx and its .data file
        if opts.precision == "fp32" and weights > FLATBUFFER_LIMIT:  # before onnx2tf: neither path can write it
            raise ConversionError(f"{self.name}: the model's float32 weights take {weights / 1024**3:.1f} GB, over "
                                  f"the 2 GB a TFLite FlatBuffer can hold",
                                  hint="use another target (onnx, openvino, ncnn); int8 weights would be a quarter "
                                       "of that, but --to tflite:int8 at this size has not been tried")
        int8 = opts.precision == "int8"
        fixed, what = fixed_specs(artifact.inputs)
        kept = [] if opts.keep_nchw else channel_last_inputs(artifact.path, fixed)
        calib: tuple[dict[str, np.ndarray], DataSet] | None = None
        if int8:  # checked first: no calibration data must fail before minutes of conversion
            calib = calibration_arrays(fixed, ctx.require_calibration(f"tflite int8 ({self.name})"),
                                       opts.calibration_samples, opts.keep_nchw, kept)
        child_dir = ctx.workdir / "onnx2tf"
        child_dir.mkdir(parents=True, exist_ok=True)
        static = child_dir / "model.onnx"  # onnx2tf names its files after this one: model_float32.tflite
        _fix_shapes(artifact.path, fixed, static)
        images, images_from = sample_images(artifact.inputs, ctx.calibration)
        np.save(child_dir / SAMPLE_FILE, images)
        out_dir = child_dir / "out"
        kwargs: dict[str, Any] = {"input_onnx_file_path": str(static), "output_folder_path": str(out_dir),
                                  "not_use_onnxsim": True, "non_verbose": True, **self.backend_kwargs}
        if opts.keep_nchw or kept:
            kwargs["keep_shape_absolutely_input_names"] = [s.name for s in fixed] if opts.keep_nchw else kept
        inputs_for_key = [static, child_dir / SAMPLE_FILE]
        if calib is not None:
            cind = []
            for i, (name, arr) in enumerate(calib[0].items()):
                path = child_dir / f"calibration_{i}.npy"
                np.save(path, arr)
                cind.append([name, str(path), 0.0, 1.0])  # already preprocessed: onnx2tf's (x - 0) / 1
                inputs_for_key.append(path)
            # Both int8 files in one run: float32 I/O (integer_quant) and int8 I/O (full_integer_quant).
            kwargs.update(output_integer_quantized_tflite=True, custom_input_op_name_np_data_path=cind,
                          quant_type="per-channel", input_quant_dtype="int8", output_quant_dtype="int8")
        key = run_key(kwargs, inputs_for_key, self.onnx2tf_version())
        self.reached_onnx2tf = True
        wanted = PRODUCED["int8-io" if int8 and opts.int8_io else opts.precision]
        earlier = _RUNS.get(key)
        if earlier is not None and (earlier / wanted).is_file():
            produced, run_note = earlier / wanted, f"reused the run of an earlier step ({earlier.parent.parent.name})"
            (ctx.workdir / "onnx2tf.log").write_text(f"onnx2tf not run: {run_note}, {earlier}\n")
        else:
            produced, run_note = self._convert(kwargs, child_dir, out_dir / wanted, ctx), "ran"
            _RUNS[key] = out_dir
        final = ctx.workdir / "model.tflite"
        shutil.copyfile(produced, final)
        files = [final]
        if (produced.parent / LAYER_NAMES).is_file():
            files.append(shutil.copyfile(produced.parent / LAYER_NAMES, final.with_suffix(LAYER_MAP_SUFFIX)))
        tflite = Artifact(format="tflite", path=final, inputs=fixed, output_names=list(artifact.output_names),
                          precision=opts.precision, files=files)
        layouts, out_layouts, check = resolve_layouts(tflite, artifact.path, fixed, ctx.threads, opts.keep_nchw,
                                                      kept)
        try:  # the layer map's layouts, for divergence localization only: never a reason to fail the target
            check_arrangements(tflite.derive(layout=layouts, output_layout=out_layouts), static, fixed, ctx.threads,
                               opts.precision)
        except Exception as exc:
            ctx.log.append(f"tflite layer map not checked (divergence localization will match by name only): "
                           f"{first_line(exc)}")
        for s in fixed if calib is not None else []:
            calibrated = tf_layout(s, opts.keep_nchw, kept)
            if is_channel_last(layouts.get(s.name)) != is_channel_last(calibrated):
                raise ConversionError(f"tflite int8: input {s.name} was calibrated as {calibrated} "
                                      f"but the TFLite model takes it as {layouts.get(s.name, 'the source layout')}")
        details: dict[str, Any] = {
            "onnx2tf": self.onnx2tf_version(), "precision": opts.precision, "onnx2tf_run": run_note,
            "fixed shapes": what, "input_shapes": {s.name: list(s.example_shape()) for s in fixed},
            "input_layout": layouts, "output_layout": out_layouts, "keep_nchw": opts.keep_nchw,
            "kept_channel_last_inputs": kept,
            "onnx2tf_sample_images": images_from, "check_vs_onnx": check, "ops": op_histogram(final),
            "io_dtypes": _io_dtypes(tflite.derive(layout=layouts, output_layout=out_layouts), ctx.threads),
        }
        if calib is not None:
            data = calib[1]
            details["int8"] = {
                "calibration_data": data.description, "calibration_samples": len(data),
                "calibration_layout": {s.name: tf_layout(s, opts.keep_nchw, kept) for s in fixed},
                "normalization": "none (mean 0, std 1: data already preprocessed)",
                "quant_type": "per-channel", "int8_io": opts.int8_io, "onnx2tf_file": wanted,
            }
        return tflite.derive(layout=layouts, output_layout=out_layouts, details=details)

    def _convert(self, kwargs: dict[str, Any], child_dir: Path, produced: Path, ctx: StepContext) -> Path:
        """Run onnx2tf in a child process; return ``produced`` or raise ConversionError with its reason."""
        opts: Onnx2tfOptions = self.options  # type: ignore[assignment]
        code = (_CHILD.replace("__KWARGS__", repr(json.dumps(kwargs))).replace("__MARK__", _MARK)
                .replace("__NAMES__", repr(str(produced.parent / LAYER_NAMES)))
                .replace("__SKIP_KERAS_METADATA__", repr(not getattr(opts, "keras_metadata", True)))
                .replace("__LAYER_MAP__", repr(self.layer_map)))
        proc = run_python(code, "onnx2tf", cwd=child_dir, timeout_s=opts.timeout_s, check=False,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", **self.child_env()})
        log = proc.stdout + "\n" + proc.stderr
        (ctx.workdir / "onnx2tf.log").write_text(log)
        if proc.returncode != 0:
            node, reason = _failure(log)
            where = f" at ONNX node {node}" if node else ""
            raise ConversionError(f"onnx2tf failed{where} (exit {proc.returncode}): {reason}",
                                  hint="an onnx2tf limitation for this model; try -O tflite.keep_nchw=true "
                                       "or another --opset")
        if not produced.is_file():
            raise ConversionError(f"onnx2tf exited without writing {produced.name}: {_missing_file_reason(log)}")
        return produced


ONNX2TF_DIRECT_ENV = "CONVCLI_ONNX2TF_DIRECT"


def onnx2tf_direct_dir() -> Path:
    """Where onnx2tf 2.x is installed beside the 1.x package: ``make`` puts it in ``.venv/onnx2tf-direct``
    (``pip install --target``); ``CONVCLI_ONNX2TF_DIRECT`` names another folder."""
    return Path(os.environ.get(ONNX2TF_DIRECT_ENV) or Path(sys.prefix) / "onnx2tf-direct")


def onnx2tf_direct_version() -> str | None:
    found = sorted(onnx2tf_direct_dir().glob("onnx2tf-*.dist-info"))
    if not found or not (onnx2tf_direct_dir() / "onnx2tf" / "__init__.py").is_file():
        return None
    return found[-1].name.removeprefix("onnx2tf-").removesuffix(".dist-info")


class TfliteFromOnnxDirect(TfliteFromOnnx):
    """ONNX -> .tflite with onnx2tf 2.x's ``flatbuffer_direct`` backend: the LiteRT flatbuffer is written from
    the ONNX graph by onnx2tf itself, without building a Keras model or running TensorFlow's converter (the
    minutes of the other path). Same child process, static shapes, layout check against ONNX Runtime and int8
    calibration as ``TfliteFromOnnx``. onnx2tf 2.x cannot share a folder with the 1.x package this project also
    uses (same import name), so it lives in its own folder put first on the child's ``sys.path``. No layer map:
    intermediates are matched by the tensor names, which this backend takes from ONNX."""

    name = "TfliteFromOnnxDirect"
    summary = "onnx2tf 2.x flatbuffer_direct (child process): LiteRT file written without TensorFlow's converter; " \
              "static shapes, NHWC layout recorded, checked against ORT; int8 calibrated on --calibration data"
    Options = Onnx2tfOptions
    precisions = ("fp32", "int8")
    precision_gaps = {"fp16": "flatbuffer_direct's float16 file computes in float16, which LiteRT's CPU kernels "
                              "cannot run (MAX_POOL_2D: 'Type FLOAT16 not currently supported'), so it cannot be "
                              "checked here; --to tflite:fp16 (TfliteFromOnnx) stores float16 weights and computes "
                              "in float32"}
    backend_kwargs = {"tflite_backend": "flatbuffer_direct"}
    layer_map = False

    @classmethod
    def availability(cls) -> Availability:
        version = onnx2tf_direct_version()
        if version is None:
            return Availability(False, f"onnx2tf 2.x is not installed in {onnx2tf_direct_dir()} (`make` installs "
                                       f"it there; or set {ONNX2TF_DIRECT_ENV})")
        found = super().availability()
        return Availability(found.available, found.reason, {**found.versions, "onnx2tf": version})

    @classmethod
    def onnx2tf_version(cls) -> str | None:
        return onnx2tf_direct_version()

    @classmethod
    def machine_key(cls) -> Any:
        return {"onnx2tf-direct": cls.onnx2tf_version()}  # not a pip distribution of this venv

    def child_env(self) -> dict[str, str]:
        return {"PYTHONPATH": os.pathsep.join(p for p in (str(onnx2tf_direct_dir()), os.environ.get("PYTHONPATH"))
                                              if p)}


def register(registry: Registry) -> None:
    registry.add_step(TfliteFromOnnx)
    registry.add_step(TfliteFromOnnxDirect)
