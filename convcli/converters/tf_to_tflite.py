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

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from convcli.converters.tf_to_onnx import run_tf_child, source_model
from convcli.core.artifact import Artifact
from convcli.core.cache import make_key
from convcli.core.errors import ConversionError
from convcli.core.fsutil import sha256_tree
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.step import Converter, StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.budget import BudgetOptions, split_calibration
from convcli.parity.compare import DEFAULT_TOLERANCES, compare_outputs
from convcli.parity.data import DataSet, random_data
from convcli.runners.tflite_runner import op_histogram

PRECISIONS = ("fp32", "fp16", "int8")
# TFLite ops that only move or select data: keeping one in float saves no accuracy.
DATA_MOVEMENT_OPS = {"RESHAPE", "MAX_POOL_2D", "CONCATENATION", "TRANSPOSE", "SQUEEZE", "PAD", "SLICE",
                     "STRIDED_SLICE", "GATHER", "QUANTIZE", "DEQUANTIZE", "SPLIT", "PACK", "UNPACK", "RELU", "RELU6"}
MAX_CANDIDATES = 12  # the debugger's worst layers the search tries (each try is a full conversion)
FLOAT_PRECISIONS = ("fp32", "fp16")  # written by one shared child run; int8 runs its own (calibration data)
# Output folders of this process's converter runs, by run key (source content, input specs, versions).
_RUNS: dict[str, Path] = {}


class TfliteTfOptions(BudgetOptions):
    """Options of TfliteFromKeras / TfliteFromSavedmodel. The budget options apply to int8 (accuracy-aware:
    TensorFlow's QuantizationDebugger ranks the layers, the most harmful are kept in float)."""

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
    """In the child: convert with TFLiteConverter once per precision into ``args["out"]``; int8 with a
    budget runs the accuracy-aware search too (``int8_search``)."""
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

    def make_converter() -> Any:
        if keras_model is not None:
            return tf.lite.TFLiteConverter.from_keras_model(keras_model)
        return tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=["serving_default"])

    for precision in args["precisions"]:
        target = out / f"model_{precision}.tflite"
        if precision == "int8":
            int8 = Int8Converter(tf, make_converter, specs, args)
            if args.get("budget"):  # its first trial is the full-integer model
                int8_search(int8, target, specs, args, out / "int8_search.json")
            else:
                target.write_bytes(int8.convert([]))
            continue
        converter = make_converter()
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        target.write_bytes(converter.convert())


