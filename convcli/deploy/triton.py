"""A Triton Inference Server model repository from a run's passed artifacts (``convcli package``).

Layout (docs/deploy.md): one Triton model per passed (format, precision) artifact, named
``<name>_<format>_<precision>``::

    REPO/<model>/config.pbtxt       platform/backend, inputs/outputs read from the model file, instance_group,
                                    version_policy, optional dynamic_batching, model_warmup
    REPO/<model>/<N>/model.onnx     (or model.xml + model.bin, or model.plan): version N, never overwritten
    REPO/<model>/warmup/<input>     one sample of the run's parity data, raw row-major bytes, per input
    REPO/<model>/README.md          model card: parity, accuracy, latency, provenance of every version
    REPO/<model>/convcli-versions.json  what the card is built from (one entry per version convcli wrote)

Every model is staged in a hidden folder inside REPO/<model>/ and checked there (config.pbtxt parsed against
Triton's schema, then every name, type and shape compared with what the model file declares when its runtime
loads it); only then are the version folder and the files beside it renamed into place, so a failed package run
leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcli.core.errors import ConversionError, InputError
from convcli.core.fsutil import sha256_file
from convcli.core.lazy import is_installed
from convcli.recipes.schema import PackageSpec, parse_version_policy
from convcli.reports.model import ArtifactReport, Report
from convcli.sources.objects import PREFIX as OBJECT_PREFIX

CONFIG = "config.pbtxt"
CARD = "README.md"
VERSIONS = "convcli-versions.json"
STAGING_PREFIX = ".convcli-staging-"


@dataclass(frozen=True)
class Backend:
    """How Triton serves one artifact format."""

    platform: str
    backend: str
    filename: str
    kind: str  # instance_group kind
    files: tuple[str, ...]  # suffixes of the artifact files that go into the version folder


BACKENDS = {
    "onnx": Backend("onnxruntime_onnx", "onnxruntime", "model.onnx", "KIND_CPU", (".onnx", ".data")),
    "openvino": Backend("", "openvino", "model.xml", "KIND_CPU", (".xml", ".bin")),
    "tensorrt": Backend("tensorrt_plan", "tensorrt", "model.plan", "KIND_GPU", (".plan", ".engine")),
}
NOT_SERVED = {
    "ncnn": "Triton has no NCNN backend",
    "tflite": "NVIDIA's Triton containers have no TensorFlow Lite backend",
}
# Triton data types by numpy dtype name (model_config.proto DataType), and back for warm-up files.
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
                "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64",
                "bool": "TYPE_BOOL", "string": "TYPE_STRING"}
NUMPY_OF = {v: k for k, v in TRITON_TYPES.items()}


@dataclass(frozen=True)
class Tensor:
    """One input or output as Triton sees it: ``dims`` is the full shape, -1 for a dynamic dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass
class ModelIO:
    inputs: list[Tensor]
    outputs: list[Tensor]
    batch_max: int | None = None  # the largest batch the file accepts (a TensorRT engine's profile); None: any


def batch_limit_problem(model: str, max_batch_size: int, io: ModelIO, file: str) -> str | None:
    """A Triton max_batch_size above what the model file accepts: Triton would batch requests the engine
    rejects (TensorRT builds one optimization profile, whose max batch is fixed at build time)."""
    if io.batch_max is None or max_batch_size <= io.batch_max:
        return None
    return (f"{model}: max_batch_size is {max_batch_size} but {file} accepts batches up to {io.batch_max} (its "
            f"TensorRT optimization profile); package with --max-batch-size {io.batch_max}, or rebuild the engine "
            f"with -O 'TensorrtFromOnnx.profile_max={{<batch dim name>: {max_batch_size}}}'")


@dataclass
class PackagedModel:
    name: str
    artifact: str
    version: int
    path: Path
    platform: str
    max_batch_size: int
    inputs: int
    outputs: int
    warmup: str  # "1 sample of <parity data>" or why there is none


@dataclass
class PackageResult:
    repo: Path
    models: list[PackagedModel] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (artifact id, reason)


