"""The TensorRT route. Everywhere: the ONNX files it builds from (mixed-precision fp16, explicit Q/DQ int8 in
TensorRT's form) are produced and checked by ONNX Runtime as rows of their own; optimization profiles come from
the input specs; without TensorRT or a GPU the tensorrt rows say why and nothing is written for them. On a
machine with TensorRT and an NVIDIA GPU: a tiny engine is built (fp32, fp16, int8) and run, and compared with
ONNX Runtime; those tests skip here with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel

from convcli.converters.onnx_to_tensorrt import (
    TENSORRT_INT8,
    TensorrtFromOnnx,
    _proc_gpu_identity,
    check_onnx_for_tensorrt,
    optimization_profile,
    tensorrt_availability,
)
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
from convcli.core.planner import TargetRequest, plan
from convcli.core.registry import Registry, default_registry
from convcli.core.step import Availability, Converter, StepContext
from convcli.core.tensors import parse_input_spec
from convcli.job.keys import step_keys
from convcli.parity.data import random_data
from convcli.passes.fp16_onnx import ConvertOnnxFp16, ort_outputs
from convcli.passes.quantize_onnx import Int8Options, QuantizeOnnxInt8
from convcli.runners.tensorrt_runner import TensorrtRunner, cuda_torch_availability
from tests.conftest import FAST
from tests.models.catalogue import ROOT

CALIB = ROOT / "calibration_data/digits/calib"
ENGINE = cuda_torch_availability()
needs_gpu = pytest.mark.skipif(not ENGINE.available, reason=f"TensorRT engine tests: {ENGINE.reason}")


def _row(report: dict, row_id: str) -> dict:
    return next(r for r in report["artifacts"] if r["id"] == row_id)


# -- everywhere ----------------------------------------------------------------------------------------------

def test_profile_from_input_specs() -> None:
    image = parse_input_spec("x:batch=8x3x32x32:float32")
    tokens = parse_input_spec("ids:batch=2xseq=128:int64")
    fixed = parse_input_spec("scale:1:float32")
    profile = optimization_profile([image, tokens, fixed])
    assert profile == {"x": ([1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]),
                       "ids": ([1, 1], [2, 128], [32, 256])}  # max(2 x example, 32) per dynamic dimension
    assert optimization_profile([image, tokens], {"batch": 64, "seq": 512})["ids"][2] == [64, 512]
    with pytest.raises(ConversionError, match="below the example size 8"):
        optimization_profile([image], {"batch": 4})
    with pytest.raises(ConversionError, match=r"\['height'\], which are not dynamic"):
        optimization_profile([image], {"height": 64})


def test_gpu_identity_from_the_drivers_proc_files(tmp_path: Path) -> None:
    """Without nvidia-smi (some containers) the GPU model and driver come from /proc/driver/nvidia."""
    (tmp_path / "gpus/0000:01:00.0").mkdir(parents=True)
    (tmp_path / "gpus/0000:01:00.0/information").write_text("Model: \t\t NVIDIA H200\nIRQ:\t\t 17\n")
    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 2024\n")
    assert _proc_gpu_identity(tmp_path) == {"gpu": "NVIDIA H200", "driver": "550.54.15", "compute_capability": ""}
    assert _proc_gpu_identity(tmp_path / "missing") == {}


def test_tensorrt_qdq_form_refuses_what_tensorrt_cannot_build() -> None:
    assert Int8Options(**TENSORRT_INT8).qdq_form == "tensorrt"
    for bad in ({"mode": "dynamic"}, {"activation_type": "uint8"}, {"symmetric_activations": False}):
        with pytest.raises(ValueError, match="qdq_form=tensorrt"):
            Int8Options(**{**TENSORRT_INT8, **bad})


def _qdq_conv(bias_int32: bool, zero_point: int) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(w via Q/DQ, bias) -> y, with an int32 bias behind a DequantizeLinear (ORT's form) or a
    float bias (TensorRT's)."""
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    inits = [w, numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
             numpy_helper.from_array(np.array(0, np.int8), "z0")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dqx"),
             helper.make_node("QuantizeLinear", ["w", "s", "z0"], ["wq"], name="qw"),
             helper.make_node("DequantizeLinear", ["wq", "s", "z0"], ["wd"], name="dqw")]
    if bias_int32:
        inits += [numpy_helper.from_array(np.array([3, 4], np.int32), "bq"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "bs")]
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], name="dqb"))
    else:
        inits.append(numpy_helper.from_array(np.array([0.03, 0.04], np.float32), "b"))
    nodes.append(helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_check_of_tensorrt_inputs(tmp_path: Path) -> None:
    good, ort_form, asym = tmp_path / "good.onnx", tmp_path / "ort.onnx", tmp_path / "asym.onnx"
    onnx.save(_qdq_conv(False, 0), str(good))
    onnx.save(_qdq_conv(True, 0), str(ort_form))
    onnx.save(_qdq_conv(False, 5), str(asym))
    assert check_onnx_for_tensorrt(good, "int8")["dequantize_nodes"] == 2
    with pytest.raises(ConversionError, match="dequantizes a int32 constant"):
        check_onnx_for_tensorrt(ort_form, "int8")
    with pytest.raises(ConversionError, match="non-zero zero point"):
        check_onnx_for_tensorrt(asym, "int8")
    with pytest.raises(ConversionError, match="Q/DQ nodes in a fp32 input"):
        check_onnx_for_tensorrt(good, "fp32")
    with pytest.raises(ConversionError, match="no fp16 initializers"):
        check_onnx_for_tensorrt(good, "fp16")


class _EngineFromOnnx(Converter):
    """A converter that takes its precision from its input, like TensorrtFromOnnx, but available everywhere:
    the planner's other branch (the engine step placed after the precision pass)."""

    name = "EngineFromOnnx"
    source = "onnx"
    target = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    input_precision = TensorrtFromOnnx.input_precision

    class Options(BaseModel):
        precision: str = "fp32"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)


