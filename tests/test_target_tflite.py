"""The TFLite target: onnx2tf in a child process, LiteRT as the runner, layouts mapped back for parity.

Every conversion here is real (onnx2tf + TensorFlow in a child, 12-20 s each), so each test converts once
and checks as much as that conversion shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from convcli.converters.onnx_to_tflite import SAMPLE_SHAPE, sample_images
from convcli.core.tensors import parse_input_spec
from convcli.parity.data import DataSet
from convcli.runners.tflite_runner import layout_candidates
from tests.conftest import FAST

NO_LATENCY = ["--no-latency", "--threads", "2"]


def _tflite_inputs(path: Path) -> list[tuple[str, list[int]]]:
    it = Interpreter(model_path=str(path))
    return [(d["name"], [int(x) for x in d["shape"]]) for d in it.get_input_details()]


def test_digits_cnn_fp32_and_fp16_pass_and_keep_accuracy(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite:fp32+fp16", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = {r["id"]: r for r in report["artifacts"]}
    fp32, fp16 = rows["tflite-fp32"], rows["tflite-fp16"]
    for row in (fp32, fp16):
        assert row["status"] == "passed", row
        assert row["input_layout"] == {"x": "NHWC"}
        assert "LiteRT 2." in row["runner"] and "2 threads" in row["runner"] and "x:NHWC" in row["runner"]
        assert row["details"]["fixed shapes"] == {"x": {"batch": 1}}
        assert abs(row["accuracy"] - report["source"]["accuracy"]) <= 0.01
        assert row["latency_ms"]["p50"] > 0
        data = (out / row["path"]).read_bytes()
        assert data[4:8] == b"TFL3", "not a TFLite flatbuffer"
        assert _tflite_inputs(out / row["path"])[0][1] == [1, 8, 8, 1]
    assert report["source"]["accuracy"] > 0.95
    assert fp32["parity"]["max_abs_err"] < 1e-4 and fp32["parity"]["cosine_min"] > 0.9999
    assert fp16["parity"]["max_abs_err"] < 1e-2 and fp16["parity"]["top1_agreement"] >= 0.95
    # fp16 really is the half-precision file: smaller, with DEQUANTIZE ops, and less exact.
    assert fp16["size_bytes"] < 0.6 * fp32["size_bytes"]
    assert fp16["details"]["ops"].get("DEQUANTIZE", 0) > 0 and "DEQUANTIZE" not in fp32["details"]["ops"]
    assert fp16["parity"]["max_abs_err"] > fp32["parity"]["max_abs_err"]
    assert fp32["details"]["check_vs_onnx"]["max_abs_err"] < 1e-4
    step = next(s for s in report["steps"] if s["name"] == "TfliteFromOnnx")
    assert step["status"] == "ok" and step["target"] == "tflite"


def test_transformer_converts_at_fixed_shapes(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "tflite", "-o", out, *NO_LATENCY)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed", row
    assert row["details"]["fixed shapes"] == {"input_ids": {"batch": 1, "seq": 16}}
    assert row["input_layout"] == {}
    assert row["parity"]["max_abs_err"] < 1e-4
    ((_, shape),) = _tflite_inputs(out / row["path"])
    assert shape == [1, 16]


def test_image_model_converts_offline_and_outputs_map_back(cli, catalogue, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """3-channel 8x8 input: onnx2tf would download its sample file; with a dead proxy any attempt fails."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    out = tmp_path / "out"
    res = cli("convert", *catalogue["two_outputs"].args(), "--to", "tflite", "-o", out, *NO_LATENCY)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed", row
    assert row["input_layout"] == {"x": "NHWC"}
    assert row["details"]["output_layout"] == {"output_0": "NHWC"}
    assert row["details"]["onnx2tf_sample_images"] == "seeded random (seed 0)"
    outputs = row["parity"]["outputs"]
    assert [(o["name"], o["shape"]) for o in outputs] == [("output_0", [16, 4, 8, 8]), ("output_1", [16, 5])]
    assert all(o["passed"] and o["max_abs_err"] < 1e-4 for o in outputs), outputs
    assert _tflite_inputs(out / row["path"])[0][1] == [1, 8, 8, 3]


def test_keep_nchw_and_ambiguous_shapes_decided_by_numbers(cli, catalogue, tmp_path: Path) -> None:
    """x:1x3x4x4: keep_nchw keeps the input NCHW; the 4-channel 4x4 feature map fits both layouts by shape,
    so running it decides. Calibration images (3-channel) become onnx2tf's sample file."""
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(5).random((4, 3, 4, 4), dtype=np.float32))
    out = tmp_path / "out"
    case = catalogue["two_outputs"]
    res = cli("convert", case.spec, "--input", "x:batch=2x3x4x4:float32", "--to", "tflite", "-O",
              "tflite.keep_nchw=true", "--calibration", calib, "-o", out, *NO_LATENCY)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed", row
    assert row["input_layout"] == {"x": "NCHW"}
    details = row["details"]
    assert details["keep_nchw"] is True and details["onnx2tf_sample_images"] == "calibration data (x)"
    assert details["output_layout"] == {"output_0": "NHWC"}
    assert details["check_vs_onnx"]["decided_by_numbers"] == ["output_0"]
    assert row["parity"]["max_abs_err"] < 1e-4
    assert _tflite_inputs(out / row["path"])[0][1] == [1, 3, 4, 4]