# ---- reading the artifact (what config.pbtxt is written from) -------------------------------------------------

_ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
               7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
               13: "TYPE_UINT64", 16: "TYPE_BF16"}
_OPENVINO_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "f64": "TYPE_FP64", "bf16": "TYPE_BF16", "i8": "TYPE_INT8",
                   "i16": "TYPE_INT16", "i32": "TYPE_INT32", "i64": "TYPE_INT64", "u8": "TYPE_UINT8",
                   "u16": "TYPE_UINT16", "u32": "TYPE_UINT32", "u64": "TYPE_UINT64", "boolean": "TYPE_BOOL",
                   "string": "TYPE_STRING"}
_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
              "tensor(bfloat16)": "TYPE_BF16", "tensor(int8)": "TYPE_INT8", "tensor(int16)": "TYPE_INT16",
              "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8",
              "tensor(uint16)": "TYPE_UINT16", "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64",
              "tensor(bool)": "TYPE_BOOL", "tensor(string)": "TYPE_STRING"}


def _type(table: dict[Any, str], key: Any, where: str) -> str:
    if key not in table:
        raise ConversionError(f"{where}: element type {key} has no Triton data type")
    return table[key]


def _read_onnx(path: Path) -> ModelIO:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def tensor(v: Any) -> Tensor:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return Tensor(v.name, _type(_ONNX_TYPES, t.elem_type, f"{path.name} {v.name}"), dims)

    return ModelIO([tensor(v) for v in graph.input if v.name not in initializers], [tensor(v) for v in graph.output])


def _openvino_port(port: Any, where: str) -> Tensor:
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
    return Tensor(port.get_any_name(), _type(_OPENVINO_TYPES, port.get_element_type().get_type_name(),
                                             f"{where} {port.get_any_name()}"), dims)


def _read_openvino(path: Path) -> ModelIO:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return ModelIO([_openvino_port(p, path.name) for p in model.inputs],
                   [_openvino_port(p, path.name) for p in model.outputs])


def _read_tensorrt(path: Path) -> ModelIO:
    """The engine's I/O tensors (needs the tensorrt package and a GPU to deserialize the plan)."""
    try:
        import numpy as np
        import tensorrt as trt
    except ImportError as exc:
        raise ConversionError(f"{path.name}: cannot read a TensorRT engine here ({exc})",
                              hint="run convcli package on the machine that built the engine") from None
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ConversionError(f"{path.name}: TensorRT could not deserialize the engine")
    io = ModelIO([], [])
    batch_max: list[int] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        tensor = Tensor(name, _type(TRITON_TYPES, dtype, f"{path.name} {name}"),
                        tuple(int(d) for d in engine.get_tensor_shape(name)))
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (io.inputs if is_input else io.outputs).append(tensor)
        if is_input and tensor.dims and tensor.dims[0] == -1 and engine.num_optimization_profiles > 0:
            batch_max.append(int(engine.get_tensor_profile_shape(name, 0)[2][0]))  # (min, opt, max) shapes
    io.batch_max = min(batch_max) if batch_max else None
    return io


READERS: dict[str, Callable[[Path], ModelIO]] = {"onnx": _read_onnx, "openvino": _read_openvino,
                                                 "tensorrt": _read_tensorrt}


# ---- what the runtime declares (what config.pbtxt is checked against) -----------------------------------------

def _runtime_onnx(path: Path) -> ModelIO:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def tensor(arg: Any) -> Tensor:
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        return Tensor(arg.name, _type(_ORT_TYPES, arg.type, f"{path.name} {arg.name}"), dims)

    return ModelIO([tensor(a) for a in session.get_inputs()], [tensor(a) for a in session.get_outputs()])


def _runtime_openvino(path: Path) -> ModelIO:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    return ModelIO([_openvino_port(p, path.name) for p in compiled.inputs],
                   [_openvino_port(p, path.name) for p in compiled.outputs])


