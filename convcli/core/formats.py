"""Formats are the nodes of the conversion graph.

A format is a name plus how to recognise a file of it; plugins add formats through the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FormatSpec:
    """A node of the graph. ``suffixes`` let the CLI guess a file's format; ``layout`` is the usual input layout."""

    name: str
    description: str
    suffixes: tuple[str, ...] = ()
    is_directory: bool = False
    aliases: tuple[str, ...] = field(default=())
    layout: str = "NCHW"  # how image files are laid out for a source of this format, unless the job says


BUILTIN_FORMATS = (
    FormatSpec("pytorch", "PyTorch nn.Module from a factory (file.py:factory or pkg.module:factory)"),
    FormatSpec("torchscript", "TorchScript archive (torch.jit.save)", (".torchscript", ".pt", ".pth")),
    FormatSpec("exported-program", "torch.export ExportedProgram archive", (".pt2",), aliases=("pt2",)),
    FormatSpec("onnx", "ONNX model (weights inline unless over 2 GB)", (".onnx",)),
    FormatSpec("openvino", "OpenVINO IR (.xml + .bin)", (".xml",), aliases=("ov", "openvino-ir")),
    FormatSpec("ncnn", "NCNN (.param + .bin)", (".param",)),
    FormatSpec("tflite", "TensorFlow Lite / LiteRT flatbuffer", (".tflite",), aliases=("litert",)),
    FormatSpec("keras", "Keras model: Keras 3 .keras archive or legacy .h5 (tf_keras)", (".keras", ".h5", ".hdf5"),
               layout="NHWC"),
    FormatSpec("savedmodel", "TensorFlow SavedModel directory (serving_default signature)", is_directory=True,
               aliases=("saved-model", "tf-savedmodel"), layout="NHWC"),
    FormatSpec("tensorrt", "TensorRT serialized engine (GPU)", (".engine", ".plan"), aliases=("trt",)),
)
