"""End-to-end conversions to ONNX with real exporters, ONNX Runtime and parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.conftest import FAST


def test_digits_cnn_to_onnx_with_accuracy(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx", "-o", out, "--batch", "1,8", *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert report["schema"] == "convcli.report/v1"
    (row,) = report["artifacts"]
    assert row["status"] == "passed" and row["format"] == "onnx" and row["precision"] == "fp32"
    for key in ("max_abs_err", "mean_abs_err", "rel_l2_err", "cosine_min", "top1_agreement"):
        assert row["parity"][key] is not None, key
    assert row["parity"]["max_abs_err"] < 1e-4
    assert report["source"]["accuracy"] > 0.95
    assert abs(row["accuracy"] - report["source"]["accuracy"]) < 0.005
    assert set(row["latency_by_batch"]) == {"1", "8"}
    assert row["latency_ms"]["p50"] > 0 and row["speedup_vs_source"] > 0
    assert row["size_bytes"] == (out / row["path"]).stat().st_size
    assert report["fastest_passed"] == "onnx-fp32"
    assert report["settings"]["threads"] == 2
    export = report["steps"][0]
    assert export["name"] == "OnnxFromPytorch" and export["details"]["exporter"] == "dynamo"
    assert "batch=3" in export["details"]["export_checks"]
    simplify = report["steps"][1]["details"]["simplify"]
    assert simplify["nodes_after"] <= simplify["nodes_before"] and simplify["check_vs_unsimplified"]["passed"]
    manifest = (out / "manifest.json").read_text()
    assert '"onnx-fp32/model.onnx"' in manifest and "sha256" in manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    assert "onnx-fp32" in res.output and "passed" in res.output


def test_transformer_keeps_dynamic_batch_and_sequence(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "onnx", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    checks = report["steps"][0]["details"]["export_checks"]
    assert checks["batch=3, seq=17"]["passed"]
    model = onnx.load(str(out / "onnx-fp32/model.onnx"))
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    assert report["artifacts"][0]["parity"]["max_abs_err"] < 1e-4


def test_fallback_exporter_is_used_and_explained(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["branchy"].args(), "--to", "onnx", "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    details = res.report(out)["steps"][0]["details"]
    assert details["exporter"] == "torchscript"
    assert details["exporters"]["dynamo"].startswith("failed:")
    assert details["exporters"]["torchscript"] == "used"


def test_several_outputs_are_compared_each(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["two_outputs"].args(), "--to", "onnx", "-o", out, "--no-latency",
              "--opset", "18")
    assert res.exit_code == 0, res.output
    parity = res.report(out)["artifacts"][0]["parity"]
    assert [o["name"] for o in parity["outputs"]] == ["output_0", "output_1"]
    assert parity["outputs"][1]["top1_agreement"] == 1.0
    assert res.report(out)["steps"][0]["details"]["opset"] == 18


def test_perturbed_artifact_fails_the_gate_with_exit_1(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    case = catalogue["digits_cnn"]
    assert cli("convert", *case.args(), "--to", "onnx", "-o", out, "--no-latency").exit_code == 0
    path = out / "onnx-fp32/model.onnx"
    model = onnx.load(str(path))
    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
    arr = onnx.numpy_helper.to_array(weights).copy()
    arr += 0.05
    weights.CopyFrom(onnx.numpy_helper.from_array(arr, weights.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, str(bad))
    check_out = tmp_path / "check"
    res = cli("check", case.spec, bad, "--weights", case.weights, "--no-latency", "-o", check_out)
    assert res.exit_code == 1, res.output
    row = res.report(check_out)["artifacts"][0]
    assert row["status"] == "failed" and row["failures"][0].startswith("parity:")
    ok = cli("check", case.spec, path, "--weights", case.weights, "--no-latency", "-o", check_out)
    assert ok.exit_code == 0, ok.output


def test_onnx_source_reads_inputs_from_the_file(cli, catalogue, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert cli("convert", *catalogue["two_outputs"].args(), "--to", "onnx", "-o", first, "--no-latency").exit_code == 0
    out = tmp_path / "again"
    res = cli("convert", first / "onnx-fp32/model.onnx", "--to", "onnx", "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert report["source"]["format"] == "onnx"
    assert report["source"]["inputs"] == ["x:batch=2x3x8x8:float32"]


def test_onnx_source_with_a_static_batch_of_one(cli, tmp_path: Path) -> None:
    import torch

    from tests.models.small import two_outputs

    path = tmp_path / "static.onnx"
    torch.onnx.export(two_outputs(), (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["feat", "logits"])
    res = cli("convert", path, "--to", "onnx", "-o", tmp_path / "o", "--runs", "3")
    assert res.exit_code == 0, res.output
    report = res.report(tmp_path / "o")
    assert report["source"]["inputs"] == ["x:1x3x8x8:float32"]
    assert report["artifacts"][0]["latency_ms"]["batch"] == 1


def test_dimension_name_with_x_stays_one_dimension(cli, tmp_path: Path) -> None:
    """``max_len`` is one dynamic dim: the old grammar split it into ``ma`` x ``_len`` and exported a 3-D input."""
    out = tmp_path / "out"
    model = Path(__file__).parent / "models" / "small.py"
    res = cli("convert", f"{model}:token_bag", "--input", "ids:batch=2xmax_len=5:int64:0..100", "--to", "onnx",
              "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert report["source"]["inputs"] == ["ids:batch=2xmax_len=5:int64:0..100"]
    onnx_model = onnx.load(str(out / report["artifacts"][0]["path"]))
    dims = [d.dim_param or d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "max_len"]


REPORT_FILES = {"report.json", "manifest.json", "report.md", "report.html", "junit.xml"}


def _outdir_files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - REPORT_FILES


def _listed_files(report: dict) -> set[str]:
    return {f for row in report["artifacts"] for f in row["files"]}


def test_outdir_holds_only_what_the_report_lists(cli, catalogue, tmp_path: Path) -> None:
    """A target that fails (or is no longer asked for) in a later run leaves no artifact of an earlier run beside
    a report that says "error"; the user's own files in OUTDIR are never touched."""
    out = tmp_path / "out"
    args = [*catalogue["branchy"].args(), "-o", out, "--no-latency"]
    first = cli("convert", *args, "--to", "onnx,openvino")
    assert first.exit_code == 0, first.output
    assert {"onnx-fp32", "openvino-fp32"} <= {p.name for p in out.iterdir()}
    assert _outdir_files(out) == _listed_files(first.report(out))
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "model.onnx").write_text("mine too")
    (out / "openvino-fp32" / "README.txt").write_text("the user's, inside a convcli folder")

    # branchy's control flow defeats the dynamo exporter; without the torchscript fallback the target fails
    failed = cli("convert", *args, "--to", "onnx", "--exporter", "dynamo")
    assert failed.exit_code == 3, failed.output
    report = failed.report(out)
    assert [(r["id"], r["status"]) for r in report["artifacts"]] == [("onnx-fp32", "error")]
    assert not (out / "onnx-fp32").exists()
    assert _outdir_files(out) == {"notes.txt", "mine/model.onnx", "openvino-fp32/README.txt"}
    assert (out / "mine" / "model.onnx").read_text() == "mine too"
    assert '"outputs_sha256": {}' in (out / "manifest.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_a_failure_after_building_started_leaves_outdir_as_it_was(cli, catalogue, tmp_path: Path) -> None:
    """Bad parity data is found only when measuring, after the conversion: exit 2, OUTDIR keeps the previous run's
    report and artifacts untouched and the temporary build folder beside it is gone."""
    import numpy as np

    out = tmp_path / "out"
    args = [*catalogue["branchy"].args(), "--to", "onnx", "-o", out, "--no-latency"]
    assert cli("convert", *args).exit_code == 0
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.npz"
    np.savez(bad, not_an_input=np.zeros((2, 4), dtype=np.float32))
    res = cli("convert", *args, "--data", bad)
    assert res.exit_code == 2, res.output
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "out"]

    fresh = tmp_path / "fresh"
    res = cli("convert", *args[:-3], "-o", fresh, "--no-latency", "--data", bad)
    assert res.exit_code == 2 and not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "out"]