RUNTIMES: dict[str, Callable[[Path], ModelIO]] = {"onnx": _runtime_onnx, "openvino": _runtime_openvino,
                                                  "tensorrt": _read_tensorrt}


# ---- config.pbtxt -----------------------------------------------------------------------------------------------

def batch_dimension(io: ModelIO) -> bool:
    """Triton batching applies when every input and output has a dynamic first dimension."""
    tensors = io.inputs + io.outputs
    return bool(tensors) and all(t.dims and t.dims[0] == -1 for t in tensors)


def build_config(name: str, fmt: str, io: ModelIO, spec: PackageSpec,
                 warmup: dict[str, tuple[str, tuple[int, ...]]] | None) -> Any:
    """The ``inference.ModelConfig`` message for one model. ``warmup``: input name -> (file name, sample shape)."""
    from convcli.deploy.triton_schema import enum_value, model_config_class

    backend = BACKENDS[fmt]
    config = model_config_class()()
    config.name = name
    if backend.platform:
        config.platform = backend.platform
    config.backend = backend.backend
    batching = batch_dimension(io)
    config.max_batch_size = spec.max_batch_size if batching else 0
    problem = batch_limit_problem(name, config.max_batch_size, io, backend.filename)
    if problem is not None:
        raise InputError(problem)
    kind, numbers = parse_version_policy(spec.version_policy)
    if kind == "all":
        config.version_policy.all.SetInParent()
    elif kind == "latest":
        config.version_policy.latest.num_versions = numbers[0]
    else:
        config.version_policy.specific.versions.extend(numbers)
    for tensors, field_name in ((io.inputs, "input"), (io.outputs, "output")):
        for t in tensors:
            entry = getattr(config, field_name).add()
            entry.name = t.name
            entry.data_type = enum_value("DataType", t.data_type)
            entry.dims.extend(t.dims[1:] if batching else t.dims)
    group = config.instance_group.add()
    group.count = spec.instance_count
    group.kind = enum_value("ModelInstanceGroup.Kind", backend.kind)
    if spec.dynamic_batching and batching:
        config.dynamic_batching.SetInParent()
    if warmup:
        w = config.model_warmup.add()
        w.name = "convcli_parity_sample"
        w.batch_size = 1
        types = {t.name: t.data_type for t in io.inputs}
        for input_name, (file_name, shape) in warmup.items():
            entry = w.inputs[input_name]
            entry.data_type = enum_value("DataType", types[input_name])
            entry.dims.extend(shape[1:] if batching else shape)
            entry.input_data_file = file_name
    return config


def config_text(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(path: Path) -> Any:
    """Parse a config.pbtxt against Triton's schema; a ParseError names the line."""
    from google.protobuf import text_format

    from convcli.deploy.triton_schema import model_config_class

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_class()())
    except text_format.ParseError as exc:
        raise ConversionError(f"{path}: not a valid Triton model config: {exc}") from None


