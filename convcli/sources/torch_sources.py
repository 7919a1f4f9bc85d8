"""PyTorch sources: ``file.py:factory`` / ``package.module:factory`` (+ optional weights), TorchScript
archives and ``torch.export`` .pt2 files."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import InputError
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.source import SourceLoader, SourceRequest
from convcli.core.tensors import Dim, TensorSpec, parse_input_spec

_FACTORY = re.compile(r"^(?P<target>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def flatten_outputs(out: Any) -> list[Any]:
    """Tensors of a model's output, in order (tensor, tuple/list, dict, nested)."""
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o)]
    return [out]


def float64_outputs(model: Any, args: list[Any]) -> list[np.ndarray] | None:
    """The model's outputs computed in float64 on ``args`` (float32 inputs widened exactly), for the rounding
    floor of fp32 judging (``parity/rounding.py``). The module is widened in place and narrowed back afterwards,
    which restores every float32 weight bit for bit (float32 -> float64 -> float32 is exact), so no copy of a
    large model is held. None when the model is not a plain float32 ``nn.Module`` or fails in float64 (an op
    without a float64 kernel, a dtype fixed in its code)."""
    torch = require("torch")
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        return None
    wide = [a.double() if a.dtype == torch.float32 else a for a in args]
    default = torch.get_default_dtype()
    try:
        model.double()
        torch.set_default_dtype(torch.float64)  # tensors the forward creates itself (masks, positions)
        with torch.inference_mode():
            out = flatten_outputs(model(*wide))
        return [t.detach().numpy() for t in out]
    except Exception:
        return None
    finally:
        torch.set_default_dtype(default)
        model.float()


def default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def example_tensors(specs: list[TensorSpec], overrides: dict[str, int] | None = None, seed: int = 0) -> list[Any]:
    """Seeded example tensors for export and checks, within each input's value range."""
    torch = require("torch")
    from convcli.parity.data import random_array

    rng = np.random.default_rng(seed)
    return [torch.from_numpy(random_array(s, s.example_shape(overrides), rng)) for s in specs]


def probe_outputs(model: Any, specs: list[TensorSpec], where: str) -> list[str]:
    """Run the model once on example inputs: proves the input spec fits and counts the outputs."""
    torch = require("torch")
    try:
        with torch.inference_mode():
            out = model(*example_tensors(specs))
    except Exception as exc:
        shapes = ", ".join(s.text() for s in specs)
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"{where}: the model does not run on inputs {shapes}: {type(exc).__name__}: {msg}",
                         hint="fix --input NAME:SHAPE:DTYPE to match the model's forward()") from None
    return default_output_names(len(flatten_outputs(out)))


def _declared(owners: tuple[Any, ...], name: str) -> list[str] | None:
    """The first list of strings named ``name`` (CONVCLI_INPUTS / CONVCLI_OUTPUTS) on ``owners``, or None."""
    for owner in owners:
        value = getattr(owner, name, None)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return list(value)
    return None


def _declared_inputs(owners: tuple[Any, ...]) -> list[TensorSpec] | None:
    declared = _declared(owners, "CONVCLI_INPUTS")
    return [parse_input_spec(t) for t in declared] if declared else None


class PytorchFactoryLoader(SourceLoader):
    """``path/to/file.py:factory`` or ``package.module:factory``: a callable returning an nn.Module.

    A module may declare ``CONVCLI_INPUTS = ["x:batch=2x1x8x8:float32"]`` so users need no ``--input``; the
    model the factory returns may carry its own (an attribute, read first), so that one module can hold
    factories with different inputs (``recipes/models/hf_transformers.py``: a vocabulary per model). The same
    goes for ``CONVCLI_OUTPUTS`` (output names).
    """

    name = "pytorch-factory"
    format = "pytorch"
    requires = ("torch",)
    priority = 10

    @classmethod
    def matches(cls, spec: str) -> bool:
        m = _FACTORY.match(spec)
        if not m:
            return False
        target = m.group("target")
        return target.endswith(".py") or re.fullmatch(r"[A-Za-z_][\w.]*", target) is not None

    def load(self, request: SourceRequest) -> Artifact:
        torch = require("torch", "PyTorch sources")
        m = _FACTORY.match(request.spec)
        assert m
        target, attr = m.group("target"), m.group("attr")
        module = self._import(target, request.spec)
        factory: Any = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise InputError(f"{request.spec}: '{target}' has no attribute '{attr}'",
                                 hint="name a function or class that returns a torch.nn.Module")
        try:
            model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
        except Exception as exc:
            raise InputError(f"{request.spec}: the factory raised {type(exc).__name__}: {exc}",
                             hint="run it in Python to debug, or pass --debug for the traceback") from exc
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"{request.spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
        if request.weights is not None:
            load_weights(model, request.weights)
        model.eval()
        specs = request.inputs or _declared_inputs((model, module))
        if not specs:
            raise InputError(f"{request.spec}: input shapes are unknown",
                             hint="give --input NAME:SHAPE:DTYPE, e.g. --input x:batch=2x3x224x224:float32")
        outputs = _declared((model, module), "CONVCLI_OUTPUTS") or probe_outputs(model, specs, request.spec)
        # Size on disk of a factory source is its weights file; without one, the report shows parameters only.
        return Artifact(format="pytorch", path=None, inputs=specs, output_names=list(outputs), obj=model,
                        files=[request.weights] if request.weights else [],
                        details={"source": request.spec, "weights": str(request.weights or "")})

    @staticmethod
    def _import(target: str, spec: str) -> Any:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise InputError(f"{spec}: file {path} does not exist")
            name = f"convcli_user_{abs(hash(str(path.resolve())))}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            assert loader_spec and loader_spec.loader
            module = importlib.util.module_from_spec(loader_spec)
            sys.path.insert(0, str(path.resolve().parent))
            try:
                sys.modules[name] = module
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                raise InputError(f"{spec}: importing {path} raised {type(exc).__name__}: {exc}") from exc
            finally:
                sys.path.remove(str(path.resolve().parent))
            return module
        try:
            return importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"{spec}: cannot import module '{target}': {exc}",
                             hint="use path/to/file.py:factory or put the package on PYTHONPATH") from None


