"""Intermediate tensors on the edge runtimes (issue 10): LiteRT and ncnn name what they compute after the
reference ONNX graph's tensors, in its layout, and an artifact with one Conv's weights altered drifts exactly
from that Conv on.

One real conversion of the digits CNN (ONNX, onnx2tf -> TFLite fp32 and int8, pnnx -> ncnn) serves the whole
module. The
oracle is ONNX Runtime run on the reference ONNX with every node output exposed; the altered artifacts are the
converted files with the second Conv's weight bytes negated in place (the TFLite flatbuffer's buffer, found by
its bytes; the ncnn .bin at the offset the .param's layer sizes give).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from convcli.core.artifact import Artifact
from convcli.core.intermediates import Intermediates
from convcli.core.tensors import parse_input_spec
from convcli.runners.ncnn_runner import ncnn_intermediates, param_layers
from convcli.runners.tflite_runner import LAYER_MAP_SUFFIX, tflite_intermediates
from tests.conftest import Cli
from tests.models.catalogue import DIGITS, ROOT

SPEC = parse_input_spec("x:batch=2x1x8x8:float32")
CALIB = ROOT / "calibration_data/digits/calib"
# The digits CNN's reference graph (exported, BatchNorm folded): Conv, Relu, Conv, Relu, MaxPool, Reshape, Gemm,
# Relu, Gemm. Both converters fuse each Relu into the op before it.
COMPUTED = ["relu", "relu_1", "max_pool2d", "view", "relu_2", "output"]
FUSED = {"getitem", "getitem_3", "linear"}
ALTERED_CONV_OUTPUT = "relu_1"  # the second Conv's (fused Conv+Relu) output


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("divergence_edge") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVCLI_CACHE_DIR", str(tmp_path_factory.mktemp("divergence_edge_cache")))
        res = Cli()("convert", *DIGITS.args(), "--to", "onnx,tflite:fp32+int8,ncnn,tflite@TfliteFromOnnxDirect",
                    "--calibration", CALIB,
                    "-O", "tflite.calibration_samples=32", "-o", out, "--no-latency", "--threads", "2")
        assert res.exit_code == 0, res.output
        yield out


@pytest.fixture(scope="module")
def feed() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).random((3, 1, 8, 8), dtype=np.float32)}


def reference_tensors(onnx_path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every node output of the reference ONNX graph, computed by ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    names = [o for n in model.graph.node for o in n.output]
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(None, feed), strict=True))


def errors(got: Intermediates, ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Reference name -> max abs error of the matched tensor; shapes must be the reference's exactly."""
    out = {}
    for name, arr in got.by_reference().items():
        assert arr.dtype == np.float32 and arr.shape == ref[name].shape, (name, arr.shape, ref[name].shape)
        out[name] = float(np.max(np.abs(arr - ref[name])))
    return out


def artifact(fmt: str, path: Path) -> Artifact:
    return Artifact(format=fmt, path=path, inputs=[SPEC], output_names=["output"], precision="fp32", files=[path])


def altered_tflite(src: Path, dest: Path) -> Path:
    """A copy of ``src`` (and its layer map) with the second CONV_2D's filter negated, bytes patched in place."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(src))
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]
    weights = it.get_tensor(int(convs[1]["inputs"][1]))
    data = src.read_bytes()
    old = weights.tobytes()
    assert data.count(old) == 1, "the filter's bytes must be found exactly once"
    dest.mkdir(parents=True)
    target = dest / src.name
    target.write_bytes(data.replace(old, (-weights).tobytes()))
    if src.with_suffix(LAYER_MAP_SUFFIX).is_file():  # onnx2tf 1.x's; the direct path names tensors itself
        shutil.copyfile(src.with_suffix(LAYER_MAP_SUFFIX), target.with_suffix(LAYER_MAP_SUFFIX))
    return target


def altered_ncnn(param: Path, dest: Path) -> Path:
    """A copy of the ncnn model with the second Convolution's weights negated in the .bin.

    pnnx's fp32 .bin holds, per layer in .param order, Convolution/InnerProduct weights as a 4-byte tag (0: raw
    float32) and param 6 floats, then param 0 bias floats when param 5/1 (bias_term) is 1.
    """
    data = bytearray(param.with_suffix(".bin").read_bytes())
    offset, convs = 0, 0
    for kind, _, _, _, p in param_layers(param):
        if kind not in ("Convolution", "InnerProduct"):
            continue
        size = int(p[6] if kind == "Convolution" else p[2])
        bias = int(p[0]) if p.get(5 if kind == "Convolution" else 1) == "1" else 0
        assert data[offset:offset + 4] == b"\0\0\0\0", "expected raw float32 weights"
        if kind == "Convolution":
            convs += 1
            if convs == 2:
                start, end = offset + 4, offset + 4 + 4 * size
                data[start:end] = (-np.frombuffer(bytes(data[start:end]), "<f4")).tobytes()
        offset += 4 + 4 * size + 4 * bias
    assert offset == len(data), "the .param's layer sizes must account for the whole .bin"
    dest.mkdir(parents=True)
    shutil.copyfile(param, dest / param.name)
    (dest / param.name).with_suffix(".bin").write_bytes(bytes(data))
    return dest / param.name


def test_tflite_intermediates_match_the_reference(converted: Path, feed: dict[str, np.ndarray]) -> None:
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    got = tflite_intermediates(artifact("tflite", converted / "tflite-fp32/model.tflite"), feed, 2,
                               reference=onnx_path)
    err = errors(got, ref)
    assert list(err) == COMPUTED  # in execution order, NHWC activations back in NCHW
    assert max(err.values()) < 1e-4, err
    assert set(got.order) == set(got.tensors) and all(got.info[n].op for n in got.order)
    # Three ONNX tensors live only inside fused ops; one TFLite tensor is onnx2tf's NHWC->NCHW transpose
    # before the flatten (no ONNX tensor).
    assert got.unmatched == {"fused by the converter (an ONNX tensor computed inside a later op)": 3,
                             "no ONNX tensor of that name (a converter-made op, e.g. a layout transpose)": 1}
    only = tflite_intermediates(artifact("tflite", converted / "tflite-fp32/model.tflite"), feed, 2,
                                wanted=["max_pool2d"], reference=onnx_path)
    assert list(only.by_reference()) == ["max_pool2d"]


def test_tflite_int8_intermediates_are_dequantized(converted: Path, feed: dict[str, np.ndarray]) -> None:
    """int8 activations come back as floats (scale and zero point applied), within int8's error of ONNX."""
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    art = artifact("tflite", converted / "tflite-int8/model.tflite").derive(precision="int8")
    got = tflite_intermediates(art, feed, 2, reference=onnx_path)
    assert list(got.by_reference()) == COMPUTED
    for name, arr in got.by_reference().items():
        assert arr.dtype == np.float32 and arr.shape == ref[name].shape
        rel = float(np.max(np.abs(arr - ref[name]))) / float(np.max(np.abs(ref[name])))
        assert rel < 0.1, (name, rel)


