"""ONNX precision passes end to end: fp16 (ConvertOnnxFp16) and accuracy-aware INT8 (QuantizeOnnxInt8) on real
models, judged by the report's parity/accuracy checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from convcli.core.tensors import parse_input_spec
from convcli.parity.data import ImagePreprocess, load_images
from convcli.passes.fp16_onnx import ort_outputs
from convcli.reports.markdown import render_markdown
from convcli.reports.render import load_report
from tests.conftest import FAST
from tests.models.catalogue import HERE, ROOT, ModelCase

CALIB = ROOT / "calibration_data/digits/calib"
# The trained digits CNN made int8-hostile (tests/models/small.py: outlier_digits); same function in float.
OUTLIER = ModelCase("outlier_digits", f"{HERE}/small.py:outlier_digits", inputs=("x:batch=2x1x8x8:float32",),
                    validation=ROOT / "calibration_data/digits/val")


def _row(report: dict, row_id: str) -> dict:
    return next(r for r in report["artifacts"] if r["id"] == row_id)


def _step(report: dict, name: str) -> dict:
    return next(s for s in report["steps"] if s["name"] == name)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_digits_fp16_and_int8_side_by_side(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx:fp32+fp16+int8", "--calibration", CALIB,
              "-o", out, "--batch", "1,32", *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert [r["id"] for r in report["artifacts"]] == ["onnx-fp32", "onnx-fp16", "onnx-int8"]
    src_acc = report["source"]["accuracy"]

    fp16 = _row(report, "onnx-fp16")
    assert fp16["status"] == "passed" and fp16["precision"] == "fp16"
    assert fp16["parity"]["tolerance"]["atol"] == 1e-2  # judged at fp16 tolerances
    assert 0 < fp16["parity"]["max_abs_err"] < 1e-2 and fp16["parity"]["cosine_min"] > 0.999
    assert abs(fp16["accuracy"] - src_acc) <= 0.005
    f16 = _step(report, "ConvertOnnxFp16")["details"]["fp16"]
    assert f16["keep_io_types"] and f16["fp16_initializers"] > 0
    assert f16["size_bytes_after"] < 0.6 * f16["size_bytes_before"]
    model16 = onnx.load(str(out / fp16["path"]))
    assert model16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in model16.graph.initializer)

    int8 = _row(report, "onnx-int8")
    assert int8["status"] == "passed", int8
    assert int8["accuracy_drop"] <= 0.01
    assert set(int8["latency_by_batch"]) == {"1", "32"}
    q = _step(report, "QuantizeOnnxInt8")["details"]["int8"]
    assert q["mode"] == "static" and q["format"].startswith("QDQ")
    assert str(CALIB) in q["calibration"]["data"] and q["calibration"]["samples"] == 64  # the job's default load
    assert q["calibration"]["method"] == "minmax" and q["per_channel"] and q["activation_type"] == "uint8"
    assert q["preprocess"].startswith("quant_pre_process")
    assert q["budget"]["metric"] == "accuracy_drop" and q["budget"]["samples"] == report["settings"]["tuning_samples"]
    assert q["budget_met"] and q["float_layers"] == [] and len(q["steps"]) == 1
    assert q["quantized_ops"].get("Conv") == 2 and q["quantized_ops"].get("Gemm") == 2
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= _ops(out / int8["path"])
    assert int8["size_bytes"] < 0.5 * _row(report, "onnx-fp32")["size_bytes"]


def test_int8_step_options_set_calibration_samples_and_method(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx:int8", "--calibration", CALIB, "-o", out,
              "-O", "QuantizeOnnxInt8.calibration_samples=16", "-O", "QuantizeOnnxInt8.calibration_method=entropy",
              "-O", "QuantizeOnnxInt8.activation_type=int8", "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    q = _step(report, "QuantizeOnnxInt8")["details"]["int8"]
    assert q["calibration"]["samples"] == 16 and q["calibration"]["samples_loaded"] == 64
    assert q["calibration"]["method"] == "entropy"
    # int8 activations default to symmetric (zero points 0), but ORT's form keeps int32 biases behind a
    # DequantizeLinear, which TensorRT rejects: only qdq_form=tensorrt is a TensorRT input
    assert q["symmetric_activations"] and not q["tensorrt_explicit_qdq"] and q["qdq_form"] == "onnxruntime"
    model = onnx.load(str(out / _row(report, "onnx-int8")["path"]))
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.dtype.name == "int8" and not z.any() for z in zero_points)
    assert _row(report, "onnx-int8")["accuracy_drop"] <= 0.01


def test_int8_without_calibration_is_refused_before_any_conversion(cli, catalogue, tmp_path: Path) -> None:
    """Static int8 (auto mode on float inputs) needs --calibration: exit 2 before the fp32 target is built."""
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx:fp32+int8", "-o", out, "--no-latency")
    assert res.exit_code == 2, res.output
    assert "--calibration: onnx-int8 (QuantizeOnnxInt8) needs calibration data" in res.output
    assert ".npz keyed by input name" in res.output and "Traceback" not in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("mode", "dtype", "needs"), [
    ("static", None, True), ("dynamic", None, False), ("auto", None, None),
    ("auto", "int64", False), ("auto", "float32", True), ("dynamic", "float32", False),
])
def test_onnx_int8_needs_calibration_only_when_static(mode: str, dtype: str | None, needs: bool | None) -> None:
    """What the planning-time check asks: auto mode is dynamic (no calibration) for token ids, static otherwise;
    without the source's inputs it cannot tell yet (None)."""
    from convcli.core.tensors import parse_input_spec
    from convcli.passes.quantize_onnx import QuantizeOnnxInt8

    options = QuantizeOnnxInt8.Options(mode=mode)
    inputs = [parse_input_spec(f"x:batch=2x4:{dtype}")] if dtype else None
    assert QuantizeOnnxInt8.needs_calibration(options, inputs) is needs


