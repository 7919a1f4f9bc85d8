"""PyTorch / TorchScript -> NCNN (.param + .bin) through the pnnx binary.

The model is traced at batch 1 in-process (a TorchScript source through a wrapper module), then the ``pnnx``
executable that ships inside the ``pnnx`` pip package converts it in a child process with a timeout: pnnx can
segfault or abort on operators it does not handle (``torch.logdet`` aborts it), and ``pnnx.export`` ignores
its binary's exit status, so a crash there must fail this target only. After pnnx, the .param is checked
(magic number, every layer type known to ncnn) because pnnx leaves operators it cannot map (``torch.topk``,
``aten::sort``, ``pnnx.Expression``) in the file and exits 0. Finally the ncnn model runs in a second child at
the example sizes and, when the model has dynamic dims other than the batch, at a second size (pnnx bakes
sizes in unless given ``inputshape2``: measured on the tiny transformer, 3e-3 off at another length).

ncnn blobs have no batch axis, so the model is converted at batch 1 (the runner feeds one sample at a time).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.converters.torch_globals import torch_export_globals
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
from convcli.core.isolation import run_python, run_tool
from convcli.core.lazy import package_version, require
from convcli.core.registry import Registry
from convcli.core.step import Availability, Converter, KindsFor, StepContext, check_packages
from convcli.core.tensors import TensorSpec
from convcli.parity.compare import DEFAULT_TOLERANCES
from convcli.parity.rounding import compare_with_rounding_floor, rounding_record

NCNN_MAGIC = "7767517"
# pnnx's type suffixes for inputshape=[...]; ncnn itself computes in float32 and reads ids as int32.
PNNX_TYPES = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# pnnx's embedded ONNX Runtime logs "<date> [W:onnxruntime:pnnx, ...] Unknown CPU vendor ..." on every run;
# it would crowd out pnnx's own last lines in an error message.
_ORT_LOG = re.compile(r"\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \[[A-Z]:onnxruntime:[^\]]*\][^|]*")


def _clean(text: str) -> str:
    return " ".join(_ORT_LOG.sub(" ", _ANSI.sub("", text)).split())


class NcnnOptions(BaseModel):
    """Options of the ncnn target (``-O ncnn.KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "fp16"] = Field(
        default="fp32", description="fp16: pnnx stores weights as fp16 (fp16=1) and the runner keeps fp16 storage.")
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds pnnx may run before it is stopped.")
    check_dynamic: bool = Field(
        default=True, description="Convert with a second size of each dynamic non-batch dim (pnnx inputshape2) "
                                  "and check the ncnn model there too. false: pnnx bakes the example sizes in "
                                  "(recorded as ncnn_fixed_dims); the model is then wrong at other sizes.")


