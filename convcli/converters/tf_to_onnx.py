"""Keras and SavedModel -> ONNX with tf2onnx, in a child process; every ONNX target follows from there
(OpenVINO, NCNN through NcnnFromOnnx, TFLite through onnx2tf).

Why a child process: the conversion runs TensorFlow's graph tooling (grappler, constant folding of the
traced function) whose native failures abort the process, and tf2onnx changes process-wide state on import
(it sets TF_CPP_MIN_LOG_LEVEL, registers its op handlers). In a child (``run_python``) a crash or hang fails
this target only and the convcli process stays as it was. The cost is one TensorFlow import (~6 s). The
export is then checked in this process against the already loaded source.

The child traces the model as convcli calls it (``TfModel.function``: inputs in the source's order with the
source's names, dynamic dims unknown, outputs in the source's order) and converts that function with
``tf2onnx.convert.from_function``. ``from_keras`` is not used: it does not take Keras 3 models. Afterwards
the ONNX file's outputs (tf2onnx calls them ``Identity:0``...) are renamed to the source's output names and
dynamic input dims get the source's names (``batch`` instead of ``unk__12``), so ONNX and everything built
from it use the source's names. tf2onnx keeps TensorFlow's input shapes: an NHWC Keras input stays NHWC in
ONNX (its first op is a Transpose to NCHW), so the ONNX artifact takes the same feed as the source.

Each export is run with ONNX Runtime against TensorFlow at the example sizes and at a second size of every
dynamic dim (``export_checks``); a difference fails the step, naming the sizes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import convcli
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.isolation import run_python
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.step import Converter, StepContext
from convcli.core.tensors import TensorSpec
from convcli.parity.compare import DEFAULT_TOLERANCES, compare_outputs
from convcli.parity.data import random_array

MARK = "CONVCLI_CHILD_ERROR:"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_CHILD = r'''
import json, sys
args = json.loads(__ARGS__)
from __MODULE__ import __FUNC__ as main
try:
    main(args)
except SystemExit:
    raise
except BaseException as exc:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    print("__MARK__ " + type(exc).__name__ + ": " + " / ".join(lines[:2])[:400], file=sys.stderr, flush=True)
    sys.exit(1)
'''


def run_tf_child(func: str, args: dict[str, Any], what: str, workdir: Path, timeout_s: float,
                 hint: str = "") -> str:
    """Run ``module:function(args)`` in a child Python with TensorFlow's logging off; return its log.

    Raises ConversionError with the child's own error line (or its last lines, or the signal it died of).
    """
    module, _, name = func.partition(":")
    code = (_CHILD.replace("__ARGS__", repr(json.dumps(args))).replace("__MODULE__", module)
            .replace("__FUNC__", name).replace("__MARK__", MARK))
    root = str(Path(convcli.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    proc = run_python(code, what, cwd=workdir, timeout_s=timeout_s, check=False,
                      env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONPATH": path})
    log = proc.stdout + "\n" + proc.stderr
    (workdir / f"{what.split()[0]}.log").write_text(log)
    if proc.returncode != 0:
        lines = [_ANSI.sub("", ln).strip() for ln in log.splitlines() if ln.strip()]
        marks = [ln.removeprefix(MARK).strip() for ln in lines if ln.startswith(MARK)]
        reason = marks[-1] if marks else " | ".join(lines[-3:])[-400:]
        raise ConversionError(f"{what} failed (exit {proc.returncode}): {reason}", hint=hint or None)
    return log


class TfOnnxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int = Field(default=17, ge=9, le=18, description="ONNX opset tf2onnx writes (tf2onnx 1.17: up to 18).")
    check_dynamic: bool = Field(default=True, description="Also check the export at a second size of each "
                                                          "dynamic dimension.")
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds the tf2onnx child may run.")


def child_to_onnx(args: dict[str, Any]) -> None:
    """In the child: load the model, trace it as convcli calls it, convert with tf2onnx, save. Its output
    is not captured here: the parent keeps it (the step's tf2onnx.log), native crash lines included."""
    from convcli.sources.tf_sources import import_tensorflow, load_tf_model

    import_tensorflow(args["threads"])
    tf2onnx = require("tf2onnx", "Keras/SavedModel -> ONNX")
    onnx = require("onnx")
    model = load_tf_model(args["kind"], Path(args["path"]))
    specs = [TensorSpec.model_validate(s) for s in args["inputs"]]
    fn = model.function(specs)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=list(fn.input_signature), opset=args["opset"])
    onnx.save(proto, args["output"])


