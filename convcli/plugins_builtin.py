"""convcli's own formats, converters, passes, runners and sources, registered through the same
``convcli.plugins`` entry point a third-party package uses (see docs/architecture.md, "Plugins").

Each module below defines ``register(registry)``. Only class definitions are imported here; every backend
package is imported lazily when a step or runner really runs.
"""

from __future__ import annotations

import importlib

from convcli.core.formats import BUILTIN_FORMATS
from convcli.core.registry import Registry

BUILTIN_MODULES = (
    "convcli.sources.torch_sources", "convcli.sources.objects",
    "convcli.sources.onnx_source",
    "convcli.converters.torch_to_onnx",
    "convcli.converters.onnx_to_tensorrt", "convcli.runners.tensorrt_runner",
    "convcli.passes.simplify_onnx",
    "convcli.passes.prune_pytorch",
    "convcli.passes.fp16_onnx", "convcli.passes.quantize_onnx",
    "convcli.runners.torch_runner",
    "convcli.runners.onnxruntime_runner",
    "convcli.converters.onnx_to_tflite", "convcli.runners.tflite_runner",
    "convcli.converters.onnx_to_openvino", "convcli.converters.torch_to_openvino", "convcli.runners.openvino_runner",
    "convcli.converters.torch_to_ncnn", "convcli.converters.onnx_to_ncnn", "convcli.runners.ncnn_runner",
    "convcli.passes.quantize_ncnn",
    "convcli.sources.tf_sources", "convcli.converters.tf_to_onnx", "convcli.converters.tf_to_tflite",
    "convcli.passes.quantize_openvino", "convcli.passes.bf16_openvino",
)


def register(registry: Registry) -> None:
    for spec in BUILTIN_FORMATS:
        registry.add_format(spec)
    for name in BUILTIN_MODULES:
        importlib.import_module(name).register(registry)