def pnnx_binary() -> Path | None:
    """The pnnx executable inside the pnnx package (found without importing it: that imports torch)."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    exe = folder / ("pnnx.exe" if sys.platform == "win32" else "pnnx")
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


def pnnx_availability(requires: tuple[str, ...]) -> Availability:
    avail = check_packages(requires)
    if avail.available and pnnx_binary() is None:
        return Availability(False, "the pnnx package has no pnnx executable for this platform", avail.versions)
    return avail


# -- shapes ----------------------------------------------------------------------------------------------
def check_specs(specs: list[TensorSpec], target: str) -> None:
    """ncnn takes float/int inputs of at most 4 dims per sample, one sample at a time."""
    for s in specs:
        if s.dtype not in PNNX_TYPES:
            raise ConversionError(f"{target}: input '{s.name}' has dtype {s.dtype}; ncnn takes only "
                                  f"{', '.join(PNNX_TYPES)} inputs")
        if not s.shape:
            raise ConversionError(f"{target}: input '{s.name}' is a scalar; ncnn inputs need a batch axis")
        if len(s.shape) > 5:
            raise ConversionError(f"{target}: input '{s.name}' has {len(s.shape)} dims; ncnn blobs hold at most "
                                  "4 per sample")
        first = s.shape[0]
        if not first.dynamic and first.size != 1:
            raise ConversionError(
                f"{target}: input '{s.name}' has a fixed batch of {first.size}; ncnn has no batch axis and runs "
                "one sample at a time", hint=f"declare the batch dynamic, e.g. --input {s.name}:batch="
                f"{first.size}x{'x'.join(d.text() for d in s.shape[1:])}:{s.dtype}")


def batch_overrides(specs: list[TensorSpec]) -> dict[str, int]:
    return {s.shape[0].name: 1 for s in specs if s.shape and s.shape[0].name}


def second_sizes(specs: list[TensorSpec]) -> dict[str, int]:
    """Another size (example + 1) for every dynamic dim that is not a batch dim."""
    batch = set(batch_overrides(specs))
    return {d.name: d.size + 1 for s in specs for d in s.shape[1:] if d.name and d.name not in batch}


def shape_arg(specs: list[TensorSpec], overrides: dict[str, int]) -> str:
    """pnnx's ``inputshape=[1,3,224,224]f32,[1,16]i64``."""
    return ",".join(f"[{','.join(str(n) for n in s.example_shape(overrides))}]{PNNX_TYPES[s.dtype]}"
                    for s in specs)


