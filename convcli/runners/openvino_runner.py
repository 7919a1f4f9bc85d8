"""OpenVINO runtime on CPU, pinned to the artifact's inference precision and a fixed thread count.

The CPU plugin silently picks bf16 inference on CPUs with AVX-512 BF16 (about 2e-2 off), so every session asks for
f32 and reads back the precision the compiled model really uses; the report shows it. FP16 artifacts hold FP16
weights only: they are decompressed and run in f32 as well. bf16 artifacts (``HintOpenvinoBf16``) are compiled
with the bf16 hint, and a session whose compiled model does not report bf16 (the plugin ignores the hint on a CPU
without bf16) is refused as unavailable rather than measured as fp32 under a bf16 label.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, UnavailableError, first_line
from convcli.core.intermediates import Intermediates, ReferenceGraph, TensorInfo
from convcli.core.lazy import require
from convcli.core.offline import block_telemetry_imports
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session


def require_openvino(purpose: str = "OpenVINO targets") -> ModuleType:
    """Import openvino with its telemetry blocked first: ``import openvino`` alone phones home."""
    block_telemetry_imports()
    return require("openvino", purpose)


BF16_HINT = "bf16"


def inference_hint(precision: str) -> str:
    """The INFERENCE_PRECISION_HINT an artifact of ``precision`` is compiled with: bf16 for bf16 rows, f32 for every
    other (fp16 IRs hold FP16 weights only; int8 IRs run their float layers in f32)."""
    return BF16_HINT if precision == "bf16" else "f32"


def compile_cpu(model: Any, threads: int, hint: str = "f32") -> Any:
    """Compile an ov.Model (or IR path) for CPU with ``hint`` inference precision and ``threads`` threads."""
    ov = require_openvino()
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": int(threads),
              "PERFORMANCE_HINT": "LATENCY"}
    return ov.Core().compile_model(model, "CPU", config)


def type_name(value: Any) -> str:
    """``bf16``/``f32`` from an OpenVINO element type property (or its text)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def check_hint(compiled: Any, hint: str, where: str) -> str:
    """The inference precision the compiled model really uses; UnavailableError when a bf16 hint was ignored."""
    used = type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if hint == BF16_HINT and used != BF16_HINT:
        from convcli.core.cpu import cpu_bf16_support

        raise UnavailableError(f"{where}: OpenVINO compiled the bf16 model with {used} inference (it ignores the "
                               f"bf16 hint where the CPU cannot run it; {cpu_bf16_support()[1]})")
    return used


# Layer types of the CPU plugin's runtime graph whose execution precision shows whether int8 kernels run.
RUNTIME_HEAVY_TYPES = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")


