"""Dense-prediction outputs: detections paired by class and IoU (not elementwise), segmentation judged per pixel.
Handmade arrays for the pairing rule; tiny real models (tests/models/dense.py) converted end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convcli.parity.compare import DEFAULT_TOLERANCES, KindChoice, compare_output, compare_outputs
from tests.conftest import FAST

DETECTIONS = KindChoice(kind="detections", declared=True, reason="declared")
SEGMENTATION = KindChoice(kind="segmentation", declared=True, reason="declared")
FP32 = DEFAULT_TOLERANCES["fp32"]
DENSE = Path(__file__).resolve().parent / "models" / "dense.py"


def image() -> np.ndarray:
    """Five detections of one image, [x1, y1, x2, y2, score, class], scores 0.9 down to 0.31."""
    return np.array([[10, 10, 50, 50, 0.90, 1], [60, 10, 90, 40, 0.80, 2], [12, 12, 48, 52, 0.60, 2],
                     [100, 100, 140, 150, 0.45, 1], [0, 70, 30, 95, 0.31, 3]], dtype=np.float32)


def judge(ref: np.ndarray, got: np.ndarray, rows: tuple[list[int], list[int]] | None = None):
    return compare_output("dets", ref, got, FP32, DETECTIONS, rows)


def test_permuted_detections_pass_and_pair_every_one() -> None:
    ref = image()
    got = ref[[3, 0, 4, 2, 1]] + np.float32(1e-6)
    out = judge(ref, got)
    assert out.passed, out.problems
    d = out.detections
    assert d is not None and (d.source, d.artifact, d.matched) == (5, 5, 5)
    assert d.recall == d.precision == 1.0 and d.min_iou == pytest.approx(1.0) and d.near_threshold == 0
    assert out.max_abs_err is None  # rows in another order: nothing to subtract


def test_a_shifted_box_fails() -> None:
    got = image()
    got[1, [0, 2]] += 20.0  # class 2's box moves 20 px right: IoU 0.2, no pair
    out = judge(image(), got)
    assert not out.passed
    assert any("1 of 5 source detections have no pair" in p and "score 0.8 class 2" in p for p in out.problems)
    assert any("1 of 5 artifact detections have no pair" in p for p in out.problems)
    slightly = image()
    slightly[0, [0, 2]] += 4.0  # still paired (IoU 0.82) but moved more than fp32 allows
    out = judge(image(), slightly)
    assert not out.passed and any("paired boxes moved" in p for p in out.problems)
    assert out.detections is not None and out.detections.min_iou == pytest.approx(36 * 40 / (44 * 40))


def test_a_missing_high_score_box_fails_and_a_wrong_class_does_not_pair() -> None:
    out = judge(image(), image()[[1, 2, 3, 4]])
    assert not out.passed and out.detections is not None and out.detections.recall == pytest.approx(0.8)
    relabelled = image()
    relabelled[0, 5] = 7
    assert not judge(image(), relabelled).passed


def test_a_detection_near_the_lowest_kept_score_may_appear_or_disappear() -> None:
    ref = image()
    extra = np.array([[200, 200, 220, 230, 0.3102, 1]], dtype=np.float32)  # within 1e-3 of the floor 0.31
    out = judge(ref, np.concatenate([ref, extra]))
    assert out.passed, out.problems
    assert out.detections is not None and out.detections.near_threshold == 1 and out.detections.precision == 1.0
    out = judge(ref, ref[:4])  # the 0.31 one dropped: the artifact's floor is 0.45, the source's 0.31 is kept
    assert out.passed and out.detections is not None and out.detections.near_threshold == 1


def test_scores_beyond_the_tolerance_fail() -> None:
    got = image()
    got[0, 4] -= 0.01
    out = judge(image(), got)
    assert not out.passed and any("paired scores differ" in p for p in out.problems)
    assert DEFAULT_TOLERANCES["fp16"].det_max_score_diff is not None
    assert compare_output("dets", image(), got, DEFAULT_TOLERANCES["fp16"], DETECTIONS).passed


def test_detections_are_paired_within_each_image_only() -> None:
    a, b = image(), image()[:2] + np.float32(200)
    ref = np.concatenate([a, b])  # two images, 5 and 2 detections, fed one at a time
    assert judge(ref, ref.copy(), ([5, 2], [5, 2])).passed
    swapped = np.concatenate([b, a])  # the same rows, but image 0's detections show up in image 1
    out = judge(ref, swapped, ([5, 2], [2, 5]))
    assert not out.passed and out.detections is not None and out.detections.groups == 2
    padded = np.zeros((2, 6, 6), np.float32)  # (N, K, 6) with zero rows as padding
    padded[0, :5], padded[1, :2] = a, b
    out = judge(padded, padded[:, ::-1].copy())
    assert out.passed and out.detections is not None and out.detections.matched == 7


def test_no_detections_is_degenerate_and_a_bad_layout_is_named() -> None:
    empty = np.zeros((0, 6), np.float32)
    out = judge(empty, empty)
    assert out.passed and out.degenerate and "no detections" in out.degenerate[0]
    out = judge(np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32))
    assert not out.passed and "not a detections layout" in out.problems[0]


def test_segmentation_agreement_is_per_pixel_argmax() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    result = compare_outputs(["out"], [ref], [ref.copy()], DEFAULT_TOLERANCES["fp16"], [SEGMENTATION])
    assert result.passed and result.top1_agreement == 1.0
    got = ref.copy()
    got[:, 0, :4] += 10.0  # a quarter of the pixels now argmax to class 0
    flipped = float((ref.argmax(1)[:, :4] != 0).sum()) / (2 * 8 * 8)
    out = compare_output("out", ref, got, DEFAULT_TOLERANCES["fp16"], SEGMENTATION)
    assert out.top1_agreement == pytest.approx(1 - flipped)
    assert not out.passed and any("top-1 agreement" in p for p in out.problems)


def test_tiny_detector_to_onnx_and_openvino_is_judged_as_detections(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", f"{DENSE}:tiny_detector", "--input", "x:1x3x32x32:float32", "--to", "onnx,openvino",
              "--samples", "3", "--no-latency", "--output-kind", "output:detections", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert "detections: onnx-fp32: output:" in res.output
    for row in report["artifacts"]:
        assert row["status"] == "passed", row
        o = row["parity"]["outputs"][0]
        d = o["detections"]
        assert o["kind"] == "detections" and d["groups"] == 3  # one image per fed batch, not one list
        assert d["source"] > 30 and d["matched"] == d["source"] == d["artifact"] and d["recall"] == 1.0
        assert d["min_iou"] > 0.999 and d["max_score_diff"] < 1e-5
        assert not row["flags"]


def test_tiny_segmenter_to_onnx_and_openvino_is_judged_per_pixel(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", f"{DENSE}:tiny_segmenter", "--input", "x:batch=2x3x32x32:float32", "--to",
              "onnx,openvino", "--precision", "fp32,fp16", "--samples", "4", "--no-latency", "--output-kind",
              "output:segmentation", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in res.report(out)["artifacts"]}
    for row in rows.values():
        o = row["parity"]["outputs"][0]
        assert row["status"] == "passed" and o["kind"] == "segmentation", row
        assert o["top1_agreement"] is not None and o["top1_agreement"] >= 0.95
    assert rows["onnx-fp32"]["parity"]["top1_agreement"] == 1.0  # the per-pixel agreement reaches the row


def test_a_steps_own_check_judges_declared_detections_as_detections(tmp_path: Path) -> None:
    """An export whose detections come out in another order (near-tied scores after NMS: RetinaNet's TorchScript
    export) is correct; the exporter's own check must pair them as the judge does, not reject the file."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from convcli.converters.torch_to_onnx import verify_export
    from convcli.core.errors import ConversionError
    from convcli.core.step import StepContext
    from convcli.core.tensors import parse_input_spec

    dets = image()
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["dets"], value=numpy_helper.from_array(dets))], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, list(dets.shape))])
    path = tmp_path / "dets.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    def reordered(x: torch.Tensor) -> torch.Tensor:  # the same detections, listed in another order
        return torch.from_numpy(dets[[1, 0, 3, 2, 4]].copy())

    specs = [parse_input_spec("x:1x3:float32")]
    with pytest.raises(ConversionError, match="disagrees"):
        verify_export(reordered, path, specs, 1, False, StepContext(workdir=tmp_path).kinds)
    ctx = StepContext(workdir=tmp_path, output_kinds={"dets": "detections"})
    checks = verify_export(reordered, path, specs, 1, False, ctx.kinds)
    assert checks["example sizes"]["passed"] is True
