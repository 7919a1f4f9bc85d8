"""ONNX -> TensorRT serialized engine (``model.plan``), GPU only.

Precision is a property of the ONNX input, never a builder switch: the network is created STRONGLY_TYPED, so
TensorRT follows the graph's own types (TensorRT 11 removed the FP16/INT8 builder flags and the INT8
calibrator). The planner (``Converter.input_precision``) puts the precision step before this one, in ONNX:
- fp32: the simplified fp32 ONNX, built with TF32 off (``tf32=false``: fp32 rows are fp32 arithmetic);
- fp16: ``ConvertOnnxFp16``'s mixed-precision ONNX (fp16 weights and activations, fragile ops kept in fp32);
- int8: ``QuantizeOnnxInt8`` with ``qdq_form=tensorrt``: explicit QuantizeLinear/DequantizeLinear, int8 with
  zero point 0 (symmetric) for activations, per-channel int8 weights as float initializers with Q/DQ pairs and
  biases left in float (TensorRT's parser rejects DequantizeLinear of int32 biases).
Those ONNX files are rows of their own (``onnx-int8-for-tensorrt``, ``onnx-fp16-for-tensorrt``), checked by
ONNX Runtime wherever convcli runs; ``check_onnx_for_tensorrt`` checks statically, before a build, that the
file is what TensorRT builds from.

Dynamic dimensions get one optimization profile (``optimization_profile``): min 1, opt the example size, max
``profile_max[name]`` or ``max(2 x example, 32)``. The build runs in a child process with a timeout
(``core.isolation``) and reuses a timing cache kept in convcli's cache folder, one file per GPU model and
TensorRT version. The step's cache key carries the GPU model, driver and TensorRT version (``machine_key``): an
engine is only valid on the GPU and TensorRT it was built with.

Without the ``tensorrt`` package or an NVIDIA GPU the step is unavailable, with the reason, and the target
stays in the report as ``unavailable: <reason>``. Nothing here ever writes an engine it did not build. This
module has not been run on a GPU in this project's sessions: ``tests/test_tensorrt.py`` builds and runs a
tiny engine and skips, naming the reason, where that cannot run.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, UnavailableError
from convcli.core.isolation import run_python
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.step import Availability, Converter, StepContext
from convcli.core.tensors import TensorSpec

DEFAULT_PROFILE_MAX = 32
# What the planner asks of the ONNX precision passes for TensorRT (see the module doc).
TENSORRT_INT8 = {"mode": "static", "qdq_form": "tensorrt", "activation_type": "int8", "symmetric_activations": True,
                 "per_channel": True}
CHILD = """
import json
from convcli.converters.onnx_to_tensorrt import build_engine
print("convcli-tensorrt:" + json.dumps(build_engine(json.loads({job!r}))))
"""


class TensorrtOptions(BaseModel):
    """Options of TensorrtFromOnnx (``-O TensorrtFromOnnx.KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="Set by the planner from the target; the ONNX input must match it (checked).")
    workspace_mb: int = Field(default=1024, ge=16, description="Builder workspace memory pool limit.")
    profile_max: dict[str, int] = Field(
        default_factory=dict, description="Largest size per named dynamic dimension in the optimization profile "
                                          "(e.g. {batch: 64}); default max(2 x example size, 32).")
    tf32: bool = Field(default=False, description="Allow TF32 for fp32 math (off: fp32 rows are fp32).")
    timing_cache: bool = Field(default=True, description="Reuse TensorRT's timing cache from convcli's cache folder.")
    timeout_s: float | None = Field(default=None, gt=0, description="Build time limit; default: the job's.")


