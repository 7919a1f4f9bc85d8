"""The job's source model: which loader recognises it, and loading it only when something needs it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from convcli.core.artifact import Artifact
from convcli.core.cache import Cache
from convcli.core.errors import InputError
from convcli.core.planner import AUTO, TargetRequest, precisions_for
from convcli.core.registry import Registry
from convcli.core.source import SourceLoader, SourceRequest
from convcli.core.step import StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.data import load_images
from convcli.recipes.schema import JobSpec


def find_loader(registry: Registry, spec: JobSpec) -> type[SourceLoader]:
    """The loader that recognises the source (InputError when none does); nothing is loaded yet."""
    text = spec.source.model
    loaders = sorted((s for s in registry.sources.values() if s.matches(text)), key=lambda s: -s.priority)
    if not loaders:
        raise InputError(f"cannot tell what kind of model '{text}' is",
                         hint="give file.py:factory, package.module:factory, a .onnx/.pt/.pt2/.keras/.h5 file or a "
                              "SavedModel folder")
    loader = loaders[0]
    avail = loader.availability()
    if not avail.available:
        raise InputError(f"{text}: {loader.name} sources need {avail.reason}")
    if spec.source.weights is not None and loader.format != "pytorch":
        raise InputError(f"--weights {spec.source.weights}: weights go with a file.py:factory source, "
                         f"not a {loader.format} file")
    return loader


def with_source_layout(registry: Registry, spec: JobSpec, loader: type[SourceLoader]) -> JobSpec:
    """Image data laid out as the source's format usually takes it (NHWC for TensorFlow sources), unless the
    job sets ``data.preprocess.layout`` itself."""
    pre = spec.data.preprocess
    fmt = registry.formats.get(loader.format)
    usual = fmt.layout if fmt is not None else pre.layout
    if "layout" in pre.model_fields_set or usual == pre.layout:
        return spec
    data = spec.data.model_copy(update={"preprocess": pre.model_copy(update={"layout": usual})})
    return spec.model_copy(update={"data": data})


def load_source(registry: Registry, spec: JobSpec) -> Artifact:
    """Find the loader and load the source model."""
    loader = find_loader(registry, spec)
    return loader().load(SourceRequest(spec.source.model, spec.source.input_specs(), spec.source.weights))


class LazySource:
    """The source model, loaded only when a step or a measurement really needs it. Its input/output
    description is kept in the cache, so a fully cached re-run never imports the model's framework."""

    def __init__(self, registry: Registry, spec: JobSpec, cache: Cache, key: str) -> None:
        self.registry, self.spec, self.cache, self.key = registry, spec, cache, key
        self.loader = find_loader(registry, spec)
        self._artifact: Artifact | None = None
        self.original: Artifact | None = None  # the model before pruning, when the job prunes

    def get(self) -> Artifact:
        if self._artifact is None:
            loaded = self.loader().load(
                SourceRequest(self.spec.source.model, self.spec.source.input_specs(), self.spec.source.weights,
                              threads=self.spec.latency.threads or os.cpu_count() or 1))
            self._artifact = self._pruned(loaded) if self.spec.prune is not None else loaded
            self.cache.store_json("source", self.key, {
                "inputs": [s.model_dump() for s in self._artifact.inputs],
                "outputs": self._artifact.output_names, "format": self._artifact.format})
        return self._artifact

    def _pruned(self, loaded: Artifact) -> Artifact:
        """Prune the source (recipe key ``prune``); the original is kept for the before/after comparison."""
        from convcli.passes.prune_pytorch import PrunePytorch

        if loaded.format != "pytorch":
            raise InputError(f"prune: needs a PyTorch factory source, not a {loaded.format} file")
        self.original = loaded
        d = self.spec.data
        train = load_images(d.train, loaded.inputs, d.preprocess) if d.train is not None else None
        ctx = StepContext(workdir=Path(tempfile.gettempdir()))
        return PrunePytorch(self.spec.prune).run(loaded, ctx, train=train)

    def signature(self) -> tuple[list[TensorSpec], list[str]]:
        cached = self.cache.load_json("source", self.key)
        if cached is not None:
            return [TensorSpec.model_validate(s) for s in cached["inputs"]], list(cached["outputs"])
        artifact = self.get()
        return artifact.inputs, artifact.output_names


def expand_auto(registry: Registry, spec: JobSpec) -> tuple[JobSpec, str | None]:
    """``precisions: auto`` replaced, per target, by every precision a registered step produces in its format
    (``planner.precisions_for``), and a note for the report saying what auto became and what it left out (None
    when no target asked for auto). int8 is left out without calibration data (auto never fails for want of
    it); bf16 stays even where the CPU cannot run it, so its row says why. Precisions listed beside auto stay."""
    if not any(AUTO in t.precisions for t in spec.targets):
        return spec, None
    targets, notes = [], []
    for t in spec.targets:
        if AUTO not in t.precisions:
            targets.append(t)
            continue
        fmt = registry.format_named(t.format).name
        offered = list(precisions_for(registry, fmt))
        left_out = []
        if "int8" in offered and spec.data.calibration is None and "int8" not in t.precisions:
            offered.remove("int8")
            left_out.append("int8 (no calibration data: pass --calibration)")
        chosen = [p for p in offered if p not in t.precisions] + [p for p in t.precisions if p != AUTO]
        chosen = sorted(set(chosen), key=lambda p: offered.index(p) if p in offered else len(offered))
        targets.append(t.model_copy(update={"precisions": chosen}))
        label = fmt + (f"@{t.via}" if t.via else "")
        notes.append(f"{label}: {', '.join(chosen)}" + (f"; left out {', '.join(left_out)}" if left_out else ""))
    return spec.model_copy(update={"targets": targets}), "auto: " + "; ".join(notes)


def target_requests(spec: JobSpec, registry: Registry | None = None) -> list[TargetRequest]:
    """One request per (target, precision), in the spec's order; ``auto`` is expanded first (needs the registry;
    None: the default one)."""
    if any(AUTO in t.precisions for t in spec.targets):
        from convcli.core.registry import default_registry

        spec = expand_auto(registry or default_registry(), spec)[0]
    requests = []
    seen: set[str] = set()
    for t in spec.targets:
        for p in t.precisions:
            req = TargetRequest(t.format, p, dict(t.options), t.via)
            if req.label in seen:
                continue
            seen.add(req.label)
            requests.append(req)
    if not requests:
        raise InputError("no targets given", hint="e.g. --to onnx,openvino")
    return requests




def check_declared_outputs(spec: JobSpec, outputs: list[str]) -> None:
    """Declared output kinds must name outputs the source has (before anything is converted)."""
    unknown = [name for name in spec.outputs if name not in outputs]
    if unknown:
        raise InputError(f"--output-kind {unknown[0]}: the source has no output '{unknown[0]}'",
                         hint=f"its outputs are {', '.join(outputs)}; e.g. --output-kind {outputs[0]}:embedding"
                         if outputs else "")
