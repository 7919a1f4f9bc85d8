"""Keras and SavedModel -> TFLite with TensorFlow's own converter (``tf.lite.TFLiteConverter``).

This is the native TFLite edge for TensorFlow sources: cheaper in the plan than OnnxFromKeras +
TfliteFromOnnx (onnx2tf), so ``--to tflite`` takes it; ``--to tflite@TfliteFromOnnx`` still asks for the
onnx2tf path, and both rows can sit in one report.

* Keras models go through ``from_keras_model``, SavedModels through ``from_saved_model`` (serving_default).
  ``from_concrete_functions`` is never used: with Keras 3 it produces a model that outputs NaN.
* fp16 is TensorFlow's float16 weight quantization (``Optimize.DEFAULT`` + ``supported_types=[float16]``):
  fp16 weights dequantized at load, float32 inputs and outputs.
* int8 is full-integer post-training quantization: a representative dataset made of the job's
  ``--calibration`` samples (never random data; without them the step fails before converting), builtin int8
  kernels only (``TFLITE_BUILTINS_INT8``: an op without one fails the conversion instead of silently staying
  float), float32 inputs/outputs by default or int8 with ``int8_io`` (the LiteRT runner quantizes feeds and
  dequantizes outputs with each tensor's scale and zero point, so parity compares floats).
* The converter keeps TensorFlow's input shapes and names (an NHWC input stays NHWC; the batch stays
  dynamic in the signature, 1 in the tensor, which the LiteRT runner handles by running batch 1 chunks), so
  the artifact takes the same feed as the source: no layout mapping.
* TFLite wants static sizes for every dim but the batch: a Keras model with other open dims is re-wrapped
  on inputs of the example sizes (``details["fixed shapes"]``); a SavedModel with such dims is refused with
  a hint (``--input`` cannot re-trace a SavedModel signature here).

The conversion runs in a child process (MLIR conversion failures can abort the process); one child writes
the fp32 and the fp16 file, and a later step of this process with the same source reuses that folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.converters.tf_to_onnx import run_tf_child, source_model
from convcli.core.artifact import Artifact
from convcli.core.cache import make_key
from convcli.core.errors import ConversionError
from convcli.core.fsutil import sha256_tree
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.step import Converter, StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.compare import DEFAULT_TOLERANCES, compare_outputs
from convcli.parity.data import DataSet, random_data

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_PRECISIONS = ("fp32", "fp16")  # written by one shared child run; int8 runs its own (calibration data)
# Output folders of this process's converter runs, by run key (source content, input specs, versions).
_RUNS: dict[str, Path] = {}


class TfliteTfOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="fp32, fp16 weights (float32 I/O), or full-integer int8 calibrated on "
                                    "--calibration data. Set by the target's precision.")
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds the TFLiteConverter child may run.")
    int8_io: bool = Field(default=False, description="int8 only: int8 inputs and outputs; default: float32 "
                                                     "inputs/outputs with int8 inside.")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="int8 only: calibrate on the first N calibration samples; default: all "
                                        "the job loaded (--calibration-samples).")


def open_dims(specs: list[TensorSpec]) -> dict[str, dict[str, int]]:
    """Per input, the dynamic dims other than the batch, with the example size they would be fixed at."""
    found: dict[str, dict[str, int]] = {}
    for s in specs:
        for i, d in enumerate(s.shape):
            if d.name and i > 0:
                found.setdefault(s.name, {})[d.name] = d.size
    return found


def child_to_tflite(args: dict[str, Any]) -> None:
    """In the child: convert with TFLiteConverter once per precision into ``args["out"]``."""
    from convcli.sources.tf_sources import import_tensorflow, load_tf_model

    tf = import_tensorflow(args["threads"])
    path = Path(args["path"])
    specs = [TensorSpec.model_validate(s) for s in args["inputs"]]
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    model = load_tf_model(args["kind"], path)
    keras_model = None
    if args["kind"] == "keras":
        keras_model = model.obj
        if open_dims(specs):  # re-wrap on inputs of static (example) sizes; the batch stays open
            keras = require(model.framework)
            inputs = [keras.Input(shape=tuple(s.example_shape()[1:]), name=s.name, dtype=s.dtype) for s in specs]
            packed = tf.nest.pack_sequence_as(keras_model.input, inputs)
            keras_model = keras.Model(inputs, keras_model(packed))
    for precision in args["precisions"]:
        if keras_model is not None:
            converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        else:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=["serving_default"])
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        if precision == "int8":
            import numpy as np

            calib = np.load(args["calibration"])
            arrays = [calib[s.name] for s in specs]

            def representative(arrays: list[Any] = arrays) -> Any:
                for i in range(arrays[0].shape[0]):
                    yield [a[i : i + 1] for a in arrays]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = tf.int8 if args["int8_io"] else tf.float32
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        (out / f"model_{precision}.tflite").write_bytes(converter.convert())


def calibration_file(specs: list[TensorSpec], calibration: DataSet | None, samples: int | None,
                     workdir: Path) -> tuple[Path, DataSet]:
    """The calibration samples as one .npz keyed by input name (the child's representative dataset).

    Raises ConversionError without calibration data (int8 is never calibrated on random data) or when the
    data does not fit an input (the native converter keeps TensorFlow's own NHWC shapes).
    """
    if calibration is None or len(calibration) == 0:
        raise ConversionError("tflite int8 needs calibration data: pass --calibration (a folder of images, or "
                              ".npy/.npz of preprocessed inputs)",
                              hint="full-integer quantization is calibrated on real inputs, never on random data")
    data = calibration.take(samples)
    arrays: dict[str, np.ndarray] = {}
    for s in specs:
        arr = data.inputs.get(s.name)
        if arr is None:
            raise ConversionError(f"calibration data {data.description} has no array for input {s.name}")
        want = tuple(s.example_shape()[1:])
        if tuple(arr.shape[1:]) != want:
            raise ConversionError(f"calibration data for {s.name} has sample shape {tuple(arr.shape[1:])}; the "
                                  f"TFLite model takes {want}", hint="check the data's layout (TensorFlow "
                                                                    "sources take NHWC images)")
        arrays[s.name] = np.ascontiguousarray(arr, dtype=np.dtype(s.dtype))
    path = workdir / "calibration.npz"
    np.savez(path, **arrays)
    return path, data


def tflite_ops(path: Path) -> dict[str, int]:
    """Operator histogram of a .tflite file (empty when LiteRT cannot list it)."""
    from convcli.runners.tflite_runner import native_stderr

    try:
        litert = require("ai_edge_litert.interpreter")
        with native_stderr():
            ops = litert.Interpreter(model_path=str(path))._get_ops_details()
    except Exception:
        return {}
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


def check_vs_source(model: Any, tflite: Artifact, threads: int, precision: str) -> dict[str, Any]:
    """LiteRT against TensorFlow on two seeded samples (recorded; the job's parity check judges)."""
    from convcli.runners.tflite_runner import TfliteSession

    data = random_data(tflite.inputs, 2, seed=3)
    arrays = [data.inputs[s.name] for s in tflite.inputs]
    ref = model(arrays, tflite.inputs)
    session = TfliteSession(tflite, threads)
    try:
        got = session(data.inputs)
        matched = dict(session.matched_by)
        description = session.description
    finally:
        session.close()
    result = compare_outputs(tflite.output_names, ref, got, DEFAULT_TOLERANCES[precision])
    return {"samples": 2, "max_abs_err": result.max_abs_err, "passed": result.passed, "matched_by": matched,
            "runner": description}


class TfliteFromKeras(Converter):
    """Keras (.keras / .h5) -> .tflite with tf.lite.TFLiteConverter.from_keras_model: fp32, fp16 or int8."""

    name = "TfliteFromKeras"
    source = "keras"
    target = "tflite"
    summary = ("tf.lite.TFLiteConverter (child process), TensorFlow's layout and names kept; fp16 weights, "
               "full-integer int8")
    requires = ("tensorflow", "ai_edge_litert")
    cost = 1.0  # below OnnxFromKeras + TfliteFromOnnx (2.0): the native converter is the default path
    precisions = PRECISIONS
    Options = TfliteTfOptions
    uses_calibration = True  # int8 calibrates on it (part of the cache key)

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        opts: TfliteTfOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        source_path = Path(artifact.path).resolve()
        fixed = open_dims(artifact.inputs)
        if fixed and artifact.format == "savedmodel":
            dims = "; ".join(f"{n}: {', '.join(d)}" for n, d in fixed.items())
            raise ConversionError(f"TFLite needs static sizes except the batch; the SavedModel's inputs leave "
                                  f"{dims} open", hint="use --to tflite@TfliteFromOnnx (it fixes the sizes), or "
                                                       "re-export the SavedModel with static sizes")
        int8 = opts.precision == "int8"
        calib: tuple[Path, DataSet] | None = None
        if int8:  # checked first: no calibration data must fail before a TensorFlow import
            calib = calibration_file(artifact.inputs, ctx.calibration, opts.calibration_samples, ctx.workdir)
        key = make_key("tf-tflite", artifact.format, sha256_tree(source_path),
                       [s.model_dump() for s in artifact.inputs],
                       {m: package_version(m) for m in ("tensorflow", "keras", "tf_keras")},
                       sha256_tree(calib[0]) if calib else None, opts.int8_io if int8 else None)
        wanted = f"model_{opts.precision}.tflite"
        earlier = _RUNS.get(key)
        if earlier is not None and (earlier / wanted).is_file():
            produced, run_note = earlier / wanted, f"reused the converter run of an earlier step ({earlier})"
        else:
            out = ctx.workdir / "tflite"
            args = {"kind": artifact.format, "path": str(source_path), "out": str(out), "threads": ctx.threads,
                    "inputs": [s.model_dump() for s in artifact.inputs],
                    "precisions": [opts.precision] if int8 else list(FLOAT_PRECISIONS),
                    "calibration": str(calib[0]) if calib else None, "int8_io": opts.int8_io}
            run_tf_child("convcli.converters.tf_to_tflite:child_to_tflite", args, "TFLiteConverter", ctx.workdir,
                         opts.timeout_s, hint="an op TFLite's builtin (int8) set lacks? try --to tflite@TfliteFromOnnx")
            produced, run_note = out / wanted, "ran"
            if not produced.is_file():
                raise ConversionError(f"TFLiteConverter exited without writing {wanted}")
            _RUNS[key] = out
        final = ctx.workdir / "model.tflite"
        final.write_bytes(produced.read_bytes())
        tflite = Artifact(format="tflite", path=final, inputs=list(artifact.inputs),
                          output_names=list(artifact.output_names), precision=opts.precision, files=[final])
        model = source_model(artifact, ctx.threads)
        entry = "from_keras_model" if artifact.format == "keras" else "from_saved_model"
        details: dict[str, Any] = {
            "converter": f"tf.lite.TFLiteConverter.{entry} (TensorFlow {package_version('tensorflow')})",
            "precision": opts.precision, "run": run_note, "fixed shapes": fixed,
            "input_layout": "as the source: TensorFlow's input shapes kept ("
                            + ", ".join(s.text() for s in artifact.inputs) + ")",
            "ops": tflite_ops(final), "check_vs_source": check_vs_source(model, tflite, ctx.threads, opts.precision),
        }
        if opts.precision == "fp16":
            details["fp16"] = "float16 weights (Optimize.DEFAULT, supported_types=[float16]), float32 I/O"
        if calib is not None:
            details["int8"] = {
                "calibration_data": calib[1].description, "calibration_samples": len(calib[1]),
                "representative_dataset": "the calibration samples, one per call, in the source's layout",
                "supported_ops": "TFLITE_BUILTINS_INT8", "int8_io": opts.int8_io,
            }
        return tflite.derive(details=details)


class TfliteFromSavedmodel(TfliteFromKeras):
    """SavedModel (serving_default) -> .tflite with tf.lite.TFLiteConverter.from_saved_model: fp32, fp16, int8."""

    name = "TfliteFromSavedmodel"
    source = "savedmodel"


def register(registry: Registry) -> None:
    for step in (TfliteFromKeras, TfliteFromSavedmodel):
        registry.add_step(step)

