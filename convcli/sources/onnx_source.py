"""ONNX files as sources: inputs (names, shapes with symbolic dims, dtypes) are read from the graph."""

from __future__ import annotations

from pathlib import Path

from convcli.core.artifact import Artifact
from convcli.core.errors import InputError
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.source import SourceLoader, SourceRequest
from convcli.core.tensors import DEFAULT_DIM_SIZES, Dim, TensorSpec

ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


def read_onnx_io(path: Path) -> tuple[list[TensorSpec], list[str]]:
    """Inputs and outputs of an ONNX file (initializers excluded). Errors name the file."""
    onnx = require("onnx", "ONNX files")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{path} is not a readable ONNX model: {' '.join(str(exc).split())[:160]}") from None
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(Dim(size=d.dim_value))
            else:
                name = d.dim_param or ("batch" if i == 0 else f"dim{i}")
                safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or f"dim{i}"
                if safe[0].isdigit():
                    safe = f"d_{safe}"
                dims.append(Dim(name=safe, size=DEFAULT_DIM_SIZES.get(safe, 2)))
        specs.append(TensorSpec(name=inp.name, shape=dims, dtype=ONNX_DTYPES.get(tt.elem_type, "float32")))
    return specs, [o.name for o in model.graph.output]


class OnnxLoader(SourceLoader):
    name = "onnx"
    format = "onnx"
    requires = ("onnx",)
    also_uses = ("onnxruntime",)  # runs the source: the reference outputs every artifact is compared to

    @classmethod
    def matches(cls, spec: str) -> bool:
        return Path(spec).suffix == ".onnx"

    def load(self, request: SourceRequest) -> Artifact:
        path = Path(request.spec)
        if not path.is_file():
            raise InputError(f"model file {path} does not exist")
        specs, outputs = read_onnx_io(path)
        if request.inputs:
            known = {s.name for s in specs}
            unknown = [s.name for s in request.inputs if s.name not in known]
            if unknown:
                raise InputError(f"{path}: --input {', '.join(unknown)} is not an input of the model",
                                 hint=f"its inputs are: {', '.join(sorted(known))}")
            given = {s.name: s for s in request.inputs}
            specs = [given.get(s.name, s) for s in specs]
        return Artifact(format="onnx", path=path, inputs=specs, output_names=outputs)


def register(registry: Registry) -> None:
    registry.add_source(OnnxLoader)