def test_int8_unknown_exclude_node_names_the_node(cli, catalogue, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "onnx:int8", "--calibration", CALIB, "-o", out,
              "-O", "QuantizeOnnxInt8.exclude_nodes=[no_such_conv]", "--no-latency")
    assert res.exit_code == 3, res.output
    error = res.report(out)["artifacts"][0]["error"]
    assert "no_such_conv" in error and "nodes include:" in error


def test_transformer_int8_dynamic_and_fp16_keeps_fragile_ops_fp32(cli, catalogue, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "onnx:fp16+int8", "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    assert not list(cwd.iterdir()), "ORT's shape inference left files in the working directory"
    report = res.report(out)
    int8 = _row(report, "onnx-int8")
    assert int8["status"] == "passed" and int8["parity"]["cosine_min"] >= 0.98
    q = _step(report, "QuantizeOnnxInt8")["details"]["int8"]
    assert q["mode"] == "dynamic" and "input_ids" in q["mode_reason"]
    # attention's activation x activation MatMuls stay float; only weight MatMuls/Gemms become MatMulInteger
    assert len(q["excluded"]["activation_matmuls"]) == 4, q["excluded"]
    assert q["ops_after"].get("MatMulInteger", 0) >= 1
    assert q["calibration"]["samples"] == 0 and q["budget"]["metric"] == "cosine" and q["budget_met"]
    assert q["budget"]["data"].startswith("random")  # said so, since no --calibration was given
    assert q["quantized_ops"].get("MatMul", 0) >= 4
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= _ops(out / int8["path"])

    fp16 = _row(report, "onnx-fp16")
    assert fp16["status"] == "passed" and fp16["parity"]["max_abs_err"] < 1e-2
    f16 = _step(report, "ConvertOnnxFp16")["details"]["fp16"]
    assert {"LayerNormalization", "Softmax"} <= set(f16["fp32_op_types_present"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / fp16["path"])))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types.get(node.input[0]) == TensorProto.FLOAT, node.name
        if node.op_type == "MatMul":
            assert types.get(node.input[0]) == TensorProto.FLOAT16, node.name