class Int8Converter:
    """Full-integer TFLiteConverter runs on the calibration data, with some nodes optionally kept in float.

    Without a deny-list: ``TFLITE_BUILTINS_INT8`` only (an op without an int8 kernel fails the conversion). With
    one: TensorFlow's QuantizationDebugger converts (``denylisted_nodes``, the op output tensor names it lists),
    and float builtins are allowed for the denied nodes.
    """

    def __init__(self, tf: Any, make_converter: Any, specs: list[TensorSpec], args: dict[str, Any]) -> None:
        self.tf, self.make_converter, self.int8_io = tf, make_converter, bool(args["int8_io"])
        calib = np.load(args["calibration"])
        self.arrays = [calib[s.name] for s in specs]

    def representative(self) -> Any:
        for i in range(self.arrays[0].shape[0]):
            yield [a[i : i + 1] for a in self.arrays]

    def _converter(self, ops: list[Any]) -> Any:
        tf = self.tf
        converter = self.make_converter()
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = self.representative
        converter.target_spec.supported_ops = ops
        io_type = tf.int8 if self.int8_io else tf.float32
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
        return converter

    def convert(self, denied: list[str]) -> bytes:
        tf = self.tf
        if not denied:
            return bytes(self._converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert())
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denied, fully_quantize=self.int8_io)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=self._converter(ops), debug_dataset=self.representative, debug_options=options)
        return bytes(debugger.get_nondebug_quantized_model())

    def layer_errors(self) -> list[dict[str, Any]]:
        """Per quantized op, TensorFlow's own error measure: RMSE of (dequantized - float) output over its
        quantization scale (the debugger's tutorial metric), on the calibration data, worst first."""
        import csv
        import io

        tf = self.tf
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        debugger = tf.lite.experimental.QuantizationDebugger(converter=self._converter(ops),
                                                             debug_dataset=self.representative)
        debugger.run()
        buffer = io.StringIO()
        debugger.layer_statistics_dump(buffer)
        rows = []
        for row in csv.DictReader(io.StringIO(buffer.getvalue())):
            scale, mse = float(row.get("scale") or 0.0), float(row.get("mean_squared_error") or 0.0)
            error = float(np.sqrt(mse) / scale) if scale > 0 else 0.0
            rows.append({"layer": row["tensor_name"], "op": row["op_name"], "rmse_over_scale": round(error, 4)})
        return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def int8_search(int8: Int8Converter, target: Path, specs: list[TensorSpec], args: dict[str, Any],
                result_path: Path) -> None:
    """Accuracy-aware int8 in the child: score the full-integer model on the budget data; when it misses the
    budget, rank the quantized ops by the debugger's error and keep the most harmful in float
    (``FloatFallbackSearch``, the ONNX step's forward selection) until the budget is met or a limit is hit.
    ``target`` ends up holding the best model; the search's record goes to ``result_path``."""
    from convcli.parity.budget import Budget, FloatFallbackSearch, score_outputs
    from convcli.runners.tflite_runner import TfliteSession

    spec = args["budget"]
    data = np.load(spec["data"])
    budget_data = DataSet({s.name: data[f"in:{s.name}"] for s in specs},
                          data.get("labels"), spec["description"])
    refs = [data[k] for k in sorted((k for k in data if k.startswith("ref:")), key=lambda k: int(k[4:]))]
    budget = Budget(spec["metric"], spec["limit"], budget_data, refs, spec.get("ref_accuracy"))
    names = list(args["output_names"])

    counter = iter(range(1_000_000))

    def measure(layers: list[str]) -> tuple[Any, Path]:
        file = target.with_name(f"trial_{next(counter)}.tflite")
        file.write_bytes(int8.convert(layers))
        art = Artifact(format="tflite", path=file, inputs=specs, output_names=names, precision="int8", files=[file])
        session = TfliteSession(art, args["threads"])
        try:
            got = session(budget_data.inputs)
        finally:
            session.close()
        return score_outputs(budget, names, got), file

    first_score, first = measure([])
    steps: list[dict[str, Any]] = [{"action": "quantize all", "float_layers": [], **first_score.as_dict(),
                                    "budget_met": budget.met(first_score)}]
    search = FloatFallbackSearch(budget, first, first_score, args["max_trials"],
                                 time.perf_counter() + 0.6 * args["timeout_s"])
    sensitivity: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    if not budget.met(first_score) and args["max_float_layers"] > 0:
        errors = int8.layer_errors()
        candidates = [e["layer"] for e in errors if e["rmse_over_scale"] > 0 and e["op"] not in DATA_MOVEMENT_OPS]
        search.run(candidates[:MAX_CANDIDATES], args["max_float_layers"], measure, steps, sensitivity,
                   {e["layer"]: e["op"] for e in errors})
    target.write_bytes(search.best_path.read_bytes())
    for trial in target.parent.glob("trial_*.tflite"):
        trial.unlink()
    result = {"budget": {"metric": budget.metric, "limit": budget.limit, "data": budget_data.description,
                         "samples": len(budget_data), "float_accuracy": budget.ref_accuracy},
              "steps": steps, "sensitivity": sensitivity, "debugger_layer_errors": errors,
              "float_layers": search.best_layers, "result": search.best_score.as_dict(),
              "budget_met": budget.met(search.best_score), "stopped": search.note, "trials": search.trials + 1}
    result_path.write_text(json.dumps(result))