def example_inputs(specs: list[TensorSpec], overrides: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    from convcli.parity.data import random_array

    rng = np.random.default_rng(seed)
    return {s.name: random_array(s, s.example_shape(overrides), rng) for s in specs}


def sizes_text(overrides: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "example sizes"


# -- the .param file ---------------------------------------------------------------------------------------
def read_param(path: Path, target: str) -> list[tuple[str, list[str], list[str]]]:
    """Layers of an ncnn .param as (type, bottoms, tops); ConversionError when the file is not one."""
    if not path.is_file() or path.stat().st_size == 0:
        raise ConversionError(f"{target}: pnnx wrote no ncnn model ({path.name} is missing or empty)",
                              hint="run with --debug to see pnnx's output")
    lines = [ln.split() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines or lines[0] != [NCNN_MAGIC]:
        raise ConversionError(f"{target}: {path.name} is not an ncnn .param (magic {NCNN_MAGIC} missing)")
    try:
        layer_count = int(lines[1][0])
        layers = []
        for tokens in lines[2: 2 + layer_count]:
            nb, nt = int(tokens[2]), int(tokens[3])
            layers.append((tokens[0], tokens[4: 4 + nb], tokens[4 + nb: 4 + nb + nt]))
    except (IndexError, ValueError):
        raise ConversionError(f"{target}: {path.name} is truncated or malformed") from None
    if len(layers) != layer_count:
        raise ConversionError(f"{target}: {path.name} declares {layer_count} layers but holds {len(layers)}")
    return layers


def unsupported_layers(types: list[str]) -> list[str]:
    """Layer types this ncnn cannot create: pnnx leaves operators it could not map under their torch or
    pnnx names (``torch.topk``, ``aten::sort``, ``pnnx.Expression``, ``prim::...``)."""
    ncnn = require("ncnn", "checking ncnn models")
    return sorted({t for t in types if "." in t or "::" in t or ncnn.layer_to_index(t) < 0})


def check_param(path: Path, target: str) -> list[tuple[str, list[str], list[str]]]:
    layers = read_param(path, target)
    counts = Counter(t for t, _, _ in layers)
    bad = unsupported_layers(list(counts))
    if bad:
        listed = ", ".join(f"{t} ({counts[t]}x)" if counts[t] > 1 else t for t in bad)
        raise ConversionError(
            f"{target}: pnnx could not map operator(s) {listed} to ncnn layers; ncnn cannot run this model",
            hint="rewrite those operators in the model, or choose another target (onnx, openvino)")
    return layers


def map_blobs(layers: list[tuple[str, list[str], list[str]]], specs: list[TensorSpec], outputs: list[str],
              target: str) -> dict[str, dict[str, str]]:
    """pnnx names the ncnn blobs in0.. and out0.. in the source's order; check they are there."""
    input_blobs = {top for t, _, tops in layers if t == "Input" for top in tops}
    all_tops = {top for _, _, tops in layers for top in tops}
    inputs = {s.name: f"in{i}" for i, s in enumerate(specs) if f"in{i}" in input_blobs}
    missing = [f"out{i} ('{n}')" for i, n in enumerate(outputs) if f"out{i}" not in all_tops]
    if missing:
        raise ConversionError(f"{target}: the ncnn model lacks output blob(s) {', '.join(missing)}")
    if not inputs:
        raise ConversionError(f"{target}: the ncnn model has no input blob named in0..in{len(specs) - 1}")
    return {"inputs": inputs, "outputs": {n: f"out{i}" for i, n in enumerate(outputs)}}


# -- the converter base --------------------------------------------------------------------------------------
class PnnxConverter(Converter):
    """Shared by the PyTorch, TorchScript and ONNX edges: subclasses write pnnx's input file and compute
    reference outputs; this class runs pnnx, checks the .param and the numbers, and builds the artifact."""

    target = "ncnn"
    precisions = ("fp32", "fp16")
    Options = NcnnOptions
    pnnx_input_name: ClassVar[str] = "model.pt"

    @classmethod
    def availability(cls) -> Availability:
        return pnnx_availability(cls.requires)

    # subclasses ----------------------------------------------------------------------------------------
    def pnnx_input(self) -> str:
        """The name of the file pnnx converts (its extension tells pnnx the frontend)."""
        return self.pnnx_input_name

    def write_pnnx_input(self, artifact: Artifact, dest: Path, ctx: StepContext) -> dict[str, Any]:
        """Write the file pnnx converts; return details worth recording (e.g. what was done to it)."""
        raise NotImplementedError  # pragma: no cover

    def reference(self, artifact: Artifact, feed: dict[str, np.ndarray], ctx: StepContext) -> list[np.ndarray]:
        raise NotImplementedError  # pragma: no cover

    def reference_float64(self, artifact: Artifact, feed: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """The source's outputs on ``feed`` computed in float64 (the rounding floor of fp32 judging), or None
        where the source cannot run in float64."""
        return None

    def crash_hint(self, dynamic: dict[str, int]) -> str:
        return "run with --debug for pnnx's output; try another target (onnx, openvino)"

    # the run ---------------------------------------------------------------------------------------------
    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        opts: NcnnOptions = self.options  # type: ignore[assignment]
        where = f"ncnn target ({self.name})"
        specs = artifact.inputs
        check_specs(specs, where)
        exe = pnnx_binary()
        if exe is None:
            raise ConversionError(f"{where}: the pnnx executable is missing from the pnnx package",
                                  hint="pip install -c constraints.txt pnnx")
        work = ctx.workdir / "pnnx"
        work.mkdir(parents=True, exist_ok=True)
        model_in = work / self.pnnx_input()
        notes = self.write_pnnx_input(artifact, model_in, ctx)

        one = batch_overrides(specs)
        dynamic = second_sizes(specs) if opts.check_dynamic else {}
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        cmd = [str(exe), model_in.name, f"inputshape={shape_arg(specs, one)}"]
        if dynamic:
            cmd.append(f"inputshape2={shape_arg(specs, {**one, **dynamic})}")
        cmd += ["device=cpu", "optlevel=2", f"fp16={1 if opts.precision == 'fp16' else 0}",
                "pnnxparam=model.pnnx.param", "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py",
                "pnnxonnx=model.pnnx.onnx", f"ncnnparam={param.name}", f"ncnnbin={weights.name}",
                "ncnnpy=model_ncnn.py"]
        try:
            proc = run_tool(cmd, f"pnnx ({self.name}, {self.source} -> ncnn)", cwd=work, timeout_s=opts.timeout_s,
                            env={"OMP_NUM_THREADS": str(ctx.threads)})
        except ConversionError as exc:
            raise ConversionError(_clean(exc.message), hint=exc.hint or self.crash_hint(dynamic)) from None
        if ctx.debug:
            ctx.log.append(_ANSI.sub("", proc.stdout + proc.stderr))

        try:
            layers = check_param(param, where)
        except ConversionError as exc:
            lowering = notes.get("onnx_rank_lowering", {})
            if lowering.get("left_above_rank_4"):
                raise ConversionError(f"{exc.message}; left above rank 4 (ncnn's limit) after lowering the ONNX "
                                      f"graph: {', '.join(lowering['left_above_rank_4'])}", hint=exc.hint) from None
            if lowering.get("skipped"):
                raise ConversionError(f"{exc.message}; the ONNX graph was not lowered to rank 4: "
                                      f"{lowering['skipped']}", hint=exc.hint) from None
            raise
        if not weights.is_file():
            raise ConversionError(f"{where}: pnnx wrote {param.name} but no {weights.name}")
        blobs = map_blobs(layers, specs, artifact.output_names, where)

        # Reference outputs at batch 1: the example sizes, then a second size of each dynamic dim.
        cases = {"example sizes": one}
        if dynamic:
            cases[sizes_text(dynamic)] = {**one, **dynamic}
        feeds = {case: example_inputs(specs, sizes, seed=1) for case, sizes in cases.items()}
        refs = {case: self.reference(artifact, feed, ctx) for case, feed in feeds.items()}
        shapes = {n: list(r.shape) for n, r in zip(artifact.output_names, refs["example sizes"], strict=True)}
        got = self._run_ncnn(param, weights, opts.precision, ctx, blobs, shapes, feeds)
        float64 = {case: functools.partial(self.reference_float64, artifact, feed) for case, feed in feeds.items()}
        checks = self._judge(artifact.output_names, refs, got, opts.precision, where, ctx.kinds, float64)

        final_param, final_bin = ctx.workdir / "model.param", ctx.workdir / "model.bin"
        os.replace(param, final_param)
        os.replace(weights, final_bin)
        histogram = dict(Counter(t for t, _, _ in layers).most_common())
        details: dict[str, Any] = {
            "pnnx_version": package_version("pnnx"), "ncnn_weights": opts.precision, "ncnn_layers": histogram,
            "ncnn_blobs": blobs, "ncnn_output_shapes": shapes, "ncnn_checks": checks,
            "pnnx_inputshape": shape_arg(specs, one),
        }
        if dynamic:
            details["pnnx_inputshape2"] = shape_arg(specs, {**one, **dynamic})
        elif second_sizes(specs):
            details["ncnn_fixed_dims"] = {k: v - 1 for k, v in second_sizes(specs).items()}
        details.update(notes)
        return Artifact(format="ncnn", path=final_param, inputs=specs, output_names=artifact.output_names,
                        precision=opts.precision, files=[final_param, final_bin], layout=dict(artifact.layout),
                        output_layout=dict(artifact.output_layout), details=details)

    def _run_ncnn(self, param: Path, weights: Path, precision: str, ctx: StepContext, blobs: dict[str, Any],
                  shapes: dict[str, list[int]], feeds: dict[str, dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """Run the new ncnn model in a child process (an ncnn crash on a bad conversion fails this step only)."""
        folder = ctx.workdir / "check"
        folder.mkdir(exist_ok=True)
        cases = {}
        for i, (case, feed) in enumerate(feeds.items()):
            src, dst = folder / f"in{i}.npz", folder / f"out{i}.npz"
            np.savez(src, **feed)
            cases[case] = [str(src), str(dst)]
        request = folder / "request.json"
        request.write_text(json.dumps({
            "param": str(param), "bin": str(weights), "precision": precision, "threads": ctx.threads,
            "inputs": blobs["inputs"], "outputs": [[n, b] for n, b in blobs["outputs"].items()],
            "output_shapes": shapes, "cases": cases}))
        code = f"from convcli.runners.ncnn_runner import run_request; run_request({str(request)!r})"
        run_python(code, f"ncnn check of {self.name}'s model", cwd=folder, timeout_s=self.options.timeout_s)  # type: ignore[attr-defined]
        got = {}
        for case, (_, dst) in cases.items():
            with np.load(dst) as data:
                got[case] = [data[f"arr_{j}"] for j in range(len(data.files))]
        return got

    @staticmethod
    def _judge(names: list[str], refs: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]],
               precision: str, where: str, kinds: KindsFor | None = None,
               float64: dict[str, Callable[[], list[np.ndarray] | None]] | None = None) -> dict[str, Any]:
        """Record each case; a disagreement at a second dynamic size (where parity never looks) is an error.
        ``float64``: per case, the source's float64 outputs on demand (the fp32 rounding floor)."""
        tol = DEFAULT_TOLERANCES[precision]
        checks: dict[str, Any] = {}
        for case, ref in refs.items():
            result = compare_with_rounding_floor(names, ref, got[case], tol, kinds(names, ref) if kinds else None,
                                                 float64=(float64 or {}).get(case))
            checks[case] = {"max_abs_err": result.max_abs_err, "passed": result.passed, **rounding_record(result)}
            if case != "example sizes" and not result.passed and checks["example sizes"]["passed"]:
                raise ConversionError(f"{where}: the ncnn model disagrees with the source at {case}: "
                                      f"{result.message}", hint="pnnx probably baked a size in; declare that dim "
                                                                "static with --input, or use another target")
        return checks


UNMAPPED = "pnnx could not map operator(s)"


class NcnnTorchOptions(NcnnOptions):
    """Options of the ncnn target from a PyTorch or TorchScript source."""

    onnx_fallback: bool = Field(
        default=True, description="When pnnx cannot map an operator of the TorchScript trace, export the model to "
                                  "ONNX (OnnxFromPytorch, weights inline) and convert that with pnnx; the step's "
                                  "details say which route built the model (ncnn_route).")


class NcnnFromPytorch(PnnxConverter):
    """nn.Module -> ncnn: torch.jit.trace at batch 1, then pnnx. When pnnx leaves an operator of the trace unmapped
    (``aten::addcmul``), the ONNX route is tried before giving up: the model exported with the ``onnx_step``
    converter (its ONNX checked against PyTorch as always), that file given to pnnx, and the ncnn model still
    checked against PyTorch itself. pnnx's ONNX frontend sees the exporter's decomposition of the operator
    (Mul, Add), which it can map. The route is recorded (``ncnn_route``) and shown in the row's chain."""

    name = "NcnnFromPytorch"
    source = "pytorch"
    summary = ("torch.jit.trace + pnnx (child process) -> ncnn .param/.bin, checked at a second dynamic size; "
               "through ONNX when pnnx cannot map an operator of the trace")
    requires = ("torch", "pnnx", "ncnn")
    cost = 1.0  # below OnnxFromPytorch + NcnnFromOnnx: the direct edge is preferred for PyTorch sources
    Options = NcnnTorchOptions
    onnx_step: ClassVar[str] = "OnnxFromPytorch"
    _onnx_file: Path | None = None

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        opts: NcnnTorchOptions = self.options  # type: ignore[assignment]
        try:
            out = super().run(artifact, ctx)
        except ConversionError as exc:
            if not (opts.onnx_fallback and UNMAPPED in exc.message):
                raise
            return self._via_onnx(artifact, ctx, exc.message)
        out.details["ncnn_route"] = "torchscript trace"
        return out

    def _via_onnx(self, artifact: Artifact, ctx: StepContext, why: str) -> Artifact:
        from convcli.converters import torch_to_onnx

        where = f"ncnn target ({self.name})"
        step_cls = getattr(torch_to_onnx, self.onnx_step)
        if not (ready := step_cls.availability()).available:
            raise ConversionError(f"{why}; the ONNX route is unavailable: {self.onnx_step}: {ready.reason}")
        folder = ctx.workdir / "onnx-route"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            exported = step_cls().run(artifact, replace(ctx, workdir=folder))
        except ConversionError as exc:
            raise ConversionError(f"{why}; the ONNX route failed too: {exc.message}", hint=exc.hint) from None
        shutil.rmtree(ctx.workdir / "pnnx", ignore_errors=True)
        self._onnx_file = exported.path
        try:
            out = super().run(artifact, ctx)
        except ConversionError as exc:
            raise ConversionError(f"{why}; the ONNX route ({self.onnx_step} + pnnx) failed too: {exc.message}",
                                  hint=exc.hint) from None
        finally:
            self._onnx_file = None
        out.details.update({
            "ncnn_route": f"onnx ({self.onnx_step} + pnnx)", "chain_note": f"via ONNX: {self.onnx_step} + pnnx",
            "ncnn_route_reason": why.removeprefix(f"{where}: "),
            "onnx_exporter": exported.details.get("exporter"), "onnx_opset": exported.details.get("opset"),
            "onnx_export_checks": exported.details.get("export_checks"),
        })
        return out

    def pnnx_input(self) -> str:
        return "model.onnx" if self._onnx_file is not None else self.pnnx_input_name

    def write_pnnx_input(self, artifact: Artifact, dest: Path, ctx: StepContext) -> dict[str, Any]:
        if self._onnx_file is not None:
            from convcli.converters.onnx_to_ncnn import prepare_for_pnnx

            return prepare_for_pnnx(self._onnx_file, dest, f"ncnn target ({self.name})", artifact.inputs,
                                    ctx.threads)
        torch = require("torch")
        args = tuple(torch.from_numpy(a) for a in example_inputs(artifact.inputs,
                                                                batch_overrides(artifact.inputs), 0).values())
        import warnings

        try:
            with torch_export_globals(), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.traceable(artifact), args, check_trace=False)
            traced.save(str(dest))
            return {}
        except Exception as exc:
            msg = " ".join(str(exc).split())[:240]
            raise ConversionError(f"ncnn target ({self.name}): torch.jit.trace failed: {type(exc).__name__}: {msg}",
                                  hint="pnnx needs a traceable model; try --to onnx") from None

    def traceable(self, artifact: Artifact) -> Any:
        return artifact.obj

    def reference(self, artifact: Artifact, feed: dict[str, np.ndarray], ctx: StepContext) -> list[np.ndarray]:
        torch = require("torch")
        from convcli.sources.torch_sources import flatten_outputs

        args = [torch.from_numpy(feed[s.name]) for s in artifact.inputs]
        with torch.inference_mode():
            out = artifact.obj(*args)
        return [t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy()
                for t in flatten_outputs(out)]

    def reference_float64(self, artifact: Artifact, feed: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        torch = require("torch")
        from convcli.sources.torch_sources import float64_outputs

        return float64_outputs(artifact.obj, [torch.from_numpy(feed[s.name]) for s in artifact.inputs])


class NcnnFromTorchscript(NcnnFromPytorch):
    """TorchScript archive -> ncnn: re-traced at batch 1 through a wrapper module, then pnnx."""

    name = "NcnnFromTorchscript"
    source = "torchscript"
    onnx_step = "OnnxFromTorchscript"
    summary = "pnnx (child process) on a TorchScript archive -> ncnn .param/.bin"

    def traceable(self, artifact: Artifact) -> Any:
        """A plain module around the ScriptModule: tracing a ScriptModule itself is a no-op, and pnnx
        rejects an archive whose recorded example inputs (often batch 2+) differ from its batch-1 shapes."""
        torch = require("torch")

        class _Call(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> Any:
                return self.inner(*args)

        return _Call(artifact.obj)


def register(registry: Registry) -> None:
    for step in (NcnnFromPytorch, NcnnFromTorchscript):
        registry.add_step(step)