def test_tflite_altered_conv_drifts_from_that_conv(converted: Path, feed: dict[str, np.ndarray],
                                                   tmp_path: Path) -> None:
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    path = altered_tflite(converted / "tflite-fp32/model.tflite", tmp_path / "altered")
    err = errors(tflite_intermediates(artifact("tflite", path), feed, 2, reference=onnx_path), ref)
    drifting = [n for n in COMPUTED if err[n] > 1e-3]
    assert drifting[0] == ALTERED_CONV_OUTPUT and err["relu"] < 1e-4, err


def test_tflite_without_layer_map_counts_everything_unmatched(converted: Path, feed: dict[str, np.ndarray],
                                                              tmp_path: Path) -> None:
    """A .tflite without onnx2tf's layer map (copied alone): only the output keeps a reference name."""
    bare = tmp_path / "model.tflite"
    shutil.copyfile(converted / "tflite-fp32/model.tflite", bare)
    got = tflite_intermediates(artifact("tflite", bare), feed, 2, reference=converted / "onnx-fp32/model.onnx")
    assert list(got.by_reference()) == ["output"]
    assert got.unmatched == {"no reference tensor of that name": 6}


DIRECT = "tflite-fp32@TfliteFromOnnxDirect/model.tflite"


def test_direct_tflite_intermediates_match_the_reference(converted: Path, feed: dict[str, np.ndarray]) -> None:
    """onnx2tf 2.x's flatbuffer_direct writes no layer map; it names a channel-last tensor after the ONNX node
    that reads it ("node_Conv_20_input_nhwc": input 0 of node_Conv_20, i.e. the first Relu's output). Those
    names are matched too, in the layout they state, so both Conv outputs are compared. Its Gemm and Relu stay
    two ops, so 'linear' is compared as well."""
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    got = tflite_intermediates(artifact("tflite", converted / DIRECT), feed, 2, reference=onnx_path)
    err = errors(got, ref)
    assert list(err) == ["relu", "relu_1", "max_pool2d", "view", "linear", "relu_2", "output"]
    assert max(err.values()) < 1e-4, err
    # The max pool's NHWC output and the transpose back to NCHW hold the same ONNX tensor: the later one counts.
    assert got.unmatched == {"recomputed by a later op (the later value is the one compared)": 1}


def test_direct_tflite_altered_conv_drifts_from_that_conv(converted: Path, feed: dict[str, np.ndarray],
                                                          tmp_path: Path) -> None:
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    path = altered_tflite(converted / DIRECT, tmp_path / "altered")
    err = errors(tflite_intermediates(artifact("tflite", path), feed, 2, reference=onnx_path), ref)
    drifting = [n for n in err if err[n] > 1e-3]
    assert drifting[0] == ALTERED_CONV_OUTPUT and err["relu"] < 1e-4, err


def test_ncnn_intermediates_match_the_reference(converted: Path, feed: dict[str, np.ndarray]) -> None:
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    got = ncnn_intermediates(artifact("ncnn", converted / "ncnn-fp32/model.param"), feed, 2, reference=onnx_path)
    err = errors(got, ref)
    assert list(err) == COMPUTED
    assert max(err.values()) < 1e-4, err
    assert got.info["1"].op == "Convolution" and got.reference["1"] == "relu"
    assert got.unmatched == {"fused by the converter (an ONNX tensor computed inside a later layer)": 3}


