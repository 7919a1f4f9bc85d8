"""In-memory models handed to the Python API (``convcli.convert(module, ...)``): a ``torch.nn.Module`` or a
Keras model, converted without a factory file.

A JobSpec names its source with a string, so the API ``hold``s the object under a token for the length of the
call and the loaders here resolve the token. The token carries the first characters of the model's content
digest, and ``content_digest`` gives the whole of it to the cache key (``job/keys.py``): the weights' bytes, the
classes' qualified names and source code, and the modules' plain attributes. When a class's code cannot be read
(``inspect.getsource`` fails: a class made with ``exec`` or ``type()``), no key can be trusted; the digest is
None and the API runs that job without the cache (and says so in ``report.cache``).

Keras models are saved to a ``.keras`` file in a temporary folder the first time they are loaded, because the
TensorFlow converters run in child processes that load the model from a file; the file is removed when the call
returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import shutil
import sys
import tempfile
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from convcli.core.artifact import Artifact
from convcli.core.errors import InputError
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.source import SourceLoader, SourceRequest
from convcli.core.tensors import TensorSpec, parse_input_spec

PREFIX = "<in-memory "
# Packages whose classes are keyed by their version (in every source key), not by reading their code.
_LIBRARIES = ("torch", "torchvision", "keras", "tf_keras", "tensorflow")


@dataclass
class Held:
    obj: Any
    kind: str  # "pytorch" or "keras"
    digest: str | None
    folder: Path | None = None  # where a Keras model is saved for the converters


_HELD: dict[str, Held] = {}


def object_kind(obj: Any) -> str | None:
    """"pytorch" for a torch.nn.Module, "keras" for a Keras (3 or tf_keras) model, else None. Imports nothing:
    an object of those kinds means its package is already imported."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        return "pytorch"
    for name in ("keras", "tf_keras"):
        keras = sys.modules.get(name)
        model_class = getattr(keras, "Model", None) if keras is not None else None
        if isinstance(model_class, type) and isinstance(obj, model_class):
            return "keras"
    return None


@contextlib.contextmanager
def hold(obj: Any, kind: str) -> Iterator[tuple[str, str | None]]:
    """Make ``obj`` loadable as a source while the block runs: yields its token (the JobSpec's
    ``source.model``) and its digest (None: no stable cache key). A Keras model gets a temporary folder for its
    ``.keras`` file, removed after the block."""
    try:
        digest = torch_digest(obj) if kind == "pytorch" else keras_digest(obj)
    except Exception:  # lazy/meta parameters and the like: run uncached rather than fail the call
        digest = None
    name = type(obj).__qualname__
    token = f"{PREFIX}{kind} {name} {digest[:16] if digest else 'uncached-' + uuid.uuid4().hex[:12]}>"
    folder = Path(tempfile.mkdtemp(prefix="convcli-keras-")) if kind == "keras" else None
    held = Held(obj, kind, digest, folder)
    previous = _HELD.get(token)
    _HELD[token] = held
    try:
        yield token, digest
    finally:
        if previous is None:
            _HELD.pop(token, None)
        else:
            _HELD[token] = previous
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _held(spec: str) -> Held:
    held = _HELD.get(spec)
    if held is None:
        raise InputError(f"{spec}: an in-memory model exists only inside the Python call that passed it",
                         hint="pass the object to convcli.convert()/check(), or save it and name the file")
    return held


def _class_code(classes: list[type]) -> list[str] | None:
    """Qualified name and code of each class not from a library (whose version keys it), with its user-defined
    bases; None when some code cannot be read."""
    parts: list[str] = []
    wanted = [k for cls in classes for k in cls.__mro__ if k.__module__.split(".")[0] not in (*_LIBRARIES, "builtins")]
    for cls in dict.fromkeys(wanted):
        parts.append(f"{cls.__module__}.{cls.__qualname__}")
        try:
            parts.append(inspect.getsource(cls))
        except (OSError, TypeError):
            # Classes defined in a notebook cell or by exec/type(): their methods' code instead.
            members = _members_code(cls)
            if members is None:
                return None
            parts.extend(members)
            continue
        with contextlib.suppress(OSError, TypeError):
            # The rest of the file too: forward() may call helpers defined beside the class.
            file = inspect.getsourcefile(cls)
            if file and Path(file).is_file():
                parts.append(hashlib.sha256(Path(file).read_bytes()).hexdigest())
    return parts


def _members_code(cls: type) -> list[str] | None:
    """The source (or, when unreadable, the bytecode) of a class's functions and its plain class attributes; None
    when a member is callable but no function (a functools.partial, a builtin): its behaviour cannot be keyed."""
    parts = []
    for name, value in sorted(vars(cls).items()):
        fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        fn = fn.fget if isinstance(fn, property) else fn
        if isinstance(fn, types.FunctionType):
            try:
                parts.append(f"{name}:{inspect.getsource(fn)}")
            except (OSError, TypeError):
                parts.append(f"{name}:{_code_digest(fn.__code__)}")
        elif _plain(value):
            parts.append(f"{name}={value!r}")
        elif callable(value) and not isinstance(value, type):
            return None
    return parts