def load_weights(model: Any, path: Path) -> None:
    """Load a state_dict (torch.load with weights_only=True) or a .safetensors file into ``model``."""
    torch = require("torch")
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"weights file {path} cannot be read: {' '.join(str(exc).split())[:200]}",
                         hint="give a state_dict saved with torch.save(model.state_dict()) or a .safetensors file") \
            from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"weights file {path} does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}", hint="check the factory builds the same architecture")


class TorchscriptLoader(SourceLoader):
    name = "torchscript"
    format = "torchscript"
    requires = ("torch",)

    @classmethod
    def matches(cls, spec: str) -> bool:
        return Path(spec).suffix in (".pt", ".pth", ".torchscript", ".ts")

    def load(self, request: SourceRequest) -> Artifact:
        torch = require("torch", "TorchScript sources")
        path = Path(request.spec)
        if not path.is_file():
            raise InputError(f"model file {path} does not exist")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise InputError(f"{path} is not a TorchScript archive: {' '.join(str(exc).split())[:160]}",
                             hint="a state_dict goes with --weights to a factory: file.py:factory --weights "
                                  f"{path}") from None
        model.eval()
        if not request.inputs:
            raise InputError(f"{path}: TorchScript does not record input shapes",
                             hint="give --input NAME:SHAPE:DTYPE for each forward() argument")
        outputs = probe_outputs(model, request.inputs, str(path))
        return Artifact(format="torchscript", path=path, inputs=request.inputs, output_names=outputs, obj=model)


class ExportedProgramLoader(SourceLoader):
    name = "exported-program"
    format = "exported-program"
    requires = ("torch",)

    @classmethod
    def matches(cls, spec: str) -> bool:
        return Path(spec).suffix == ".pt2"

    def load(self, request: SourceRequest) -> Artifact:
        torch = require("torch", "ExportedProgram sources")
        path = Path(request.spec)
        if not path.is_file():
            raise InputError(f"model file {path} does not exist")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise InputError(f"{path} is not a torch.export archive: {' '.join(str(exc).split())[:160]}",
                             hint="save it with torch.export.save(torch.export.export(model, args), 'm.pt2')") \
                from None
        specs = request.inputs or self._read_inputs(program)
        outputs = probe_outputs(program.module(), specs, str(path))
        return Artifact(format="exported-program", path=path, inputs=specs, output_names=outputs, obj=program)

    @staticmethod
    def _read_inputs(program: Any) -> list[TensorSpec]:
        """Input specs from the program's placeholders; symbolic dims become named dynamic dims."""
        user_inputs = set(program.graph_signature.user_inputs)
        specs = []
        for node in program.graph.nodes:
            if node.op != "placeholder" or node.name not in user_inputs:
                continue
            val = node.meta.get("val")
            if val is None or not hasattr(val, "shape"):
                continue
            dims = []
            for i, d in enumerate(val.shape):
                if isinstance(d, int):
                    dims.append(Dim(size=d))
                else:
                    hint = d.node.hint if hasattr(d, "node") and d.node.hint is not None else 2
                    dims.append(Dim(name="batch" if i == 0 else f"dim{i}", size=int(hint)))
            specs.append(TensorSpec(name=node.name, shape=dims, dtype=str(val.dtype).replace("torch.", "")))
        return specs


def register(registry: Registry) -> None:
    for loader in (PytorchFactoryLoader, TorchscriptLoader, ExportedProgramLoader):
        registry.add_source(loader)
