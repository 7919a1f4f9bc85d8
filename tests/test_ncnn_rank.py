"""Rank lowering for ncnn (convcli/converters/onnx_rank.py): window attention's 5-D and 6-D data movement rewritten
on tensors of rank <= 4, checked with ONNX Runtime against the original graph, and end to end through pnnx and
ncnn on tiny swin / swin_v2 / maxvit models built from torchvision's own classes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from convcli.converters.onnx_rank import block_swaps, high_rank_ops, lower_rank, merge_axes

NO_LAT = ["--no-latency", "--threads", "2", "--samples", "2"]
MODELS = str(Path(__file__).parent / "models/windows.py")


def _apply(x: np.ndarray, steps: list[tuple[list[int], list[int]]]) -> np.ndarray:
    for shape, perm in steps:
        x = np.transpose(x.reshape(shape), perm)
    return x


@pytest.mark.parametrize("perm", [(0, 1, 3, 2, 4, 5), (0, 2, 4, 3, 5, 1), (0, 5, 1, 3, 2, 4), (2, 0, 3, 1, 4),
                                  (5, 4, 3, 2, 1, 0), (1, 3, 5, 0, 2, 4)])
def test_merged_axes_and_block_swaps_move_the_same_data(perm: tuple[int, ...]) -> None:
    """swin's partition merges to one 4-D transpose; maxvit's (0, 2, 4, 3, 5, 1) keeps no axes together and
    becomes two swaps of adjacent blocks; any permutation of rank <= 6 is reached, each step of rank <= 4."""
    sizes = [1, 2, 3, 2, 3, 4][: len(perm)]
    x = np.arange(int(np.prod(sizes)), dtype=np.float32)
    want = np.transpose(x.reshape(sizes), perm).ravel()
    reduced, rperm = merge_axes(sizes, list(perm))
    steps = [(reduced, rperm)] if len(reduced) <= 4 else block_swaps(reduced, rperm)
    assert steps is not None and all(len(s) <= 4 for s, _ in steps)
    assert np.array_equal(_apply(x, steps).ravel(), want)
    if perm == (0, 1, 3, 2, 4, 5):
        assert steps == [([2, 3, 2, 12], [0, 2, 1, 3])]
    if perm == (0, 2, 4, 3, 5, 1):
        assert len(steps) == 2


def test_every_permutation_of_five_axes_is_reached_in_rank_4_steps() -> None:
    sizes = [2, 3, 2, 5, 3]
    x = np.arange(int(np.prod(sizes)), dtype=np.float32)
    for perm in itertools.permutations(range(5)):
        steps = block_swaps(sizes, list(perm))
        assert steps is not None and all(len(s) <= 4 for s, _ in steps), perm
        assert np.array_equal(_apply(x, steps).ravel(), np.transpose(x.reshape(sizes), perm).ravel()), perm


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(value, name)


def _window_graph() -> onnx.ModelProto:
    """swin's and maxvit's patterns at batch 1, written by hand: window partition (6-D), qkv split (5-D Transpose
    then Gather), the shifted-window mask added on a 5-D view, patch merging's strided slices, a one-axis
    ReduceL2 (swin_v2), maxvit's partition permute (0, 2, 4, 3, 5, 1) and its 5-D Einsum attention."""
    i64 = np.int64
    rng = np.random.default_rng(0)
    mask = rng.standard_normal((1, 4, 1, 16, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "s6"], ["x6"]),
        helper.make_node("Transpose", ["x6"], ["x6t"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["x6t", "s_win"], ["win"]),  # (4, 16, 6)
        helper.make_node("Reshape", ["win", "s_qkv"], ["qkv5"]),  # (4, 16, 3, 2, 1)
        helper.make_node("Transpose", ["qkv5"], ["qkv"], perm=[2, 0, 3, 1, 4]),  # (3, 4, 2, 16, 1)
        helper.make_node("Gather", ["qkv", "i0"], ["q"], axis=0),
        helper.make_node("Gather", ["qkv", "i1"], ["k"], axis=0),
        helper.make_node("Gather", ["qkv", "i2"], ["v"], axis=0),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["attn"]),  # (4, 2, 16, 16)
        helper.make_node("Reshape", ["attn", "s_attn5"], ["attn5"]),
        helper.make_node("Add", ["attn5", "mask"], ["masked5"]),
        helper.make_node("Reshape", ["masked5", "s_attn4"], ["masked"]),
        helper.make_node("MatMul", ["masked", "v"], ["attended"]),  # (4, 2, 16, 1)
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["merged"]),  # x[:, 1::2, 0::2, :]
        helper.make_node("ReduceL2", ["x", "last"], ["norm"], keepdims=1),
        helper.make_node("Reshape", ["y", "s_max"], ["y6"]),
        helper.make_node("Transpose", ["y6"], ["y6t"], perm=[0, 2, 4, 3, 5, 1]),
        helper.make_node("Reshape", ["y6t", "s_part"], ["part"]),
        helper.make_node("Reshape", ["part", "s_heads"], ["heads5"]),  # maxvit's attention at batch 1
        helper.make_node("Transpose", ["heads5"], ["q5"], perm=[0, 1, 3, 2, 4]),  # (1, 4, 2, 16, 3)
        helper.make_node("Einsum", ["q5", "q5"], ["dot5"], equation="B G H I D, B G H J D -> B G H I J"),
        helper.make_node("Softmax", ["dot5"], ["scores5"], axis=-1),
        helper.make_node("Reshape", ["scores5", "s_scores"], ["scores"]),
    ]
    inits = [
        _const("s6", np.array([-1, 2, 4, 2, 4, 6], i64)), _const("s_win", np.array([-1, 16, 6], i64)),
        _const("s_qkv", np.array([-1, 16, 3, 2, 1], i64)), _const("i0", np.array(0, i64)),
        _const("i1", np.array(1, i64)), _const("i2", np.array(-1, i64)),
        _const("s_attn5", np.array([-1, 4, 2, 16, 16], i64)), _const("mask", mask),
        _const("s_attn4", np.array([-1, 2, 16, 16], i64)), _const("st", np.array([1, 0], i64)),
        _const("en", np.array([8, 8], i64)), _const("ax", np.array([1, 2], i64)), _const("sp", np.array([2, 2], i64)),
        _const("last", np.array([-1], i64)), _const("s_max", np.array([-1, 6, 2, 4, 2, 4], i64)),
        _const("s_part", np.array([-1, 4, 16, 6], i64)), _const("s_heads", np.array([1, 4, 16, 2, 3], i64)),
        _const("s_scores", np.array([4, 2, 16, 16], i64)),
    ]
    graph = helper.make_graph(
        nodes, "windows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 6]),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (
            ("attended", [4, 2, 16, 1]), ("merged", [1, 4, 4, 6]), ("norm", [1, 8, 8, 1]), ("part", [1, 4, 16, 6]),
            ("scores", [4, 2, 16, 16]))],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_lowering_leaves_nothing_above_rank_4_and_computes_the_same() -> None:
    model = _window_graph()
    onnx.checker.check_model(model)
    before = high_rank_ops(model)
    assert {"Transpose (6-D) x2", "Gather (5-D) x3", "Slice (steps)", "Einsum (5-D)"} <= set(before), before
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((1, 8, 8, 6)).astype(np.float32),
            "y": rng.standard_normal((1, 6, 8, 8)).astype(np.float32)}
    want = _run(model, feed)
    lowered, rewrites = lower_rank(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(lowered)
    assert high_rank_ops(lowered) == [], high_rank_ops(lowered)
    inferred = onnx.shape_inference.infer_shapes(lowered).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.output]}
    assert max(ranks.values()) <= 4, ranks
    for a, b in zip(want, _run(lowered, feed), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert rewrites["6-D Transpose: merged axes -> rank 4"] == 1, rewrites
    assert rewrites["6-D Transpose: 2 block swaps -> rank 4"] == 1, rewrites
    assert rewrites["Gather after 5-D Transpose: gathered first"] == 1, rewrites
    assert rewrites["Slice with step 2: unit Slices of 2 4-D view(s)"] == 1, rewrites
    assert rewrites["ReduceL2 over one axis: two axes of a 4-D view"] == 1, rewrites
    assert any(k.startswith("5-D Add") for k in rewrites), rewrites
    assert rewrites["5-D Einsum: batch index of size 1 dropped"] == 1, rewrites
    assert rewrites["5-D Softmax: on a 3-D view"] == 1, rewrites


@pytest.mark.parametrize("factory", ["tiny_swin", pytest.param("tiny_swin_v2", marks=pytest.mark.slow),
                                     pytest.param("tiny_maxvit", marks=pytest.mark.slow)])
def test_window_attention_models_convert_to_ncnn_through_the_lowered_onnx(cli, tmp_path: Path, factory: str) -> None:
    """pnnx leaves their 6-D reshapes unmapped on both routes; the ONNX route's copy, lowered to rank 4, converts
    and the ncnn model agrees with PyTorch. The step records the rewrites and ORT's check of them."""
    out = tmp_path / "out"
    res = cli("convert", f"{MODELS}:{factory}", "--input", "x:batch=2x3x32x32:float32", "--to", "ncnn", "-o", out,
              *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed" and row["parity"]["max_abs_err"] < 1e-4, row
    details = {s["name"]: s for s in report["steps"]}["NcnnFromPytorch"]["details"]
    assert details["ncnn_route"] == "onnx (OnnxFromPytorch + pnnx)", details
    lowering = details["onnx_rank_lowering"]
    assert lowering["ort_max_abs_diff"] == 0.0 and lowering["left_above_rank_4"] == [], lowering
    assert lowering["input_shapes"] == ["x:1,3,32,32"]
    assert any("6-D Transpose" in k for k in lowering["rewrites"]), lowering
    assert not any("." in t or "::" in t for t in details["ncnn_layers"]), details["ncnn_layers"]


def test_what_cannot_be_lowered_is_named_with_its_rank() -> None:
    """A reduction over two axes of a 6-D view has no rewrite: it is left, and named as the error will name it."""
    i64 = np.int64
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s6"], ["x6"]),
         helper.make_node("ReduceSum", ["x6", "axes"], ["total"], keepdims=0)],
        "left", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 6])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 2, 2, 6])],
        [_const("s6", np.array([1, 2, 4, 2, 4, 6], i64)), _const("axes", np.array([2, 4], i64))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    lowered, rewrites = lower_rank(model)
    assert rewrites == {}
    assert high_rank_ops(lowered) == ["Reshape (6-D)", "ReduceSum (6-D)"]