def calibration_file(specs: list[TensorSpec], calibration: DataSet, samples: int | None,
                     workdir: Path) -> tuple[Path, DataSet]:
    """The calibration samples as one .npz keyed by input name (the child's representative dataset).

    Raises ConversionError when the data does not fit an input (the native converter keeps TensorFlow's own
    NHWC shapes).
    """
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
    uses_calibration = True  # int8 calibrates on it
    uses_validation = True  # the int8 accuracy budget is measured on it

    @classmethod
    def data_inputs(cls, options: Any) -> tuple[bool, bool]:
        """Only int8 reads the data: fp32/fp16 files stay cached when the calibration or labelled set changes."""
        int8 = options.precision == "int8"
        return int8, int8 and options.max_accuracy_drop is not None

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
        budget: dict[str, Any] | None = None
        if int8:  # checked first: no calibration data must fail before a TensorFlow import
            calibration, check, _ = split_calibration(ctx.require_calibration(f"tflite int8 ({self.name})"),
                                                      ctx.validation, opts, opts.calibration_samples)
            calib = calibration_file(artifact.inputs, calibration, None, ctx.workdir)
        model = source_model(artifact, ctx.threads)  # once: the int8 budget's references and the check below
        if int8:
            budget = self._budget(model, artifact, ctx, opts, check)
        key = make_key("tf-tflite", artifact.format, sha256_tree(source_path),
                       [s.model_dump() for s in artifact.inputs],
                       {m: package_version(m) for m in ("tensorflow", "keras", "tf_keras")},
                       sha256_tree(calib[0]) if calib else None,
                       opts.model_dump(exclude={"timeout_s"}) if int8 else None,
                       sha256_tree(Path(budget["data"])) if budget else None)
        wanted = f"model_{opts.precision}.tflite"
        earlier = _RUNS.get(key)
        if earlier is not None and (earlier / wanted).is_file():
            produced, run_note = earlier / wanted, f"reused the converter run of an earlier step ({earlier})"
        else:
            out = ctx.workdir / "tflite"
            args = {"kind": artifact.format, "path": str(source_path), "out": str(out), "threads": ctx.threads,
                    "inputs": [s.model_dump() for s in artifact.inputs],
                    "precisions": [opts.precision] if int8 else list(FLOAT_PRECISIONS),
                    "calibration": str(calib[0]) if calib else None, "int8_io": opts.int8_io, "budget": budget,
                    "output_names": list(artifact.output_names), "max_float_layers": opts.max_float_layers,
                    "max_trials": opts.max_trials, "timeout_s": opts.timeout_s}
            run_tf_child("convcli.converters.tf_to_tflite:child_to_tflite", args, "TFLiteConverter", ctx.workdir,
                         opts.timeout_s, hint="an op TFLite's builtin (int8) set lacks? try --to tflite@TfliteFromOnnx")
            produced, run_note = out / wanted, "ran"
            if not produced.is_file():
                raise ConversionError(f"TFLiteConverter exited without writing {wanted}")
            _RUNS[key] = out
        search = self._search_result(produced.parent / "int8_search.json", opts) if budget else None
        final = ctx.workdir / "model.tflite"
        final.write_bytes(produced.read_bytes())
        tflite = Artifact(format="tflite", path=final, inputs=list(artifact.inputs),
                          output_names=list(artifact.output_names), precision=opts.precision, files=[final])
        entry = "from_keras_model" if artifact.format == "keras" else "from_saved_model"
        details: dict[str, Any] = {
            "converter": f"tf.lite.TFLiteConverter.{entry} (TensorFlow {package_version('tensorflow')})",
            "precision": opts.precision, "run": run_note, "fixed shapes": fixed,
            "input_layout": "as the source: TensorFlow's input shapes kept ("
                            + ", ".join(s.text() for s in artifact.inputs) + ")",
            "ops": op_histogram(final), "check_vs_source": check_vs_source(model, tflite, ctx.threads, opts.precision),
        }
        if opts.precision == "fp16":
            details["fp16"] = "float16 weights (Optimize.DEFAULT, supported_types=[float16]), float32 I/O"
        if calib is not None:
            details["int8"] = {
                "calibration_data": calib[1].description, "calibration_samples": len(calib[1]),
                "representative_dataset": "the calibration samples, one per call, in the source's layout",
                "supported_ops": "TFLITE_BUILTINS_INT8" if not (search and search["float_layers"])
                else "TFLITE_BUILTINS_INT8 + TFLITE_BUILTINS (layers kept in float)", "int8_io": opts.int8_io,
                "accuracy_aware": search if search is not None else "off (no budget to measure, or "
                                                                      "max_float_layers=0 with keep_best)",
            }
        return tflite.derive(details=details)

    def _budget(self, model: Any, artifact: Artifact, ctx: StepContext, opts: TfliteTfOptions,
                check: DataSet | None) -> dict[str, Any] | None:
        """The budget data with the source's outputs on it, saved for the child; None without a budget."""
        from convcli.parity.compare import accuracy

        if opts.max_float_layers == 0 and opts.on_budget_miss == "keep_best":
            return None
        labelled = ctx.validation if opts.max_accuracy_drop is not None else None
        if labelled is not None and labelled.labels is not None and len(labelled):
            data, metric, limit = labelled, "accuracy_drop", opts.max_accuracy_drop
        elif check is not None and opts.min_cosine is not None:
            data, metric, limit = check, "cosine", opts.min_cosine
        else:
            return None
        refs = model([data.inputs[s.name] for s in artifact.inputs], artifact.inputs)
        arrays = {f"in:{s.name}": data.inputs[s.name] for s in artifact.inputs}
        arrays.update({f"ref:{i}": r for i, r in enumerate(refs)})
        if data.labels is not None and metric == "accuracy_drop":
            arrays["labels"] = data.labels
        path = ctx.workdir / "budget.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        ref_accuracy = accuracy(refs[0], data.labels) if metric == "accuracy_drop" and data.labels is not None \
            else None
        return {"data": str(path), "metric": metric, "limit": limit, "description": data.description,
                "ref_accuracy": ref_accuracy}

    def _search_result(self, path: Path, opts: TfliteTfOptions) -> dict[str, Any]:
        """The child's accuracy-aware record; a missed budget fails the step unless on_budget_miss=keep_best."""
        result: dict[str, Any] = json.loads(path.read_text())
        if not result["budget_met"] and opts.on_budget_miss == "error":
            best = result["result"]
            measured = (f"best accuracy drop {best['accuracy_drop'] * 100:.2f} points"
                        if best.get("accuracy_drop") is not None else f"best cosine {best.get('cosine_min')}")
            raise ConversionError(
                f"{self.name} int8 missed its budget ({result['budget']['metric']} {result['budget']['limit']}): "
                f"{measured} with {len(result['float_layers'])} layer(s) kept in float "
                f"(max_float_layers={opts.max_float_layers})",
                hint=f"raise -O {self.name}.max_float_layers, loosen max_accuracy_drop/min_cosine, or "
                     "on_budget_miss=keep_best to ship the best model")
        return result


class TfliteFromSavedmodel(TfliteFromKeras):
    """SavedModel (serving_default) -> .tflite with tf.lite.TFLiteConverter.from_saved_model: fp32, fp16, int8."""

    name = "TfliteFromSavedmodel"
    source = "savedmodel"


def register(registry: Registry) -> None:
    for step in (TfliteFromKeras, TfliteFromSavedmodel):
        registry.add_step(step)

