"""INT8 for the TFLite (onnx2tf) and NCNN targets.

TFLite: real onnx2tf full-integer conversions of the digits CNN calibrated on the committed calibration images,
run by LiteRT and judged on accuracy against the labelled set. NCNN: ncnn2table/ncnn2int8 are not installable
here, so ``ncnn:int8`` must be reported unavailable with the reason; the pass's helpers are checked on a real
pnnx model. The ncnn2table/ncnn2int8 command lines themselves only run where those tools are on PATH.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from convcli.parity.data import DataSet
from convcli.passes.quantize_ncnn import input_order, int8_layer_count, write_npy_lists
from convcli.runners.tflite_runner import dequantize, quantize
from tests.conftest import FAST
from tests.models.catalogue import ROOT

CALIB = ROOT / "calibration_data/digits/calib"
NO_LAT = ["--no-latency", "--threads", "2"]


def _rows(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["artifacts"]}


def test_digits_tflite_int8_keeps_accuracy_and_shares_onnx2tf_runs(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite:fp32+fp16+int8", "--calibration", CALIB,
              "-O", "tflite.calibration_samples=32", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    fp32, int8 = rows["tflite-fp32"], rows["tflite-int8"]
    assert all(r["status"] == "passed" for r in rows.values()), rows
    assert report["source"]["accuracy"] > 0.95
    assert int8["accuracy_drop"] <= 0.01, int8
    assert int8["parity"]["cosine_min"] > 0.995 and int8["parity"]["top1_agreement"] >= 0.95
    # Really int8: measurably off fp32, weights a quarter of the size, float I/O with QUANTIZE/DEQUANTIZE at the edges.
    assert int8["parity"]["max_abs_err"] > 100 * fp32["parity"]["max_abs_err"]
    assert int8["size_bytes"] < 0.4 * fp32["size_bytes"]
    details = int8["details"]
    assert details["int8"]["calibration_samples"] == 32
    assert details["int8"]["calibration_data"].startswith(f"images {CALIB}")
    assert details["int8"]["calibration_layout"] == {"x": "NHWC"} and details["int8"]["int8_io"] is False
    assert details["io_dtypes"] == {"inputs": {"x": "float32"}, "outputs": {"output": "float32"}}
    assert details["ops"]["QUANTIZE"] == 1 and details["ops"]["DEQUANTIZE"] == 1
    tensors = Interpreter(model_path=str(out / int8["path"])).get_tensor_details()
    assert sum(t["dtype"] == np.int8 for t in tensors) > 5
    # One onnx2tf run serves fp32 and fp16; int8 (other options, -cind data) runs its own.
    steps = [s for s in report["steps"] if s["name"] == "TfliteFromOnnx"]
    runs = {s["options"]["precision"]: s["details"]["onnx2tf_run"] for s in steps}
    assert runs["fp32"] == "ran" and runs["int8"] == "ran" and runs["fp16"].startswith("reused the run")
    fp16_step = next(s for s in steps if s["options"]["precision"] == "fp16")
    assert fp16_step["seconds"] < 0.5 * min(s["seconds"] for s in steps if s is not fp16_step)


def test_digits_tflite_int8_with_int8_io(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite:int8", "--calibration", CALIB,
              "-O", "tflite.int8_io=true", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed", row
    assert row["accuracy_drop"] <= 0.01 and row["parity"]["cosine_min"] > 0.995
    assert row["details"]["io_dtypes"] == {"inputs": {"x": "int8"}, "outputs": {"output": "int8"}}
    assert row["details"]["int8"]["int8_io"] is True and row["details"]["int8"]["calibration_samples"] == 64
    assert "int8 I/O (runner quantizes/dequantizes)" in row["runner"]
    assert "QUANTIZE" not in row["details"]["ops"] and "DEQUANTIZE" not in row["details"]["ops"]
    it = Interpreter(model_path=str(out / row["path"]))
    (inp,), (outp,) = it.get_input_details(), it.get_output_details()
    assert inp["dtype"] == np.int8 and inp["quantization"][0] > 0
    assert outp["dtype"] == np.int8 and outp["quantization"][0] > 0


def test_tflite_int8_without_calibration_is_refused_before_any_conversion(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite:fp16+int8", "-o", out, *NO_LAT)
    assert res.exit_code == 2, res.output
    assert "--calibration: tflite-int8 (TfliteFromOnnx) needs calibration data" in res.output
    assert "random data" in res.output  # the hint: never calibrated on random data
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ncnn_int8_is_unavailable_without_the_ncnn_tools(cli, catalogue, tmp_path: Path) -> None:
    if any(shutil.which(t) for t in ("ncnn2table", "ncnn2int8")):
        pytest.skip("ncnn's quantize tools are on PATH here")
    case = catalogue["digits_cnn"]
    out = tmp_path / "out"
    res = cli("convert", case.spec, "--weights", case.weights, "--to", "ncnn:fp32+int8", "--calibration", CALIB,
              "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    assert rows["ncnn-fp32"]["status"] == "passed"
    int8 = rows["ncnn-int8"]
    assert int8["status"] == "unavailable" and int8["files"] == []
    assert int8["error"].startswith("QuantizeNcnnInt8: ncnn2table/ncnn2int8 not found on PATH")
    assert "tools/quantize" in int8["error"] and "unavailable" in report["summary"]

    strict = cli("convert", case.spec, "--weights", case.weights, "--to", "ncnn:int8", "--calibration", CALIB,
                 "--require-all", "-o", tmp_path / "strict", *NO_LAT)
    assert strict.exit_code == 3, strict.output
    assert _rows(strict.report(tmp_path / "strict"))["ncnn-int8"]["status"] == "unavailable"

    # The pass's own helpers on the real pnnx model: input order, int8 layer count, the .npy lists.
    param = out / rows["ncnn-fp32"]["path"]
    assert input_order(param, "test") == ["in0"]
    assert int8_layer_count(param) == 0
    samples = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    lists, shapes = write_npy_lists(DataSet({"x": samples}, None, "test"), ["in0"], {"in0": "x"}, tmp_path / "q")
    assert lists == ["list0.txt"] and shapes == ["[8,8,1]"]
    files = (tmp_path / "q/list0.txt").read_text().split()
    assert files == ["c0/00000.npy", "c0/00001.npy", "c0/00002.npy"]
    back = np.load(tmp_path / "q" / files[1])
    assert back.dtype == np.dtype("<f4") and back.shape == (1, 8, 8) and np.array_equal(back, samples[1])


def test_int8_layer_count_reads_the_scale_term(tmp_path: Path) -> None:
    param = tmp_path / "m.param"
    param.write_text("7767517\n4 4\nInput in0 0 1 in0\nConvolution conv 1 1 in0 a 0=4 1=3 6=36 8=2\n"
                     "InnerProduct fc 1 1 a b 0=10 2=40 8=1\nInnerProduct fc2 1 1 b out0 0=10 2=100\n")
    assert int8_layer_count(param) == 2


def test_runner_quantizes_float_feeds_and_dequantizes_outputs() -> None:
    det = {"dtype": np.int8, "quantization": (0.5, -3)}
    q = quantize(np.array([[-100.0, -1.0, 0.0, 0.74, 1.0, 100.0]], np.float32), det)
    assert q.dtype == np.int8 and q.tolist() == [[-128, -5, -3, -2, -1, 127]]
    assert dequantize(q, det).tolist() == [[-62.5, -1.0, 0.0, 0.5, 1.0, 65.0]]
    ids = {"dtype": np.int32, "quantization": (0.0, 0)}  # token ids: no scale, passed through
    assert quantize(np.array([[7, 9]]), ids).dtype == np.int32
    assert dequantize(np.array([[7, 9]], np.int32), ids).tolist() == [[7, 9]]