def test_skipping_keras_metadata_writes_the_same_tflite_file(cli, catalogue, tmp_path: Path) -> None:
    """The fast path (no Keras metadata in onnx2tf's SavedModels) must not change the converted model."""
    files = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite", "-O", f"tflite.keras_metadata={flag}",
                  "-o", out, *NO_LATENCY)
        assert res.exit_code == 0, res.output
        row = res.report(out)["artifacts"][0]
        assert row["status"] == "passed", row
        assert row["details"]["onnx2tf_run"] == "ran"  # both converted, neither reused the other's files
        files[flag] = (out / row["path"]).read_bytes()
    assert files["false"] == files["true"]


def test_unknown_option_exits_2_naming_target_and_flag(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite", "-O", "tflite.bogus=1", "-o", out)
    assert res.exit_code == 2, res.output
    assert "tflite" in res.output and "bogus" in res.output and "keep_nchw" in res.output
    assert not out.exists()


def test_child_timeout_is_the_targets_one_line_error(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "onnx,tflite", "-O", "tflite.timeout_s=1",
              "-O", "tflite.direct_fallback=false", "-o", out, *NO_LATENCY)  # the direct path can make it in 1 s
    assert res.exit_code == 3, res.output
    rows = {r["id"]: r for r in res.report(out)["artifacts"]}
    assert rows["onnx-fp32"]["status"] == "passed"
    error = rows["tflite-fp32"]["error"]
    assert rows["tflite-fp32"]["status"] == "error" and "\n" not in error
    assert error.startswith("TfliteFromOnnx failed") and "onnx2tf did not finish within 1 s" in error
    assert "timeout_s" in error


def test_layout_candidates_and_sample_images() -> None:
    """The pure helpers: which layouts a shape pair allows, and onnx2tf's sample file from calibration data."""
    assert layout_candidates((2, 1, 8, 8), (1, 8, 8, 1)) == ["NHWC"]
    assert layout_candidates((2, 3, 3, 3), (1, 3, 3, 3)) == ["NCHW", "NHWC"]
    assert layout_candidates((2, 16), (1, 16)) == ["same"]
    assert layout_candidates((2, 3, 8), (1, 8, 3)) == ["NWC"]
    assert layout_candidates((2, 3, 8, 8), (1, 3, 8, 9)) == []
    spec = parse_input_spec("x:batch=2x3x4x4:float32")
    nchw = np.zeros((3, 3, 4, 4), np.float32)
    nchw[:, 0], nchw[:, 1], nchw[:, 2] = 0.1, 0.5, 0.9
    arr, origin = sample_images([spec], DataSet({"x": nchw}, None, "test"))
    assert arr.shape == SAMPLE_SHAPE and arr.dtype == np.float32 and origin == "calibration data (x)"
    assert np.allclose(arr.reshape(-1, 3), [0.1, 0.5, 0.9])
    gray = DataSet({"x": np.zeros((3, 1, 4, 4), np.float32)}, None, "gray")
    arr, origin = sample_images([spec], gray)
    assert arr.shape == SAMPLE_SHAPE and origin == "seeded random (seed 0)" and 0 <= arr.min() < arr.max() < 1


def test_channel_last_detection_reads_a_model_whose_weights_live_in_a_data_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 2 GB the exporter stores every weight in model.onnx.data (and SimplifyOnnx leaves such a model as it
    is). Reading the graph's 1-D constants must not go looking for that file in the working directory:
    regnet_y_128gf's TFLite targets failed on "Data of TensorProto ... should be stored in model.onnx.data"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convcli.converters.onnx_to_tflite import channel_last_inputs

    bias = numpy_helper.from_array(np.arange(8, dtype=np.float32), "bias")
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                               helper.make_node("Add", ["t", "bias"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], [bias])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"),
              save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)  # not the model's folder
    assert channel_last_inputs(folder / "model.onnx", [parse_input_spec("x:1x4x4x8:float32")]) == ["x"]


def test_fp32_weights_over_the_flatbuffer_limit_fail_before_onnx2tf_in_one_line(
        cli, catalogue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .tflite is a FlatBuffer (32-bit offsets, 2 GB at most). A model whose float32 weights exceed that fails at
    once with that reason and what to do, and the direct path is not tried (it writes FlatBuffers too):
    regnet_y_128gf (2.6 GB) instead failed inside the conversion with "Failed to serialize proto". The limit is
    lowered here so that the digits CNN crosses it."""
    from convcli.converters import onnx_to_tflite

    monkeypatch.setattr(onnx_to_tflite, "FLATBUFFER_LIMIT", 1000)
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tflite", "-o", out, "--no-latency", *FAST)
    assert res.exit_code == 3, res.output
    (row,) = res.report(out)["artifacts"]
    assert "over the 2 GB a TFLite FlatBuffer can hold" in row["error"], row["error"]
    assert "fallback" not in row["error"], row["error"]