def _registry_with(engine: type[Converter]) -> Registry:
    """The built-in registry with ``engine`` in TensorrtFromOnnx's place."""
    registry, own = default_registry(), Registry()
    for fmt in registry.formats.values():
        own.add_format(fmt)
    for step in (*registry.converters.values(), *registry.passes.values()):
        if step is not TensorrtFromOnnx:
            own.add_step(step)
    own.add_step(engine)
    return own


def test_planner_puts_the_precision_pass_before_the_engine() -> None:
    registry = default_registry()
    requests = [TargetRequest("tensorrt", p) for p in ("fp32", "fp16", "int8")]
    the_plan = plan(registry, "pytorch", requests, {"QuantizeOnnxInt8": {"activation_type": "uint8"}})
    ids = [t.request.label for t in the_plan.targets]
    assert ids == ["tensorrt-fp32", "onnx-fp16-for-tensorrt", "tensorrt-fp16", "onnx-int8-for-tensorrt",
                   "tensorrt-int8"]
    by_id = {t.request.label: t for t in the_plan.targets}
    if not tensorrt_availability().available:
        assert all(by_id[f"tensorrt-{p}"].unavailable for p in ("fp32", "fp16", "int8"))
    int8 = the_plan.steps[by_id["onnx-int8-for-tensorrt"].chain[-1]]
    assert int8.step is QuantizeOnnxInt8 and int8.options.qdq_form == "tensorrt"  # type: ignore[attr-defined]
    assert int8.options.activation_type == "int8"  # type: ignore[attr-defined]  # TensorRT's need wins over -O
    assert the_plan.steps[by_id["onnx-fp16-for-tensorrt"].chain[-1]].step is ConvertOnnxFp16

    requests = [TargetRequest("onnx", "fp16"), TargetRequest("tensorrt", "fp16"), TargetRequest("tensorrt", "int8")]
    the_plan = plan(_registry_with(_EngineFromOnnx), "onnx", requests)
    by_id = {t.request.label: t for t in the_plan.targets}
    # onnx-fp16 was asked for and is the engine's input: one row, not two
    assert list(by_id) == ["onnx-fp16", "tensorrt-fp16", "onnx-int8-for-tensorrt", "tensorrt-int8"]
    assert the_plan.chain_text(by_id["tensorrt-fp16"]).endswith("ConvertOnnxFp16 -> EngineFromOnnx")
    engine = the_plan.steps[by_id["tensorrt-int8"].final_step]  # type: ignore[index]
    assert engine.input_id == by_id["onnx-int8-for-tensorrt"].final_step
    assert engine.options.precision == "int8"  # type: ignore[attr-defined]