def test_ncnn_altered_conv_drifts_from_that_conv(converted: Path, feed: dict[str, np.ndarray],
                                                 tmp_path: Path) -> None:
    onnx_path = converted / "onnx-fp32/model.onnx"
    ref = reference_tensors(onnx_path, feed)
    param = altered_ncnn(converted / "ncnn-fp32/model.param", tmp_path / "altered")
    err = errors(ncnn_intermediates(artifact("ncnn", param), feed, 2, reference=onnx_path), ref)
    drifting = [n for n in COMPUTED if err[n] > 1e-3]
    assert drifting[0] == ALTERED_CONV_OUTPUT and err["relu"] < 1e-4, err


def test_check_names_the_altered_conv_on_every_edge_backend(converted: Path, tmp_path: Path) -> None:
    """``convcli check SOURCE ALTERED...``: each failing row's divergence starts at the altered Conv (fused with
    its Relu in every artifact, so named by the Relu's output), with the first Conv's output still agreeing: onnx2tf
    1.x's TFLite (layer map), ncnn, and onnx2tf 2.x's flatbuffer_direct TFLite (tensor names)."""
    tflite = altered_tflite(converted / "tflite-fp32/model.tflite", tmp_path / "tflite")
    ncnn = altered_ncnn(converted / "ncnn-fp32/model.param", tmp_path / "ncnn")
    direct = altered_tflite(converted / DIRECT, tmp_path / "direct")
    out = tmp_path / "check"
    res = Cli()("check", DIGITS.spec, "--weights", str(DIGITS.weights), tflite, ncnn, direct, "-o", out,
                "--no-latency", "--threads", "2")
    assert res.exit_code == 1, res.output
    rows = res.report(out)["artifacts"]
    assert [r["status"] for r in rows] == ["failed", "failed", "failed"]
    for row, op in zip(rows, ["CONV_2D", "Convolution", "CONV_2D"], strict=True):
        div = row["divergence"]
        assert div["status"] == "found", div["message"]
        assert div["first"]["tensor"] == ALTERED_CONV_OUTPUT and div["first"]["artifact_op"] == op
        assert [(p["tensor"], p["diverged"]) for p in div["path"]][:2] == [("relu", False), ("relu_1", True)]


def test_keras_native_tflite_matches_a_tf2onnx_reference_by_tensorflow_names(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """TensorFlow's own converter (no onnx2tf layer map) names tensors after TF ops, as tf2onnx names ONNX
    tensors (plus ':0'): every float tensor matches, its first Conv's 8x8x8 output (both layouts fit) read as its
    neighbours are (channel-last in TFLite, channel-first in tf2onnx's graph)."""
    out = tmp_path_factory.mktemp("keras_native") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVCLI_CACHE_DIR", str(tmp_path_factory.mktemp("keras_native_cache")))
        res = Cli()("convert", ROOT / "recipes/models/keras_digits.keras", "--to", "onnx,tflite@TfliteFromKeras",
                    "-o", out, "--no-latency", "--threads", "2")
    assert res.exit_code == 0, res.output
    onnx_path = out / "onnx-fp32/model.onnx"
    spec = parse_input_spec("image:batch=2x8x8x1:float32")
    path = out / "tflite-fp32@TfliteFromKeras/model.tflite"
    art = Artifact(format="tflite", path=path, inputs=[spec], output_names=["logits"], precision="fp32", files=[])
    feed = {"image": np.random.default_rng(3).random((2, 8, 8, 1), dtype=np.float32)}
    ref = reference_tensors(onnx_path, feed)
    got = tflite_intermediates(art, feed, 2, reference=onnx_path)
    err = errors(got, ref)
    # Keras numbers its layer names per process (keras_digits_1/conv2d_2_1/...): expected names come from the graph.
    import onnx

    nodes = onnx.load(str(onnx_path)).graph.node
    expected = [n.output[0] for n in nodes if n.op_type in ("Relu", "MaxPool") or "flatten" in n.name
                or n.output[0] == "logits"]
    assert len(expected) == 6 and list(err) == expected
    assert max(err.values()) < 1e-4, err
    assert got.unmatched == {"fused by the converter (an ONNX tensor computed inside a later op)": 4,
                             "integer tensor (shapes, indices): not compared": 3}


def test_the_layer_map_travels_with_the_tflite_but_is_not_its_size(converted: Path) -> None:
    """The sidecar is staged and hashed with the artifact, but a debugging aid is not part of the deployed model:
    the reported size (and a max_size_mb gate) is the .tflite alone."""
    row = next(r for r in json.loads((converted / "report.json").read_text())["artifacts"] if r["id"] == "tflite-fp32")
    model = converted / row["path"]
    assert any(f.endswith(LAYER_MAP_SUFFIX) for f in row["files"])
    assert row["size_bytes"] == model.stat().st_size