def served_versions(config: Any, available: list[int]) -> list[int]:
    """The versions Triton loads under ``config.version_policy`` among ``available`` (Triton's default: latest 1)."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        return sorted(v for v in available if v in set(policy.specific.versions))
    count = policy.latest.num_versions if which == "latest" else 1
    return sorted(available)[-max(count, 1):]


def check_model(model_dir: Path, name: str | None = None, versions: dict[int, Path] | None = None) -> list[str]:
    """Problems of one Triton model folder (empty: none): config.pbtxt parses against Triton's schema, its
    version_policy serves at least one version, and every input/output name, data type and shape in it is what the
    model file of every served version declares when its runtime loads it; warm-up files have the size their dims
    need. ``versions`` adds version folders kept elsewhere (version -> folder). Each problem names the model and
    the field."""
    model = name or model_dir.name
    config = parse_config(model_dir / CONFIG)
    fmt = next((f for f, b in BACKENDS.items() if b.backend == config.backend or
                (b.platform and b.platform == config.platform)), None)
    if fmt is None:
        return [f"{model}: platform '{config.platform}' / backend '{config.backend}' is not one convcli writes"]
    folders = {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    folders.update(versions or {})
    served = served_versions(config, list(folders))
    if not served:
        return [f"{model}: version_policy serves none of the versions here ({sorted(folders) or 'none'})"]
    problems = []
    if config.name != model:
        problems.append(f"{model}: name is '{config.name}', the folder is '{model}'")
    for version in served:
        file = folders[version] / (config.default_model_filename or BACKENDS[fmt].filename)
        if not file.is_file():
            problems.append(f"{model}: version {version} has no {file.name}")
            continue
        problems += _compare_io(model, config, RUNTIMES[fmt](file), f"version {version} {file.name}")
    problems += _check_warmup(model_dir, model, config)
    return problems


def _compare_io(model: str, config: Any, declared: ModelIO, file: str) -> list[str]:
    from convcli.deploy.triton_schema import enum_name

    problems = []
    batched = config.max_batch_size > 0
    if batched and not batch_dimension(declared):
        problems.append(f"{model}: max_batch_size is {config.max_batch_size} but {file} has no dynamic batch "
                        f"dimension on every input and output")
    limit = batch_limit_problem(model, config.max_batch_size, declared, file) if batched else None
    if limit is not None:
        problems.append(limit)
    for field_name, tensors in (("input", declared.inputs), ("output", declared.outputs)):
        entries = list(getattr(config, field_name))
        if [e.name for e in entries] != [t.name for t in tensors]:
            problems.append(f"{model}: {field_name} names are {[e.name for e in entries]} but {file} declares "
                            f"{[t.name for t in tensors]}")
            continue
        for i, (e, t) in enumerate(zip(entries, tensors, strict=True)):
            data_type = enum_name("DataType", e.data_type)
            if data_type != t.data_type:
                problems.append(f"{model}: {field_name}[{i}] '{e.name}' data_type is {data_type} but {file} "
                                f"declares {t.data_type}")
            dims = ((-1,) if batched else ()) + tuple(e.dims)
            if dims != t.dims:
                problems.append(f"{model}: {field_name}[{i}] '{e.name}' dims are {list(e.dims)}"
                                f"{' (plus the batch)' if batched else ''} but {file} declares {list(t.dims)}")
    return problems


def _check_warmup(model_dir: Path, model: str, config: Any) -> list[str]:
    from convcli.deploy.triton_schema import enum_name

    problems = []
    for w in config.model_warmup:
        for input_name, entry in w.inputs.items():
            data = model_dir / "warmup" / entry.input_data_file
            if not data.is_file():
                problems.append(f"{model}: model_warmup '{w.name}' input '{input_name}' file {data.name} is missing")
                continue
            count = 1
            for d in entry.dims:
                count *= d
            item = _itemsize(enum_name("DataType", entry.data_type))
            expected = count * max(w.batch_size, 1) * item
            if item and data.stat().st_size != expected:
                problems.append(f"{model}: model_warmup '{w.name}' input '{input_name}' file has "
                                f"{data.stat().st_size} bytes, dims {list(entry.dims)} need {expected}")
    return problems


def _itemsize(data_type: str) -> int:
    import numpy as np

    name = NUMPY_OF.get(data_type, "")
    return 0 if name in ("", "string", "bfloat16") else np.dtype(name).itemsize


def check_repository(repo: Path) -> dict[str, list[str]]:
    """``check_model`` for every model folder (one holding a config.pbtxt) of a repository."""
    return {d.name: check_model(d) for d in sorted(Path(repo).iterdir()) if (d / CONFIG).is_file()}


# ---- the package run --------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
MODEL_SUFFIXES = (".py", ".onnx", ".pt", ".pth", ".pt2", ".keras", ".h5", ".pb", ".safetensors")


def model_name(base: str, artifact_id: str) -> str:
    """``<name>_<format>_<precision>`` (``onnx-fp32@OnnxFromPytorch`` adds ``_OnnxFromPytorch``)."""
    return _SAFE.sub("_", f"{base}_{artifact_id.replace('-', '_')}").strip("_")


def base_name(name: str | None, model: str) -> str:
    """The model name prefix: ``name`` (--name, or the recipe's name), else the source's file or module name
    (``models/digits_cnn.py:build`` -> digits_cnn, ``pkg.nets:resnet`` -> nets, ``model.onnx`` -> model)."""
    if not name and model.startswith(OBJECT_PREFIX):  # an in-memory model: its class, not the digest in its token
        name = model.removeprefix(OBJECT_PREFIX).split()[1] if len(model.split()) > 2 else "model"
    if not name:
        file_part = model.rsplit(":", 1)[0] if ":" in model else model
        path = Path(file_part)
        is_file = "/" in file_part or path.suffix.lower() in MODEL_SUFFIXES
        name = path.stem if is_file else file_part.rsplit(".", 1)[-1]  # package.module:factory -> module
    return _SAFE.sub("_", name).strip("_") or "model"


def load_run(outdir: Path) -> tuple[Report, dict[str, Any]]:
    """The run's report and manifest; InputError (exit 2) when either is missing or unreadable."""
    from convcli.reports.render import load_report

    outdir = Path(outdir)
    if not outdir.exists():
        raise InputError(f"{outdir} does not exist", hint="give the -o folder of a convcli convert/run")
    report = load_report(outdir)
    folder = outdir if outdir.is_dir() else outdir.parent
    manifest_file = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{manifest_file}: cannot read the run's manifest ({type(exc).__name__})",
                         hint="package reads OUTDIR/report.json and OUTDIR/manifest.json of one run") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_file} is not a convcli manifest")
    return report, manifest


