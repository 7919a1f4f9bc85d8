"""TensorFlow sources (Keras 3 .keras, tf_keras .h5, SavedModel) through the same graph: tf2onnx to ONNX and
what follows from it (OpenVINO, NCNN, onnx2tf), TensorFlow's own TFLite converter, the TensorFlow runner as
the reference, NHWC inputs kept end to end.

Every conversion is real (tf2onnx and TFLiteConverter in child processes, ~7 s each), so each test converts
once and checks as much as that run shows.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter

from convcli.sources.tf_sources import import_tensorflow
from tests.conftest import FAST
from tests.models.catalogue import ROOT

NO_LATENCY = ["--no-latency", "--threads", "2"]
KERAS_DIGITS = ROOT / "recipes/models/keras_digits.keras"
DIGITS_VAL = ROOT / "calibration_data/digits/val"


def _keras3_cnn(path: Path) -> None:
    """Keras 3: 3-channel NHWC input named 'photo', conv + pooling + dense head 'logits'."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3), name="photo")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    keras.Model(inp, keras.layers.Dense(5, name="logits")(x)).save(path)


def _tf_keras_h5(path: Path) -> None:
    """tf_keras (legacy Keras 2) saved as HDF5: 1-channel NHWC input 'digit', batch norm, softmax 'probs'."""
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    inp = tf_keras.Input((8, 8, 1), name="digit")
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.Flatten()(x)
    tf_keras.Model(inp, tf_keras.layers.Dense(10, activation="softmax", name="probs")(x)).save(path)


def _savedmodel(path: Path, signed: bool = True, size: int | None = 6) -> None:
    """A plain tf.Module (no Keras): NHWC conv, two named outputs; with or without a serving signature."""
    tf = import_tensorflow()

    class Net(tf.Module):
        def __init__(self) -> None:
            rng = np.random.default_rng(3)
            self.kernel = tf.Variable(rng.normal(size=(3, 3, 2, 4)).astype(np.float32))
            self.dense = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))

        @tf.function
        def serve(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            feat = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(pixels, self.kernel, 1, "SAME")), axis=[1, 2])
            return {"scores": tf.matmul(feat, self.dense), "features": feat}

    net = Net()
    spec = tf.TensorSpec([None, size, size, 2], tf.float32, name="pixels")
    if signed:
        tf.saved_model.save(net, str(path), signatures={"serving_default": net.serve.get_concrete_function(spec)})
    else:
        net.serve.get_concrete_function(spec)  # traced, but exported without any signature
        tf.saved_model.save(net, str(path), signatures={})


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import_tensorflow(threads=2)  # pinned before this process's TensorFlow runtime starts, as the job would
    root = tmp_path_factory.mktemp("tf_models")
    models = {"keras3": root / "cnn.keras", "h5": root / "legacy.h5", "savedmodel": root / "saved",
              "unsigned": root / "unsigned", "open": root / "open"}
    _keras3_cnn(models["keras3"])
    _tf_keras_h5(models["h5"])
    _savedmodel(models["savedmodel"])
    _savedmodel(models["unsigned"], signed=False)
    _savedmodel(models["open"], size=None)
    return models


def _tflite_inputs(path: Path) -> list[list[int]]:
    return [[int(d) for d in det["shape"]] for det in Interpreter(model_path=str(path)).get_input_details()]


