"""OpenVINO INT8 through NNCF: real quantization of the digits CNN calibrated on the committed calibration images,
run by the OpenVINO CPU runtime and judged on accuracy against the labelled set; the accuracy-aware search on a
model that plain per-tensor int8 destroys (tests/models/sensitive_ov.py); errors; no telemetry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openvino as ov
import pytest

from convcli.passes.quantize_openvino import layer_precisions
from tests.conftest import FAST
from tests.models.catalogue import ROOT

CALIB = ROOT / "calibration_data/digits/calib"
VALIDATION = ROOT / "calibration_data/digits/val"
SENSITIVE = f"{ROOT}/tests/models/sensitive_ov.py:outlier_conv_digits"
NO_LAT = ["--no-latency", "--threads", "2"]
OPT = "QuantizeOpenvinoInt8"


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test quantizes for real instead of reusing an earlier run's cached steps."""
    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "cache"))


def _rows(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["artifacts"]}


def _convolutions(xml: Path) -> list[str]:
    model = ov.Core().read_model(str(xml))
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]


def test_digits_int8_beside_fp32_and_fp16_keeps_accuracy(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "openvino:fp32+fp16+int8", "--calibration", CALIB,
              "-O", f"{OPT}.subset_size=16", "--batch", "1,32", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    fp32, fp16, int8 = rows["openvino-fp32"], rows["openvino-fp16"], rows["openvino-int8"]
    assert all(r["status"] == "passed" for r in rows.values()), rows
    assert int8["chain"] == "pytorch -> OnnxFromPytorch -> SimplifyOnnx -> OpenvinoFromOnnx -> QuantizeOpenvinoInt8"
    assert report["source"]["accuracy"] > 0.95
    assert int8["accuracy_drop"] <= 0.01, int8
    assert int8["parity"]["cosine_min"] > 0.98 and int8["parity"]["top1_agreement"] >= 0.9
    # Really int8: measurably off fp32, about a quarter of fp32's weight bytes, every conv/matmul an int8 kernel
    # although the runtime is pinned to f32 inference.
    assert int8["parity"]["max_abs_err"] > 100 * fp32["parity"]["max_abs_err"]
    bins = {r["id"]: (out / r["id"] / "model.bin").stat().st_size for r in (fp32, fp16, int8)}
    assert bins["openvino-int8"] < 0.4 * bins["openvino-fp32"] and bins["openvino-int8"] < bins["openvino-fp16"], bins
    assert "inference precision f32, 4 of 4 conv/matmul layers int8" in int8["runner"], int8["runner"]
    assert "layers int8" not in fp32["runner"]
    assert set(int8["latency_by_batch"]) == {"1", "32"} and set(fp16["latency_by_batch"]) == {"1", "32"}
    details = int8["details"]["int8"]
    assert details["calibration_samples"] == 16 and details["calibration_available"] == 64
    assert details["calibration_data"].startswith(f"images {CALIB}")
    assert details["method"] == "nncf.quantize" and details["preset"] == "performance"
    assert details["model_type"] == "generic" and details["kept_in_float"] == [] and details["int8_layers"] == 4
    assert details["runtime_precisions"] == {"u8": 4}
    # 16 of the 48 calibration samples NNCF did not see: the int8-vs-float check runs on them.
    assert details["check"]["vs_float_ir_on"].startswith("16 calibration samples held out")
    assert details["check"]["cosine_min"] > 0.98
    # The step's own top-1 check sees only the tuning part of --validation; the row's accuracy the held-out rest.
    assert "int8 tuning part, 178 samples" in details["check"]["top1_on"], details["check"]
    assert report["settings"]["tuning_samples"] + report["source"]["accuracy_samples"] == 360
    saved = layer_precisions(ov.Core().read_model(str(out / int8["path"])))
    assert len(saved["int8"]) == 4 and saved["float"] == []


def test_int8_without_calibration_is_refused_before_any_conversion(cli, tmp_path: Path) -> None:
    """Planning alone finds it: the factory (which would raise if called) is never loaded, nothing is written."""
    out = tmp_path / "out"
    res = cli("convert", f"{ROOT}/tests/models/small.py:raises", "--input", "x:batch=2x3x8x8:float32",
              "--to", "openvino:fp32+int8", "-o", out, *NO_LAT)
    assert res.exit_code == 2, res.output
    assert "--calibration: openvino-int8 (QuantizeOpenvinoInt8) needs calibration data" in res.output
    assert "random data" in res.output and "checkpoint server" not in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option, words", [
    (f"{OPT}.max_float_layers=2", ["max_float_layers", "max_accuracy_drop", "min_cosine"]),
    (f"{OPT}.preset=fastest", ["preset", "performance", "mixed"]),
    (f"{OPT}.bogus=1", ["bogus", OPT]),
])
def test_bad_options_exit_2_before_converting(cli, catalogue, tmp_path: Path, option: str, words: list[str]) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "openvino:int8", "--calibration", CALIB,
              "-O", option, "-o", out, *NO_LAT)
    assert res.exit_code == 2, res.output
    for word in words:
        assert word in res.output, (word, res.output)
    assert not out.exists()