def test_accuracy_aware_int8_keeps_sensitive_layers_in_float(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *OUTLIER.args(), "--to", "onnx:fp32+int8", "--calibration", CALIB, "-o", out,
              "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert _row(report, "onnx-fp32")["accuracy"] > 0.95  # the float model is the good digits model
    q = _step(report, "QuantizeOnnxInt8")["details"]["int8"]
    first, last = q["steps"][0], q["steps"][-1]
    assert first["float_layers"] == [] and not first["budget_met"] and first["accuracy_drop"] > 0.3
    assert q["budget_met"] and q["result"]["accuracy_drop"] <= 0.01
    assert 1 <= len(q["float_layers"]) < 4 and set(q["float_layer_ops"]) <= {"Conv", "Gemm"}
    assert last["float_layers"] == q["float_layers"] or any(s["float_layers"] == q["float_layers"] and
                                                            s["budget_met"] for s in q["steps"])
    assert {s["layer"] for s in q["sensitivity"]} >= set(q["float_layers"])
    assert q["nodes_quantized"] >= 1  # still an int8 model, not the float one renamed
    row = _row(report, "onnx-int8")
    assert row["status"] == "passed" and row["accuracy_drop"] <= 0.01
    model = onnx.load(str(out / row["path"]))
    float_weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    kept = [n for n in model.graph.node if n.name in q["float_layers"]]
    assert len(kept) == len(q["float_layers"])
    for node in kept:  # weights stay fp32 initializers (not int8 behind a DequantizeLinear): float compute
        assert node.input[1] in float_weights, f"{node.name} was to stay float"

    # Without the search, the same quantization misses the budget and the step says so (no silent pass).
    again = tmp_path / "again"
    res = cli("convert", *OUTLIER.args(), "--to", "onnx:int8", "--calibration", CALIB, "-o", again,
              "--no-latency", "-O", "QuantizeOnnxInt8.max_float_layers=0")
    assert res.exit_code == 3, res.output
    error = res.report(again)["artifacts"][0]["error"]
    assert "missed its budget" in error and "accuracy drop" in error and "max_float_layers=0" in error


def test_int8_is_judged_on_labelled_samples_its_search_never_saw(cli, tmp_path: Path) -> None:
    """The accuracy-aware search tunes on one part of --validation; the report's accuracy (what an int8 row is
    judged on) comes from the other part only. Checked by rerunning the int8 file on each part by index."""
    out = tmp_path / "out"
    res = cli("convert", *OUTLIER.args(), "--to", "onnx:int8", "--calibration", CALIB, "-o", out, "--no-latency",
              "--tuning-fraction", "0.25", "--threads", "2")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    settings, row = report["settings"], _row(report, "onnx-int8")
    tuning, held = settings["tuning_indices"], settings["accuracy_indices"]
    assert settings["tuning_samples"] == len(tuning) == 88 and settings["tuning_fraction"] == 0.25
    assert settings["accuracy_samples"] == report["source"]["accuracy_samples"] == len(held) == 272
    assert not set(tuning) & set(held) and sorted(tuning + held) == list(range(360))
    assert settings["accuracy_split"] == ("val: 360 samples, 88 for int8 tuning (every 4th sample per class), "
                                          "272 held out for accuracy")
    q = _step(report, "QuantizeOnnxInt8")["details"]["int8"]
    assert q["budget"]["samples"] == 88 and "int8 tuning part, 88 samples" in q["budget"]["data"]
    assert q["float_layers"], "the hostile model needs layers kept in float: the search ran on the tuning part"
    assert "accuracy split: val: 360 samples, 88 for int8 tuning" in res.output
    assert "- Accuracy split: val: 360 samples, 88 for int8 tuning" in render_markdown(load_report(out))

    assert OUTLIER.validation is not None
    data = load_images(OUTLIER.validation, [parse_input_spec(OUTLIER.inputs[0])], ImagePreprocess())
    assert data.labels is not None

    def top1(indices: list[int]) -> float:
        part = data.subset(indices, "part")
        _, (logits, *_) = ort_outputs(out / row["path"], part, 2)
        return float(np.mean(np.argmax(logits, axis=1) == part.labels))

    assert abs(top1(held) - row["accuracy"]) < 1e-9  # the row's accuracy: held-out samples only
    assert abs(top1(tuning) - q["result"]["accuracy"]) < 1e-6  # the search's: tuning samples only

    # Another split is other tuning data: the int8 step is rebuilt (its key holds the split), the export is not.
    again = tmp_path / "again"
    res = cli("convert", *OUTLIER.args(), "--to", "onnx:int8", "--calibration", CALIB, "-o", again, "--no-latency",
              "--threads", "2")
    assert res.exit_code == 0, res.output
    report = res.report(again)
    cached = {s["name"]: s["cached"] for s in report["steps"]}
    assert cached == {"OnnxFromPytorch": True, "SimplifyOnnx": True, "QuantizeOnnxInt8": False}, cached
    assert report["settings"]["tuning_samples"] == 178 and report["source"]["accuracy_samples"] == 182


def test_onnx_int8_reads_the_labelled_set_only_for_an_accuracy_budget() -> None:
    """Without an accuracy budget nothing tunes on --validation: no split, and no cache key on it."""
    from convcli.passes.quantize_onnx import Int8Options, QuantizeOnnxInt8

    assert QuantizeOnnxInt8.data_inputs(Int8Options()) == (True, True)
    assert QuantizeOnnxInt8.data_inputs(Int8Options(max_accuracy_drop=None)) == (True, False)


# -- units: the attention-mask guard and option validation ----------------------------------------------------

def _masked_attention_graph() -> onnx.ModelProto:
    """scores(float) + (1 - float(mask)) * -10000, then Softmax: the classic attention-mask Add."""
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Sub", ["one", "mask_f"], ["inv"], name="sub"),
        helper.make_node("Mul", ["inv", "neg"], ["bias"], name="mul"),
        helper.make_node("MatMul", ["x", "w"], ["scores"], name="matmul"),
        helper.make_node("Add", ["scores", "bias"], ["masked"], name="mask_add"),
        helper.make_node("Add", ["masked", "b"], ["y0"], name="plain_add"),
        helper.make_node("Softmax", ["y0"], ["y"], name="softmax"),
    ]
    inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("neg", TensorProto.FLOAT, [], [-10000.0]),
             helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16),
             helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5] * 4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph)