def next_version(model_dir: Path) -> int:
    numbers = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(numbers, default=0) + 1


def _artifact_files(outdir: Path, row: ArtifactReport) -> list[Path]:
    files = [outdir / f for f in row.files] or ([outdir / row.path] if row.path else [])
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise InputError(f"artifact {row.id}: file {', '.join(missing) or '(none listed)'} is missing",
                         hint="package the OUTDIR of a run as it was written; re-run the conversion")
    return files


def warmup_sample(report: Report, manifest: dict[str, Any], io: ModelIO) -> tuple[dict[str, Any], str]:
    """One sample (the model's static batch, or 1) of the run's parity data per model input, cast to the model's
    type, from the same data the run compared on; ({}, why not) when it cannot be rebuilt."""
    import numpy as np

    from convcli.core.tensors import parse_input_spec
    from convcli.parity.data import ImagePreprocess, load_data, random_data

    data = manifest.get("job", {}).get("data", {}) or {}
    try:
        specs = [parse_input_spec(text) for text in report.source.inputs]
    except InputError as exc:
        return {}, f"no warm-up: the report's inputs do not parse ({exc.one_line()})"
    samples = int(data.get("samples") or 16)
    if data.get("parity"):
        path = Path(data["parity"])
        if not path.exists():
            return {}, f"no warm-up: the run's parity data {path} is not here"
        pre = ImagePreprocess.model_validate(data.get("preprocess") or {})
        dataset = load_data(path, specs, pre, samples)
    else:
        dataset = random_data(specs, samples, int(data.get("seed") or 0))
    batched = batch_dimension(io)
    out: dict[str, Any] = {}
    for i, t in enumerate(io.inputs):
        array = dataset.inputs.get(t.name)
        if array is None and i < len(specs):
            array = dataset.inputs.get(specs[i].name)
        if array is None:
            return {}, f"no warm-up: input '{t.name}' is not in the parity data"
        first = 1 if batched or t.dims[0] == -1 else t.dims[0]
        array = array[:first]
        if len(t.dims) != array.ndim or any(d not in (-1, s) for d, s in zip(t.dims, array.shape, strict=True)):
            return {}, f"no warm-up: parity data of '{t.name}' is {list(array.shape)}, the model takes {list(t.dims)}"
        dtype = NUMPY_OF.get(t.data_type)
        if dtype in (None, "string", "bfloat16"):
            return {}, f"no warm-up: {t.data_type} input '{t.name}'"
        out[t.name] = np.ascontiguousarray(array.astype(dtype))
    return out, f"1 sample of the parity data ({dataset.description})"