@pytest.mark.slow
def test_inception_v3_export_passes_fp32_and_one_altered_filter_still_fails(tmp_path: Path) -> None:
    """fp32's absolute term scales with the output's range. inception_v3 (random weights, BatchNorm statistics
    re-estimated; logits up to ~6.6) exports with a kernel-reordering difference of 2.8e-4, which a fixed
    atol of 1e-4 rejected. The scaled term accepts it, yet the same model with one conv filter of its last block
    scaled by 1.05 (one of 2048 channels: what a conversion that mangles one weight would do) still fails the
    export check, and so does one row of the classifier scaled by 1.01 (two of 2000 logits off; cosine
    0.9999999, so only the elementwise limit catches it). About 40 s on two cores."""
    import torch

    from convcli.converters.torch_to_onnx import verify_export
    from convcli.core.errors import ConversionError

    model, path, specs, checks = _exported_torchvision("inception_v3", "x:batch=2x3x299x299:float32", tmp_path)
    assert all(c["passed"] for c in checks.values()), checks
    assert 1e-4 < max(c["max_abs_err"] for c in checks.values()) < 6e-4, checks  # beyond the old fixed 1e-4

    for weight, row, factor in ((model.Mixed_7c.branch_pool.conv.weight, 3, 1.05), (model.fc.weight, 7, 1.01)):
        with torch.no_grad():
            weight[row] *= factor
        with pytest.raises(ConversionError, match="disagrees with PyTorch at example sizes: logits: .* beyond"):
            verify_export(model, path, specs, threads=2, check_dynamic=False)
        with torch.no_grad():
            weight[row] /= factor


