"""PyTorch eager: runs nn.Module sources, TorchScript archives and ExportedPrograms."""

from __future__ import annotations

from typing import Any

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.runner import Runner, Session
from convcli.sources.torch_sources import flatten_outputs


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


class TorchRunner(Runner):
    name = "torch"
    formats = ("pytorch", "torchscript", "exported-program")
    requires = ("torch",)

    def load(self, artifact: Artifact, threads: int) -> Session:
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
        return TorchSession(model, [s.name for s in artifact.inputs], threads)


def register(registry: Registry) -> None:
    registry.add_runner(TorchRunner)