def test_attention_mask_arithmetic_is_guarded() -> None:
    from convcli.passes.quantize_onnx import QuantizeOnnxInt8, attention_mask_nodes, integer_inputs

    model = _masked_attention_graph()
    assert integer_inputs(model) == ["mask"]
    assert attention_mask_nodes(model) == ["mask_add"]  # not the Sub/Mul inside the mask path, not plain_add
    mode, why = QuantizeOnnxInt8._mode(model, QuantizeOnnxInt8.Options())
    assert mode == "dynamic" and "mask" in why


@pytest.mark.parametrize(("values", "fragment"), [
    ({"percentile": 99.0}, "'percentile'"),
    ({"mode": "dynamic", "calibration_method": "entropy"}, "'calibration_method'"),
    ({"activation_type": "int4"}, "'activation_type'"),
    ({"max_accuracy_drop": 2}, "'max_accuracy_drop'"),
    ({"calibration_sample": 8}, "not supported"),
])
def test_int8_options_are_validated(values: dict, fragment: str) -> None:
    from convcli.core.errors import InputError
    from convcli.passes.quantize_onnx import QuantizeOnnxInt8

    with pytest.raises(InputError) as info:
        QuantizeOnnxInt8.parse_options(values, "target onnx-int8")
    assert fragment in info.value.one_line()
