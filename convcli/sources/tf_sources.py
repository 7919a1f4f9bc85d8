"""TensorFlow sources: Keras 3 ``.keras`` archives, legacy ``.h5`` files (through tf_keras) and SavedModel
directories (their ``serving_default`` signature).

Input signatures (names, shapes with a dynamic batch named ``batch``, dtypes) are read from the model;
``--input`` overrides them by name. Output names and order are fixed here and used everywhere else (the
TensorFlow runner, the ONNX and TFLite converters): a Keras model's outputs in ``tf.nest.flatten`` order
(a dict's keys sorted), named after its output layers; a SavedModel signature's outputs sorted by key.

TensorFlow is imported only when such a source is loaded, with its C++ start-up lines captured and its
Python loggers set to errors. Its thread pools can only be sized before the runtime starts, so the
loader pins them (``SourceRequest.threads``) before the first operation runs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import InputError
from convcli.core.lazy import require
from convcli.core.quiet import captured_fd2
from convcli.core.registry import Registry
from convcli.core.source import SourceLoader, SourceRequest
from convcli.core.tensors import DEFAULT_DIM_SIZES, DTYPES, Dim, TensorSpec

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
SERVING = "serving_default"
# Keras 3 names unnamed inputs keras_tensor_<counter>: a name that changes from one load to the next.
_AUTO_NAME = re.compile(r"^keras_tensor(_\d+)?$")


# -- importing and configuring TensorFlow ---------------------------------------------------------------


def import_tensorflow(threads: int | None = None) -> Any:
    """``tensorflow``, imported quietly; with ``threads``, its thread pools pinned (see ``pin_threads``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        load_triton_first()
        with captured_fd2(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tf = require("tensorflow", "TensorFlow sources")
    tf = require("tensorflow", "TensorFlow sources")
    tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    if threads:
        pin_threads(tf, threads)
    return tf


def load_triton_first() -> None:
    """Import triton (a torch dependency) before TensorFlow, when it is installed.

    Loading triton's native library after TensorFlow's segfaults the process (measured: ``import tensorflow;
    import triton``), and ``torch.export``/the dynamo ONNX exporter imports triton through ``torch._dynamo``. A
    process that loads a Keras model and later exports a PyTorch model (``convcli run`` over several recipes,
    the test suite) would crash there. Loaded first, both work.
    """
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    with contextlib.suppress(Exception), captured_fd2(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("triton")


def pin_threads(tf: Any, threads: int) -> tuple[int, int]:
    """Set TensorFlow's intra-op pool to ``threads`` and its inter-op pool to 1, when the runtime has not
    started yet; return the sizes in effect (0 means TensorFlow's default: all cores)."""
    cfg = tf.config.threading
    with contextlib.suppress(RuntimeError):  # raised once the runtime runs: the earlier setting stays
        if cfg.get_intra_op_parallelism_threads() != threads:
            cfg.set_intra_op_parallelism_threads(threads)
        if cfg.get_inter_op_parallelism_threads() != 1:
            cfg.set_inter_op_parallelism_threads(1)
    return cfg.get_intra_op_parallelism_threads(), cfg.get_inter_op_parallelism_threads()


# -- the loaded model ---------------------------------------------------------------------------------

def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", str(dtype))
    return name.removeprefix("tf.")


def _dim_name(index: int, rank: int) -> str:
    if index == 0:
        return "batch"
    if rank == 4 and index in (1, 2):
        return ("height", "width")[index - 1]
    if rank in (2, 3) and index == 1:
        return "seq"
    return f"dim{index}"


def spec_from_shape(name: str, shape: Any, dtype: Any, where: str) -> TensorSpec:
    """A TensorSpec from a TensorFlow shape: unknown dims become named dynamic dims (dim 0 ``batch``)."""
    tf = sys.modules["tensorflow"]
    dtype_name = _dtype_name(dtype)
    if dtype_name not in DTYPES:
        raise InputError(f"{where}: input '{name}' has dtype {dtype_name}, which convcli cannot feed",
                         hint=f"supported dtypes: {', '.join(DTYPES)}")
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        raise InputError(f"{where}: input '{name}' has an unknown rank", hint="give --input NAME:SHAPE:DTYPE")
    dims = []
    for i, size in enumerate(shape.as_list()):
        if size is None or size < 0:
            dim_name = _dim_name(i, shape.rank)
            dims.append(Dim(name=dim_name, size=DEFAULT_DIM_SIZES.get(dim_name, 8)))
        else:
            dims.append(Dim(size=int(size)))
    return TensorSpec(name=name, shape=dims, dtype=dtype_name)


def tf_shape(spec: TensorSpec) -> list[int | None]:
    """The TensorFlow shape of a spec: dynamic dims unknown (None)."""
    return [None if d.dynamic else d.size for d in spec.shape]


class TfModel:
    """A loaded Keras model or SavedModel signature behind one calling convention: a list of arrays in
    ``inputs`` order in, a list of arrays in ``output_names`` order out."""

    def __init__(self, kind: str, path: Path, obj: Any, inputs: list[TensorSpec], output_names: list[str],
                 loaded_with: str, owner: Any = None, framework: str = "tensorflow") -> None:
        self.kind, self.path, self.obj, self.framework = kind, path, obj, framework
        self.owner = owner  # a SavedModel's loaded object: its signature's variables live there
        self.inputs, self.output_names, self.loaded_with = inputs, output_names, loaded_with
        self._fn: Any = None
        self._fn_specs: list[TensorSpec] | None = None

    def outputs_of(self, tensors: list[Any]) -> list[Any]:
        """Outputs (TensorFlow tensors) for input tensors; usable inside a tf.function."""
        tf = sys.modules["tensorflow"]
        if self.kind == "savedmodel":
            result = self.obj(**{s.name: t for s, t in zip(self.inputs, tensors, strict=True)})
            return [result[name] for name in self.output_names]
        model = self.obj
        packed = tf.nest.pack_sequence_as(model.input, list(tensors))
        return list(tf.nest.flatten(model(packed, training=False)))

    def function(self, specs: list[TensorSpec] | None = None) -> Any:
        """A tf.function with a fixed input signature (dynamic dims unknown), traced once."""
        tf = sys.modules["tensorflow"]
        specs = specs or self.inputs
        signature = [tf.TensorSpec(tf_shape(s), tf.as_dtype(s.dtype), name=s.name) for s in specs]

        def call(*tensors: Any) -> list[Any]:
            return self.outputs_of(list(tensors))

        return tf.function(call, input_signature=signature, autograph=False)

    def __call__(self, arrays: list[np.ndarray], specs: list[TensorSpec] | None = None) -> list[np.ndarray]:
        if self._fn is None or self._fn_specs != specs:
            self._fn, self._fn_specs = self.function(specs), specs
        outs = self._fn(*[np.ascontiguousarray(a) for a in arrays])
        return [np.asarray(o.numpy()) for o in outs]


def _keras_io(model: Any, where: str) -> tuple[list[TensorSpec], list[str]]:
    tf = sys.modules["tensorflow"]
    try:
        inputs = tf.nest.flatten(model.input)
    except (AttributeError, ValueError) as exc:
        raise InputError(f"{where}: the Keras model has no defined inputs ({' '.join(str(exc).split())[:160]})",
                         hint="save a model built on keras.Input(...) (or a built Sequential)") from None
    specs = []
    for i, t in enumerate(inputs):
        name = getattr(t, "name", "") or ""
        name = name.split(":")[0]
        if not name or _AUTO_NAME.match(name):
            name = "input" if len(inputs) == 1 else f"input_{i}"
        specs.append(spec_from_shape(name, t.shape, t.dtype, where))
    output = model.output
    count = len(tf.nest.flatten(output))
    if isinstance(output, dict):
        names = sorted(output)
    else:
        declared = list(getattr(model, "output_names", None) or [])
        names = declared if len(declared) == count and len(set(declared)) == count else []
        names = names or (["output"] if count == 1 else [f"output_{i}" for i in range(count)])
    return specs, [str(n) for n in names]


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:240] or type(exc).__name__


def load_keras(path: Path, threads: int | None = None) -> TfModel:
    """A ``.keras`` archive (Keras 3, else tf_keras) or a legacy ``.h5`` file (tf_keras, else Keras 3).

    Raises InputError naming the file when it is missing, not a Keras file, or neither Keras can read it.
    """
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    h5 = path.suffix.lower() in H5_SUFFIXES
    if not h5 and not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a Keras archive: a .keras file is a zip (config.json + "
                         "model.weights.h5) and this one is not", hint="re-save it with model.save('model.keras')")
    if h5:
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise InputError(f"{path} is not an HDF5 file", hint="re-save it with model.save('model.h5')")
    tf = import_tensorflow(threads)
    order = ("tf_keras", "keras") if h5 else ("keras", "tf_keras")
    failures = []
    for module in order:
        try:
            keras = require(module, "Keras sources")
            with warnings.catch_warnings(), captured_fd2():
                warnings.simplefilter("ignore")
                if module == "keras":
                    model = keras.saving.load_model(str(path), compile=False)
                else:
                    model = keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            failures.append(f"{module}: {_reason(exc)}")
            continue
        inputs, outputs = _keras_io(model, str(path))
        version = getattr(keras, "__version__", "")
        return TfModel("keras", path, model, inputs, outputs, f"{module} {version} (TensorFlow {tf.__version__})",
                       framework=module)
    raise InputError(f"{path} cannot be loaded as a Keras model: {'; '.join(failures)}",
                     hint="check the file is complete (re-save it with model.save); a model with custom layers "
                          "needs them registered (keras.saving.register_keras_serializable)")


def is_savedmodel_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())


def load_savedmodel(path: Path, threads: int | None = None) -> TfModel:
    """A SavedModel directory through its ``serving_default`` signature (InputError without one)."""
    if not is_savedmodel_dir(path):
        raise InputError(f"{path} is not a SavedModel directory (no saved_model.pb in it)")
    tf = import_tensorflow(threads)
    try:
        with warnings.catch_warnings(), captured_fd2():
            warnings.simplefilter("ignore")
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise InputError(f"{path} cannot be loaded as a SavedModel: {_reason(exc)}",
                         hint="save it with tf.saved_model.save(model, dir) or model.export(dir)") from None
    signatures = dict(loaded.signatures)
    if SERVING not in signatures:
        found = ", ".join(sorted(signatures)) or "none"
        raise InputError(f"{path}: SavedModel has no '{SERVING}' signature (signatures found: {found})",
                         hint="re-save it with tf.saved_model.save(model, dir, signatures=model.call.get_concrete_"
                              "function(tf.TensorSpec(...))) or Keras model.export(dir)")
    sig = signatures[SERVING]
    args, kwargs = sig.structured_input_signature
    if args:
        raise InputError(f"{path}: the '{SERVING}' signature takes positional inputs; signatures take named ones")
    inputs = [spec_from_shape(name, s.shape, s.dtype, str(path)) for name, s in sorted(kwargs.items())]
    outs = sig.structured_outputs
    if not isinstance(outs, dict):
        raise InputError(f"{path}: the '{SERVING}' signature does not return a dict of named outputs")
    return TfModel("savedmodel", path, sig, inputs, sorted(outs),
                   f"tf.saved_model.load (TensorFlow {tf.__version__})", owner=loaded)


def load_tf_model(kind: str, path: Path, threads: int | None = None) -> TfModel:
    return load_savedmodel(path, threads) if kind == "savedmodel" else load_keras(path, threads)


def apply_overrides(specs: list[TensorSpec], given: list[TensorSpec] | None, where: str) -> list[TensorSpec]:
    """The model's input specs with ``--input`` ones replacing them by name (InputError for unknown names)."""
    if not given:
        return specs
    known = {s.name for s in specs}
    unknown = [s.name for s in given if s.name not in known]
    if unknown:
        raise InputError(f"{where}: --input {', '.join(unknown)} is not an input of the model",
                         hint=f"its inputs are: {', '.join(s.name for s in specs)}")
    by_name = {s.name: s for s in given}
    for s in given:
        model_spec = next(m for m in specs if m.name == s.name)
        fixed = [(i, d.size) for i, d in enumerate(model_spec.shape) if not d.dynamic]
        if len(s.shape) != len(model_spec.shape) or any(s.shape[i].size != size for i, size in fixed):
            raise InputError(f"{where}: --input {s.text()} does not fit the model's input {model_spec.text()}",
                             hint="only dimensions the model leaves open (None) can be changed")
    return [by_name.get(s.name, s) for s in specs]


def _probe(model: TfModel, specs: list[TensorSpec], where: str) -> None:
    """Run once on example inputs: proves the specs fit and that the output count matches the names."""
    from convcli.parity.data import random_array

    rng = np.random.default_rng(0)
    arrays = [random_array(s, s.example_shape(), rng) for s in specs]
    try:
        outs = model(arrays, specs)
    except Exception as exc:
        shapes = ", ".join(s.text() for s in specs)
        raise InputError(f"{where}: the model does not run on inputs {shapes}: {type(exc).__name__}: "
                         f"{_reason(exc)}", hint="fix --input NAME:SHAPE:DTYPE") from None
    if len(outs) != len(model.output_names):
        raise InputError(f"{where}: the model returned {len(outs)} outputs, its signature names "
                         f"{len(model.output_names)}")


class _TfLoader(SourceLoader):
    requires = ("tensorflow",)
    also_uses = ("keras", "tf_keras")
    kind = ""

    def load(self, request: SourceRequest) -> Artifact:
        path = Path(request.spec)
        model = load_tf_model(self.kind, path, request.threads)
        specs = apply_overrides(model.inputs, request.inputs, str(path))
        _probe(model, specs, str(path))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return Artifact(format=self.format, path=path, inputs=specs, output_names=list(model.output_names),
                        files=files, obj=model, details={"loaded_with": model.loaded_with})


class KerasLoader(_TfLoader):
    """Keras 3 ``.keras`` archives and legacy ``.h5`` files."""

    name = "keras"
    format = "keras"
    kind = "keras"

    @classmethod
    def matches(cls, spec: str) -> bool:
        return Path(spec).suffix.lower() in (*KERAS_SUFFIXES, *H5_SUFFIXES)


class SavedModelLoader(_TfLoader):
    """A SavedModel directory (``saved_model.pb`` inside), through its serving_default signature."""

    name = "savedmodel"
    format = "savedmodel"
    kind = "savedmodel"

    @classmethod
    def matches(cls, spec: str) -> bool:
        return is_savedmodel_dir(Path(spec))


def register(registry: Registry) -> None:
    """The loaders and the runtime that runs them (the TensorFlow runner: the reference for parity)."""
    from convcli.runners.tensorflow_runner import TensorflowRunner

    for loader in (KerasLoader, SavedModelLoader):
        registry.add_source(loader)
    registry.add_runner(TensorflowRunner)