@dataclass
class _Staged:
    name: str
    row: ArtifactReport
    model_dir: Path
    staging: Path
    version: int
    created_dir: bool
    result: PackagedModel


def package(outdir: Path, spec: PackageSpec) -> PackageResult:
    """Write the passed artifacts of the run in ``outdir`` into the Triton repository ``spec.triton``.

    Raises InputError (exit 2, nothing written) when the run has no report, manifest or passed artifact, or the
    repository path is not a folder; ConversionError (exit 3, nothing written) when a model's config does not
    match its model file.
    """
    outdir = Path(outdir)
    repo = Path(spec.triton)
    report, manifest = load_run(outdir)
    folder = outdir if outdir.is_dir() else outdir.parent
    if repo.exists() and not repo.is_dir():
        raise InputError(f"--triton {repo} is a file", hint="give a folder for the Triton model repository")
    result = PackageResult(repo)
    rows = []
    for row in report.artifacts:
        if row.status != "passed":
            result.skipped.append((row.id, f"{row.status}{': ' + row.error if row.error else ''}"))
        elif row.intermediate:  # planner.py: an input another target is built from, not a deployable of its own
            result.skipped.append((row.id, f"an intermediate file for {row.id.rsplit('-for-', 1)[1]}, not a "
                                           "deployable of its own"))
        elif row.format in NOT_SERVED:
            result.skipped.append((row.id, NOT_SERVED[row.format]))
        elif row.format not in BACKENDS:
            result.skipped.append((row.id, f"Triton has no backend for {row.format}"))
        elif row.format == "tensorrt" and not is_installed("tensorrt"):
            result.skipped.append((row.id, "tensorrt is not installed here to read the engine's inputs and outputs "
                                           "(package on the machine that built it)"))
        else:
            rows.append(row)
    if not rows:
        why = "; ".join(f"{i}: {r}" for i, r in result.skipped) or "the report lists no artifacts"
        raise InputError(f"{folder / 'report.json'} has no passed artifact Triton can serve ({why})",
                         hint="package a run whose onnx, openvino or tensorrt artifacts passed")
    base = base_name(spec.name or report.name,
                     str(manifest.get("job", {}).get("source", {}).get("model") or report.source.spec))
    sources = {row.id: _artifact_files(folder, row) for row in rows}
    for row in rows:
        model_dir = repo / model_name(base, row.id)
        if model_dir.exists() and not model_dir.is_dir():
            raise InputError(f"{model_dir} is a file", hint="remove it or package under another --name")
    created_dirs = [p for p in [repo, *repo.parents] if not p.exists()]  # deepest first, removed if left empty
    repo.mkdir(parents=True, exist_ok=True)
    staged: list[_Staged] = []
    try:
        for row in rows:
            staged.append(_stage(row, sources[row.id], repo, base, report, manifest, spec))
        for s in staged:
            older = {int(p.name): p for p in s.model_dir.iterdir() if p.is_dir() and p.name.isdigit()}
            problems = check_model(s.staging, s.name, older)
            if problems:
                raise ConversionError(f"triton config check failed: {'; '.join(problems)}")
    except BaseException:
        for s in staged:
            shutil.rmtree(s.staging, ignore_errors=True)
            if s.created_dir and s.model_dir.is_dir() and not any(s.model_dir.iterdir()):
                s.model_dir.rmdir()
        for p in created_dirs:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    for s in staged:
        _commit(s)
        result.models.append(s.result)
    return result


def _stage(row: ArtifactReport, files: list[Path], repo: Path, base: str, report: Report,
           manifest: dict[str, Any], spec: PackageSpec) -> _Staged:
    """Everything one model gets this run, written into REPO/<model>/.convcli-staging-*/ (same file system, so
    the commit is renames)."""
    name = model_name(base, row.id)
    model_dir = repo / name
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        return _fill(name, row, files, model_dir, staging, created, report, manifest, spec)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise


def _fill(name: str, row: ArtifactReport, files: list[Path], model_dir: Path, staging: Path, created: bool,
          report: Report, manifest: dict[str, Any], spec: PackageSpec) -> _Staged:
    import numpy as np

    backend = BACKENDS[row.format]
    version = next_version(model_dir)
    vdir = staging / str(version)
    vdir.mkdir()
    primary = Path(row.path).name if row.path else files[0].name
    for f in files:
        # The primary file takes the backend's default name; its companions keep theirs, except the OpenVINO
        # weights, which the IR names after the .xml.
        if f.name == primary:
            dest = backend.filename
        elif row.format == "openvino" and f.suffix == ".bin":
            dest = Path(backend.filename).with_suffix(".bin").name
        else:
            dest = f.name
        shutil.copy2(f, vdir / dest)
    io = READERS[row.format](vdir / backend.filename)
    warm: dict[str, tuple[str, tuple[int, ...]]] = {}
    note = "no warm-up (package.warmup is off)"
    if spec.warmup:
        arrays, note = warmup_sample(report, manifest, io)
        if arrays:
            (staging / "warmup").mkdir()
            for input_name, array in arrays.items():
                file_name = _SAFE.sub("_", input_name) or "input"
                (staging / "warmup" / file_name).write_bytes(np.asarray(array).tobytes(order="C"))
                warm[input_name] = (file_name, tuple(array.shape))
    config = build_config(name, row.format, io, spec, warm or None)
    (staging / CONFIG).write_text(config_text(config), encoding="utf-8")
    entry = _version_entry(version, row, report, manifest, vdir)
    history = _read_versions(model_dir) + [entry]
    (staging / VERSIONS).write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    (staging / CARD).write_text(model_card(name, row, history, config, note), encoding="utf-8")
    result = PackagedModel(name, row.id, version, model_dir, backend.platform or backend.backend,
                           config.max_batch_size, len(io.inputs), len(io.outputs), note)
    return _Staged(name, row, model_dir, staging, version, created, result)


def _commit(s: _Staged) -> None:
    """Rename the staged version folder into place (never over an existing one), then replace the files beside
    it (config, warm-up data, card)."""
    target = s.model_dir / str(s.version)
    if target.exists():
        shutil.rmtree(s.staging, ignore_errors=True)
        raise ConversionError(f"{target} appeared while packaging (another package run?): nothing of "
                              f"{s.name} was changed", hint="run convcli package again")
    os.rename(s.staging / str(s.version), target)
    warm_new, warm_old = s.staging / "warmup", s.model_dir / "warmup"
    if warm_old.exists():
        trash = s.staging / "warmup.old"
        os.rename(warm_old, trash)
    if warm_new.exists():
        os.rename(warm_new, warm_old)
    for name in (VERSIONS, CARD, CONFIG):  # config last: it is what Triton reads
        os.replace(s.staging / name, s.model_dir / name)
    shutil.rmtree(s.staging, ignore_errors=True)