def _exported_torchvision(name: str, input_spec: str, tmp_path: Path) -> tuple[Any, Path, list[Any], dict[str, Any]]:
    """A torchvision classifier as the coverage zoo builds it (random weights, BatchNorm statistics re-estimated),
    exported by dynamo and checked by the export step's own check at the example and a second batch size."""
    import importlib.util

    from convcli.converters.torch_to_onnx import _export_dynamo, verify_export
    from convcli.core.tensors import parse_input_spec
    from convcli.sources.torch_sources import example_tensors

    spec = importlib.util.spec_from_file_location(
        "convcli_test_torchvision_models", Path(__file__).resolve().parents[1] / "recipes/models/torchvision_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.by_name(name)
    specs = [parse_input_spec(input_spec)]
    path = tmp_path / f"{name}.onnx"
    _export_dynamo(model, tuple(example_tensors(specs)), path, specs, ["logits"], None, False)
    return model, path, specs, verify_export(model, path, specs, threads=2, check_dynamic=True)


@pytest.mark.slow
def test_resnet101_export_passes_on_the_rounding_floor_and_an_altered_classifier_row_still_fails(
        tmp_path: Path) -> None:
    """101 layers: PyTorch's own float32 logits are ~2.9e-4 off the float64 result, over fp32's 1e-4 of the
    range (1.8e-4), and ONNX Runtime lands 3e-4 from PyTorch: the plain limit rejected a correct export. The
    floor (twice the source's own float32 error, measured in float64) accepts it, and records the floor; one
    classifier row scaled by 1.01 (two of 2000 logits off by ~1.4e-3, about 5x the floor) still fails. What no
    float32 comparison can see is an error below the source's own rounding (measured: on resnet152, one filter of
    the last conv scaled by 1.2 moves the logits less than PyTorch's float32 error does). About 30 s."""
    import torch

    from convcli.converters.torch_to_onnx import verify_export
    from convcli.core.errors import ConversionError

    model, path, specs, checks = _exported_torchvision("resnet101", "x:batch=2x3x224x224:float32", tmp_path)
    assert all(c["passed"] for c in checks.values()), checks
    floored = [c for c in checks.values() if "rounding_floor" in c]
    assert floored and all(c["max_abs_err"] <= 2 * c["rounding_floor"] for c in floored), checks
    assert all(c["rounding_floor"] > 1e-4 for c in floored), checks  # a deep network's own float32 error

    weight = model.fc.weight
    with torch.no_grad():
        weight[7] *= 1.01
    try:
        with pytest.raises(ConversionError, match="logits: .* beyond atol=.*2x the source's own float32 error"):
            verify_export(model, path, specs, threads=2, check_dynamic=False)
    finally:
        with torch.no_grad():
            weight[7] /= 1.01
    # The float64 run narrowed the model back bit for bit: it still matches its own export.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    verify_export(model, path, specs, threads=2, check_dynamic=False)


@pytest.mark.slow
def test_a_report_row_judged_on_the_rounding_floor_says_so(cli, tmp_path: Path) -> None:
    """The report's judge uses the same floor as the step checks: resnet101's OpenVINO row (3.8e-4 off PyTorch on
    logits of range 1.8, atol 1.8e-4) passes because PyTorch's own float32 output is further than half that from
    float64, and the row records the floor and the atol it was judged on. About 25 s."""
    factory = Path(__file__).resolve().parents[1] / "bench" / "tv_factory.py"
    out = tmp_path / "out"
    res = cli("convert", f"{factory}:resnet101", "--to", "openvino", "--input", "x:batch=2x3x224x224:float32",
              "--samples", "4", "-o", out, "--no-latency", *FAST)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    output = row["parity"]["outputs"][0]
    assert row["status"] == "passed" and output["rounding_floor"] is not None, output
    assert output["max_abs_err"] > 2e-4, output  # beyond the plain limit, 1e-4 of a range under 2
    assert output["atol"] == pytest.approx(2 * output["rounding_floor"]), output


def test_a_model_with_external_data_is_moved_with_its_data_file(tmp_path: Path) -> None:
    """Over 2 GB the exporter writes the weights to `<file>.data` and each tensor records that name; the step
    renames its file to model.onnx, so the recorded name must follow (vit_h_14 failed on it)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from convcli.converters.torch_to_onnx import move_onnx

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w, "w")])
    first = tmp_path / "model.dynamo.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(first),
              save_as_external_data=True, location="model.dynamo.onnx.data", size_threshold=0)
    files = move_onnx(first, tmp_path / "model.onnx")
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"] and not first.exists()
    x = np.ones((1, 3), dtype=np.float32)
    (y,) = ort.InferenceSession(str(files[0])).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ w)


def test_a_model_over_the_protobuf_limit_skips_simplification_and_says_why(cli, catalogue, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxslim serialises the whole graph as one protobuf (2 GB at most): vit_h_14 failed there. The limit is
    lowered here so that the digits CNN stands for such a model."""
    from convcli.passes import simplify_onnx

    monkeypatch.setattr(simplify_onnx, "MAX_SIMPLIFY_BYTES", 1000)
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx", "-o", out, "--no-cache", *FAST)
    assert res.exit_code == 0, res.output
    (row,) = res.report(out)["artifacts"]
    assert row["status"] == "passed"
    simplify = next(s for s in res.report(out)["steps"] if s["name"] == "SimplifyOnnx")["details"]["simplify"]
    assert simplify["skipped"].startswith("skipped: the model is") and "nodes_after" not in simplify


def test_an_export_check_that_fails_by_rounding_says_so_not_baked_in_size(tmp_path: Path) -> None:
    """resnext101 failed its second-size check by one value of 3000 (cosine ~1): the hint must not blame a size."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from convcli.converters.torch_to_onnx import verify_export
    from convcli.core.errors import ConversionError
    from convcli.core.tensors import parse_input_spec

    values = np.linspace(-2, 2, 40, dtype=np.float32).reshape(1, 40)
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(values))], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])])
    path = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    specs = [parse_input_spec("x:1x3:float32")]
    drift = values.copy()
    drift[0, 20] += 2e-3  # one value off by rounding-sized error: cosine stays ~1
    with pytest.raises(ConversionError) as rounding:
        verify_export(lambda x: torch.from_numpy(drift), path, specs, 1, False)
    assert "float32 rounding" in rounding.value.hint
    with pytest.raises(ConversionError) as wrong:
        verify_export(lambda x: torch.from_numpy(-values), path, specs, 1, False)
    assert "float32 rounding" not in wrong.value.hint