def runtime_precisions(compiled: Any) -> dict[str, int]:
    """Execution precision of the compiled model's heavy layers, e.g. {"u8": 20, "f32": 1}. The f32 inference hint
    governs only the layers NNCF left in float: FakeQuantize'd layers of an INT8 IR still run as u8/i8 kernels."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if kind in RUNTIME_HEAVY_TYPES and "runtimePrecision" in info:
            prec = info["runtimePrecision"].astype(str)
            counts[prec] = counts.get(prec, 0) + 1
    return dict(sorted(counts.items()))


def port_names(port: Any) -> set[str]:
    try:
        return set(port.get_names())
    except RuntimeError:  # a port without tensor names
        return set()


def match_outputs(ports: list[Any], wanted: list[str], where: str) -> list[int]:
    """Indices of ``ports`` in the order of ``wanted`` output names; positional when the model's ports do
    not carry the names but their count matches."""
    by_name = {n: i for i, p in enumerate(ports) for n in port_names(p)}
    if wanted and all(n in by_name for n in wanted):
        return [by_name[n] for n in wanted]
    if not wanted or len(wanted) == len(ports):
        return list(range(len(ports)))
    raise ConversionError(f"{where}: has {len(ports)} outputs "
                          f"({', '.join(sorted(by_name)) or 'unnamed'}); the source has {', '.join(wanted)}")


class OpenvinoSession(Session):
    def __init__(self, artifact: Artifact, threads: int) -> None:
        ov = require_openvino("running OpenVINO IR")
        assert artifact.path is not None
        where = f"OpenVINO IR {artifact.path.name}"
        try:
            hint = inference_hint(artifact.precision)
            self.compiled = compile_cpu(str(artifact.path), threads, hint)
        except Exception as exc:
            raise ConversionError(f"{where} does not compile for CPU: {first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        self.inputs: list[tuple[str, Any, np.dtype]] = []
        source_names = [s.name for s in artifact.inputs]
        for i, port in enumerate(self.compiled.inputs):
            names = port_names(port)
            name = next((n for n in source_names if n in names), None)
            if name is None and len(source_names) == len(self.compiled.inputs):
                name = source_names[i]
            if name is None:
                raise ConversionError(f"{where}: input {sorted(names) or i} matches no source input "
                                      f"({', '.join(source_names)})")
            self.inputs.append((name, port, np.dtype(port.get_element_type().to_dtype())))
        self.order = match_outputs(list(self.compiled.outputs), artifact.output_names, where)
        first = self.compiled.inputs[0].get_partial_shape() if self.compiled.inputs else None
        if first is not None and first.rank.is_static and len(first) and first[0].is_static:
            self.fixed_batch = first[0].get_length()
        self.precision = check_hint(self.compiled, hint, where)
        used_threads = self.compiled.get_property("INFERENCE_NUM_THREADS")
        self.description = (f"OpenVINO {ov.__version__.split('-')[0]} CPU, {used_threads} threads, "
                            f"inference precision {self.precision}")
        if artifact.precision == "int8":  # show that the int8 layers really run as int8 kernels
            layers = runtime_precisions(self.compiled)
            low = sum(n for p, n in layers.items() if p in ("u8", "i8"))
            self.description += f", {low} of {sum(layers.values())} conv/matmul layers int8"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = {}
        for name, port, dtype in self.inputs:
            if name not in feed:
                raise ConversionError(f"OpenVINO model needs input {name}, which the feed does not have")
            tensors[port] = np.ascontiguousarray(feed[name].astype(dtype, copy=False))
        results = self.request.infer(tensors)
        outs = [np.array(results[self.compiled.outputs[i]], copy=True) for i in self.order]
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OpenvinoRunner(Runner):
    name = "openvino"
    formats = ("openvino",)
    requires = ("openvino",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        return OpenvinoSession(artifact, threads)

    def intermediates(self, artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                      wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
        """Op outputs added as model outputs (``Model.add_outputs``) before compiling at f32. OpenVINO's ONNX
        frontend keeps each ONNX tensor's name among the output port's tensor names, which is the mapping; ops
        the conversion created (decompositions, layout changes) carry none and are counted as unmatched."""
        require_openvino("capturing OpenVINO intermediate tensors")
        assert artifact.path is not None
        ov = require_openvino()
        model = ov.Core().read_model(str(artifact.path))
        ref_names = ReferenceGraph.read(reference).tensor_names() if reference is not None else None
        known = set(ref_names) if ref_names is not None else None
        want = set(wanted) if wanted is not None else None
        result = Intermediates()
        ports = []
        seen: set[str] = set()
        for op in model.get_ordered_ops():
            kind = op.get_type_name()
            if kind in ("Parameter", "Constant", "Result") or _constant_only(op):
                continue
            for port in op.outputs():
                if not port.get_element_type().is_real():
                    continue
                names = port_names(port)
                match = sorted(n for n in names if known is None or n in known)
                if not match:
                    result.count_unmatched("no ONNX tensor name on the OpenVINO op output")
                    continue
                ref = match[0]
                if ref in seen or (want is not None and ref not in want):
                    continue
                seen.add(ref)
                backend = f"{op.get_friendly_name()}:{port.get_index()}"
                result.reference[backend] = ref
                result.info[backend] = TensorInfo(layer=op.get_friendly_name(), op=kind)
                result.order.append(backend)
                ports.append((backend, ref, port))
        if ports:
            model.add_outputs([p for _, _, p in ports])
        hint = inference_hint(artifact.precision)
        compiled = compile_cpu(model, threads, hint)
        check_hint(compiled, hint, f"OpenVINO IR {artifact.path.name}")
        request = compiled.create_infer_request()
        inputs = list(compiled.inputs)
        first = inputs[0].get_partial_shape() if inputs else None
        fixed = (first[0].get_length() if first is not None and first.rank.is_static and len(first)
                 and first[0].is_static else None)
        n = next(iter(feed.values())).shape[0] if feed else 0
        step = fixed if fixed and n > fixed and n % fixed == 0 else max(n, 1)
        names_of = [port_names(o) for o in compiled.outputs]
        feed_names = list(feed)
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, max(n, 1), step):
            tensors = {}
            for j, port in enumerate(inputs):
                name = next((k for k in feed_names if k in port_names(port)), None)
                name = name or (feed_names[j] if len(feed_names) == len(inputs) else None)
                if name is None:
                    raise ConversionError(f"OpenVINO IR input {sorted(port_names(port))} matches no source input")
                dtype = np.dtype(port.get_element_type().to_dtype())
                tensors[port] = np.ascontiguousarray(feed[name][i : i + step].astype(dtype, copy=False))
            got = request.infer(tensors)
            part = {}
            for backend, ref, _ in ports:
                k = next((j for j, names in enumerate(names_of) if ref in names), None)
                if k is not None:
                    part[backend] = np.array(got[compiled.outputs[k]], copy=True).astype(np.float32)
            parts.append(part)
        for backend, _, _ in ports:
            if all(backend in p for p in parts):
                result.tensors[backend] = np.concatenate([p[backend] for p in parts], axis=0)
        result.order = [b for b in result.order if b in result.tensors]
        return result


def _constant_only(op: Any) -> bool:
    """An op computed from constants alone (weight decompression of an FP16 IR): weights, not activations."""
    return all(v.get_node().get_type_name() == "Constant" for v in op.input_values()) if op.inputs() else False


def register(registry: Registry) -> None:
    registry.add_runner(OpenvinoRunner)