def _read_versions(model_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((model_dir / VERSIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def _version_entry(version: int, row: ArtifactReport, report: Report, manifest: dict[str, Any],
                   vdir: Path) -> dict[str, Any]:
    from convcli.reports.markdown import fmt_accuracy, fmt_ms, speedup_cell, tolerance_line

    p = row.parity
    parity = (f"{'passed' if p.passed else 'FAILED'} on {p.samples} samples of {report.settings.parity_data}: "
              f"max abs err {p.max_abs_err:.3g}, cosine min {p.cosine_min:.6f}"
              + (f", top-1 agreement {p.top1_agreement:.4f}" if p.top1_agreement is not None else "")
              + f" (tolerance: {tolerance_line(row)})") if p else "not measured"
    if row.accuracy is not None:
        accuracy = (f"{fmt_accuracy(row.accuracy, row.accuracy_drop)} top-1 on {report.settings.accuracy_samples} "
                    f"samples of {report.settings.accuracy_data} (source "
                    f"{fmt_accuracy(report.source.accuracy, None)})")
    else:
        accuracy = "not measured (no labelled set)"
    lat = row.latency_ms
    latency = (f"p50 {fmt_ms(lat.p50)} ms (p25 {fmt_ms(lat.p25)}, p75 {fmt_ms(lat.p75)}) at batch {lat.batch}, "
               f"{lat.runs} runs, speedup {speedup_cell(row)} vs the source timed in the same rounds; "
               f"{row.runner or ''}" + (f", {row.measured.cpu}, run {row.measured.run_id}" if row.measured else "")
               ) if lat else "not measured"
    inputs = manifest.get("inputs_sha256") or {}
    outputs = manifest.get("outputs_sha256") or {}
    return {
        "version": version, "artifact": row.id, "chain": row.chain, "report_created": report.created,
        "command": report.command, "convcli_version": report.convcli_version,
        "parity": parity, "accuracy": accuracy, "latency": latency,
        "source": report.source.spec,
        "source_sha256": {k: v for k, v in inputs.items() if k in ("model", "weights")},
        "data_sha256": {k: v for k, v in inputs.items() if k not in ("model", "weights")},
        "artifact_sha256": {f: outputs.get(f) for f in row.files},
        "files_sha256": {f.name: sha256_file(f) for f in sorted(vdir.iterdir()) if f.is_file()},
        "packages": manifest.get("packages") or {},
    }


def _precision_note(row: ArtifactReport) -> list[str]:
    """OpenVINO picks its own inference precision (bf16 by default on CPUs with native bf16) and does not apply the
    hint recorded in the IR: the card says which one the checks above were made at."""
    if row.format != "openvino":
        return []
    hint = "bf16" if row.precision == "bf16" else "f32"
    return [f"- checked at OpenVINO INFERENCE_PRECISION_HINT={hint}: compile with that hint to get these numbers "
            f"(OpenVINO's default on a CPU with native bf16 is bf16)"]


def model_card(name: str, row: ArtifactReport, history: list[dict[str, Any]], config: Any, warmup: str) -> str:
    """REPO/<model>/README.md: what the newest version is, how it was checked, where it came from; then every
    version convcli wrote."""
    latest = history[-1]
    lines = [f"# {name}", "",
             f"Triton model written by `convcli package` from artifact `{row.id}` ({row.chain}).", "",
             f"- serving: {config.platform or config.backend} (backend `{config.backend}`), max_batch_size "
             f"{config.max_batch_size}, {len(config.input)} input(s), {len(config.output)} output(s); warm-up: "
             f"{warmup}",
             f"- newest version: {latest['version']} (from the run of {latest['report_created']}: "
             f"`{latest['command']}`)", *_precision_note(row), "",
             "## Checks of the newest version (from the run's report.json)", "",
             f"- parity: {latest['parity']}",
             f"- accuracy: {latest['accuracy']}",
             f"- latency: {latest['latency']}", "",
             "## Provenance (from the run's manifest.json)", ""]
    for key, value in latest["source_sha256"].items():
        lines.append(f"- source {key} sha256: `{value}`")
    for key, value in latest["data_sha256"].items():
        lines.append(f"- {key} data sha256: `{value}`")
    for key, value in latest["artifact_sha256"].items():
        lines.append(f"- artifact {key} sha256: `{value}`")
    lines.append("- tools: " + ", ".join(f"{k} {v}" for k, v in sorted(latest["packages"].items())))
    lines.append(f"- convcli {latest['convcli_version']}")
    lines += ["", "## Versions", "", "| version | artifact | run | parity |", "|---|---|---|---|"]
    for e in reversed(history):
        lines.append(f"| {e['version']} | {e['artifact']} | {e['report_created']} | "
                     f"{str(e['parity']).split(':')[0]} |")
    lines += ["", "Serve: `tritonserver --model-repository <this repository>` (docs/deploy.md).", ""]
    return "\n".join(lines)
