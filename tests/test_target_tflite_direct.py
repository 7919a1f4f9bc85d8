"""The second TFLite path: onnx2tf 2.x's flatbuffer_direct backend (TfliteFromOnnxDirect), from its own folder.

Real conversions (a few seconds each: no TensorFlow converter on this path), run by LiteRT and compared with the
source, next to the TensorFlow path where the two must agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from convcli.converters.onnx_to_tflite import ONNX2TF_DIRECT_ENV, TfliteFromOnnxDirect, onnx2tf_direct_version
from tests.conftest import FAST
from tests.models.catalogue import ROOT

CALIB = ROOT / "calibration_data/digits/calib"
DIRECT = "tflite@TfliteFromOnnxDirect"

pytestmark = pytest.mark.skipif(onnx2tf_direct_version() is None,
                                reason=TfliteFromOnnxDirect.availability().reason)


def test_digits_cnn_every_precision_through_flatbuffer_direct(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", f"{DIRECT}:fp32+int8", "--calibration", CALIB,
              "-O", "TfliteFromOnnxDirect.calibration_samples=32", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = {r["id"].split("@")[0]: r for r in report["artifacts"]}
    assert all(r["status"] == "passed" for r in rows.values()), rows
    fp32, int8 = rows["tflite-fp32"], rows["tflite-int8"]
    for row in rows.values():
        assert row["details"]["onnx2tf"] == onnx2tf_direct_version()
        assert row["input_layout"] == {"x": "NHWC"}
        assert row["chain"].endswith("TfliteFromOnnxDirect")
    assert fp32["parity"]["max_abs_err"] < 1e-4
    # int8 really is int8 and keeps the trained model's accuracy on the held-out labelled images.
    assert int8["accuracy_drop"] <= 0.02, int8
    assert int8["size_bytes"] < 0.4 * fp32["size_bytes"]
    tensors = Interpreter(model_path=str(out / int8["path"])).get_tensor_details()
    assert sum(t["dtype"] == np.int8 for t in tensors) > 5
    # fp16 on this path computes in float16, which LiteRT's CPU kernels cannot run: unavailable, with the reason.
    res = cli("plan", catalogue["digits_cnn"].spec, "--to", f"{DIRECT}:fp16")
    assert res.exit_code == 0, res.output
    assert "unavailable" in res.output and "float16" in res.output and "tflite:fp16" in res.output


def test_both_tflite_paths_agree_and_direct_refuses_the_tf_only_option(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", f"tflite,{DIRECT}", "-o", out,
              "--no-latency", "--threads", "2")
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in res.report(out)["artifacts"]}
    tf_path, direct = rows["tflite-fp32"], rows["tflite-fp32@TfliteFromOnnxDirect"]
    assert tf_path["status"] == direct["status"] == "passed"
    assert direct["details"]["fixed shapes"] == tf_path["details"]["fixed shapes"] != {}
    bad = cli("convert", *catalogue["digits_cnn"].args(), "--to", DIRECT, "-O",
              "TfliteFromOnnxDirect.keras_metadata=true", "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "keras_metadata" in bad.output and "TfliteFromOnnxDirect" in bad.output


def test_missing_direct_install_is_unavailable_with_the_reason(cli, catalogue, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ONNX2TF_DIRECT_ENV, str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", f"onnx,{DIRECT}", "-o", out, "--no-latency")
    rows = {r["id"]: r for r in res.report(out)["artifacts"]}
    row = rows["tflite-fp32@TfliteFromOnnxDirect"]
    assert row["status"] == "unavailable" and "onnx2tf 2.x is not installed" in row["error"]
    assert rows["onnx-fp32"]["status"] == "passed"


@pytest.mark.slow
def test_tensorflow_path_falls_back_to_direct_where_onnx2tf_1x_fails(cli, tmp_path: Path) -> None:
    """swin_v2's blocks make onnx2tf 1.x write a file needing TensorFlow Select ops (plain LiteRT cannot load it);
    the direct path converts them. The default `--to tflite` then ships the direct file and says so; fp16 has no
    fallback (the direct path makes none) and says why; the fallback can be turned off."""
    model = [f"{ROOT}/tests/models/windows.py:tiny_swin_v2", "--input", "x:batch=1x3x32x32:float32"]
    out = tmp_path / "out"
    res = cli("convert", *model, "--to", "tflite:fp32+fp16", "-o", out, "--no-latency", "--threads", "2")
    rows = {r["id"]: r for r in res.report(out)["artifacts"]}
    fp32, fp16 = rows["tflite-fp32"], rows["tflite-fp16"]
    assert fp32["status"] == "passed", fp32
    assert fp32["chain"].endswith("TfliteFromOnnx [via TfliteFromOnnxDirect: onnx2tf 1.x failed]")
    assert fp32["details"]["tflite_route"].endswith("flatbuffer_direct (fallback)")
    assert fp32["details"]["onnx2tf"] == onnx2tf_direct_version() and fp32["details"]["tflite_route_reason"]
    assert fp16["status"] == "error" and "no fallback: TfliteFromOnnxDirect makes no fp16" in fp16["error"]
    off = tmp_path / "off"
    res = cli("convert", *model, "--to", "tflite", "-O", "tflite.direct_fallback=false", "-o", off, "--no-latency")
    (row,) = res.report(off)["artifacts"]
    assert row["status"] == "error" and "fallback" not in row["error"] and "tflite_route" not in row["details"]
