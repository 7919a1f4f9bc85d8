"""convcli's own formats, converters, passes, runners and sources, registered through the same
``convcli.plugins`` entry point a third-party package uses (see docs/architecture.md, "Plugins").

Only class definitions are imported here; every backend package is imported lazily when a step runs.
"""

from __future__ import annotations

from convcli.core.formats import BUILTIN_FORMATS
from convcli.core.registry import Registry


def register(registry: Registry) -> None:
    from convcli.converters.torch_to_onnx import OnnxFromExportedProgram, OnnxFromPytorch, OnnxFromTorchscript
    from convcli.passes.simplify_onnx import SimplifyOnnx
    from convcli.runners.onnxruntime_runner import OnnxRuntimeRunner
    from convcli.runners.torch_runner import TorchRunner
    from convcli.sources.onnx_source import OnnxLoader
    from convcli.sources.torch_sources import ExportedProgramLoader, PytorchFactoryLoader, TorchscriptLoader

    for spec in BUILTIN_FORMATS:
        registry.add_format(spec)
    for step in (OnnxFromPytorch, OnnxFromTorchscript, OnnxFromExportedProgram, SimplifyOnnx):
        registry.add_step(step)
    for runner in (TorchRunner, OnnxRuntimeRunner):
        registry.add_runner(runner)
    for loader in (PytorchFactoryLoader, TorchscriptLoader, ExportedProgramLoader, OnnxLoader):
        registry.add_source(loader)
