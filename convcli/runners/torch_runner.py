"""PyTorch eager: runs nn.Module sources, TorchScript archives and ExportedPrograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import UnavailableError
from convcli.core.intermediates import Intermediates, ReferenceGraph, TensorInfo
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session
from convcli.sources.torch_sources import flatten_outputs, float64_outputs


class TorchSession(Session):
    def __init__(self, model: Any, names: list[str], threads: int) -> None:
        self.torch = require("torch")
        self.model = model
        self.names = names
        self.threads = threads
        self.description = f"PyTorch {self.torch.__version__} eager, {threads} threads"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        torch.set_num_threads(self.threads)
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.names]
        with torch.inference_mode():
            out = self.model(*args)
        return [t.detach().float().numpy() if t.dtype in (torch.float16, torch.bfloat16) else t.detach().numpy()
                for t in flatten_outputs(out)]

    def run_float64(self, feed: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        torch = self.torch
        torch.set_num_threads(self.threads)
        return float64_outputs(self.model, [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.names])


class TorchRunner(Runner):
    name = "torch"
    formats = ("pytorch", "torchscript", "exported-program")
    requires = ("torch",)

    def load(self, artifact: Artifact, threads: int) -> Session:
        return TorchSession(self._module(artifact), [s.name for s in artifact.inputs], threads)

    def intermediates(self, artifact: Artifact, feed: dict[str, np.ndarray], threads: int,
                      wanted: list[str] | None = None, reference: Path | None = None) -> Intermediates:
        """Module outputs captured with forward hooks, each mapped to the ONNX tensor the module produced in the
        reference graph (the last node the dynamo exporter recorded in the module's name scope). Modules called
        more than once, with non-tensor outputs, or absent from the reference's scopes are counted as unmatched.
        ``wanted`` is not honoured: hooks on every module cost little."""
        torch = require("torch")
        if reference is None:
            raise UnavailableError("PyTorch module outputs need a reference ONNX graph to be named")
        if artifact.format != "pytorch":  # a ScriptModule refuses hooks; an ExportedProgram's module is flattened
            raise UnavailableError(f"module outputs of a {artifact.format} source cannot be hooked",
                                   hint="the reference ONNX's own values are used instead")
        graph = ReferenceGraph.read(reference)
        scope_out = graph.module_outputs()
        if not scope_out:
            raise UnavailableError("the reference ONNX records no PyTorch module scopes (not a dynamo export)",
                                   hint="module outputs cannot be matched; the reference ONNX is used instead")
        lines = {s: n.source_line for n in graph.nodes for s in n.scopes if n.source_line}
        model = self._module(artifact)
        result = Intermediates()
        calls: dict[str, int] = {}
        captured: dict[str, Any] = {}

        def hook(name: str) -> Any:
            def fn(module: Any, args: Any, output: Any) -> None:
                calls[name] = calls.get(name, 0) + 1
                if calls[name] == 1 and isinstance(output, torch.Tensor) and output.is_floating_point():
                    captured[name] = output.detach().float().numpy().copy()
                    result.order.append(name)
            return fn

        handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
        try:
            torch.set_num_threads(threads)
            args = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in artifact.inputs]
            with torch.inference_mode():
                outputs = flatten_outputs(model(*args))
        finally:
            for h in handles:
                h.remove()
        kinds = dict(model.named_modules())
        for name in list(result.order):
            if calls.get(name, 0) > 1:
                result.count_unmatched("module called more than once")
            elif name not in scope_out:
                result.count_unmatched("module not recorded in the reference ONNX's scopes")
            else:
                result.tensors[name] = captured[name]
                result.reference[name] = scope_out[name]
                result.info[name] = TensorInfo(layer=name, op=type(kinds[name]).__name__, module=name,
                                               source_line=lines.get(name))
        for ref, t in zip(graph.outputs, outputs, strict=False):  # the model's own outputs, by position
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                name = f"output:{ref}"
                result.tensors[name] = t.detach().float().numpy().copy()
                result.reference[name] = ref
                result.info[name] = TensorInfo(layer=name, op="output")
                result.order.append(name)
        result.order = [n for n in result.order if n in result.tensors]
        return result

    def _module(self, artifact: Artifact) -> Any:
        torch = require("torch")
        model = artifact.obj
        if model is None:
            assert artifact.path is not None
            model = (torch.export.load(str(artifact.path)) if artifact.format == "exported-program"
                     else torch.jit.load(str(artifact.path), map_location="cpu"))
        if artifact.format == "exported-program":
            model = model.module()
        else:
            model.eval()
        return model


def register(registry: Registry) -> None:
    registry.add_runner(TorchRunner)