def gpu_identity() -> dict[str, str]:
    """GPU model(s), driver and CUDA compute capability from nvidia-smi, else the driver's /proc files (a
    container without nvidia-smi), without importing any CUDA package; empty when neither lists a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return _proc_gpu_identity()
    try:
        proc = subprocess.run([smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    rows = [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not rows:
        return {}
    return {"gpu": "; ".join(r[0] for r in rows), "driver": rows[0][1] if len(rows[0]) > 1 else "",
            "compute_capability": rows[0][2] if len(rows[0]) > 2 else ""}


def _proc_gpu_identity(root: Path = Path("/proc/driver/nvidia")) -> dict[str, str]:
    models = []
    for info in sorted(root.glob("gpus/*/information")):
        found = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.MULTILINE)
        if found:
            models.append(found.group(1).strip())
    if not models:
        return {}
    version = root / "version"
    driver = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", version.read_text(errors="replace")) \
        if version.is_file() else None
    return {"gpu": "; ".join(models), "driver": driver.group(1) if driver else "", "compute_capability": ""}


@functools.cache
def tensorrt_availability() -> Availability:
    """Why TensorRT cannot run here, checked without importing anything heavy when it is simply absent."""
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "python package tensorrt not installed (needs NVIDIA's wheels and a GPU)",
                            {"tensorrt": None})
    try:
        import tensorrt
    except Exception as exc:  # the bindings wheel without its libraries fails here
        return Availability(False, f"tensorrt does not import: {' '.join(str(exc).split())[:200]}",
                            {"tensorrt": None})
    version = str(getattr(tensorrt, "__version__", "unknown"))
    if not (Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi")):
        return Availability(False, "no CUDA device: no NVIDIA GPU or driver on this machine", {"tensorrt": version})
    if not gpu_identity():
        return Availability(False, "no CUDA device: neither nvidia-smi nor /proc/driver/nvidia lists a GPU",
                            {"tensorrt": version})
    return Availability(True, "", {"tensorrt": version})


def optimization_profile(inputs: list[TensorSpec], profile_max: dict[str, int] | None = None
                         ) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """(min, opt, max) shapes for every input with a dynamic dimension: min 1, opt the example size, max
    ``profile_max[dim name]`` or max(2 x example, 32). Static inputs need no entry. ConversionError for a max
    below the example size or a name in ``profile_max`` that is no dynamic dimension of the inputs."""
    profile_max = profile_max or {}
    names = {d.name for s in inputs for d in s.shape if d.dynamic and d.name}
    unknown = sorted(set(profile_max) - names)
    if unknown:
        raise ConversionError(f"TensorrtFromOnnx: profile_max names {unknown}, which are not dynamic dimensions "
                              f"of the inputs", hint=f"dynamic dimensions: {', '.join(sorted(names)) or 'none'}")
    profile: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for spec in inputs:
        if not spec.dynamic_dims:
            continue
        low: list[int] = []
        opt: list[int] = []
        high: list[int] = []
        for d in spec.shape:
            if not d.dynamic:
                low.append(d.size)
                opt.append(d.size)
                high.append(d.size)
                continue
            top = profile_max.get(d.name or "", max(2 * d.size, DEFAULT_PROFILE_MAX))
            if top < d.size:
                raise ConversionError(f"TensorrtFromOnnx: profile_max {d.name}={top} is below the example size "
                                      f"{d.size} of input '{spec.name}'")
            low.append(1)
            opt.append(d.size)
            high.append(top)
        profile[spec.name] = (low, opt, high)
    return profile


def check_onnx_for_tensorrt(path: Path, precision: str) -> dict[str, Any]:
    """A static check (no TensorRT needed) that the ONNX file is what a strongly typed TensorRT build of
    ``precision`` expects: int8 has Q/DQ nodes, all int8 with zero point 0 and no DequantizeLinear of int32
    (biases) or uint8; fp16 has fp16 tensors; fp32 has neither. Returns what it counted; ConversionError
    listing every problem otherwise."""
    onnx = require("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute
              and n.attribute[0].name == "value"}
    tensors = {**consts, **inits}
    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    fp16 = sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    fp16 += sum(1 for n in graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute))
    problems: list[str] = []
    for node in (*q, *dq):
        zp = tensors.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None:
            z = numpy_helper.to_array(zp)
            if z.dtype.name != "int8":
                problems.append(f"{node.op_type} {node.name or node.output[0]} is {z.dtype.name}, not int8")
            elif z.any():
                problems.append(f"{node.op_type} {node.name or node.output[0]} has a non-zero zero point "
                                "(TensorRT quantizes symmetrically)")
        if node.op_type == "DequantizeLinear" and node.input[0] in tensors:
            kind = numpy_helper.to_array(tensors[node.input[0]]).dtype.name
            if kind not in ("int8",):
                problems.append(f"DequantizeLinear {node.name or node.output[0]} dequantizes a {kind} constant "
                                "(TensorRT rejects int32 biases and uint8 data)")
    if precision == "int8" and not (q and dq):
        problems.append("no QuantizeLinear/DequantizeLinear nodes: TensorRT builds int8 only from explicit Q/DQ")
    if precision != "int8" and (q or dq):
        problems.append(f"Q/DQ nodes in a {precision} input: the engine would be int8")
    if precision == "fp16" and not fp16:
        problems.append("no fp16 initializers or casts: a strongly typed build of this file is fp32")
    if precision == "fp32" and fp16:
        problems.append("fp16 initializers or casts in an fp32 input")
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ConversionError(f"TensorrtFromOnnx ({precision}): {path.name} is not a TensorRT {precision} input: "
                              + "; ".join(problems[:6]) + more,
                              hint="plan it through convcli (--to tensorrt:int8 uses QuantizeOnnxInt8 with "
                                   "qdq_form=tensorrt) or quantize with symmetric int8 Q/DQ and float biases")
    return {"quantize_nodes": len(q), "dequantize_nodes": len(dq), "fp16_tensors": fp16,
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)}


def build_engine(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a child process (it imports tensorrt): parse the ONNX into a strongly typed network, add the
    optimization profile, build with the timing cache, write the plan and the updated cache. Returns what was
    built, or {"error": ...}."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(job["onnx"]):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"error": f"TensorRT's ONNX parser rejected the model: {' '.join(errors.split())[:600]}"}
    profile_shapes: dict[str, list[list[int]]] = job["profile"]
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape) and tensor.name not in profile_shapes:
            return {"error": f"input '{tensor.name}' has dynamic shape {tuple(tensor.shape)} in the ONNX but its "
                             "input spec declares no dynamic dimension (name it, e.g. batch=8x...)"}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job["workspace_mb"]) << 20)
    if hasattr(trt.BuilderFlag, "TF32") and not job["tf32"]:
        config.clear_flag(trt.BuilderFlag.TF32)
    if profile_shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes.items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        config.add_optimization_profile(profile)
    cache_path = Path(job["timing_cache"]) if job.get("timing_cache") else None
    blob = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    timing = config.create_timing_cache(blob)
    config.set_timing_cache(timing, True)  # ignore_mismatch: a cache from another device is just not used
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return {"error": "TensorRT failed to build an engine (its log is quoted above)"}
    Path(job["plan"]).write_bytes(bytes(memoryview(serialized)))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        os.replace(tmp, cache_path)
    return {"tensorrt": trt.__version__, "strongly_typed": True, "tf32": bool(job["tf32"]),
            "layers": network.num_layers, "profile": profile_shapes,
            "timing_cache": {"path": str(cache_path) if cache_path else None, "reused": bool(blob)}}


class TensorrtFromOnnx(Converter):
    name = "TensorrtFromOnnx"
    source = "onnx"
    target = "tensorrt"
    summary = "TensorRT engine from ONNX, strongly typed (fp16 ONNX, explicit Q/DQ int8 ONNX); GPU only"
    requires = ("tensorrt",)
    precisions = ("fp32", "fp16", "int8")
    input_precision = {"fp16": {"ConvertOnnxFp16": {}}, "int8": {"QuantizeOnnxInt8": TENSORRT_INT8}}
    Options = TensorrtOptions

    @classmethod
    def availability(cls) -> Availability:
        return tensorrt_availability()

    @classmethod
    def machine_key(cls) -> dict[str, str] | None:
        """An engine is specific to the GPU model, driver and TensorRT version that built it."""
        avail = cls.availability()
        if not avail.available:
            return None
        return {**gpu_identity(), "tensorrt": str(avail.versions.get("tensorrt"))}

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        avail = self.availability()
        if not avail.available:
            raise UnavailableError(f"TensorRT unavailable: {avail.reason}")
        opts: TensorrtOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        checked = check_onnx_for_tensorrt(artifact.path, opts.precision)
        profile = optimization_profile(artifact.inputs, opts.profile_max)
        plan = ctx.workdir / "model.plan"
        cache = None
        if opts.timing_cache and ctx.cache_dir is not None:
            ident = self.machine_key() or {}
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{ident.get('gpu', 'gpu')}-trt{ident.get('tensorrt', '')}")
            cache = ctx.cache_dir / "tensorrt" / f"timing-{slug}.cache"
        job = {"onnx": str(artifact.path), "plan": str(plan), "profile": profile, "workspace_mb": opts.workspace_mb,
               "tf32": opts.tf32, "timing_cache": str(cache) if cache else None}
        proc = run_python(CHILD.format(job=json.dumps(job)), "TensorRT engine build", cwd=ctx.workdir,
                          timeout_s=opts.timeout_s or ctx.timeout_s)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("convcli-tensorrt:")), None)
        if line is None:
            raise ConversionError(f"TensorRT engine build printed no result: {proc.stderr.strip()[-400:]}")
        built = json.loads(line.partition(":")[2])
        if "error" in built:
            log = " | ".join(ln.strip() for ln in proc.stderr.splitlines() if ln.strip())[-400:]
            raise ConversionError(f"TensorrtFromOnnx: {built['error']}" + (f" [log: {log}]" if log else ""))
        if not plan.is_file() or plan.stat().st_size == 0:
            raise ConversionError("TensorrtFromOnnx: the build reported success but wrote no engine")
        details = {**built, "onnx_check": checked, "gpu": gpu_identity()}
        return Artifact(format="tensorrt", path=plan, files=[plan], inputs=artifact.inputs,
                        output_names=artifact.output_names, precision=opts.precision,
                        details={**artifact.details, "tensorrt": details})


def register(registry: Registry) -> None:
    registry.add_step(TensorrtFromOnnx)
