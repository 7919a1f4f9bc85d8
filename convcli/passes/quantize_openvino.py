"""OpenVINO IR fp32 -> INT8 with NNCF post-training quantization, optionally accuracy-aware.

Calibration comes from ``--calibration`` only (``ctx.calibration``): int8 is never calibrated on random data. The
fp32 IR is quantized with ``nncf.quantize`` (per-channel int8 weights, per-tensor activations, FakeQuantize nodes
that the CPU plugin executes as u8/i8 kernels). The weights are stored as int8 constants, so the .bin shrinks ~4x.

Accuracy-aware search (``nncf.quantize_with_accuracy_control``): NNCF quantizes everything, measures the metric,
ranks the quantized layers by how much reverting each one to float restores the metric, and reverts them one
group at a time until the budget is met. The metric is

* top-1 accuracy on the labelled set (``--validation``) when ``max_accuracy_drop`` is set and the job has one;
* otherwise, with ``min_cosine``, the lowest per-sample cosine between the int8 and the float IR's outputs on
  ``check_samples`` calibration samples held out from calibration.

A budget that cannot be met (or only by putting more than ``max_float_layers`` layers back in float) is an error,
never a silently shipped model. Every evaluation of the search, the layers kept in float and the final numbers go
into the step's details. Evaluation compiles for CPU with f32 inference (NNCF's own evaluator does the same): the
hint governs only the non-quantized parts; the FakeQuantize'd layers still run as int8 kernels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.lazy import package_version, require
from convcli.core.offline import block_telemetry_imports
from convcli.core.registry import Registry
from convcli.core.step import Pass, StepContext
from convcli.parity.data import DataSet

NNCF_DEFAULT_SUBSET = 300  # nncf.quantize's own default
CHECK_BATCH = 32  # rows per call in convcli's own evaluations when the IR's batch is dynamic
# Ops NNCF quantizes that carry weights or do the heavy arithmetic: what "a layer kept in float" counts.
QUANTIZABLE_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                   "MatMul")
# Ops between a quantizer (FakeQuantize, or an int8 weight constant) and the layer that consumes it.
PASS_THROUGH_OPS = ("Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
DEQUANTIZE_OPS = ("Multiply", "Subtract")  # scale / zero point of a dequantized int8 weight
LOW_BIT_TYPES = ("i8", "u8", "i4", "u4")


class OpenvinoInt8Options(BaseModel):
    """Options of QuantizeOpenvinoInt8 (``-O QuantizeOpenvinoInt8.KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
    subset_size: int | None = Field(
        default=None, ge=1, description="Calibration samples NNCF collects statistics on; default: every "
                                        "calibration sample the job loaded (recipe data.calibration_samples, 64), "
                                        f"at most {NNCF_DEFAULT_SUBSET}.")
    preset: Literal["auto", "performance", "mixed"] = Field(
        default="auto", description="performance: symmetric int8 activations; mixed: asymmetric activations (better "
                                    "for non-ReLU activations); auto: mixed for transformers, else performance.")
    model_type: Literal["auto", "generic", "transformer"] = Field(
        default="auto", description="transformer adds NNCF's transformer patterns (attention kept unquantized where "
                                    "it hurts, SmoothQuant); auto: transformer when an input is integer token ids "
                                    "or the IR has attention (a Softmax feeding a MatMul) and no Convolution.")
    smooth_quant_alpha: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="transformer only: SmoothQuant's alpha for MatMuls (how much of "
                                                   "the activation outliers move into the weights); -1 switches "
                                                   "SmoothQuant off; default: NNCF's own (0.95).")
    fast_bias_correction: bool = Field(
        default=True, description="NNCF's fast bias correction; false: the slower, usually more accurate method.")
    ignored_types: list[str] = Field(
        default_factory=list, description="OpenVINO op types never quantized, e.g. [MatMul] or Add,Multiply.")
    ignored_names: list[str] = Field(
        default_factory=list, description="OpenVINO op (friendly) names never quantized; the step's details list the "
                                          "names of the quantizable layers.")
    max_accuracy_drop: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Accuracy-aware: with --validation, keep layers in float until the "
                                                  "top-1 drop on it is at most this (fraction: 0.01 = 1 point).")
    min_cosine: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Accuracy-aware without a labelled set: keep layers in float until "
                                                  "the lowest per-sample cosine vs the float IR on held-out "
                                                  "calibration samples is at least this.")
    max_float_layers: int | None = Field(
        default=None, ge=1, description="Most layers the accuracy-aware search may keep in float; default: no limit.")
    check_samples: int = Field(
        default=16, ge=1, description="Calibration samples held out for the cosine check (min_cosine) and the "
                                      "report's int8-vs-float comparison.")

    @field_validator("ignored_types", "ignored_names", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _budget_for_limit(self) -> OpenvinoInt8Options:
        if self.max_float_layers is not None and self.max_accuracy_drop is None and self.min_cosine is None:
            raise ValueError("max_float_layers limits the accuracy-aware search: set max_accuracy_drop (with "
                             "--validation) or min_cosine as well")
        return self


# -- the IR's inputs and outputs ------------------------------------------------------------------------


@dataclass
class Ports:
    """How the job's data (keyed by source input names) feeds the IR, and which output is which."""

    feed_keys: list[tuple[str, Any, np.dtype]]  # (source input name, key the IR takes, dtype)
    static_batch: int | None
    output_order: list[int]

    def feed(self, data: DataSet, start: int, stop: int) -> dict[Any, np.ndarray]:
        return {key: np.ascontiguousarray(data.inputs[name][start:stop].astype(dtype, copy=False))
                for name, key, dtype in self.feed_keys}

    def chunks(self, data: DataSet, size: int = 1) -> list[tuple[int, int]]:
        """(start, stop) rows of each model call: ``size`` rows, or exactly the IR's fixed batch (a remainder
        smaller than it is left out)."""
        n = len(data)
        if self.static_batch:
            step = self.static_batch
            return [(i, i + step) for i in range(0, n - step + 1, step)]
        return [(i, min(i + size, n)) for i in range(0, n, size)]


def describe_ports(model: Any, artifact: Artifact, where: str) -> Ports:
    from convcli.runners.openvino_runner import match_outputs, port_names

    source_names = [s.name for s in artifact.inputs]
    keys: list[tuple[str, Any, np.dtype]] = []
    for i, port in enumerate(model.inputs):
        names = port_names(port)
        name = next((n for n in source_names if n in names), None)
        if name is None and len(source_names) == len(model.inputs):
            name = source_names[i]
        if name is None:
            raise ConversionError(f"{where}: IR input {sorted(names) or i} matches no source input "
                                  f"({', '.join(source_names)})")
        key = port.get_any_name() if names else i
        keys.append((name, key, np.dtype(port.get_element_type().to_dtype())))
    static = None
    first = model.inputs[0].get_partial_shape() if len(model.inputs) else None
    if first is not None and first.rank.is_static and len(first) and first[0].is_static:
        static = first[0].get_length()
    return Ports(keys, static, match_outputs(list(model.outputs), artifact.output_names, where))


def is_token_model(artifact: Artifact) -> bool:
    return any(s.dtype.startswith(("int", "uint")) for s in artifact.inputs)


def is_attention_graph(model: Any) -> bool:
    """An IR with attention (a Softmax whose result a MatMul consumes: scores x values, or the fused
    ScaledDotProductAttention OpenVINO's frontend makes of some exports) and no convolution: a transformer even
    when its inputs are float (embeddings or features fed directly). A classifier whose Softmax is its output is
    not one."""
    ops = model.get_ops()
    kinds = {op.get_type_name() for op in ops}
    if kinds & {"Convolution", "GroupConvolution"}:
        return False
    if "ScaledDotProductAttention" in kinds:
        return True
    for op in ops:
        if op.get_type_name() in ("Softmax", "SoftMax"):
            consumers = [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
            if any(c.get_type_name() == "MatMul" for c in consumers):
                return True
    return False


# -- which layers are int8 ------------------------------------------------------------------------------


def _reaches_quantizer(node: Any, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in LOW_BIT_TYPES
    if depth >= 6:
        return False
    parents = [node.input(i).get_source_output().get_node() for i in range(node.get_input_size())]
    if kind in PASS_THROUGH_OPS:
        return _reaches_quantizer(parents[0], depth + 1) if parents else False
    if kind in DEQUANTIZE_OPS and any(p.get_type_name() == "Constant" for p in parents):
        return any(_reaches_quantizer(p, depth + 1) for p in parents if p.get_type_name() != "Constant")
    return False


def layer_precisions(model: Any) -> dict[str, list[str]]:
    """Friendly names of the quantizable layers (QUANTIZABLE_OPS) that consume int8 data, and of those that do not.

    A MatMul between two float activations that NNCF left alone by design (e.g. attention scores in transformer
    mode) counts as float too: the report says what runs in float, not why."""
    int8: list[str] = []
    float_: list[str] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in QUANTIZABLE_OPS:
            continue
        parents = [op.input(i).get_source_output().get_node() for i in range(op.get_input_size())]
        (int8 if any(_reaches_quantizer(p) for p in parents) else float_).append(op.get_friendly_name())
    return {"int8": int8, "float": float_}


# -- metrics ---------------------------------------------------------------------------------------------


def _infer(compiled: Any, ports: Ports, feed: dict[Any, np.ndarray]) -> list[np.ndarray]:
    results = compiled(feed)
    return [np.asarray(results[compiled.outputs[i]]) for i in ports.output_order]


def cosines(ref: list[np.ndarray], got: list[np.ndarray]) -> np.ndarray:
    """Per-sample cosine over all outputs concatenated (1.0 when both are all zero)."""
    n = ref[0].shape[0]
    r = np.concatenate([a.reshape(n, -1).astype(np.float64) for a in ref], axis=1)
    g = np.concatenate([a.reshape(n, -1).astype(np.float64) for a in got], axis=1)
    nr, ng = np.linalg.norm(r, axis=1), np.linalg.norm(g, axis=1)
    dot = (r * g).sum(axis=1)
    return np.where((nr == 0) & (ng == 0), 1.0, dot / np.maximum(nr * ng, 1e-30))


def run_rows(compiled: Any, ports: Ports, data: DataSet, size: int = CHECK_BATCH) -> list[np.ndarray]:
    """Every output of the model on ``data``, called ``size`` rows at a time (or at the IR's fixed batch)."""
    parts = [_infer(compiled, ports, ports.feed(data, a, b)) for a, b in ports.chunks(data, size)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


@dataclass
class Metric:
    """What the accuracy-aware search maximises and on which data: top-1 accuracy against ``labels``, or the lowest
    per-sample cosine against the float IR's ``reference`` outputs."""

    name: str  # "top1_accuracy" or "cosine_min"
    ports: Ports
    data: DataSet
    budget: float  # allowed absolute drop from the float model's value
    description: str
    labels: np.ndarray | None = None
    reference: list[np.ndarray] | None = None

    @property
    def items(self) -> list[tuple[int, int]]:
        """NNCF's validation items: one sample each (or one fixed batch), so its per-item ranking is per sample."""
        return self.ports.chunks(self.data)

    def feed(self, a: int, b: int) -> dict[Any, np.ndarray]:
        return self.ports.feed(self.data, a, b)

    def score(self, outputs: list[np.ndarray], a: int, b: int) -> float:
        """The metric of rows a:b given the model's outputs for exactly those rows."""
        if self.reference is None:
            assert self.labels is not None
            return float((outputs[0].reshape(b - a, -1).argmax(axis=1) == self.labels[a:b]).mean())
        return float(cosines([r[a:b] for r in self.reference], outputs).min())

    def item_values(self, compiled: Any, rows: list[tuple[int, int]]) -> list[float]:
        return [self.score(_infer(compiled, self.ports, self.feed(a, b)), a, b) for a, b in rows]

    def aggregate(self, values: list[float], rows: list[tuple[int, int]]) -> float:
        if not values:
            return 0.0
        if self.reference is not None:
            return min(values)
        weights = [b - a for a, b in rows]
        return float(np.average(values, weights=weights))

    def whole(self, compiled: Any) -> float:
        """The metric on the whole set, in batches (our own before/after measurements, not NNCF's)."""
        outputs = run_rows(compiled, self.ports, self.data)
        return self.score(outputs, 0, len(outputs[0]))


def accuracy_metric(ports: Ports, labelled: DataSet, budget: float) -> Metric:
    assert labelled.labels is not None
    used = sum(b - a for a, b in ports.chunks(labelled))
    note = f" ({used} of {len(labelled)} samples: the IR's batch is fixed)" if used != len(labelled) else ""
    return Metric("top1_accuracy", ports, labelled, budget, f"top-1 accuracy on {labelled.description}{note}",
                  labels=labelled.labels)


def cosine_metric(ports: Ports, float_compiled: Any, held_out: DataSet, budget: float, held_out_note: str) -> Metric:
    reference = run_rows(float_compiled, ports, held_out)
    return Metric("cosine_min", ports, held_out, budget,
                  f"lowest per-sample cosine vs the float IR on {len(reference[0])} {held_out_note}",
                  reference=reference)


# -- NNCF's logging and progress bars --------------------------------------------------------------------


@dataclass
class SearchLog:
    """NNCF's log lines during one run, and the evaluations of the accuracy-aware search they announce."""

    lines: list[str] = field(default_factory=list)
    pending: tuple[str, list[str]] | None = None  # ("initial"|"quantized"|"reverted", reverted op names)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def on_message(self, text: str) -> None:
        self.lines.append(text)
        started = re.match(r"Validation of (\w+) model was started", text)
        if started:
            self.pending = (started.group(1), [])
        elif text.startswith("Reverted ") and "floating-point precision" in text:
            names = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
            self.pending = ("reverted", names)

    def on_evaluation(self, n_items: int, full: int, value: float) -> None:
        """Called for every evaluation NNCF asks for; only full-set ones that NNCF announced are search steps."""
        if self.pending is None or n_items != full:
            return
        kind, names = self.pending
        self.pending = None
        step: dict[str, Any] = {"evaluated": {"initial": "float IR", "quantized": "int8, everything quantized"}.get(
            kind, "int8 after reverting to float"), **({"reverted": names} if kind == "reverted" else {}),
            "value": round(value, 6)}
        if self.steps and self.steps[0]["evaluated"] == "float IR":
            step["drop"] = round(self.steps[0]["value"] - value, 6)
        self.steps.append(step)

    def warnings(self) -> list[str]:
        return [ln for ln in self.lines if ln.startswith("WARNING:")]


class _Capture(logging.Handler):
    def __init__(self, log: SearchLog) -> None:
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.log.on_message(f"WARNING:{text}" if record.levelno >= logging.WARNING else text)


@contextlib.contextmanager
def nncf_quiet(log: SearchLog) -> Iterator[None]:
    """Route NNCF's log records into ``log`` and keep its rich progress bars off stdout (convcli's --json output
    goes there). NNCF's logger writes to a handler bound to sys.stdout at import, so it is swapped for the call.
    NNCF's backend check imports nncf.torch when torch is installed, which imports torch's C++-extension helper;
    that logs "No CUDA runtime is found" on CPU machines, so its logger is raised to ERROR for the call too."""
    from nncf.common.logging.logger import nncf_logger

    saved = nncf_logger.handlers[:]
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    torch_level = torch_log.level
    nncf_logger.handlers = [_Capture(log)]
    torch_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.handlers = saved
        torch_log.setLevel(torch_level)


# -- the pass --------------------------------------------------------------------------------------------


@dataclass
class Split:
    calibration: DataSet
    held_out: DataSet | None
    held_out_note: str
    note: str = ""  # why fewer calibration samples were used than asked for


def split_calibration(data: DataSet, opts: OpenvinoInt8Options, needs_held_out: bool, batch: int,
                      where: str) -> Split:
    """Calibration rows first, then (when the cosine check needs them, or when rows are left over) held-out rows
    that calibration never saw."""
    n = len(data)
    if needs_held_out:
        keep = -(-opts.check_samples // batch) * batch  # whole fixed batches
        if n < keep + batch:
            raise ConversionError(f"{where}: min_cosine needs {keep} calibration samples held out plus "
                                  f"some to calibrate on; --calibration has {n}",
                                  hint="give more calibration samples (recipe data.calibration_samples) or lower "
                                       "QuantizeOpenvinoInt8.check_samples")
        pool = n - keep
    else:
        pool = n
    want = min(opts.subset_size or min(pool, NNCF_DEFAULT_SUBSET), pool)
    used = max(batch, want - want % batch)
    if used > pool:
        raise ConversionError(f"{where}: the IR's batch is fixed to {batch}, --calibration has only {pool} "
                              f"sample(s) to calibrate on", hint="pass more calibration samples")
    note = ""
    if opts.subset_size is not None and used != opts.subset_size:
        why = [f"--calibration has {n}"] if opts.subset_size > pool else []
        why += [f"{n - pool} held out for the cosine check"] if needs_held_out and opts.subset_size > pool else []
        why += [f"a multiple of the IR's fixed batch {batch}"] if used % batch == 0 and batch > 1 else []
        note = f"subset_size={opts.subset_size} asked for; {used} used ({', '.join(why)})"
    calib = _rows(data, 0, used, f"{data.description}, samples 0-{used - 1}")
    stop = n if needs_held_out else min(n, used + opts.check_samples)
    start = pool if needs_held_out else used
    if stop - start >= batch:
        held = _rows(data, start, stop, f"{data.description}, samples {start}-{stop - 1}")
        return Split(calib, held, "calibration samples held out from calibration", note)
    return Split(calib, None, "", note)


def _rows(data: DataSet, start: int, stop: int, description: str) -> DataSet:
    labels = None if data.labels is None else data.labels[start:stop]
    return DataSet({k: v[start:stop] for k, v in data.inputs.items()}, labels, description)


class QuantizeOpenvinoInt8(Pass):
    """OpenVINO IR -> INT8 IR through NNCF, calibrated on --calibration data, optionally accuracy-aware."""

    name = "QuantizeOpenvinoInt8"
    source = "openvino"
    target = "openvino"
    summary = ("NNCF post-training INT8 on --calibration data; accuracy-aware (layers kept in float) with "
               "max_accuracy_drop on --validation or min_cosine vs the float IR")
    requires = ("openvino", "nncf")
    output_precision = "int8"
    uses_calibration = True
    uses_validation = True
    Options = OpenvinoInt8Options

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        from convcli.converters.onnx_to_openvino import save_ir
        from convcli.runners.openvino_runner import compile_cpu, require_openvino, runtime_precisions

        opts: OpenvinoInt8Options = self.options  # type: ignore[assignment]
        where = self.name
        calibration = ctx.require_calibration(where)
        labelled = ctx.validation if opts.max_accuracy_drop is not None else None
        if opts.max_accuracy_drop is not None and (labelled is None or labelled.labels is None):
            if opts.min_cosine is None:
                raise ConversionError(f"{where}: max_accuracy_drop needs a labelled set: pass --validation",
                                      hint="without one, use -O QuantizeOpenvinoInt8.min_cosine=0.99: cosine vs "
                                           "the float IR on held-out calibration samples")
            labelled = None
        search = "accuracy" if labelled is not None else ("cosine" if opts.min_cosine is not None else None)

        ov = require_openvino("OpenVINO INT8")
        late = block_telemetry_imports()  # before nncf's first import: its telemetry falls back to a stub
        nncf = require("nncf", "OpenVINO INT8")
        assert artifact.path is not None
        try:
            model = ov.Core().read_model(str(artifact.path))
        except Exception as exc:
            raise ConversionError(f"{where}: cannot read {artifact.path.name}: {first_line(exc)}") from None
        ports = describe_ports(model, artifact, where)
        batch = ports.static_batch or 1
        split = split_calibration(calibration, opts, search == "cosine", batch, where)
        calib_items = [ports.feed(split.calibration, a, b) for a, b in ports.chunks(split.calibration)]

        why = "chosen with the model_type option"
        if opts.model_type == "auto":
            why = "auto: integer token-id inputs" if is_token_model(artifact) else (
                "auto: attention without convolutions" if is_attention_graph(model) else "auto")
        transformer = opts.model_type == "transformer" or (opts.model_type == "auto" and why != "auto")
        if opts.smooth_quant_alpha is not None and not transformer:
            raise ConversionError(f"{where}: smooth_quant_alpha applies to transformers; this IR was not taken for "
                                  "one", hint="add -O QuantizeOpenvinoInt8.model_type=transformer")
        preset = opts.preset if opts.preset != "auto" else ("mixed" if transformer else "performance")
        float_layers = layer_precisions(model)
        ignored = None
        if opts.ignored_names or opts.ignored_types:
            ignored = nncf.IgnoredScope(names=list(opts.ignored_names), types=list(opts.ignored_types))
        kwargs: dict[str, Any] = dict(
            preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(calib_items), fast_bias_correction=opts.fast_bias_correction,
            model_type=nncf.ModelType.TRANSFORMER if transformer else None, ignored_scope=ignored)
        smooth_quant: dict[str, Any] | None = None
        if transformer:
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters,
                AdvancedSmoothQuantParameters,
            )

            alphas = AdvancedSmoothQuantParameters()
            if opts.smooth_quant_alpha is not None:
                alphas = AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha)
                kwargs["advanced_parameters"] = AdvancedQuantizationParameters(smooth_quant_alphas=alphas)
            smooth_quant = {"matmul_alpha": alphas.matmul, "on": alphas.matmul >= 0,
                            "source": "option" if opts.smooth_quant_alpha is not None else "NNCF default"}

        float_compiled = compile_cpu(model, ctx.threads)
        metric: Metric | None = None
        if search == "accuracy":
            assert labelled is not None and opts.max_accuracy_drop is not None
            metric = accuracy_metric(ports, labelled, opts.max_accuracy_drop)
        elif search == "cosine":
            assert split.held_out is not None and opts.min_cosine is not None
            metric = cosine_metric(ports, float_compiled, split.held_out, 1.0 - opts.min_cosine, split.held_out_note)

        log = SearchLog()
        try:
            with nncf_quiet(log):
                if metric is None:
                    quantized = nncf.quantize(model, nncf.Dataset(calib_items), **kwargs)
                else:
                    quantized = self._accuracy_control(nncf, model, calib_items, metric, opts, log, kwargs)
        except ConversionError:
            raise
        except Exception as exc:
            hint = None
            if ignored is not None and "ignored" in str(exc).lower():
                hint = f"quantizable layers of this IR: {', '.join(float_layers['float'][:20])}"
            raise ConversionError(f"{where}: NNCF failed: {first_line(exc)}", hint=hint) from None

        layers = layer_precisions(quantized)
        if metric is not None and not layers["int8"]:
            values = [st["value"] for st in log.steps if st["evaluated"] != "float IR"]
            trace = f" ({metric.name} all-int8 {values[0]:.4f}, best before the last revert {max(values[:-1]):.4f})" \
                if len(values) > 1 else ""
            raise ConversionError(f"{where}: the accuracy-aware search put all {len(layers['float'])} quantizable "
                                  f"layers back in float before meeting its budget{trace}: nothing is left in int8",
                                  hint="relax the budget, calibrate on more representative --calibration data, or "
                                       "try preset=mixed / fast_bias_correction=false")
        if not layers["int8"]:
            raise ConversionError(f"{where}: no layer of the IR is int8 after quantization "
                                  f"({len(layers['float'])} stayed float)",
                                  hint="check ignored_types/ignored_names, or the budget of the accuracy-aware search")
        q_compiled = compile_cpu(quantized, ctx.threads)
        details: dict[str, Any] = {
            "nncf": package_version("nncf"), "method": "nncf.quantize" if metric is None
            else "nncf.quantize_with_accuracy_control",
            "calibration_data": calibration.description, "calibration_samples": len(calib_items) * batch,
            "calibration_available": len(calibration), **({"calibration_note": split.note} if split.note else {}),
            "preset": preset,
            "model_type": "transformer" if transformer else "generic", "model_type_reason": why,
            "smooth_quant": smooth_quant,
            "fast_bias_correction": opts.fast_bias_correction,
            "ignored_scope": {"names": list(opts.ignored_names), "types": list(opts.ignored_types)},
            "int8_layers": len(layers["int8"]), "kept_in_float": layers["float"],
            "runtime_precisions": runtime_precisions(q_compiled),
        }
        if metric is not None:
            details["search"] = self._finish_search(metric, float_compiled, q_compiled, layers, opts, log, where)
        details["check"] = self._check(split, labelled or ctx.validation, ports, float_compiled, q_compiled)
        if log.warnings():
            details["nncf_warnings"] = log.warnings()[:10]
        if late:
            details["telemetry"] = f"on: {', '.join(late)} was imported before convcli could block it"

        saved = save_ir(quantized, artifact.inputs, artifact.output_names, "int8", ctx, where)
        merged = {**artifact.details, **saved.details, "int8": details}
        return artifact.derive(path=saved.path, files=saved.files, precision="int8", details=merged)

    @staticmethod
    def _accuracy_control(nncf: Any, model: Any, calib_items: list[dict[Any, np.ndarray]], metric: Metric,
                          opts: OpenvinoInt8Options, log: SearchLog, kwargs: dict[str, Any]) -> Any:
        """nncf.quantize_with_accuracy_control with ``metric``; items carry their rows so that NNCF's subsets and
        per-item calls (ranking) see the same samples."""
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        full = len(metric.items)

        def validation_fn(compiled: Any, items: Any) -> tuple[float, list[float]]:
            rows = [(a, b) for a, b, _ in items]
            values = metric.item_values(compiled, rows)
            value = metric.aggregate(values, rows)
            log.on_evaluation(len(rows), full, value)
            return value, values

        def to_feed(item: tuple[int, int, dict[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
            return item[2]

        ports_feed = [(a, b, metric.feed(a, b)) for a, b in metric.items]
        restorer = AdvancedAccuracyRestorerParameters(
            max_num_iterations=opts.max_float_layers if opts.max_float_layers is not None else 2**31 - 1,
            num_ranking_workers=1)
        return nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calib_items), nncf.Dataset(ports_feed, to_feed), validation_fn,
            max_drop=metric.budget, drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=restorer, **kwargs)

    @staticmethod
    def _finish_search(metric: Metric, float_compiled: Any, q_compiled: Any, layers: dict[str, list[str]],
                       opts: OpenvinoInt8Options, log: SearchLog, where: str) -> dict[str, Any]:
        """Re-measure float and final int8 ourselves, and refuse a result that misses the budget or the limit."""
        float_value, final_value = metric.whole(float_compiled), metric.whole(q_compiled)
        drop = float_value - final_value
        # Layers the search reverted (NNCF's log names them) and that are still float; layers NNCF never quantizes by
        # design (or that ignored_names excludes) do not count against max_float_layers.
        reverted = {n for step in log.steps for n in step.get("reverted", [])}
        searched = [n for n in layers["float"] if n in reverted] if log.steps else \
            [n for n in layers["float"] if n not in opts.ignored_names]
        limit = "max_accuracy_drop" if metric.name == "top1_accuracy" else "min_cosine"
        wanted = (f"top-1 drop <= {metric.budget * 100:.2f} points" if metric.name == "top1_accuracy"
                  else f"cosine >= {1.0 - metric.budget:.6f}")
        got = (f"top-1 {final_value * 100:.2f}% vs float {float_value * 100:.2f}% (drop {drop * 100:.2f} points)"
               if metric.name == "top1_accuracy" else f"cosine {final_value:.6f}")
        where_float = f"{len(searched)} layer(s) in float ({', '.join(searched) or 'none'})"
        if drop > metric.budget + 1e-9:
            raise ConversionError(f"{where}: accuracy-aware INT8 missed its budget ({wanted}): {got} with "
                                  f"{where_float}",
                                  hint=f"relax {limit}, raise max_float_layers, or calibrate on more or more "
                                       "representative --calibration data")
        if opts.max_float_layers is not None and len(searched) > opts.max_float_layers:
            raise ConversionError(f"{where}: meeting {wanted} needed {where_float}, more than max_float_layers="
                                  f"{opts.max_float_layers}", hint=f"raise max_float_layers or relax {limit}")
        return {"metric": metric.name, "on": metric.description, "budget": wanted,
                "float_value": round(float_value, 6), "int8_value": round(final_value, 6),
                "drop": round(drop, 6), "met": True, "kept_in_float_by_search": searched,
                "steps": log.steps}

    @staticmethod
    def _check(split: Split, labelled: DataSet | None, ports: Ports, float_compiled: Any,
               q_compiled: Any) -> dict[str, Any]:
        """int8 vs the float IR on held-out calibration samples, and top-1 of both on the labelled set."""
        check: dict[str, Any] = {}
        if split.held_out is not None:
            ref = run_rows(float_compiled, ports, split.held_out)
            got = run_rows(q_compiled, ports, split.held_out)
            cos = cosines(ref, got)
            err = max(float(np.abs(r.astype(np.float64) - g).max()) for r, g in zip(ref, got, strict=True))
            check.update({"vs_float_ir_on": f"{len(cos)} {split.held_out_note}", "cosine_min": round(float(cos.min()),
                          6), "max_abs_err": float(f"{err:.4g}")})
        else:
            check["vs_float_ir_on"] = "none: every calibration sample was used to calibrate"
        if labelled is not None and labelled.labels is not None:
            metric = accuracy_metric(ports, labelled, 0.0)
            check["top1_float"] = round(metric.whole(float_compiled), 6)
            check["top1_int8"] = round(metric.whole(q_compiled), 6)
            check["top1_on"] = metric.description
        return check


def register(registry: Registry) -> None:
    registry.add_step(QuantizeOpenvinoInt8)