def finish_onnx(path: Path, specs: list[TensorSpec], outputs: list[str]) -> dict[str, str]:
    """Give the ONNX file the source's input/output names and dynamic dim names; return the renames."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in inits]
    if len(graph_inputs) != len(specs) or len(graph.output) != len(outputs):
        raise ConversionError(f"tf2onnx wrote {len(graph_inputs)} input(s) and {len(graph.output)} output(s); the "
                              f"source has {len(specs)} and {len(outputs)}")
    renames: dict[str, str] = {}
    for inp, spec in zip(graph_inputs, specs, strict=True):
        if inp.name != spec.name:
            renames[inp.name] = spec.name
        for d, dim in zip(inp.type.tensor_type.shape.dim, spec.shape, strict=False):
            if dim.dynamic:
                d.dim_param = dim.name or ""
    for out, name in zip(graph.output, outputs, strict=True):
        if out.name != name:
            renames[out.name] = name
    if renames:
        clash = (set(renames.values()) - set(renames)) & {o for n in graph.node for o in n.output}
        if clash:
            raise ConversionError(f"cannot rename tf2onnx's outputs to {sorted(clash)}: an inner tensor has that "
                                  "name already")
        for node in graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return renames


def verify_onnx(model: Any, path: Path, specs: list[TensorSpec], outputs: list[str], threads: int,
                check_dynamic: bool) -> dict[str, Any]:
    """ONNX Runtime against TensorFlow at the example sizes and at example+1 of each dynamic dim."""
    from convcli.runners.onnxruntime_runner import ort_session

    session: Any = ort_session(str(path), threads)
    cases: list[dict[str, int]] = [{}]
    second = {d.name: d.size + 1 for s in specs for d in s.shape if d.name}
    if check_dynamic and second:
        cases.append(second)
    checks: dict[str, Any] = {}
    for overrides in cases:
        where = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "example sizes"
        rng = np.random.default_rng(1)
        arrays = [random_array(s, s.example_shape(overrides), rng) for s in specs]
        ref = model(arrays, specs)
        try:
            got = session.run(outputs, {s.name: a for s, a in zip(specs, arrays, strict=True)})
        except Exception as exc:
            raise ConversionError(f"the ONNX export fails in ONNX Runtime at {where}: {first_line(exc)}") from None
        result = compare_outputs(outputs, ref, [np.asarray(g) for g in got], DEFAULT_TOLERANCES["fp32"])
        checks[where] = {"max_abs_err": result.max_abs_err, "passed": result.passed}
        if not result.passed:
            raise ConversionError(f"the ONNX export disagrees with TensorFlow at {where}: {result.message}",
                                  hint="a size may be baked in: give static sizes with --input, or try another opset")
    return checks


def source_model(artifact: Artifact, threads: int) -> Any:
    """The loaded TfModel of a source artifact (loaded again when the artifact carries none)."""
    from convcli.sources.tf_sources import TfModel, load_tf_model

    if isinstance(artifact.obj, TfModel):
        return artifact.obj
    assert artifact.path is not None
    return load_tf_model(artifact.format, Path(artifact.path), threads)


class OnnxFromKeras(Converter):
    """Keras (.keras / .h5) -> ONNX with tf2onnx in a child process, checked against TensorFlow."""

    name = "OnnxFromKeras"
    source = "keras"
    target = "onnx"
    summary = "tf2onnx from_function (child process), source names kept, checked at a second dynamic size"
    requires = ("tensorflow", "tf2onnx", "onnx", "onnxruntime")
    Options = TfOnnxOptions

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        opts: TfOnnxOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        out = ctx.workdir / "model.onnx"
        args = {"kind": artifact.format, "path": str(Path(artifact.path).resolve()), "output": str(out),
                "inputs": [s.model_dump() for s in artifact.inputs], "opset": opts.opset, "threads": ctx.threads}
        run_tf_child("convcli.converters.tf_to_onnx:child_to_onnx", args, "tf2onnx", ctx.workdir, opts.timeout_s,
                     hint=f"a tf2onnx limitation for this model: try another opset (-O {self.name}.opset=N) or "
                          f"the native TFLite path")
        if not out.is_file():
            raise ConversionError(f"tf2onnx exited without writing {out.name}")
        renames = finish_onnx(out, artifact.inputs, artifact.output_names)
        checks = verify_onnx(source_model(artifact, ctx.threads), out, artifact.inputs, artifact.output_names,
                             ctx.threads, opts.check_dynamic)
        details = {"converter": f"tf2onnx {package_version('tf2onnx')} (TensorFlow {package_version('tensorflow')})",
                   "opset": opts.opset, "renamed": renames, "export_checks": checks,
                   "input_layout": "as the source: tf2onnx keeps TensorFlow's input shapes ("
                                   + ", ".join(s.text() for s in artifact.inputs) + ")"}
        return Artifact(format="onnx", path=out, inputs=list(artifact.inputs),
                        output_names=list(artifact.output_names), files=[out], details=details)


class OnnxFromSavedmodel(OnnxFromKeras):
    """SavedModel (serving_default) -> ONNX with tf2onnx in a child process, checked against TensorFlow."""

    name = "OnnxFromSavedmodel"
    source = "savedmodel"


def register(registry: Registry) -> None:
    for step in (OnnxFromKeras, OnnxFromSavedmodel):
        registry.add_step(step)
