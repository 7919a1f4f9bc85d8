"""The OpenVINO target end to end: real conversions (through ONNX, and directly from PyTorch), the OpenVINO
CPU runtime at f32, parity against PyTorch, accuracy, and no telemetry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convcli.core.artifact import Artifact
from convcli.core.tensors import parse_input_spec
from convcli.runners.openvino_runner import OpenvinoRunner
from tests.conftest import FAST
from tests.models.catalogue import ROOT

FP32_MAX_ABS = 1e-4
FP16_MAX_ABS = 1e-2


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test converts for real instead of reusing an earlier run's cached steps."""
    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "cache"))


def _rows(report: dict) -> dict[str, dict]:
    return {row["id"]: row for row in report["artifacts"]}


def _steps(report: dict, name: str) -> list[dict]:
    return [s for s in report["steps"] if s["name"] == name]


def test_digits_cnn_to_openvino_fp32_and_fp16(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "openvino:fp32+fp16", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    fp32, fp16 = rows["openvino-fp32"], rows["openvino-fp16"]
    assert fp32["status"] == "passed" and fp16["status"] == "passed", (fp32, fp16)
    assert fp32["chain"] == "pytorch -> OnnxFromPytorch -> SimplifyOnnx -> OpenvinoFromOnnx"
    assert fp32["parity"]["max_abs_err"] < FP32_MAX_ABS
    assert fp16["parity"]["max_abs_err"] < FP16_MAX_ABS
    assert fp32["parity"]["top1_agreement"] == 1.0
    source_acc = report["source"]["accuracy"]
    assert source_acc > 0.95
    for row in (fp32, fp16):
        assert abs(row["accuracy"] - source_acc) <= 0.005, row["accuracy"]
        assert "inference precision f32" in row["runner"] and "2 threads" in row["runner"], row["runner"]
        assert sorted(Path(f).name for f in row["files"]) == ["model.bin", "model.xml"]
    converted = {s["options"]["precision"]: s["details"] for s in _steps(report, "OpenvinoFromOnnx")}
    assert converted["fp32"]["compress_to_fp16"] is False and converted["fp16"]["compress_to_fp16"] is True
    assert converted["fp32"]["telemetry"] == "off"
    assert converted["fp32"]["input_shapes"] == {"x": "[?,1,8,8]"}
    assert converted["fp32"]["op_count"] > 0 and converted["fp32"]["ops"]["Convolution"] == 2
    # fp32 weights stay fp32 (save_model would compress by default); fp16 halves them.
    bin32, bin16 = (out / "openvino-fp32/model.bin").stat().st_size, (out / "openvino-fp16/model.bin").stat().st_size
    assert bin32 >= 4 * 20_000 and 0.45 < bin16 / bin32 < 0.55, (bin32, bin16)


def test_transformer_to_openvino_keeps_dynamic_batch_and_sequence(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "openvino:fp32+fp16", "-o", out,
              "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = _rows(report)
    assert rows["openvino-fp32"]["status"] == "passed" and rows["openvino-fp16"]["status"] == "passed"
    assert rows["openvino-fp32"]["parity"]["max_abs_err"] < FP32_MAX_ABS
    assert rows["openvino-fp16"]["parity"]["max_abs_err"] < FP16_MAX_ABS
    assert "inference precision f32" in rows["openvino-fp32"]["runner"]
    for step in _steps(report, "OpenvinoFromOnnx"):
        assert step["details"]["input_shapes"] == {"input_ids": "[?,?]"}
    # The saved IR runs at sizes other than the export's example (batch 2, seq 16) and matches PyTorch.
    sys.path.insert(0, str(ROOT / "recipes/models"))
    try:
        import tiny_transformer
    finally:
        sys.path.remove(str(ROOT / "recipes/models"))
    model = tiny_transformer.build()
    spec = parse_input_spec(tiny_transformer.CONVCLI_INPUTS[0])
    artifact = Artifact(format="openvino", path=out / "openvino-fp32/model.xml", inputs=[spec],
                        output_names=["output"])
    session = OpenvinoRunner().load(artifact, threads=2)
    assert session.fixed_batch is None
    ids = np.random.default_rng(3).integers(0, 1000, size=(3, 23), dtype=np.int64)
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids)).numpy()
    (got,) = session({"input_ids": ids})
    assert got.shape == (3, 8)
    assert float(np.abs(got - ref).max()) < FP32_MAX_ABS


def test_direct_edge_from_pytorch_on_request(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "openvino@OpenvinoFromPytorch", "-o", out,
              "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["id"] == "openvino-fp32@OpenvinoFromPytorch"
    assert row["chain"] == "pytorch -> OpenvinoFromPytorch"
    assert row["status"] == "passed" and row["parity"]["max_abs_err"] < FP32_MAX_ABS
    assert abs(row["accuracy"] - report["source"]["accuracy"]) <= 0.005
    (step,) = report["steps"]
    assert step["details"]["input_shapes"] == {"x": "[?,1,8,8]"}
    assert step["details"]["export_checks"]["batch=3"]["passed"]
    assert step["details"]["compress_to_fp16"] is False


def test_unsupported_flag_exits_2_naming_target_and_flag(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "openvino", "-O", "openvino.bogus=1", "-o", out)
    assert res.exit_code == 2, res.output
    assert "openvino" in res.output and "bogus" in res.output, res.output
    assert not out.exists()


def test_openvino_sends_no_telemetry_and_leaves_home_alone(tmp_path: Path) -> None:
    """With convcli's offline settings, importing OpenVINO and converting a model neither starts its
    telemetry (which would look up the analytics host) nor writes ~/intel."""
    code = (
        "from convcli.core.offline import apply_offline_env\n"
        "apply_offline_env()\n"
        "import onnx, openvino\n"
        "from onnx import TensorProto, helper\n"
        "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['n', 4])\n"
        "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['n', 4])\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y])\n"
        "onnx.save(helper.make_model(g), 'm.onnx')\n"
        "openvino.convert_model('m.onnx')\n"
        "import openvino.tools.ovc.convert_impl as ci, openvino.tools.ovc.telemetry_utils as tu\n"
        "print(ci.tm.__name__, tu.tm.__name__)\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["openvino.tools.ovc.telemetry_stub"] * 2
    assert not (home / "intel").exists()


def test_direct_edge_from_exported_program(cli, catalogue, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "recipes/models"))
    try:
        import digits_cnn
    finally:
        sys.path.remove(str(ROOT / "recipes/models"))
    model = digits_cnn.build()
    model.load_state_dict(torch.load(catalogue["digits_cnn"].weights, weights_only=True))
    program = torch.export.export(model.eval(), (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    pt2 = tmp_path / "digits.pt2"
    torch.export.save(program, str(pt2))
    out = tmp_path / "out"
    res = cli("convert", pt2, "--to", "openvino@OpenvinoFromExportedProgram", "-o", out, "--no-latency",
              "--validation", catalogue["digits_cnn"].validation)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["chain"] == "exported-program -> OpenvinoFromExportedProgram"
    assert row["status"] == "passed" and row["parity"]["max_abs_err"] < FP32_MAX_ABS
    assert abs(row["accuracy"] - report["source"]["accuracy"]) <= 0.005
    assert report["steps"][0]["details"]["input_shapes"] == {"x": "[?,1,8,8]"}