# name, input spec as the source reports it, output names in the source's order
CASES = {
    "keras3": ("photo:batch=2x8x8x3:float32", ["logits"]),
    "h5": ("digit:batch=2x8x8x1:float32", ["probs"]),
    "savedmodel": ("pixels:batch=2x6x6x2:float32", ["features", "scores"]),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_source_to_onnx_openvino_and_native_tflite(cli, tf_models, kind: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opset = ["-O", "OnnxFromSavedmodel.opset=13"] if kind == "savedmodel" else []
    res = cli("convert", tf_models[kind], "--to", "onnx,openvino,tflite", "-o", out, *opset, *NO_LATENCY)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    spec, outputs = CASES[kind]
    src = report["source"]
    assert src["format"] == ("savedmodel" if kind == "savedmodel" else "keras")
    assert src["inputs"] == [spec] and src["outputs"] == outputs
    assert src["runner"].startswith("TensorFlow 2.") and "2 intra-op / 1 inter-op threads" in src["runner"]
    rows = {r["id"]: r for r in report["artifacts"]}
    assert set(rows) == {"onnx-fp32", "openvino-fp32", "tflite-fp32"}
    name, shape = spec.split(":")[0], [int(d.split("=")[-1]) for d in spec.split(":")[1].split("x")]
    for row in rows.values():
        assert row["status"] == "passed", row
        assert row["parity"]["max_abs_err"] < 1e-5, (row["id"], row["parity"]["max_abs_err"])
        assert [o["name"] for o in row["parity"]["outputs"]] == outputs
        assert row["input_layout"] == {}, "every artifact takes the source's NHWC feed as it is"
    steps = {s["name"]: s for s in report["steps"]}
    prefix = "Savedmodel" if kind == "savedmodel" else "Keras"
    assert rows["tflite-fp32"]["chain"] == f"{src['format']} -> TfliteFrom{prefix}"
    export = steps[f"OnnxFrom{prefix}"]["details"]
    assert export["export_checks"]["batch=3"]["passed"] and export["export_checks"]["batch=3"]["max_abs_err"] < 1e-5
    # ONNX: the source's names, NHWC shape, a named dynamic batch.
    model = onnx.load(str(out / rows["onnx-fp32"]["path"]))
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == name and dims == ["batch", *shape[1:]]
    assert [o.name for o in model.graph.output] == outputs
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] == export["opset"] == (13 if kind == "savedmodel" else 17)
    # OpenVINO IR keeps the NHWC input too.
    xml = (out / rows["openvino-fp32"]["path"]).read_text()
    assert all(f"<dim>{d}</dim>" in xml for d in shape[1:])
    # TFLite from TensorFlow's converter: NHWC, batch 1 in the tensor (the runner chunks larger batches).
    assert _tflite_inputs(out / rows["tflite-fp32"]["path"]) == [[1, *shape[1:]]]
    tfl = rows["tflite-fp32"]["details"]
    assert tfl["check_vs_source"]["passed"] and tfl["check_vs_source"]["max_abs_err"] < 1e-5
    assert "input layout as the source" in rows["tflite-fp32"]["runner"]


def test_keras_digits_accuracy_and_both_tflite_paths(cli, tmp_path: Path) -> None:
    """The bundled Keras model on the labelled split (NHWC images, layout taken from the source format):
    TFLite fp32 + fp16 through TensorFlow's converter (one child run) next to fp32 through onnx2tf."""
    out = tmp_path / "out"
    res = cli("convert", KERAS_DIGITS, "--to", "onnx,openvino,ncnn,tflite:fp32+fp16,tflite@TfliteFromOnnx",
              "--validation", DIGITS_VAL, "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    report = res.report(out)
    source_acc = report["source"]["accuracy"]
    assert source_acc > 0.9 and report["source"]["accuracy_samples"] == 360
    rows = {r["id"]: r for r in report["artifacts"]}
    assert set(rows) == {"onnx-fp32", "openvino-fp32", "ncnn-fp32", "tflite-fp32", "tflite-fp16",
                         "tflite-fp32@TfliteFromOnnx"}
    for row in rows.values():
        assert row["status"] == "passed", row
        assert row["accuracy"] > 0.9 and row["accuracy_drop"] <= 0.005, (row["id"], row["accuracy"])
        assert row["latency_ms"]["p50"] > 0
    for rid in ("onnx-fp32", "openvino-fp32", "ncnn-fp32", "tflite-fp32", "tflite-fp32@TfliteFromOnnx"):
        assert rows[rid]["parity"]["max_abs_err"] < 1e-4, (rid, rows[rid]["parity"]["max_abs_err"])
    fp16 = rows["tflite-fp16"]
    assert 1e-6 < fp16["parity"]["max_abs_err"] < 1e-2 and fp16["parity"]["top1_agreement"] >= 0.95
    assert fp16["size_bytes"] < 0.7 * rows["tflite-fp32"]["size_bytes"]
    assert fp16["details"]["ops"].get("DEQUANTIZE", 0) > 0
    assert fp16["details"]["run"].startswith("reused") != rows["tflite-fp32"]["details"]["run"].startswith("reused")
    native, onnx2tf = rows["tflite-fp32"], rows["tflite-fp32@TfliteFromOnnx"]
    assert native["chain"] == "keras -> TfliteFromKeras"
    assert onnx2tf["chain"].startswith("keras -> OnnxFromKeras") and onnx2tf["chain"].endswith("TfliteFromOnnx")
    # onnx2tf keeps the already-NHWC input as it is: same 1x8x8x1 input, no TRANSPOSE, no layout mapping.
    assert onnx2tf["details"]["kept_channel_last_inputs"] == ["image"]
    assert onnx2tf["input_layout"] == {} and "TRANSPOSE" not in onnx2tf["details"]["ops"]
    for row in (native, onnx2tf):
        assert _tflite_inputs(out / row["path"]) == [[1, 8, 8, 1]]
    manifest = (out / "manifest.json").read_text()
    assert '"layout": "NHWC"' in manifest, "the job records the image layout it used"


def test_keras_digits_native_tflite_int8_calibrated_float_and_int8_io(cli, tmp_path: Path) -> None:
    """Full-integer TFLite from TensorFlow's own converter: calibrated on --calibration (the count honoured),
    builtin int8 kernels only, float or int8 I/O; both within 1 point of the Keras model's accuracy."""
    out = tmp_path / "out"
    res = cli("convert", KERAS_DIGITS, "--to", "tflite:int8", "-O", "tflite.calibration_samples=40",
              "--calibration", ROOT / "calibration_data/digits/calib", "--validation", DIGITS_VAL, "-o", out,
              "--no-latency")
    assert res.exit_code == 0, res.output
    report = res.report(out)
    row = report["artifacts"][0]
    assert row["status"] == "passed" and row["chain"] == "keras -> TfliteFromKeras", row
    assert row["accuracy_drop"] <= 0.01, row["accuracy_drop"]
    int8 = row["details"]["int8"]
    assert int8["calibration_samples"] == 40 and "digits/calib" in int8["calibration_data"]
    assert int8["supported_ops"] == "TFLITE_BUILTINS_INT8" and not int8["int8_io"]
    interp = Interpreter(model_path=str(out / row["path"]))
    assert interp.get_input_details()[0]["dtype"] == np.float32
    ops = row["details"]["ops"]
    assert ops.get("QUANTIZE", 0) >= 1 and ops.get("CONV_2D", 0) >= 1

    out_io = tmp_path / "out-io"
    res = cli("convert", KERAS_DIGITS, "--to", "tflite:int8", "-O", "tflite.int8_io=true",
              "--calibration", ROOT / "calibration_data/digits/calib", "--validation", DIGITS_VAL, "-o", out_io,
              "--no-latency")
    assert res.exit_code == 0, res.output
    row = res.report(out_io)["artifacts"][0]
    assert row["status"] == "passed" and row["accuracy_drop"] <= 0.01
    interp = Interpreter(model_path=str(out_io / row["path"]))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8


@pytest.fixture(scope="module")
def int8_hostile_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Keras digits model, made hostile to per-tensor int8 activations without changing its float outputs:
    conv 1's channel 0 scaled up 1000x (ReLU commutes with it), conv 2's weights reading it scaled down 1000x.
    One int8 range for conv 1's output then crushes its other 7 channels to a few levels."""
    import_tensorflow(threads=2)
    import keras

    model = keras.models.load_model(KERAS_DIGITS)
    conv1, conv2 = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    kernel, bias = conv1.get_weights()
    kernel[..., 0] *= 1000.0
    bias[0] *= 1000.0
    conv1.set_weights([kernel, bias])
    kernel, bias = conv2.get_weights()
    kernel[:, :, 0, :] /= 1000.0
    conv2.set_weights([kernel, bias])
    path = tmp_path_factory.mktemp("hostile") / "hostile_digits.keras"
    model.save(path)
    return path


def test_native_tflite_int8_accuracy_aware_keeps_layers_in_float(cli, int8_hostile_keras: Path,
                                                                 tmp_path: Path) -> None:
    """Full-integer int8 loses most of the accuracy; TensorFlow's QuantizationDebugger ranks the layers and the
    forward search keeps the two convolutions around the outlier tensor in float, then meets the 1-point budget."""
    out = tmp_path / "out"
    res = cli("convert", int8_hostile_keras, "--to", "tflite:int8", "--calibration",
              ROOT / "calibration_data/digits/calib", "--validation", DIGITS_VAL, "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    row = res.report(out)["artifacts"][0]
    assert row["status"] == "passed" and row["accuracy_drop"] <= 0.01, row
    search = row["details"]["int8"]["accuracy_aware"]
    assert search["budget"]["metric"] == "accuracy_drop" and search["budget_met"]
    # The TensorFlow child got the tuning part only (as arrays); the row's accuracy is on the held-out rest.
    settings = res.report(out)["settings"]
    assert "int8 tuning part" in search["budget"]["data"] and search["budget"]["samples"] == 178, search["budget"]
    assert settings["tuning_samples"] == 178 and settings["accuracy_samples"] == 182
    assert search["steps"][0]["action"] == "quantize all" and search["steps"][0]["accuracy_drop"] > 0.05
    assert 1 <= len(search["float_layers"]) <= 4
    assert all("conv2d" in layer for layer in search["float_layers"]), search["float_layers"]
    assert search["debugger_layer_errors"][0]["op"] == "CONV_2D"
    assert "layers kept in float" in row["details"]["int8"]["supported_ops"]

    missed = tmp_path / "missed"
    res = cli("convert", int8_hostile_keras, "--to", "tflite:int8", "-O", "tflite.max_float_layers=1",
              "--calibration", ROOT / "calibration_data/digits/calib", "--validation", DIGITS_VAL, "-o", missed,
              "--no-latency")
    assert res.exit_code == 3, res.output
    error = res.report(missed)["artifacts"][0]["error"]
    assert "missed its budget" in error and "max_float_layers" in error


def test_native_tflite_int8_without_calibration_is_refused_before_any_conversion(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("convert", KERAS_DIGITS, "--to", "tflite:fp32+int8", "-o", out, "--no-latency", *FAST)
    assert res.exit_code == 2, res.output
    assert "--calibration: tflite-int8 (TfliteFromKeras) needs calibration data" in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_tensorflow_sources_exit_2_with_a_clear_message(cli, tf_models, tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_bytes(KERAS_DIGITS.read_bytes()[:2000])  # a truncated download
    assert not zipfile.is_zipfile(broken)
    res = cli("convert", broken, "--to", "onnx", "-o", tmp_path / "o1", *NO_LATENCY)
    assert res.exit_code == 2, res.output
    assert "broken.keras is not a Keras archive" in res.output and "Traceback" not in res.output

    res = cli("convert", tf_models["unsigned"], "--to", "tflite", "-o", tmp_path / "o2", *NO_LATENCY)
    assert res.exit_code == 2, res.output
    assert "no 'serving_default' signature (signatures found: none)" in res.output

    res = cli("convert", tf_models["keras3"], "--input", "image:1x8x8x3:float32", "--to", "onnx",
              "-o", tmp_path / "o3", *NO_LATENCY)
    assert res.exit_code == 2, res.output
    assert "--input image is not an input of the model" in res.output and "photo" in res.output

    res = cli("convert", tf_models["keras3"], "--input", "photo:1x9x8x3:float32", "--to", "onnx",
              "-o", tmp_path / "o4", *NO_LATENCY)
    assert res.exit_code == 2, res.output
    assert "does not fit the model's input photo:batch=2x8x8x3" in res.output
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()

    # Open height/width: the native TFLite edge refuses (exit 3) and names the way out.
    res = cli("convert", tf_models["open"], "--to", "tflite", "-o", tmp_path / "o5", *NO_LATENCY)
    assert res.exit_code == 3, res.output
    (row,) = res.report(tmp_path / "o5")["artifacts"]
    assert row["status"] == "error" and "leave pixels: height, width open" in row["error"]
    assert "tflite@TfliteFromOnnx" in row["error"]


def test_recipe_validates_and_cli_help_imports_no_tensorflow(cli) -> None:
    res = cli("recipe", "validate", ROOT / "recipes/keras_digits.yaml")
    assert res.exit_code == 0, res.output
    assert "tflite:fp32+fp16" in res.output and "ncnn:fp32" in res.output
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "convcli", "--help"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    imported = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in proc.stderr.splitlines() if "|" in ln}
    assert "convcli" in imported
    assert not imported & {"tensorflow", "keras", "tf_keras", "tf2onnx"}


def test_tensorflow_then_torch_export_in_one_process_does_not_crash() -> None:
    """A Keras recipe and then a PyTorch one in one process: torch._dynamo imports triton, which segfaults when
    loaded after TensorFlow unless import_tensorflow loaded it first."""
    code = ("from convcli.sources.tf_sources import import_tensorflow\nimport_tensorflow(2)\n"
            "import torch._dynamo\nprint('both loaded')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and "both loaded" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_only_int8_tflite_steps_key_on_calibration_and_labelled_data() -> None:
    """The native TFLite converter writes fp32/fp16 without reading any data: changing --calibration or
    --validation must not rebuild them (the cache key asks the step which data its options read)."""
    from convcli.converters.tf_to_tflite import TfliteFromKeras, TfliteTfOptions

    assert TfliteFromKeras.data_inputs(TfliteTfOptions(precision="fp32")) == (False, False)
    assert TfliteFromKeras.data_inputs(TfliteTfOptions(precision="fp16")) == (False, False)
    assert TfliteFromKeras.data_inputs(TfliteTfOptions(precision="int8")) == (True, True)
    assert TfliteFromKeras.data_inputs(TfliteTfOptions(precision="int8", max_accuracy_drop=None)) == (True, False)


def test_savedmodel_native_tflite_int8_with_two_outputs_and_a_cosine_budget(cli, tf_models, tmp_path: Path) -> None:
    """from_saved_model + full-integer int8 on a model with two named outputs; no labelled set, so the budget is
    the cosine against TensorFlow on calibration samples held out from calibration."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, pixels=np.random.default_rng(0).uniform(0, 1, size=(40, 6, 6, 2)).astype(np.float32))
    out = tmp_path / "out"
    res = cli("convert", tf_models["savedmodel"], "--to", "tflite:int8", "--calibration", calib, "-o", out,
              *NO_LATENCY)
    assert res.exit_code == 0, res.output
    row = res.report(out)["artifacts"][0]
    assert row["status"] == "passed" and row["chain"] == "savedmodel -> TfliteFromSavedmodel", row
    int8 = row["details"]["int8"]
    search = int8["accuracy_aware"]
    assert search["budget"]["metric"] == "cosine" and search["budget_met"]
    assert "held out" in search["budget"]["data"] and int8["calibration_samples"] == 40 - search["budget"]["samples"]
    assert row["parity"]["cosine_min"] >= 0.98 and len(row["parity"]["outputs"]) == 2


def test_accuracy_aware_tflite_int8_with_int8_inputs_and_outputs(cli, int8_hostile_keras: Path,
                                                                 tmp_path: Path) -> None:
    """The deny-list path with int8 I/O (the debugger's fully_quantize): int8 tensors at the edges, float inside
    where the search kept layers, accuracy within the budget."""
    out = tmp_path / "out"
    res = cli("convert", int8_hostile_keras, "--to", "tflite:int8", "-O", "tflite.int8_io=true", "--calibration",
              ROOT / "calibration_data/digits/calib", "--validation", DIGITS_VAL, "-o", out, "--no-latency")
    assert res.exit_code == 0, res.output
    row = res.report(out)["artifacts"][0]
    assert row["status"] == "passed" and row["accuracy_drop"] <= 0.01, row
    assert row["details"]["int8"]["accuracy_aware"]["float_layers"]
    interp = Interpreter(model_path=str(out / row["path"]))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
