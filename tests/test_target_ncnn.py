"""The NCNN target end to end: pnnx in a child process, the .param check, the ncnn runner, parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import FAST
from tests.models.catalogue import DIGITS

NO_LAT = ["--no-latency", "--threads", "2"]


def _steps(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report["steps"]}


def _trained_digits() -> torch.nn.Module:
    """The digits CNN with its committed weights, imported from the recipe file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_cnn_for_ncnn", DIGITS.spec.split(":")[0])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_trained()


def test_digits_cnn_to_ncnn_fp32_keeps_accuracy(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "ncnn", "-o", out, "--batch", "1,4", *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed" and row["format"] == "ncnn" and row["precision"] == "fp32", row
    assert row["parity"]["max_abs_err"] < 1e-4
    assert [o["shape"] for o in row["parity"]["outputs"]] == [[16, 10]]
    assert report["source"]["accuracy"] > 0.95
    assert abs(row["accuracy"] - report["source"]["accuracy"]) < 0.005
    assert "fp16/bf16 off" in row["runner"]
    assert set(row["latency_by_batch"]) == {"1", "4"}  # batch 4 runs as four batch-1 calls
    # The direct edge, not PyTorch -> ONNX -> ncnn.
    assert [s["name"] for s in report["steps"]] == ["NcnnFromPytorch"]
    details = report["steps"][0]["details"]
    assert details["ncnn_blobs"] == {"inputs": {"x": "in0"}, "outputs": {"output": "out0"}}
    assert details["ncnn_layers"]["Convolution"] == 2 and details["pnnx_version"]
    assert details["ncnn_checks"]["example sizes"]["passed"]
    assert sorted(row["files"]) == ["ncnn-fp32/model.bin", "ncnn-fp32/model.param"]
    assert (out / "ncnn-fp32/model.param").read_text().splitlines()[0] == "7767517"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"

    # A bare .param (no recorded blob map) runs too: pnnx's in0/out0 naming, batch axis put back.
    case = catalogue["digits_cnn"]
    check_out = tmp_path / "check"
    res = cli("check", case.spec, out / "ncnn-fp32/model.param", "--weights", case.weights, *NO_LAT, "-o", check_out)
    assert res.exit_code == 0, res.output
    assert res.report(check_out)["artifacts"][0]["parity"]["max_abs_err"] < 1e-4


def test_digits_cnn_to_ncnn_fp16(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "ncnn:fp16", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed" and row["precision"] == "fp16", row
    assert row["parity"]["tolerance"]["atol"] == report["settings"]["tolerances"]["fp16"]["atol"]
    # Really fp16: measurably off fp32, within the fp16 tolerance, weights stored at half size.
    assert 1e-5 < row["parity"]["max_abs_err"] < 1e-2
    assert abs(row["accuracy"] - report["source"]["accuracy"]) < 0.01
    assert "fp16 storage" in row["runner"]
    params = sum(p.numel() for p in torch.load(catalogue["digits_cnn"].weights, weights_only=True).values()
                 if p.dtype == torch.float32 and p.dim() > 1)
    assert (out / "ncnn-fp16/model.bin").stat().st_size < params * 4 * 0.6
    assert report["steps"][0]["options"]["precision"] == "fp16"


def test_tiny_transformer_converts_with_dynamic_sequence(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "ncnn", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed", row
    assert row["parity"]["max_abs_err"] < 1e-4
    assert [o["shape"] for o in row["parity"]["outputs"]] == [[16, 8]]
    details = report["steps"][0]["details"]
    # Converted with a second sequence length, so pnnx kept seq dynamic; checked there.
    assert details["pnnx_inputshape"] == "[1,16]i64" and details["pnnx_inputshape2"] == "[1,17]i64"
    assert details["ncnn_checks"]["seq=17"]["passed"]
    assert details["ncnn_layers"]["MultiHeadAttention"] == 2


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained digits CNN as ONNX twice: weights inline, and weights in external data."""
    folder = tmp_path_factory.mktemp("digits_onnx")
    model = _trained_digits()
    inline = folder / "inline" / "digits.onnx"
    inline.parent.mkdir()
    torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), str(inline), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    external = folder / "external" / "digits.onnx"
    external.parent.mkdir()
    onnx.save_model(onnx.load(str(inline)), str(external), save_as_external_data=True,
                    location="digits.onnx.data", size_threshold=1024)
    return {"inline": inline, "external": external}


def test_onnx_source_to_ncnn_via_ncnn_from_onnx(cli, digits_onnx, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = digits_onnx["inline"]
    res = cli("convert", source, "--to", "ncnn", "-o", out, "--validation", DIGITS.validation, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed", row
    assert row["parity"]["max_abs_err"] < 1e-4
    assert abs(row["accuracy"] - report["source"]["accuracy"]) < 0.005
    step = report["steps"][0]
    assert step["name"] == "NcnnFromOnnx"
    assert step["details"]["ncnn_blobs"]["outputs"] == {"logits": "out0"}
    assert sorted(p.name for p in source.parent.iterdir()) == ["digits.onnx"], "pnnx wrote beside the source"


def test_onnx_with_external_data_is_inlined_for_pnnx(cli, digits_onnx, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = digits_onnx["external"]
    res = cli("convert", source, "--to", "onnx,ncnn", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    rows = {r["id"]: r for r in report["artifacts"]}
    assert rows["ncnn-fp32"]["status"] == "passed" and rows["ncnn-fp32"]["parity"]["max_abs_err"] < 1e-4
    assert _steps(report)["NcnnFromOnnx"]["details"]["onnx_external_data_inlined"] == ["digits.onnx.data"]
    assert sorted(p.name for p in source.parent.iterdir()) == ["digits.onnx", "digits.onnx.data"]


def test_onnx_ir_version_newer_than_pnnx_reads_is_lowered(cli, tmp_path: Path) -> None:
    """onnx 1.23 writes IR 14; pnnx's embedded ONNX Runtime reads up to 13 and pnnx segfaults on 14."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).random((64, 32), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert model.ir_version == 14
    onnx.save(model, str(tmp_path / "mm.onnx"))
    out = tmp_path / "out"
    res = cli("convert", tmp_path / "mm.onnx", "--to", "ncnn", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert report["artifacts"][0]["parity"]["max_abs_err"] < 1e-4
    assert report["steps"][0]["details"]["onnx_ir_version_lowered"] == "14 -> 13"
    assert onnx.load(str(tmp_path / "mm.onnx")).ir_version == 14, "the source file was changed"


def test_ncnn_via_onnx_is_asked_for_explicitly(cli, catalogue) -> None:
    """The planner prefers the direct PyTorch edge; the ONNX edge is there when asked for."""
    case = catalogue["digits_cnn"]
    res = cli("plan", case.spec, "--weights", case.weights, "--to", "ncnn,ncnn@NcnnFromOnnx")
    assert res.exit_code == 0, res.output
    assert "ncnn-fp32: pytorch -> NcnnFromPytorch" in res.output
    assert "ncnn-fp32@NcnnFromOnnx: pytorch -> OnnxFromPytorch -> SimplifyOnnx -> NcnnFromOnnx" in res.output


def test_torchscript_source_and_an_operator_ncnn_lacks(cli, catalogue, tmp_path: Path) -> None:
    class TopK(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.topk(x.flatten(1), 3, dim=1)[0]

    with torch.no_grad():
        torch.jit.trace(_trained_digits(), torch.rand(2, 1, 8, 8)).save(str(tmp_path / "digits.pt"))
        torch.jit.trace(TopK(), torch.rand(2, 1, 8, 8)).save(str(tmp_path / "topk.pt"))
    x = ["--input", "x:batch=2x1x8x8:float32"]

    out = tmp_path / "ts"
    res = cli("convert", tmp_path / "digits.pt", *x, "--to", "ncnn", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert report["steps"][0]["name"] == "NcnnFromTorchscript"
    assert report["artifacts"][0]["parity"]["max_abs_err"] < 1e-4

    out = tmp_path / "topk"
    res = cli("convert", tmp_path / "topk.pt", *x, "--to", "onnx,ncnn", "-o", out, *NO_LAT)
    assert res.exit_code == 3, res.output
    rows = {r["id"]: r for r in res.report(out)["artifacts"]}
    assert rows["onnx-fp32"]["status"] == "passed"
    error = rows["ncnn-fp32"]["error"]
    assert rows["ncnn-fp32"]["status"] == "error" and "\n" not in error
    assert "torch.topk" in error and "ncnn" in error and "NcnnFromTorchscript" in error
    assert not (out / "ncnn-fp32").exists()


def test_an_operator_pnnx_cannot_map_from_the_trace_goes_through_onnx(cli, tmp_path: Path) -> None:
    """pnnx leaves aten::addcmul of the TorchScript trace unmapped; the ONNX export decomposes it, so NcnnFromPytorch
    converts that instead. The step says which route built the model and why, the row's chain shows it, and the
    ncnn model is still judged against PyTorch. With the fallback off, the row is an error naming the operator."""
    spec = str(Path(__file__).parent / "models/small.py:addcmul")
    x = ["--input", "x:batch=2x3x8x8:float32"]
    out = tmp_path / "out"
    res = cli("convert", spec, *x, "--to", "ncnn", "-o", out, *NO_LAT)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    (row,) = report["artifacts"]
    assert row["status"] == "passed" and row["parity"]["max_abs_err"] < 1e-4, row
    assert row["chain"] == "pytorch -> NcnnFromPytorch [via ONNX: OnnxFromPytorch + pnnx]", row["chain"]
    details = _steps(report)["NcnnFromPytorch"]["details"]
    assert details["ncnn_route"] == "onnx (OnnxFromPytorch + pnnx)", details
    assert "aten::addcmul" in details["ncnn_route_reason"] and details["onnx_exporter"] in ("dynamo", "torchscript")
    assert not any("." in t or "::" in t for t in details["ncnn_layers"]), details["ncnn_layers"]

    out = tmp_path / "off"
    res = cli("convert", spec, *x, "--to", "ncnn", "-o", out, "-O", "NcnnFromPytorch.onnx_fallback=false", *NO_LAT)
    assert res.exit_code == 3, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "error" and "aten::addcmul" in row["error"] and "ONNX route" not in row["error"], row


def test_unsupported_flag_exits_2_naming_target_and_flag(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "ncnn", "-O", "ncnn.bogus=1", "-o", out)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "ncnn" in text and "NcnnFromPytorch" in text and "'bogus'" in text
    assert "precision, timeout_s, check_dynamic" in text
    assert not out.exists()


def test_runner_restores_the_sources_output_shape() -> None:
    from convcli.runners.ncnn_runner import restore_shape

    assert restore_shape(np.zeros(10, np.float32), [1, 10]).shape == (1, 10)
    assert restore_shape(np.zeros((4, 4), np.float32), [1, 1, 4, 4]).shape == (1, 1, 4, 4)
    # another size of a dynamic dim: element counts differ, the source's size-1 axes come back
    assert restore_shape(np.zeros((17, 64), np.float32), [1, 16, 64]).shape == (1, 17, 64)
    assert restore_shape(np.zeros(17, np.float32), [1, 1, 16]).shape == (1, 1, 17)
    assert restore_shape(np.zeros((3, 5), np.float32), None).shape == (1, 3, 5)


def test_param_check_rejects_what_ncnn_cannot_load(tmp_path: Path) -> None:
    from convcli.converters.torch_to_ncnn import check_param
    from convcli.core.errors import ConversionError

    good = "7767517\n2 2\nInput in0 0 1 in0\nReLU relu_0 1 1 in0 out0\n"
    cases = {
        "empty": ("", "missing or empty"),
        "magic": ("7767518\n2 2\nInput in0 0 1 in0\nReLU relu_0 1 1 in0 out0\n", "magic 7767517"),
        "short": ("7767517\n3 3\nInput in0 0 1 in0\nReLU relu_0 1 1 in0 out0\n", "declares 3 layers"),
        "expr": (good.replace("2 2", "4 5") + "pnnx.Expression e 0 1 x\naten::sort s 1 2 x y z\n",
                 "operator(s) aten::sort, pnnx.Expression"),
        "unknown": (good.replace("ReLU", "NoSuchLayer"), "NoSuchLayer"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / f"{name}.param"
        path.write_text(text)
        with pytest.raises(ConversionError) as info:
            check_param(path, "ncnn target (test)")
        assert expected in info.value.message, (name, info.value.message)
    (tmp_path / "good.param").write_text(good)
    assert [t for t, _, _ in check_param(tmp_path / "good.param", "ncnn target")] == ["Input", "ReLU"]
    assert json.dumps(check_param(tmp_path / "good.param", "t")[1]) == '["ReLU", ["in0"], ["out0"]]'