def test_engine_step_key_carries_the_machine_identity() -> None:
    """An engine is valid only on the GPU/driver/TensorRT that built it: two machines that differ only there
    share every upstream step's key and differ in the engine step's."""

    class OnGpuA(_EngineFromOnnx):
        @classmethod
        def machine_key(cls) -> dict[str, str]:
            return {"gpu": "A", "driver": "1", "tensorrt": "11.4"}

    class OnGpuB(OnGpuA):
        @classmethod
        def machine_key(cls) -> dict[str, str]:
            return {"gpu": "B", "driver": "1", "tensorrt": "11.4"}

    keys = []
    for engine in (OnGpuA, OnGpuB):
        the_plan = plan(_registry_with(engine), "pytorch", [TargetRequest("tensorrt", "fp32")])
        assert [s.step.name for s in the_plan.steps.values()] == ["OnnxFromPytorch", "SimplifyOnnx", "EngineFromOnnx"]
        keys.append(step_keys(the_plan, "root", None))
    assert keys[0]["s1"] == keys[1]["s1"] and keys[0]["s2"] == keys[1]["s2"] and keys[0]["s3"] != keys[1]["s3"]


@pytest.mark.skipif(tensorrt_availability().available, reason="TensorRT is usable here: the rows are built")
def test_digits_tensorrt_rows_unavailable_and_their_onnx_inputs_checked_by_ort(cli, catalogue,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", *catalogue["digits_cnn"].args(), "--to", "tensorrt:fp32+fp16+int8", "--calibration", CALIB,
              "-O", "QuantizeOnnxInt8.calibration_samples=32", "-o", out, "--no-latency", *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    assert [r["id"] for r in report["artifacts"]] == ["tensorrt-fp32", "onnx-fp16-for-tensorrt", "tensorrt-fp16",
                                                       "onnx-int8-for-tensorrt", "tensorrt-int8"]
    reason = tensorrt_availability().reason
    for p in ("fp32", "fp16", "int8"):
        row = _row(report, f"tensorrt-{p}")
        assert row["status"] == "unavailable" and reason in row["error"] and not row["files"], row
    assert not list(out.glob("tensorrt-*")) and not [*out.rglob("*.plan"), *out.rglob("*.engine")]

    fp16 = _row(report, "onnx-fp16-for-tensorrt")
    assert fp16["status"] == "passed" and fp16["runner"].startswith("ONNX Runtime")
    assert fp16["parity"]["max_abs_err"] < 1e-2 and fp16["parity"]["cosine_min"] > 0.999
    assert check_onnx_for_tensorrt(out / fp16["path"], "fp16")["fp16_tensors"] > 0

    int8 = _row(report, "onnx-int8-for-tensorrt")
    assert int8["status"] == "passed" and int8["runner"].startswith("ONNX Runtime")
    assert int8["parity"]["cosine_min"] > 0.99 and int8["accuracy_drop"] <= 0.01
    q = next(s for s in report["steps"] if s["name"] == "QuantizeOnnxInt8")
    assert q["options"]["qdq_form"] == "tensorrt" and q["details"]["int8"]["tensorrt_explicit_qdq"]
    assert check_onnx_for_tensorrt(out / int8["path"], "int8")["quantize_nodes"] > 0
    model = onnx.load(str(out / int8["path"]))
    assert {"Conv", "Gemm"} <= {n.op_type for n in model.graph.node}
    inits = {t.name for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert all(n.input[2] in inits for n in convs)  # biases stay float initializers


# -- on a machine with TensorRT and an NVIDIA GPU --------------------------------------------------------------

def _tiny_onnx(path: Path) -> None:
    """x[batch,1,6,6] -> Conv(3x3) -> Relu -> Flatten -> Gemm -> y[batch,5]: enough for Q/DQ and fp16."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(size=(5, 64)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tiny_engine_builds_runs_and_matches_onnxruntime(precision: str, tmp_path: Path) -> None:
    spec = parse_input_spec("x:batch=4x1x6x6:float32")
    (tmp_path / "src").mkdir()
    _tiny_onnx(tmp_path / "src/model.onnx")
    onnx_in = Artifact(format="onnx", path=tmp_path / "src/model.onnx", inputs=[spec], output_names=["y"])
    calib = random_data([spec], 64, seed=1)
    if precision != "fp32":
        work = tmp_path / "prec"
        work.mkdir()
        ctx = StepContext(workdir=work, calibration_source=lambda: calib)
        step = (ConvertOnnxFp16() if precision == "fp16" else
                QuantizeOnnxInt8(Int8Options(**TENSORRT_INT8, on_budget_miss="keep_best")))
        onnx_in = step.run(onnx_in, ctx)
    (tmp_path / "engine").mkdir()
    ctx = StepContext(workdir=tmp_path / "engine", cache_dir=tmp_path / "cache", timeout_s=600)
    options = TensorrtFromOnnx.Options(precision=precision, profile_max={"batch": 16})
    engine = TensorrtFromOnnx(options).run(onnx_in, ctx)
    assert engine.path is not None and engine.path.suffix == ".plan" and engine.path.stat().st_size > 0
    built = engine.details["tensorrt"]
    assert built["strongly_typed"] and built["tf32"] is False and built["gpu"]["gpu"]
    assert built["profile"]["x"] == [[1, 1, 6, 6], [4, 1, 6, 6], [16, 1, 6, 6]]
    assert list((tmp_path / "cache/tensorrt").glob("timing-*.cache"))
    key = TensorrtFromOnnx.machine_key()
    assert key is not None and key["gpu"] and key["driver"] and key["tensorrt"]

    data = random_data([spec], 40, seed=2)  # 40 > profile max 16: the runner runs it in chunks
    _, (want,) = ort_outputs(onnx_in.path, data, threads=2)  # type: ignore[arg-type]
    session = TensorrtRunner().load(engine, threads=2)
    try:
        (got,) = session(data.inputs)
        (one,) = session({"x": data.inputs["x"][:3]})
    finally:
        session.close()
    assert got.shape == want.shape == (40, 5) and got.dtype == np.float32
    atol = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}[precision] * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    np.testing.assert_allclose(one, got[:3], atol=atol, rtol=0)


@needs_gpu
def test_engine_step_refuses_a_file_that_is_not_its_precision(tmp_path: Path) -> None:
    _tiny_onnx(tmp_path / "model.onnx")
    spec = parse_input_spec("x:batch=4x1x6x6:float32")
    artifact = Artifact(format="onnx", path=tmp_path / "model.onnx", inputs=[spec], output_names=["y"])
    with pytest.raises(ConversionError, match="int8 only from explicit Q/DQ"):
        TensorrtFromOnnx(TensorrtFromOnnx.Options(precision="int8")).run(artifact, StepContext(workdir=tmp_path))
    assert not list(tmp_path.glob("*.plan"))