def _code_digest(code: types.CodeType) -> str:
    """A code object's content (bytecode, names, constants, nested code), without its file name or line numbers,
    which change with where it was compiled."""
    consts = [_code_digest(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    text = repr((code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_argcount,
                 code.co_kwonlyargcount, consts))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def torch_digest(module: Any) -> str | None:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes), tensors kept as plain
    attributes, its classes' names and code, and its modules' plain attributes (``self.scale = 2.0``); None when
    a class's code cannot be read."""
    torch = require("torch")
    h = hashlib.sha256()

    def add_tensor(name: str, t: Any) -> None:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    for name, t in (*module.named_parameters(), *module.named_buffers()):
        add_tensor(name, t)
    classes: list[type] = []
    for prefix, m in module.named_modules():
        classes.append(type(m))
        for key, value in sorted(vars(m).items()):
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, torch.Tensor):
                add_tensor(f"{prefix}.{key}", value)
            elif _plain(value):
                h.update(f"{prefix}.{key}={sorted(value.items()) if isinstance(value, dict) else value!r}|".encode())
            elif _library_function(value):  # torch.relu, F.gelu: named by where they live
                h.update(f"{prefix}.{key}={value.__module__}.{value.__qualname__}|".encode())
            elif not isinstance(value, (torch.nn.Module, dict)) or not _modules_only(value, torch):
                # A callable, a config object, an enum...: it can change the output and has no stable digest.
                return None
    code = _class_code(classes)
    if code is None:
        return None
    for part in code:
        h.update(part.encode())
    return h.hexdigest()


def _library_function(value: Any) -> bool:
    """A function of torch, math or numpy: its name identifies its behaviour for a given installed version (and
    the versions are in the cache key)."""
    module = getattr(value, "__module__", None) or ""
    return callable(value) and hasattr(value, "__qualname__") and module.split(".")[0] in ("torch", "math", "numpy")


def _modules_only(value: Any, torch: Any) -> bool:
    """Submodules (hashed through named_modules) and containers of them are covered already."""
    if isinstance(value, torch.nn.Module):
        return True
    return isinstance(value, dict) and all(isinstance(v, torch.nn.Module) for v in value.values())


def keras_digest(model: Any) -> str | None:
    """sha256 of a Keras model's architecture (``to_json``), weights and custom classes' code; None when the
    architecture cannot be serialised or a class's code cannot be read."""
    h = hashlib.sha256()
    try:
        h.update(model.to_json().encode())
    except Exception:
        return None
    for w in model.get_weights():
        h.update(f"{w.dtype}|{w.shape}|".encode())
        h.update(w.tobytes())
    layers = list(model._flatten_layers()) if hasattr(model, "_flatten_layers") else list(model.layers)
    code = _class_code([type(model), *(type(layer) for layer in layers)])
    if code is None:
        return None
    for part in code:
        h.update(part.encode())
    return h.hexdigest()


def _declared_inputs(model: Any) -> list[TensorSpec] | None:
    """``CONVCLI_INPUTS`` on the model or in its class's module, as for a factory file."""
    declared = getattr(model, "CONVCLI_INPUTS", None)
    if declared is None:
        declared = getattr(sys.modules.get(type(model).__module__), "CONVCLI_INPUTS", None)
    if isinstance(declared, (list, tuple)) and declared and all(isinstance(v, str) for v in declared):
        return [parse_input_spec(t) for t in declared]
    return None


class _HeldObjectLoader(SourceLoader):
    """What both in-memory loaders share: the token they answer to (``<in-memory KIND ...>``) and the content
    digest of the object held under it (the cache key's stand-in for a file hash)."""

    kind: ClassVar[str] = ""
    priority = 100

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.startswith(f"{PREFIX}{cls.kind} ")

    @classmethod
    def content_digest(cls, spec: str) -> str | None:
        held = _HELD.get(spec)
        return held.digest if held is not None else None


class PytorchObjectLoader(_HeldObjectLoader):
    """A ``torch.nn.Module`` passed to the Python API. It is put in eval mode for the job (the API restores its
    training mode afterwards) and must live on the CPU, where convcli runs the source."""

    name = "pytorch-object"
    format = "pytorch"
    requires = ("torch",)
    kind = "pytorch"

    def load(self, request: SourceRequest) -> Artifact:
        from convcli.sources.torch_sources import probe_outputs

        model = _held(request.spec).obj
        devices = sorted({str(p.device) for p in (*model.parameters(), *model.buffers()) if p.device.type != "cpu"})
        if devices:
            raise InputError(f"{request.spec}: the module is on {', '.join(devices)}; convcli runs the source "
                             "on the CPU", hint="pass model.cpu() (or copy.deepcopy(model).cpu())")
        model.eval()
        specs = request.inputs or _declared_inputs(model)
        if not specs:
            raise InputError(f"{request.spec}: input shapes are unknown",
                             hint="give inputs=['NAME:SHAPE:DTYPE'], e.g. inputs=['x:batch=2x3x224x224:float32']")
        outputs = probe_outputs(model, specs, request.spec)
        return Artifact(format="pytorch", path=None, inputs=specs, output_names=outputs, obj=model, files=[],
                        details={"source": request.spec, "weights": ""})


class KerasObjectLoader(_HeldObjectLoader):
    """A Keras model passed to the Python API: saved once to a ``.keras`` file in the call's temporary folder,
    then loaded like a ``.keras`` file (the TensorFlow converters read that file in child processes)."""

    name = "keras-object"
    format = "keras"
    requires = ("tensorflow",)
    also_uses = ("keras", "tf_keras")
    kind = "keras"

    def load(self, request: SourceRequest) -> Artifact:
        from convcli.sources.tf_sources import KerasLoader

        held = _held(request.spec)
        assert held.folder is not None
        path = held.folder / "model.keras"
        if not path.exists():
            try:
                held.obj.save(str(path))
            except Exception as exc:
                raise InputError(f"{request.spec}: the Keras model cannot be saved to a .keras file: "
                                 f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                                 hint="a subclassed model needs get_config(); or save it yourself and pass the "
                                      "file") from None
        return KerasLoader().load(SourceRequest(str(path), request.inputs, None, request.threads))


def register(registry: Registry) -> None:
    for loader in (PytorchObjectLoader, KerasObjectLoader):
        registry.add_source(loader)
