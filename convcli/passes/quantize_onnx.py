"""ONNX fp32 -> INT8 with ONNX Runtime's quantizer, accuracy-aware: it measures itself against the float model
and keeps the most sensitive layers in float until a budget is met.

Static mode writes explicit QuantizeLinear/DequantizeLinear pairs (``QuantFormat.QDQ``), the form ONNX Runtime's
CPU kernels fuse and the only INT8 input TensorRT 11 accepts (it dropped implicit INT8 calibration). Dynamic mode
(``quantize_dynamic``) stores int8 weights and quantizes activations at run time: no calibration needed, the usual
choice for transformers over token ids, whose activation ranges vary per input.

Defaults, and why (measured on this project's 2-core AVX-512 VNNI CPU, docs in ENVIRONMENT.md):
- ``preprocess``: ``quant_pre_process`` (symbolic shape inference + ORT graph optimization) first. Without it a
  QDQ ResNet-18 ran slower than fp32 (25.8 vs 15.7 ms); with it 4.0 ms.
- ``activation_type=uint8`` (weights int8): x86 int8 GEMM kernels multiply unsigned activation bytes by signed
  weight bytes (VNNI ``vpdpbusd``); signed activations take a slower path: a ResNet-18 ran 3x slower with them,
  about as slow as fp32. TensorRT needs signed, symmetric activations (zero point 0) and more: ``qdq_form=tensorrt``
  (what ``--to tensorrt:int8`` plans) writes int8 symmetric activations, per-channel weights kept float behind
  Q/DQ pairs and float biases; ORT's default form stores int32 biases behind a DequantizeLinear, which
  TensorRT's ONNX parser rejects.
- ``per_channel=true``: one weight scale per output channel. On a transformer encoder it lifted cosine from 0.96
  (per-tensor) to 0.993 at a small cost in speed; on all-MiniLM-L6-v2 with real sentences (dynamic INT8, AMD EPYC
  with AVX-512 VNNI) from 0.939 to 0.9906 at no cost (docs/benchmarks.md).
- Attention-mask arithmetic is never quantized (``guard_attention_mask``): an Add/Mul/Where fed from a non-float
  graph input (through casts and reshapes, not through an embedding Gather) or from a constant <= -1e4 mixes
  -inf-like values with activations; one static quantization that did quantize it fell to cosine 0.39.

Accuracy-aware loop. After quantizing, the result is measured against the float ONNX model: top-1 accuracy drop
on the labelled set (``--validation``) when there is one and the model is a classifier, else the lowest
per-sample cosine on held-out calibration samples. If the budget is missed, the sensitivity of every quantized
layer (Conv, Gemm, MatMul, Add, ...; not pure data movement) is measured by quantizing with that one layer left
in float (calibration ranges are computed once and reused); then the most sensitive layers are kept in float one
more at a time, re-quantizing each time, until the budget is met or ``max_float_layers`` is reached. Every step
is recorded. When the budget is never met the step fails (``on_budget_miss=error``, the default: an INT8 model
known to miss the user's own budget is not shipped as if it were fine) with the best result in the message;
``on_budget_miss=keep_best`` ships the best model instead and records ``budget_met: false``, leaving the verdict
to the report's gates.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.isolation import run_python
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.step import Pass, StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.budget import (
    Budget,
    BudgetOptions,
    FloatFallbackSearch,
    Score,
    score_outputs,
    split_calibration,
)
from convcli.parity.compare import accuracy
from convcli.parity.data import DataSet
from convcli.passes.fp16_onnx import check_data, fixed_batch, op_counts, ort_outputs

# Quantized ops that only move or select data: leaving one in float saves no accuracy, so they are not
# candidates for the float fallback.
DATA_MOVEMENT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Pad", "Concat",
                 "MaxPool", "Relu", "Clip", "Where", "TopK", "GatherElements", "ArgMax", "QuantizeLinear",
                 "DequantizeLinear", "DynamicQuantizeLinear", "Cast", "Identity", "Shape"}
# Ops through which a tensor derived from an integer/bool graph input stays "mask-like" (no learned transform).
MASK_PATH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Sub", "Mul", "Not", "Equal", "Less",
             "Greater", "LessOrEqual", "GreaterOrEqual", "Where", "Neg", "Tile", "Concat", "Slice", "And", "Or",
             "Add", "Identity", "ConstantOfShape"}
MASK_CONSUMERS = {"Add", "Mul", "Where", "Sub"}
MASK_CONSTANT = -1e4
CALIBRATION_BATCH = 16
PREPROCESS_CHILD = """
import json, logging
logging.disable(logging.WARNING)
from onnxruntime.quantization.shape_inference import quant_pre_process
errors, done = [], None
for skip in (False, True):
    try:
        quant_pre_process({src!r}, {out!r}, skip_symbolic_shape=skip)
        done = "plain" if skip else "symbolic"
        break
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        errors.append((type(exc).__name__ + ": " + (lines[0] if lines else ""))[:160])
print("convcli-preprocess:" + json.dumps({{"done": done, "errors": errors}}))
"""


class Int8Options(BudgetOptions):
    """Options of QuantizeOnnxInt8 (``-O QuantizeOnnxInt8.KEY=VALUE``)."""

    mode: Literal["auto", "static", "dynamic"] = Field(
        default="auto", description="static (calibrated QDQ), dynamic (int8 weights, activations quantized at run "
                                    "time) or auto: dynamic for integer (token id) inputs or transformer graphs "
                                    "without Conv, static otherwise.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="How static mode turns calibration activations into ranges.")
    percentile: float = Field(default=99.999, gt=90.0, le=100.0,
                              description="Percentile of |activation| kept by calibration_method=percentile.")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="Calibrate on the first N calibration samples; default: all loaded "
                                        "(--calibration-samples) except those held out for the cosine check.")
    per_channel: bool = Field(default=True, description="One weight scale per output channel.")
    activation_type: Literal["uint8", "int8"] = Field(
        default="uint8", description="Activation integer type: uint8 is the fast one on x86 CPUs; TensorRT "
                                     "needs int8.")
    symmetric_activations: bool | None = Field(
        default=None, description="Zero point 0 for activations; default: true for int8 (TensorRT), false for "
                                  "uint8.")
    qdq_form: Literal["onnxruntime", "tensorrt"] = Field(
        default="onnxruntime", description="static mode: onnxruntime (int8 weights stored quantized, int32 biases) "
                                           "or tensorrt (what TensorRT's parser builds from: symmetric int8 "
                                           "activations, per-channel weights kept float with Q/DQ pairs, float "
                                           "biases; needs activation_type=int8).")
    preprocess: bool = Field(default=True, description="Run onnxruntime's quant_pre_process first.")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names never quantized.")
    exclude_op_types: list[str] = Field(default_factory=list, description="Op types never quantized.")
    quantize_activation_matmuls: bool = Field(
        default=False, description="dynamic mode: also quantize MatMuls of two activations (attention scores and "
                                   "context); off by default: their per-tensor run-time ranges cost the most "
                                   "accuracy and they hold no weights to shrink.")
    guard_attention_mask: bool = Field(
        default=True, description="Never quantize attention-mask arithmetic (see the step's documentation).")

    @model_validator(mode="after")
    def _tensorrt_form(self) -> Int8Options:
        if self.qdq_form == "tensorrt":
            if self.mode == "dynamic":
                raise ValueError("qdq_form=tensorrt is static Q/DQ; mode=dynamic writes DynamicQuantizeLinear, "
                                 "which TensorRT does not build")
            if self.activation_type != "int8" or self.symmetric_activations is False:
                raise ValueError("qdq_form=tensorrt needs activation_type=int8 with symmetric activations "
                                 "(TensorRT quantizes with zero point 0)")
        return self

    @field_validator("calibration_method")
    @classmethod
    def _method_needs_static(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("mode") == "dynamic":
            raise ValueError("is for static mode; dynamic mode computes activation ranges at run time")
        return value

    @field_validator("percentile")
    @classmethod
    def _percentile_needs_method(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("calibration_method") != "percentile":
            raise ValueError("is used only with calibration_method=percentile")
        return value


@contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger on every call; the step records what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class _Reader:
    """CalibrationDataReader over a DataSet, in batches; a model with a fixed batch gets whole batches only."""

    def __init__(self, data: DataSet, batch: int, fixed: bool, types: dict[str, Any]) -> None:
        self.feeds = [{k: np.ascontiguousarray(v.astype(types.get(k, v.dtype), copy=False)) for k, v in f.items()}
                      for f in data.batches(batch) if not fixed or len(next(iter(f.values()))) == batch]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __len__(self) -> int:
        return len(self.feeds)


def is_transformer_like(model: Any) -> bool:
    """No Conv, and attention: a Softmax whose result a MatMul consumes (scores x values), or a fused attention op.
    A float-input classifier whose Softmax is its output stays "not transformer-like" (static INT8)."""
    ops = {n.op_type for n in model.graph.node}
    if "Conv" in ops:
        return False
    if ops & {"Attention", "MultiHeadAttention"}:
        return True
    softmax = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    return any(n.op_type == "MatMul" and any(i in softmax for i in n.input) for n in model.graph.node)


def integer_inputs(model: Any) -> list[str]:
    onnx = require("onnx")
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits and i.type.tensor_type.elem_type not in floats]


def activation_matmuls(model: Any) -> list[str]:
    """MatMul nodes whose inputs are both activations (neither is a weight, nor computed from weights alone)."""
    const = {i.name for i in model.graph.initializer}
    for node in model.graph.node:  # topological order: constants fold forward (Transpose of a weight, ...)
        if node.op_type == "Constant" or (node.input and all(not i or i in const for i in node.input)):
            const.update(node.output)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in const for i in n.input)]


def attention_mask_nodes(model: Any) -> list[str]:
    """Add/Mul/Where/Sub nodes that mix a mask-like tensor into activations (see the module doc)."""
    from onnx import numpy_helper

    mask = set(integer_inputs(model))
    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    extreme = set()
    for name, tensor in consts.items():
        try:
            arr = numpy_helper.to_array(tensor)
        except Exception:
            continue
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.min(arr)) <= MASK_CONSTANT:
            extreme.add(name)
    changed = True
    while changed:  # propagate mask-ness through mask-path ops whose inputs are all mask-like or constant
        changed = False
        for node in model.graph.node:
            if node.op_type not in MASK_PATH or all(o in mask for o in node.output):
                continue
            ins = [i for i in node.input if i]
            if ins and any(i in mask for i in ins) and all(i in mask or i in consts for i in ins):
                mask.update(node.output)
                changed = True
    guarded = []
    for node in model.graph.node:
        if node.op_type not in MASK_CONSUMERS:
            continue
        ins = [i for i in node.input if i]
        activations = [i for i in ins if i not in mask and i not in consts]
        if activations and any(i in mask or i in extreme for i in ins):
            guarded.append(node.name)
    return guarded


def ensure_node_names(model: Any) -> None:
    """Every node gets a unique name: exclusion lists and reports refer to nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def quantized_nodes(base: Any, quantized: Any, static: bool, excluded: set[str]) -> list[str]:
    """Names of ``base`` nodes the quantizer turned into integer arithmetic (static: nodes fed by a
    DequantizeLinear, except excluded ones, whose input may still be a shared quantized tensor)."""
    if static:
        dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        names = {n.name for n in quantized.graph.node if any(i in dq_outputs for i in n.input)}
        return [n.name for n in base.graph.node if n.name in names and n.name not in excluded]
    remaining = {(n.name, n.op_type) for n in quantized.graph.node}
    dq_outputs = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    dq_inputs = {i for n in quantized.graph.node if n.op_type == "DequantizeLinear" for i in n.input}
    # int8 embedding tables: the Gather reads the int8 table and a DequantizeLinear follows it (or, in other ORT
    # versions, precedes it). The Gather is the quantized node; its consumers see float values again.
    gathers = {n.name for n in quantized.graph.node if n.op_type == "Gather"
               and (any(o in dq_inputs for o in n.output) or any(i in dq_outputs for i in n.input))}
    return [n.name for n in base.graph.node if (n.name, n.op_type) not in remaining or n.name in gathers]


