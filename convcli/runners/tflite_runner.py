"""LiteRT (ai-edge-litert) runner for .tflite files, mapping tensors back to the source's names and layout.

onnx2tf renames and reorders tensors and turns channel-first tensors (NCW/NCHW/NCDHW) into channel-last
ones, with the batch fixed (to 1 for a dynamic batch). Parity must compare like with like, so a session:

* matches each source input to a TFLite input by name first (the SignatureDef keys, which onnx2tf sets to
  the ONNX names, else the tensor name without ``serving_default_`` and ``:0``), then by shape (the
  source's example shape in either layout, batch ignored) when exactly one unmatched input fits, then by
  the order of what is left; outputs the same way, minus the shape step (the source's output shapes are
  not recorded), so by name, then order;
* transposes inputs whose artifact layout is channel-last, and outputs back to channel-first when
  ``artifact.output_layout`` says so. Where an artifact states no layout for an input (a .tflite given to
  ``convcli check``), it is inferred from the shapes when only one layout fits;
* declares ``fixed_batch`` so larger feeds are run one fixed-size batch at a time;
* quantizes float feeds for quantized integer inputs (int8/uint8/int16 with a scale, from
  ``get_input_details()["quantization"]``) and dequantizes such outputs, so a full-integer model with int8
  I/O is compared in floats like any other. Integer tensors without a scale (token ids) pass through.

LiteRT is the standalone interpreter package: it does not import TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import LAYER_MAP_SUFFIX, Artifact
from convcli.core.errors import ConversionError
from convcli.core.intermediates import Intermediates, TensorInfo
from convcli.core.lazy import package_version, require
from convcli.core.quiet import captured_fd2
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session
from convcli.runners.onnx_reference import UNJOINABLE, ReferenceView, join_samples, read_reference

CHANNEL_LAST = {3: "NWC", 4: "NHWC", 5: "NDHWC"}
CHANNEL_FIRST = {3: "NCW", 4: "NCHW", 5: "NCDHW"}
# Beside a .tflite made by onnx2tf (model.tflite -> model.onnx2tf-names.json, LAYER_MAP_SUFFIX): which Keras layer
# computes each ONNX tensor, written by the converter's child process. TFLite tensors are named after those layers.
PERMUTED = "permuted"  # a TFLite tensor whose axes are some permutation of the ONNX tensor's
DIFFERED = "differed from ONNX at conversion in every arrangement (onnx2tf computes it in another form)"


def to_channel_last(shape: Sequence[int]) -> tuple[int, ...]:
    """(N, C, *spatial) -> (N, *spatial, C)."""
    return (shape[0], *shape[2:], shape[1])


def is_channel_last(layout: str | None) -> bool:
    return layout in CHANNEL_LAST.values()


def layout_candidates(source_shape: Sequence[int], tflite_shape: Sequence[int]) -> list[str]:
    """The layouts (source's own, channel-last) under which ``source_shape`` becomes ``tflite_shape``.

    The batch dimension is ignored (the TFLite model fixes it); an empty list means neither fits, two
    entries mean the shapes cannot tell (e.g. 1x3x3x3).
    """
    src, tfl = tuple(source_shape), tuple(int(d) for d in tflite_shape)
    if len(src) != len(tfl):
        return []
    found = []
    if src[1:] == tfl[1:]:
        found.append(CHANNEL_FIRST.get(len(src), "same"))
    if len(src) in CHANNEL_LAST and to_channel_last(src)[1:] == tfl[1:]:
        found.append(CHANNEL_LAST[len(src)])
    return found


def quantization(det: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized integer tensor, None for float tensors and plain integers."""
    scale, zero = det.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if np.dtype(det["dtype"]).kind in "iu" and scale else None


def quantize(arr: np.ndarray, det: dict[str, Any]) -> np.ndarray:
    """A float feed as the tensor's integer type: round(x / scale) + zero point, saturated."""
    params = quantization(det)
    dtype = np.dtype(det["dtype"])
    if params is None or arr.dtype.kind != "f":
        return arr.astype(dtype, copy=False)
    scale, zero = params
    info = np.iinfo(dtype)
    return np.clip(np.round(arr.astype(np.float64) / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(arr: np.ndarray, det: dict[str, Any]) -> np.ndarray:
    """A quantized output back to float32: (q - zero point) * scale."""
    params = quantization(det)
    if params is None:
        return arr
    scale, zero = params
    return ((arr.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)


def _clean(name: str) -> str:
    return re.sub(r":\d+$", "", name).removeprefix("serving_default_")


def _match(wanted: list[str], details: list[dict[str, Any]], hints: list[str],
           fits: dict[str, list[int]] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Source name -> TFLite tensor details: by name, then by a unique fitting shape, then by order.

    Returns the mapping and how each name was matched ("name", "shape", "order").
    """
    mapping: dict[str, dict[str, Any]] = {}
    how: dict[str, str] = {}
    free = list(range(len(details)))
    for name in wanted:
        hit = next((i for i in free if hints[i] == name), None)
        if hit is not None:
            mapping[name], how[name] = details[hit], "name"
            free.remove(hit)
    if fits:
        for name in wanted:
            if name in mapping:
                continue
            fitting = [i for i in free if i in fits.get(name, [])]
            others = [n for n in wanted if n != name and n not in mapping]
            if len(fitting) == 1 and not any(fitting[0] in fits.get(n, []) for n in others):
                mapping[name], how[name] = details[fitting[0]], "shape"
                free.remove(fitting[0])
    for name in wanted:
        if name not in mapping and free:
            mapping[name], how[name] = details[free.pop(0)], "order"
    return mapping, how


def interpreter_tensors(interpreter: Any) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]], list[str]]:
    """Input and output tensor details with a name hint each: the SignatureDef key where there is one
    signature (onnx2tf writes the ONNX names there), else the tensor name without TF's decorations."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    in_hint = {d["index"]: _clean(d["name"]) for d in inputs}
    out_hint = {d["index"]: _clean(d["name"]) for d in outputs}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        in_hint.update({d["index"]: key for key, d in runner.get_input_details().items()})
        out_hint.update({d["index"]: key for key, d in runner.get_output_details().items()})
    # Outputs in signature order (onnx2tf keeps the ONNX output order there, not in the tensor list).
    if len(signatures) == 1:
        order = list(signatures.values())[0].get("outputs", [])
        outputs = sorted(outputs, key=lambda d: order.index(out_hint[d["index"]])
                         if out_hint[d["index"]] in order else len(order))
    return inputs, [in_hint[d["index"]] for d in inputs], outputs, [out_hint[d["index"]] for d in outputs]


def op_histogram(path: Path) -> dict[str, int]:
    """Operator histogram of a .tflite file (empty when LiteRT cannot list it)."""
    try:
        litert = require("ai_edge_litert.interpreter")
        with captured_fd2():
            ops = litert.Interpreter(model_path=str(path))._get_ops_details()
    except Exception:
        return {}
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


class TfliteSession(Session):
    """One LiteRT interpreter. ``input_layouts``/``output_layouts`` override the artifact's (the converter
    uses them to try the layouts that shapes alone cannot tell apart)."""

    def __init__(self, artifact: Artifact, threads: int, input_layouts: dict[str, str] | None = None,
                 output_layouts: dict[str, str] | None = None, keep_all_tensors: bool = False) -> None:
        litert = require("ai_edge_litert.interpreter", "running TFLite models")
        assert artifact.path is not None
        with captured_fd2() as said, warnings.catch_warnings():
            # LiteRT warns that keeping every tensor costs memory: that is what intermediates ask for.
            warnings.simplefilter("ignore", UserWarning)
            try:
                self.interpreter = litert.Interpreter(model_path=str(artifact.path), num_threads=threads,
                                                      experimental_preserve_all_tensors=keep_all_tensors)
                self.interpreter.allocate_tensors()
                failure = None
            except Exception as exc:
                failure = exc
        if failure is not None:
            native = " ".join(said.read().split())
            raise ConversionError(f"LiteRT cannot load {artifact.path.name}: "
                                  f"{' '.join(str(failure).split())[:240]} {native[:240]}".strip(),
                                  hint="a model needing TF Select (Flex) ops does not run in plain LiteRT")
        inputs, in_hints, outputs, out_hints = interpreter_tensors(self.interpreter)
        specs = {s.name: s.example_shape() for s in artifact.inputs}
        fits = {name: [i for i, d in enumerate(inputs) if layout_candidates(shape, d["shape"])]
                for name, shape in specs.items()}
        self.in_map, self.matched_by = _match(list(specs), inputs, in_hints, fits)
        unmatched = [d["name"] for d in inputs if all(d is not m for m in self.in_map.values())]
        if unmatched:
            raise ConversionError(f"TFLite input(s) {', '.join(unmatched)} match no source input "
                                  f"({', '.join(specs)})")
        names = artifact.output_names or [f"output_{i}" for i in range(len(outputs))]
        self.out_map, out_how = _match(names, outputs, out_hints)
        self.matched_by.update({f"output {k}": v for k, v in out_how.items()})
        missing = [n for n in names if n not in self.out_map]
        if missing:
            raise ConversionError(f"TFLite model has {len(outputs)} output(s); the source's {', '.join(missing)} "
                                  "has none to map to")
        self.output_names = names
        self.layouts: dict[str, str] = {}
        given = {**artifact.layout, **(input_layouts or {})}
        for name, det in self.in_map.items():
            found = layout_candidates(specs[name], det["shape"])
            # Where shapes cannot tell (two candidates), the source's own layout (listed first) is assumed.
            layout = given.get(name, found[0] if found else None)
            # An inferred layout is named only when it transposes: the source's own (listed as channel-first)
            # may be NHWC already (a TensorFlow source).
            if layout is not None and layout != "same" and (name in given or is_channel_last(layout)):
                self.layouts[name] = layout
        self.output_layouts = {**artifact.output_layout, **(output_layouts or {})}
        first = next(iter(self.in_map.values()), None)
        shape = first["shape"] if first is not None else []
        self.fixed_batch = int(shape[0]) if len(shape) else None
        layout_text = ", ".join(f"{n}:{lay}" for n, lay in self.layouts.items()) or "as the source"
        tensors = [*self.in_map.values(), *self.out_map.values()]
        quantized = sorted({np.dtype(d["dtype"]).name for d in tensors if quantization(d) is not None})
        io_text = f", {'/'.join(quantized)} I/O (runner quantizes/dequantizes)" if quantized else ""
        self.description = (f"LiteRT {package_version('ai_edge_litert')} CPU, {threads} threads, "
                            f"input layout {layout_text}{io_text}")

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = set(self.in_map) - set(feed)
        if missing:
            raise ConversionError(f"TFLite model needs input(s) {', '.join(sorted(missing))} the feed lacks")
        for name, det in self.in_map.items():
            arr = feed[name]
            if is_channel_last(self.layouts.get(name)):
                arr = np.transpose(arr, (0, *range(2, arr.ndim), 1))
            arr = np.ascontiguousarray(quantize(arr, det))
            if arr.shape != tuple(det["shape"]):
                raise ConversionError(
                    f"TFLite input {name} is fixed to shape {tuple(int(d) for d in det['shape'])} "
                    f"({self.layouts.get(name, 'source layout')}); got {arr.shape}",
                    hint="the TFLite model has static shapes: feed the example sizes it was converted at")
            self.interpreter.set_tensor(det["index"], arr)
        self.interpreter.invoke()
        results = []
        for name in self.output_names:
            det = self.out_map[name]
            out = dequantize(self.interpreter.get_tensor(det["index"]), det)
            if is_channel_last(self.output_layouts.get(name)):
                out = np.transpose(out, (0, out.ndim - 1, *range(1, out.ndim - 1)))
            results.append(out.astype(np.float32) if out.dtype == np.float16 else np.ascontiguousarray(out))
        return results

    def close(self) -> None:
        self.interpreter = None


def layer_map(path: Path) -> tuple[list[tuple[str, str, list[int] | None]], dict[str, list[int] | None]]:
    """What onnx2tf's conversion recorded beside ``path``: (ONNX tensor, Keras layer, ONNX shape) rows in ONNX
    topological order, and the arrangement checked at conversion (ONNX tensor -> the axis permutation that turns
    the TFLite tensor into the ONNX one, None where none did; see ``arrangements``). Empty when there is no such
    file (a .tflite not made by convcli's onnx2tf step)."""
    sidecar = path.with_suffix(LAYER_MAP_SUFFIX)
    if not sidecar.is_file():
        return [], {}
    data = json.loads(sidecar.read_text())
    rows = data.get("onnx2tf_layers") or []
    checked = {str(k): [int(a) for a in v] if v is not None else None for k, v in (data.get("checked") or {}).items()}
    return [(str(r[0]), str(r[1]), [int(d) for d in r[2]] if r[2] else None) for r in rows], checked


def _perms(shape: Sequence[int], target: Sequence[int]) -> list[tuple[int, ...]]:
    """Axis permutations (identity first, then channel-last back to channel-first) turning ``shape`` into
    ``target``; beyond 5 dims only those two are tried."""
    n = len(shape)
    first = [tuple(range(n)), (0, n - 1, *range(1, n - 1))] if n > 2 else [tuple(range(n))]
    pool = first + ([q for q in itertools.permutations(range(n)) if q not in first] if n <= 5 else [])
    return [q for q in dict.fromkeys(pool) if tuple(shape[a] for a in q) == tuple(target)]


def arrangements(artifact: Artifact, reference: Path, feed: dict[str, np.ndarray], reference_values: dict[str,
                 np.ndarray], threads: int, max_rel: float) -> dict[str, list[int] | None]:
    """For each TFLite tensor ``match_tensors`` names, the axis permutation that makes it equal the ONNX tensor
    on ``feed`` (one fixed-size batch), or None when none comes within ``max_rel`` (max abs error relative to
    max |reference|). Shapes alone cannot tell a (1, 4, 16, 16) attention tensor from its transpose when the
    sequence length equals the head size, and onnx2tf rearranges such tensors freely; this runs once at
    conversion, where the TFLite model is known to be onnx2tf's faithful output, so later runs (of this file or
    an altered copy) read the same tensors the same way and are judged on values only then.
    """
    assert artifact.path is not None
    session = TfliteSession(artifact, threads, keep_all_tensors=True)
    try:
        layers, _ = layer_map(artifact.path)
        ref = read_reference(reference)
        outputs = {name: det for name, det in session.out_map.items() if name in ref.names}
        found, _, _ = match_tensors(session.interpreter, layers, ref, outputs, prefer_channel_last=False)
        session.run(feed)
        details = {d["index"]: d for d in session.interpreter.get_tensor_details()}
        checked: dict[str, list[int] | None] = {}
        for index, (name, _) in found.items():
            want = reference_values.get(name)
            if want is None:
                continue
            got = dequantize(session.interpreter.get_tensor(index), details[index]).astype(np.float64)
            scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-12)
            best: tuple[float, tuple[int, ...]] | None = None
            for perm in _perms(got.shape, want.shape):
                err = float(np.max(np.abs(np.transpose(got, perm) - want))) / scale if want.size else 0.0
                if best is None or err < best[0] - 1e-9:
                    best = (err, perm)
            checked[name] = list(best[1]) if best is not None and best[0] <= max_rel else None
        return checked
    finally:
        session.close()


def tensor_layout(ref_shape: list[int] | None, shape: Sequence[int], prefer_channel_last: bool) -> str | None:
    """How a TFLite tensor of ``shape`` holds a reference tensor of ``ref_shape``: "same", a channel-last
    layout name (to transpose back), or None when neither fits (or the reference shape is unknown). Batch and
    unknown (-1) dims are not compared; when both fit (e.g. 1x8x8x8), ``prefer_channel_last`` decides."""
    tfl = [int(d) for d in shape]
    if ref_shape is None or len(ref_shape) != len(tfl):
        return None

    def fits(a: Sequence[int], b: Sequence[int]) -> bool:
        return all(x == y or x < 0 for x, y in zip(a[1:], b[1:], strict=True))

    same = fits(ref_shape, tfl)
    last = len(tfl) in CHANNEL_LAST and fits(to_channel_last(ref_shape), tfl)
    if same and last:
        return CHANNEL_LAST[len(tfl)] if prefer_channel_last else "same"
    return "same" if same else CHANNEL_LAST[len(tfl)] if last else None


def _name_parts(name: str) -> list[str]:
    """The TF names a TFLite tensor name is made of: converters join the names of fused ops with ';'."""
    return [p for p in name.split(";") if p]


# onnx2tf 2.x's flatbuffer_direct names a tensor it keeps channel-last after the ONNX node that reads or writes it:
# "node_Conv_20_input_nhwc" is input 0 of the ONNX node named node_Conv_20, "..._output_1_nhwc" its output 1.
_DIRECT_NAME = re.compile(r"^(?P<node>.+)_(?P<side>input|output)(?:_(?P<index>\d+))?_(?P<layout>nwc|nhwc|ndhwc)$")


def _direct_alias(part: str, ref: ReferenceView) -> tuple[str, str] | None:
    """The reference tensor a flatbuffer_direct channel-last tensor name stands for, and its layout."""
    m = _DIRECT_NAME.match(part)
    io = ref.node_io.get(m.group("node")) if m else None
    if m is None or io is None:
        return None
    tensors = io[0] if m.group("side") == "input" else io[1]
    index = int(m.group("index") or 0)
    return (tensors[index], m.group("layout").upper()) if index < len(tensors) else None


def match_tensors(interpreter: Any, layers: list[tuple[str, str, list[int] | None]], ref: ReferenceView,
                  outputs: dict[str, dict[str, Any]], prefer_channel_last: bool,
                  ) -> tuple[dict[int, tuple[str, str]], list[int], dict[str, int]]:
    """Which reference ONNX tensor each computed TFLite tensor holds.

    Candidates for a tensor: through onnx2tf's layer map, every ONNX tensor computed by a Keras layer named in
    the tensor's name (a '/'-separated segment of any ';'-joined part); without one, reference names equal to a
    part (with or without ':0', as tf2onnx writes TensorFlow names), and flatbuffer_direct's channel-last names
    (``<node>_input_nhwc``: that ONNX node's input, in the layout the name states). A fused tensor
    (Conv+Add+Relu in one op) holds the *latest* of its candidates in the reference order; the others are counted
    as fused. The model's
    outputs match through the signature (``outputs``: reference output name -> tensor details). Two tensors
    holding one ONNX tensor: the later in execution order wins (it is the value the graph goes on with). The
    shape decides the layout (``tensor_layout``; onnx2tf's static shape where it recorded one); integer tensors
    without a scale (shapes, indices) are not compared.

    Returns tensor index -> (reference name, layout), the computed tensors in execution order, and reason ->
    count for the computed tensors left unmatched.
    """
    order: list[int] = []
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DELEGATE":  # a delegate re-lists tensors the original ops already computed
            continue
        order += [int(i) for i in op["outputs"] if int(i) >= 0 and int(i) not in order]
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    rank = {n: i for i, n in enumerate(ref.names or [r[0] for r in layers])}
    static = {r[0]: r[2] for r in layers if r[2]}
    by_layer: dict[str, list[str]] = {}
    for onnx_name, layer, _ in layers:
        by_layer.setdefault(layer, []).append(onnx_name)
    by_output = {int(d["index"]): name for name, d in outputs.items()}
    found: dict[int, tuple[str, str]] = {}
    unmatched: dict[str, int] = {}
    ambiguous: set[int] = set()
    stated: dict[int, str] = {}  # layouts a tensor's name states (flatbuffer_direct's "_nhwc")

    def count(reason: str, n: int = 1) -> None:
        unmatched[reason] = unmatched.get(reason, 0) + n

    for index in order:
        det = details[index]
        if np.dtype(det["dtype"]).kind not in "f" and quantization(det) is None:
            count("integer tensor (shapes, indices): not compared")
            continue
        if index in by_output:
            named = [by_output[index]]
        elif layers:
            named = [o for part in _name_parts(det["name"]) for seg in part.split("/") for o in by_layer.get(seg, [])]
        else:
            named = [c for part in _name_parts(det["name"]) for c in (part, f"{part}:0") if c in rank]
            aliases = [a for part in _name_parts(det["name"]) if (a := _direct_alias(part, ref)) is not None]
            named += [name for name, _ in aliases]
            if aliases:
                stated[index] = aliases[-1][1]
        named = list(dict.fromkeys(named))
        candidates = [c for c in named if c in rank]
        if not candidates:
            count("not in the reference graph (renamed before conversion)" if named else
                  "no ONNX tensor of that name (a converter-made op, e.g. a layout transpose)" if layers else
                  "no reference tensor of that name" if rank else "no reference graph to name it")
            continue
        best = max(candidates, key=lambda c: rank[c])
        shape = static.get(best) or ref.shapes.get(best)
        layout = tensor_layout(shape, det["shape"], stated[index] in CHANNEL_LAST.values()) if index in stated \
            else tensor_layout(shape, det["shape"], prefer_channel_last)
        if layout is not None and index not in stated and \
                layout != tensor_layout(shape, det["shape"], not prefer_channel_last):
            ambiguous.add(index)
        if layout is None and best in static and _perms([int(d) for d in det["shape"]], static[best]):
            layout = PERMUTED  # usable only with the arrangement checked at conversion
        if layout is None:
            count("shape differs from the reference tensor's (or is unknown)")
            continue
        if len(candidates) > 1:
            count("fused by the converter (an ONNX tensor computed inside a later op)", len(candidates) - 1)
        for earlier, (name, _) in list(found.items()):
            if name == best:
                del found[earlier]
                count("recomputed by a later op (the later value is the one compared)")
        found[index] = (best, layout)
    # Where both layouts fit, the nearest tensor of the same rank whose shape decided it tells (a tf2onnx graph
    # is channel-first after its first Conv, so an 8x8x8 activation there is NCHW as its neighbours are).
    decided = [(order.index(i), len(details[i]["shape"]), lay) for i, (_, lay) in found.items()
               if i not in ambiguous and lay != PERMUTED]
    for index in ambiguous & set(found):
        pos, dims = order.index(index), len(details[index]["shape"])
        near = sorted((abs(p - pos), lay) for p, r, lay in decided if r == dims)
        if near:
            found[index] = (found[index][0], near[0][1])
    return found, order, unmatched


def tflite_intermediates(artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                         wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
    """Every tensor LiteRT computes for ``feed``, named after the reference ONNX tensor it holds.

    The interpreter keeps all tensors (``experimental_preserve_all_tensors``) and runs one fixed-size batch at
    a time; samples are joined on each tensor's batch axis in the reference graph. Names are matched by
    ``match_tensors`` (layouts where both fit: channel-last when the model takes a channel-last input, as
    onnx2tf then keeps 3-5-D activations channel-last). Each matched tensor is dequantized (int8 with its scale
    and zero point), cast to float32 and transposed back to the reference layout. Keys of ``tensors`` are the
    TFLite tensor names.
    """
    assert artifact.path is not None
    session = TfliteSession(artifact, threads, keep_all_tensors=True)
    try:
        it = session.interpreter
        ref = read_reference(reference, feed)
        outputs = {name: det for name, det in session.out_map.items() if not ref.names or name in ref.names}
        prefer_last = any(is_channel_last(lay) for lay in session.layouts.values())
        layers, checked = layer_map(artifact.path)
        found, order, unmatched = match_tensors(it, layers, ref, outputs, prefer_last)
        for index, (name, layout) in list(found.items()):
            reason = (DIFFERED if name in checked and checked[name] is None else
                      "shape differs from the reference tensor's (or is unknown)"
                      if layout == PERMUTED and name not in checked else None)
            if reason:
                del found[index]
                unmatched[reason] = unmatched.get(reason, 0) + 1
        batch = session.fixed_batch or 1
        n = next(iter(feed.values())).shape[0] if feed else 0
        for index, (name, _) in list(found.items()):
            if n > batch and name in ref.unjoinable:
                del found[index]
                unmatched[UNJOINABLE] = unmatched.get(UNJOINABLE, 0) + 1
        keep = set(wanted) if wanted is not None else None
        chosen = [i for i in order if i in found and (keep is None or found[i][0] in keep)]
        details = {d["index"]: d for d in it.get_tensor_details()}
        ops = {int(o): op["op_name"] for op in it._get_ops_details() if op["op_name"] != "DELEGATE"
               for o in op["outputs"]}
        samples: dict[int, list[np.ndarray]] = {i: [] for i in chosen}
        for start in range(0, max(n, 1), batch):
            session.run({k: v[start:start + batch] for k, v in feed.items()})
            for i in chosen:
                arr = dequantize(it.get_tensor(i), details[i]).astype(np.float32, copy=False)
                perm = checked.get(found[i][0])
                if perm is not None and len(perm) == arr.ndim:
                    arr = np.transpose(arr, perm)
                elif is_channel_last(found[i][1]):
                    arr = np.transpose(arr, (0, arr.ndim - 1, *range(1, arr.ndim - 1)))
                samples[i].append(np.ascontiguousarray(arr))
        tensors = {}
        for i in chosen:
            axis = ref.axis(found[i][0])
            # A tensor without a batch axis does not depend on the sample: the first run's value is the batch's.
            tensors[details[i]["name"]] = samples[i][0] if axis is None else join_samples(samples[i], axis)
        return Intermediates(
            tensors=tensors, order=[details[i]["name"] for i in chosen],
            reference={details[i]["name"]: found[i][0] for i in chosen},
            info={details[i]["name"]: TensorInfo(layer=details[i]["name"].split(";")[0], op=ops.get(i, ""))
                  for i in chosen},
            unmatched=unmatched)
    finally:
        session.close()


class LiteRtRunner(Runner):
    name = "litert"
    formats = ("tflite",)
    requires = ("ai_edge_litert",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        return TfliteSession(artifact, threads)

    def intermediates(self, artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                      wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
        return tflite_intermediates(artifact, feed, threads, wanted, reference)


def register(registry: Registry) -> None:
    registry.add_runner(LiteRtRunner)