def test_accuracy_aware_keeps_the_outlier_conv_in_float(cli, tmp_path: Path) -> None:
    """Plain int8 of the outlier model falls to chance; the search reverts the conv fed by the outlier channel."""
    out = tmp_path / "out"
    res = cli("convert", SENSITIVE, "--to", "openvino:fp32+int8", "--validation", VALIDATION, "--calibration", CALIB,
              "-O", f"{OPT}.max_accuracy_drop=0.01", "-O", f"{OPT}.max_float_layers=2", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    fp32, int8 = _rows(report)["openvino-fp32"], _rows(report)["openvino-int8"]
    assert fp32["status"] == "passed" and int8["status"] == "passed", int8
    assert report["source"]["accuracy"] > 0.95 and int8["accuracy_drop"] <= 0.01
    details = int8["details"]["int8"]
    search = details["search"]
    assert details["method"] == "nncf.quantize_with_accuracy_control"
    assert search["metric"] == "top1_accuracy" and search["met"] is True and search["drop"] <= 0.01
    steps = search["steps"]
    # NNCF's search scores the tuning part of --validation; the report's accuracy is the held-out rest's.
    assert "int8 tuning part, 178 samples" in search["on"], search["on"]
    assert report["settings"]["tuning_samples"] == 178 and report["source"]["accuracy_samples"] == 182
    assert steps[0]["evaluated"] == "float IR" and steps[0]["value"] > 0.95
    assert steps[1]["evaluated"] == "int8, everything quantized" and steps[1]["value"] < 0.5, steps
    assert steps[-1]["value"] >= steps[0]["value"] - 0.01 and steps[-1]["reverted"], steps
    # The layer kept in float is the second conv, the one reading the outlier channel; everything else is int8.
    second_conv = _convolutions(out / fp32["path"])[1]
    assert details["kept_in_float"] == [second_conv] == search["kept_in_float_by_search"]
    assert second_conv in [name for step in steps for name in step.get("reverted", [])]
    assert details["int8_layers"] == 3 and details["runtime_precisions"] == {"f32": 1, "u8": 3}
    assert "3 of 4 conv/matmul layers int8" in int8["runner"]
    saved = layer_precisions(ov.Core().read_model(str(out / int8["path"])))
    assert saved["float"] == [second_conv] and len(saved["int8"]) == 3


def test_cosine_search_without_labelled_set(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", SENSITIVE, "--to", "openvino:int8", "--calibration", CALIB,
              "-O", f"{OPT}.min_cosine=0.99", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed", row
    details = row["details"]["int8"]
    search = details["search"]
    assert search["metric"] == "cosine_min" and "16 calibration samples held out" in search["on"]
    assert details["calibration_samples"] == 48  # 64 loaded, the last 16 held out for the check
    assert search["steps"][1]["value"] < 0.9 and search["int8_value"] >= 0.99, search
    assert len(details["kept_in_float"]) == 1 and details["int8_layers"] == 3
    assert details["check"]["cosine_min"] == search["int8_value"]
    assert row["parity"]["cosine_min"] > 0.98


def test_unmet_budget_is_an_error_not_a_silent_model(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", SENSITIVE, "--to", "openvino:int8", "--calibration", CALIB, "-O", f"{OPT}.min_cosine=0.99999",
              "-O", f"{OPT}.max_float_layers=1", "-o", out, *NO_LAT)
    assert res.exit_code == 3, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "error"
    assert "missed its budget" in row["error"] and "cosine >= 0.999990" in row["error"], row["error"]
    assert "max_float_layers" in row["error"]
    assert not (out / "openvino-int8").exists()


def test_max_accuracy_drop_without_labelled_set_says_validation(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", SENSITIVE, "--to", "openvino:int8", "--calibration", CALIB,
              "-O", f"{OPT}.max_accuracy_drop=0.01", "-o", out, *NO_LAT)
    assert res.exit_code == 3, res.output
    (row,) = res.report(out)["artifacts"]
    assert "--validation" in row["error"] and "min_cosine" in row["error"], row["error"]


def test_nncf_sends_no_telemetry_and_leaves_home_alone(tmp_path: Path) -> None:
    """With convcli's offline settings, NNCF quantizes with its telemetry stub and writes nothing under ~."""
    code = (
        "from convcli.core.offline import apply_offline_env\n"
        "apply_offline_env()\n"
        "import sys, numpy as np, openvino as ov, nncf\n"
        "from openvino import opset13 as ops\n"
        "x = ops.parameter([-1, 8], np.float32, name='x')\n"
        "w = ops.constant(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))\n"
        "m = ov.Model([ops.matmul(x, w, False, False)], [x])\n"
        "data = nncf.Dataset([np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32) for i in range(4)])\n"
        "q = nncf.quantize(m, data, subset_size=4)\n"
        "import nncf.telemetry.wrapper as tw\n"
        "print(type(tw.telemetry).__name__, sys.modules.get('openvino_telemetry'),"
        " sum(op.get_type_name() == 'FakeQuantize' for op in q.get_ops()))\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("NNCF_CI", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    stub, telemetry_module, fake_quantize = proc.stdout.split()[-3:]
    assert stub == "MagicMock" and telemetry_module == "None" and int(fake_quantize) >= 1, proc.stdout
    assert not any(home.iterdir()), list(home.iterdir())