class QuantizeOnnxInt8(Pass):
    """fp32 ONNX -> INT8 ONNX (static QDQ or dynamic), accuracy-aware with a float fallback for sensitive layers."""

    name = "QuantizeOnnxInt8"
    source = "onnx"
    target = "onnx"
    summary = ("ONNX Runtime INT8: static QDQ (calibrated on --calibration) or dynamic, measured against the "
               "float model; sensitive layers kept in float until the accuracy/cosine budget is met")
    requires = ("onnx", "onnxruntime")
    output_precision = "int8"
    uses_calibration = True
    uses_validation = True
    Options = Int8Options

    @classmethod
    def needs_calibration(cls, options: BaseModel, inputs: list[TensorSpec] | None) -> bool | None:
        """static: yes; dynamic: no; auto: no for integer (token id) inputs, else yes (static is what auto picks
        for float inputs unless the exported graph is a Conv-free transformer, which is only known after the
        export; such a model without calibration data asks for ``mode=dynamic`` explicitly)."""
        mode = getattr(options, "mode", "auto")
        if mode != "auto":
            return mode == "static"
        if inputs is None:
            return None
        return not any(s.dtype not in ("float32", "float16", "float64") for s in inputs)

    @classmethod
    def data_inputs(cls, options: Any) -> tuple[bool, bool]:
        """The labelled set is read only for an accuracy budget: with max_accuracy_drop=null the step neither
        keys on it nor takes a tuning part of it (the whole set then measures accuracy)."""
        return cls.uses_calibration, options.max_accuracy_drop is not None

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        onnx = require("onnx")
        require("onnxruntime", "quantizing ONNX to int8")
        opts: Int8Options = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        started = time.perf_counter()
        source = onnx.load(str(artifact.path))
        mode, why = self._mode(source, opts)
        static = mode == "static"
        where = f"{self.name} ({mode})"
        calibration = ctx.require_calibration(
            f"{where}: static INT8", hint="calibration ranges come from real inputs, never from random data; or "
                                          "choose -O QuantizeOnnxInt8.mode=dynamic") if static else ctx.calibration
        if not static and "calibration_samples" in opts.model_fields_set:
            raise ConversionError(f"{where}: calibration_samples is for static mode; dynamic mode computes "
                                  "activation ranges at run time")

        work = ctx.workdir / "quantize"
        work.mkdir(parents=True, exist_ok=True)
        base_path, pre_note = self._preprocess(artifact.path, work, opts, ctx.timeout_s)
        base = onnx.load(str(base_path))
        ensure_node_names(base)
        base_path = work / "base.onnx"  # never write over the upstream step's file
        onnx.save(base, str(base_path))
        user_excluded = self._check_exclusions(base, opts, artifact.path.name)
        guarded = attention_mask_nodes(base) if static and opts.guard_attention_mask else []
        activation_mm = [] if static or opts.quantize_activation_matmuls else activation_matmuls(base)
        gemms = {n.name for n in base.graph.node if n.op_type == "Gemm"}
        op_types = self._op_types(static, opts)

        calib_set, check_set, held_out = self._split(calibration, ctx, opts, static)
        budget = self._budget(artifact, base_path, ctx, opts, check_set, held_out)
        types = self._input_types(base_path, ctx)
        fixed = fixed_batch(artifact)
        batch = fixed or CALIBRATION_BATCH
        cache = work / "calibration.json"

        counter = iter(range(1_000_000))

        def quantize(float_layers: list[str], tag: str) -> Path:
            out = work / f"{tag}{next(counter)}.onnx"
            exclude = {*user_excluded, *guarded, *activation_mm, *float_layers}
            # the dynamic quantizer rewrites a Gemm as "<name>_MatMul" + Add and matches exclusions on that name
            exclude = sorted(exclude | {f"{n}_MatMul" for n in exclude & gemms})
            self._quantize(base_path, out, static, opts, op_types, exclude, calib_set, batch, fixed is not None, types,
                           cache, where)
            return out

        def score(path: Path) -> tuple[Score, Path]:
            return self._score(path, budget, ctx, artifact), path

        first = quantize([], "q0")
        first_model = onnx.load(str(first), load_external_data=False)
        always = {*user_excluded, *guarded, *activation_mm}
        quantized = quantized_nodes(base, first_model, static, always)
        if not quantized:
            raise ConversionError(f"{where}: ONNX Runtime quantized no node of {artifact.path.name}",
                                  hint="check exclude_nodes/exclude_op_types; ops it can quantize: Conv, Gemm, "
                                       "MatMul, ...")
        ops_by_name = {n.name: n.op_type for n in base.graph.node}
        first_score, _ = score(first)
        steps: list[dict[str, Any]] = [{"action": "quantize all", "float_layers": [], **first_score.as_dict(),
                                        "budget_met": budget.met(first_score)}]
        search = FloatFallbackSearch(budget, first, first_score, opts.max_trials, started + 0.8 * ctx.timeout_s)
        sensitivity: list[dict[str, Any]] = []
        if not budget.met(first_score) and opts.max_float_layers > 0 and budget.metric != "none":
            candidates = [n for n in quantized if ops_by_name.get(n) not in DATA_MOVEMENT]
            search.run(candidates, opts.max_float_layers, lambda layers: score(quantize(layers, "trial")), steps,
                       sensitivity, ops_by_name)
        best_path, best_score, best_layers = search.best_path, search.best_score, search.best_layers
        stopped = search.note
        budget_met = budget.met(best_score)
        final_model = onnx.load(str(best_path), load_external_data=False)
        final_quantized = quantized_nodes(base, final_model, static, {*always, *best_layers})
        details: dict[str, Any] = {
            "mode": mode, "mode_reason": why,
            "format": "QDQ (QuantizeLinear/DequantizeLinear)" if static else "dynamic (IntegerOps)",
            "weight_type": "int8", "per_channel": opts.per_channel,
            "preprocess": pre_note,
            "calibration": self._calibration_details(static, opts, calib_set, calibration),
            "excluded": {"user_nodes": user_excluded, "op_types": opts.exclude_op_types,
                         "attention_mask_guard": guarded, "activation_matmuls": activation_mm},
            "nodes_quantized": len(final_quantized),
            "quantized_ops": dict(sorted(Counter(ops_by_name[n] for n in final_quantized).items())),
            "ops_after": op_counts(final_model),
            "budget": {"metric": budget.metric, "limit": budget.limit,
                       "data": budget.data.description if budget.data is not None else None,
                       "samples": len(budget.data) if budget.data is not None else 0,
                       "held_out_from_calibration": held_out if budget.metric == "cosine" else None,
                       "float_accuracy": budget.ref_accuracy},
            "steps": steps,
            "sensitivity": sensitivity,
            "float_layers": best_layers,
            "float_layer_ops": [ops_by_name.get(n) for n in best_layers],
            "result": best_score.as_dict(),
            "budget_met": budget_met,
            "qdq_form": opts.qdq_form if static else None,
            "tensorrt_explicit_qdq": static and opts.qdq_form == "tensorrt",
            "seconds": round(time.perf_counter() - started, 2),
        }
        if static:
            details["activation_type"] = opts.activation_type
            details["symmetric_activations"] = self._symmetric(opts)
        if stopped:
            details["search_note"] = stopped
        if not budget_met and opts.on_budget_miss == "error":
            kept = ", ".join(best_layers) or "none"
            raise ConversionError(
                f"{where}: INT8 missed its budget: best {budget.text(best_score)} with {len(best_layers)} layer(s) "
                f"kept in float ({kept}; max_float_layers={opts.max_float_layers})",
                hint="raise -O QuantizeOnnxInt8.max_float_layers or loosen max_accuracy_drop/min_cosine, try "
                     "calibration_method=entropy/percentile, or on_budget_miss=keep_best to ship the best model")
        out = ctx.workdir / "model.onnx"
        shutil.copyfile(best_path, out)
        shutil.rmtree(work, ignore_errors=True)
        return artifact.derive(path=out, files=[out], precision="int8", details={**artifact.details, "int8": details})

    # -- pieces ------------------------------------------------------------------------------------------

    @staticmethod
    def _symmetric(opts: Int8Options) -> bool:
        if opts.symmetric_activations is not None:
            return opts.symmetric_activations
        return opts.activation_type == "int8"

    @staticmethod
    def _mode(model: Any, opts: Int8Options) -> tuple[str, str]:
        if opts.mode != "auto":
            return opts.mode, "chosen with the mode option"
        ints = integer_inputs(model)
        if ints:
            return "dynamic", f"auto: integer input(s) {', '.join(ints)} (token ids)"
        if is_transformer_like(model):
            return "dynamic", "auto: transformer-like graph (attention: Softmax into MatMul, no Conv)"
        return "static", "auto: float inputs, not transformer-like"

    @staticmethod
    def _preprocess(path: Path, work: Path, opts: Int8Options, timeout_s: float) -> tuple[Path, str]:
        """quant_pre_process; a model it cannot handle is retried without symbolic shape inference, then
        quantized as it is, and the report says which. It runs in a child process whose working folder is the
        step's own: ORT's symbolic shape inference writes ``sym_shape_infer_temp.onnx`` (and its external data)
        into the current directory when it gives up."""
        if not opts.preprocess:
            return path, "off"
        out = work / "preprocessed.onnx"
        code = PREPROCESS_CHILD.format(src=str(path), out=str(out))
        try:
            proc = run_python(code, "quant_pre_process", cwd=work, timeout_s=timeout_s, check=False)
        except ConversionError as exc:  # crashed or timed out
            return path, f"{exc.one_line()}; quantized without it"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("convcli-preprocess:")]
        if proc.returncode != 0 or not lines:
            tail = " | ".join(ln.strip() for ln in (proc.stderr or "").splitlines()[-2:] if ln.strip())
            return path, f"quant_pre_process failed (exit {proc.returncode}: {tail[-200:]}); quantized without it"
        result = json.loads(lines[-1].split(":", 1)[1])
        if result["done"] is None:
            return path, f"quant_pre_process failed ({'; '.join(result['errors'])}); quantized without it"
        if result["done"] == "symbolic":
            return out, "quant_pre_process"
        return out, f"quant_pre_process (without symbolic shape inference: {result['errors'][0]})"

    @staticmethod
    def _check_exclusions(base: Any, opts: Int8Options, filename: str) -> list[str]:
        names = [n.name for n in base.graph.node]
        unknown = [n for n in opts.exclude_nodes if n not in names]
        if unknown:
            compute = [n.name for n in base.graph.node if n.op_type not in DATA_MOVEMENT][:12]
            raise ConversionError(
                f"QuantizeOnnxInt8: exclude_nodes {unknown} are not nodes of {filename} (after preprocessing)",
                hint=f"nodes include: {', '.join(compute)}; with preprocess=false names are the file's own")
        present = {n.op_type for n in base.graph.node}
        missing = [t for t in opts.exclude_op_types if t not in present]
        if missing:
            raise ConversionError(f"QuantizeOnnxInt8: exclude_op_types {missing} do not occur in {filename}",
                                  hint=f"its op types: {', '.join(sorted(present))}")
        return list(opts.exclude_nodes)

    @staticmethod
    def _op_types(static: bool, opts: Int8Options) -> list[str]:
        from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

        ops = set(QDQRegistry) | set(QLinearOpsRegistry) if static else set(IntegerOpsRegistry)
        return sorted(ops - set(opts.exclude_op_types))

    @staticmethod
    def _input_types(path: Path, ctx: StepContext) -> dict[str, Any]:
        from convcli.runners.onnxruntime_runner import ORT_TYPES, ort_session

        session: Any = ort_session(str(path), 1, optimization="none")
        return {i.name: ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}

    @staticmethod
    def _split(calibration: DataSet | None, ctx: StepContext, opts: Int8Options,
               static: bool) -> tuple[DataSet | None, DataSet | None, bool]:
        """Calibration samples, check samples for a cosine budget, and whether the check samples are held out
        (not among those that calibrated). Samples are held out only when the cosine check will need them: no
        labelled set (or no accuracy budget) and no explicit calibration_samples."""
        if calibration is None or len(calibration) == 0:
            return None, None, False
        if not static:
            return None, calibration.take(opts.check_samples), True
        return split_calibration(calibration, ctx.validation, opts, opts.calibration_samples)

    def _budget(self, artifact: Artifact, base_path: Path, ctx: StepContext, opts: Int8Options,
                check_set: DataSet | None, held_out: bool) -> Budget:
        batch = fixed_batch(artifact)
        labelled = ctx.validation if opts.max_accuracy_drop is not None else None
        if labelled is not None and labelled.labels is not None and len(labelled):
            data = check_data(artifact, labelled, len(labelled))
            _, ref = ort_outputs(base_path, data, ctx.threads, batch)
            if ref and ref[0].ndim == 2 and ref[0].shape[1] > 1:
                assert data.labels is not None
                return Budget("accuracy_drop", opts.max_accuracy_drop, data, ref,
                              accuracy(ref[0], data.labels))
        if opts.min_cosine is None:
            return Budget("none", None, None)
        data = check_data(artifact, check_set, opts.check_samples)  # random only in dynamic mode without data
        _, ref = ort_outputs(base_path, data, ctx.threads, batch)
        return Budget("cosine", opts.min_cosine, data, ref)

    @staticmethod
    def _score(path: Path, budget: Budget, ctx: StepContext, artifact: Artifact) -> Score:
        if budget.data is None:
            return Score()
        names, got = ort_outputs(path, budget.data, ctx.threads, fixed_batch(artifact))
        return score_outputs(budget, names, got)

    def _quantize(self, base: Path, out: Path, static: bool, opts: Int8Options, op_types: list[str],
                  exclude: list[str], calib: DataSet | None, batch: int, fixed: bool, types: dict[str, Any],
                  cache: Path, where: str) -> None:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        try:
            with _quiet():
                if not static:
                    quantize_dynamic(str(base), str(out), op_types_to_quantize=op_types,
                                     per_channel=opts.per_channel, weight_type=QuantType.QInt8,
                                     nodes_to_exclude=exclude)
                    return
                assert calib is not None
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[opts.calibration_method]
                extra: dict[str, Any] = {"ActivationSymmetric": self._symmetric(opts)}
                if opts.calibration_method == "percentile":
                    extra["CalibPercentile"] = opts.percentile
                if opts.qdq_form == "tensorrt":
                    # TensorRT's parser takes DequantizeLinear only of int8 data it can fold into a layer: weights
                    # stay float behind a Q/DQ pair, biases stay float (an int32 bias DQ is rejected).
                    extra.update({"WeightSymmetric": True, "AddQDQPairToWeight": True, "QuantizeBias": False})
                quantize_static(
                    str(base), str(out), _Reader(calib, batch, fixed, types), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types, per_channel=opts.per_channel,
                    activation_type=QuantType.QUInt8 if opts.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                    extra_options=extra, calibration_cache_path=str(cache))
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"{where}: ONNX Runtime's quantizer failed on {base.name}: {first_line(exc)}",
                                  hint="exclude the failing node or op type (exclude_nodes / exclude_op_types), or "
                                       "try preprocess=false") from None

    @staticmethod
    def _calibration_details(static: bool, opts: Int8Options, calib: DataSet | None,
                             loaded: DataSet | None) -> dict[str, Any]:
        if not static:
            return {"data": None, "samples": 0, "method": "dynamic: activation ranges computed at run time",
                    "note": "calibration data used only for the budget check" if loaded is not None else None}
        assert calib is not None and loaded is not None
        info: dict[str, Any] = {"data": loaded.description, "samples": len(calib), "samples_loaded": len(loaded),
                                "method": opts.calibration_method}
        if opts.calibration_method == "percentile":
            info["percentile"] = opts.percentile
        return info


def register(registry: Registry) -> None:
    registry.add_step(QuantizeOnnxInt8)
