"""Pruning of PyTorch sources before export.

- unstructured: global L1 magnitude pruning of conv/linear weights (torch.nn.utils.prune), made permanent. The
  tensors stay dense, so size and latency do not change on dense runtimes; the report shows the sparsity.
- structured: channel pruning that really removes channels, following torch-pruning's dependency graph so every
  coupled layer (BatchNorm, the next conv's inputs, residual adds) shrinks with it. Parameters, FLOPs, size and
  latency go down. The classifier's output layer is never pruned.

Optional short recovery fine-tuning on a labelled training set. The job applies this step to the source before
planning, so every target is built from, and checked against, the pruned model.
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, InputError
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.step import Pass, StepContext
from convcli.parity.data import DataSet


class PruneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["structured", "unstructured"] = Field(
        default="structured", description="structured removes channels; unstructured zeroes weights.")
    ratio: float = Field(default=0.3, gt=0.0, lt=0.95, description="Fraction of channels / weights to prune.")
    finetune_epochs: int = Field(default=0, ge=0, description="Recovery fine-tuning epochs on data.train (0: none).")
    finetune_lr: float = Field(default=1e-3, gt=0, description="Adam learning rate for the recovery fine-tuning.")


def count_ops_and_params(model: Any, example: tuple[Any, ...]) -> tuple[int, int]:
    """(multiply-accumulates, parameters) for one forward at the example inputs (torch-pruning's counter)."""
    tp = require("torch_pruning", "pruning")
    torch = require("torch")
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example[0] if len(example) == 1 else example)
    return int(macs), int(params)


def state_dict_bytes(model: Any) -> int:
    """Size of the model's weights as torch.save writes them (what a checkpoint of it costs on disk)."""
    torch = require("torch")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def sparsity(model: Any) -> float:
    torch = require("torch")
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / total if total else 0.0


def _output_layers(model: Any) -> list[Any]:
    """The last Linear/Conv layer (the classifier head): pruning its outputs would change the model's outputs."""
    torch = require("torch")
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return layers[-1:] if layers else []


def finetune(model: Any, data: DataSet, epochs: int, lr: float, input_name: str) -> list[float]:
    """Short supervised recovery training; returns the mean loss of each epoch."""
    torch = require("torch")
    if data.labels is None:
        raise InputError(f"fine-tuning needs labels; {data.description} has none")
    x = torch.from_numpy(np.ascontiguousarray(data.inputs[input_name]))
    y = torch.from_numpy(data.labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x))
    model.eval()
    return losses


class PrunePytorch(Pass):
    name = "PrunePytorch"
    source = "pytorch"
    target = "pytorch"
    summary = "structured channel pruning (torch-pruning) or global magnitude pruning, before export"
    requires = ("torch", "torch_pruning")
    Options = PruneOptions
    job_level = True  # applied by the job to the source (recipe key `prune`), not placed by the planner

    def run(self, artifact: Artifact, ctx: StepContext, train: DataSet | None = None) -> Artifact:
        torch = require("torch", "pruning")
        opts: PruneOptions = self.options  # type: ignore[assignment]
        if not isinstance(artifact.obj, torch.nn.Module):
            raise InputError(f"pruning needs a PyTorch nn.Module source, not {artifact.format}")
        from convcli.sources.torch_sources import example_tensors

        model = copy.deepcopy(artifact.obj).eval()
        example = tuple(example_tensors(artifact.inputs))
        macs_before, params_before = count_ops_and_params(model, example)
        start = time.perf_counter()
        if opts.method == "unstructured":
            self._unstructured(model, opts.ratio)
        else:
            self._structured(model, example, opts.ratio)
        details: dict[str, Any] = {"method": opts.method, "ratio": opts.ratio}
        if opts.finetune_epochs:
            if train is None:
                raise InputError("finetune_epochs is set but there is no labelled training set",
                                 hint="give data.train in the recipe (or --train) with class sub-folders")
            details["finetune"] = {"epochs": opts.finetune_epochs, "lr": opts.finetune_lr,
                                   "data": train.description,
                                   "loss_per_epoch": finetune(model, train, opts.finetune_epochs, opts.finetune_lr,
                                                              artifact.inputs[0].name)}
        macs_after, params_after = count_ops_and_params(model, example)
        details.update(params_before=params_before, params_after=params_after, macs_before=macs_before,
                       macs_after=macs_after, state_dict_bytes_before=state_dict_bytes(artifact.obj),
                       state_dict_bytes_after=state_dict_bytes(model), sparsity=round(sparsity(model), 4),
                       seconds=round(time.perf_counter() - start, 3))
        return artifact.derive(obj=model, files=[], details={**artifact.details, "prune": details})

    @staticmethod
    def _unstructured(model: Any, ratio: float) -> None:
        torch = require("torch")
        from torch.nn.utils import prune

        params = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        if not params:
            raise ConversionError("unstructured pruning found no Conv2d/Linear weights in the model")
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=ratio)
        for module, name in params:
            prune.remove(module, name)  # permanent: plain tensors with zeros, exportable

    @staticmethod
    def _structured(model: Any, example: tuple[Any, ...], ratio: float) -> None:
        tp = require("torch_pruning", "structured pruning")
        try:
            pruner = tp.pruner.MetaPruner(model, example[0] if len(example) == 1 else example,
                                          importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                          ignored_layers=_output_layers(model))
            pruner.step()
        except Exception as exc:
            raise ConversionError(f"structured pruning failed: {type(exc).__name__}: {exc}",
                                  hint="try method: unstructured, or a smaller ratio") from None


def register(registry: Registry) -> None:
    registry.add_step(PrunePytorch)
