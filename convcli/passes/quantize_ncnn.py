"""ncnn fp32 -> ncnn int8 with ncnn's own post-training quantization tools, ``ncnn2table`` and ``ncnn2int8``.

The pip ``ncnn`` package ships the runtime only, and no pip or Debian package ships these two programs: they
are built from ncnn's source (``tools/quantize``, with ``-DNCNN_BUILD_TOOLS=ON``). So this pass is available
only when both are on PATH; otherwise ``availability()`` says so and the planner reports ``ncnn:int8`` as
"unavailable" with that reason (never a silent fallback).

When the tools are there, the pass:

1. writes each calibration sample as one float32 ``.npy`` per input, without the batch axis (ncnn blobs have
   none), and a list file per input in the order of the ``Input`` layers of the .param;
2. runs ``ncnn2table FP32.param FP32.bin LIST[,LIST...] model.table shape=[w,h,c][,...] thread=N method=kl
   type=1`` (``type=1``: the lists name .npy files holding already-preprocessed tensors, so no mean/norm/
   pixel arguments; ``shape`` is the sample shape in ncnn's reversed order, which ncnn2table checks against
   each file);
3. runs ``ncnn2int8 FP32.param FP32.bin model.param model.bin model.table``;
4. checks the new .param (magic, known layer types, at least one layer with an int8 scale term) and runs it
   in a child process next to the fp32 model on a few calibration samples, recording the cosine between them.

pnnx already writes fused ncnn graphs, so ncnn's optional ``ncnnoptimize`` step is not run. An ncnn2table
older than ``type=1`` (.npy lists) is refused with a message rather than fed images it would re-normalise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.converters.torch_to_ncnn import check_param
from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError
from convcli.core.isolation import run_python, run_tool
from convcli.core.registry import Registry
from convcli.core.step import Availability, Pass, StepContext, check_packages
from convcli.parity.compare import DEFAULT_TOLERANCES, compare_outputs
from convcli.parity.data import DataSet
from convcli.runners.ncnn_runner import blob_map

TOOLS = ("ncnn2table", "ncnn2int8")
BUILD_HINT = ("build them from ncnn's tools/quantize (git clone https://github.com/Tencent/ncnn; cmake -B build "
              "-DNCNN_BUILD_TOOLS=ON; cmake --build build) and put build/tools/quantize on PATH")
# Layers ncnn2int8 quantizes, and the id of their int8_scale_term parameter in the .param line.
INT8_LAYERS = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
INT8_SCALE_TERM = "8"
CHECK_SAMPLES = 4


class NcnnInt8Options(BaseModel):
    """Options of QuantizeNcnnInt8 (``-O QuantizeNcnnInt8.KEY=VALUE``)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["kl", "aciq", "eq"] = Field(
        default="kl", description="ncnn2table's calibration method: KL divergence, ACIQ or EQ (search).")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="Calibrate on the first N calibration samples; default: all the job "
                                        "loaded (--calibration-samples).")
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds each ncnn tool may run.")


def find_tools() -> dict[str, str | None]:
    return {t: shutil.which(t) for t in TOOLS}


def input_order(param: Path, where: str) -> list[str]:
    """The input blobs in the order of the .param's Input layers (the order ncnn2table takes its lists in)."""
    return [tops[0] for kind, _, tops in check_param(param, where) if kind == "Input" and tops]


def int8_layer_count(param: Path) -> int:
    """Layers whose int8_scale_term is set: what ncnn2int8 really quantized."""
    count = 0
    for line in param.read_text(errors="replace").splitlines()[2:]:
        tokens = line.split()
        if tokens and tokens[0] in INT8_LAYERS:
            terms = dict(t.split("=", 1) for t in tokens if "=" in t)
            count += terms.get(INT8_SCALE_TERM, "0") not in ("0", "")
    return count


def write_npy_lists(data: DataSet, blobs: list[str], names_by_blob: dict[str, str],
                    folder: Path) -> tuple[list[str], list[str]]:
    """One .npy per sample and input (batch axis dropped) and one list file per input; returns the list files
    and ncnn2table's shape argument for each input (the sample shape reversed: [w,h,c]). Paths are relative
    to ``folder`` because ncnn2table reads at most 255 characters of each list line."""
    lists, shapes = [], []
    for i, blob in enumerate(blobs):
        name = names_by_blob.get(blob)
        if name is None or name not in data.inputs:
            raise ConversionError(f"ncnn int8: no calibration array for input blob {blob} "
                                  f"({name or 'not mapped to a source input'})")
        arr = data.inputs[name]
        if not np.issubdtype(arr.dtype, np.floating):
            raise ConversionError(f"ncnn int8: input {name} is {arr.dtype}; ncnn2table calibrates float inputs only")
        if not 2 <= arr.ndim <= 5:
            raise ConversionError(f"ncnn int8: input {name} has {arr.ndim} dims; ncnn blobs hold 1-4 per sample")
        sub = folder / f"c{i}"
        sub.mkdir(parents=True, exist_ok=True)
        lines = []
        for j, sample in enumerate(arr):
            rel = f"c{i}/{j:05d}.npy"
            np.save(folder / rel, np.ascontiguousarray(sample, dtype="<f4"))
            lines.append(rel)
        (folder / f"list{i}.txt").write_text("\n".join(lines) + "\n")
        lists.append(f"list{i}.txt")
        shapes.append("[" + ",".join(str(d) for d in reversed(arr.shape[1:])) + "]")
    return lists, shapes


class QuantizeNcnnInt8(Pass):
    """ncnn fp32 -> int8 through ncnn2table (calibration table from --calibration data) and ncnn2int8."""

    name = "QuantizeNcnnInt8"
    source = "ncnn"
    target = "ncnn"
    summary = "ncnn2table (calibration on --calibration .npy samples) + ncnn2int8; needs both tools on PATH"
    requires = ("ncnn",)
    output_precision = "int8"
    uses_calibration = True
    Options = NcnnInt8Options

    @classmethod
    def availability(cls) -> Availability:
        avail = check_packages(cls.requires)
        if not avail.available:
            return avail
        tools = find_tools()
        missing = [t for t, path in tools.items() if path is None]
        if missing:
            return Availability(False, f"{'/'.join(missing)} not found on PATH: {BUILD_HINT}", avail.versions)
        return Availability(True, "", {**avail.versions, **tools})

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        opts: NcnnInt8Options = self.options  # type: ignore[assignment]
        where = f"ncnn int8 ({self.name})"
        calibration = ctx.require_calibration(where)
        tools = find_tools()
        missing = [t for t, path in tools.items() if path is None]
        if missing:
            raise ConversionError(f"{where}: {'/'.join(missing)} not found on PATH", hint=BUILD_HINT)
        table_exe, int8_exe = str(tools["ncnn2table"]), str(tools["ncnn2int8"])
        assert artifact.path is not None
        fp32_param, fp32_bin = artifact.path, artifact.path.with_suffix(".bin")
        work = ctx.workdir / "quantize"
        work.mkdir(parents=True, exist_ok=True)

        usage = run_tool([table_exe], "ncnn2table (usage)", cwd=work, timeout_s=30, check=False)
        if "type=" not in usage.stdout + usage.stderr:
            raise ConversionError(f"{where}: {table_exe} predates .npy calibration lists (type=1)",
                                  hint="build ncnn2table from a current ncnn checkout")

        data = calibration.take(opts.calibration_samples)
        inputs, outputs = blob_map(artifact)
        blobs = input_order(fp32_param, where)
        lists, shapes = write_npy_lists(data, blobs, {b: n for n, b in inputs.items()}, work)
        table = work / "model.table"
        table_cmd = [table_exe, str(fp32_param), str(fp32_bin), ",".join(lists), table.name,
                     f"shape={','.join(shapes)}", f"thread={ctx.threads}", f"method={opts.method}", "type=1"]
        run_tool(table_cmd, "ncnn2table", cwd=work, timeout_s=opts.timeout_s)
        entries = [ln for ln in table.read_text(errors="replace").splitlines() if ln.strip()] \
            if table.is_file() else []
        if not entries:
            raise ConversionError(f"{where}: ncnn2table wrote no calibration table")

        param, weights = ctx.workdir / "model.param", ctx.workdir / "model.bin"
        int8_cmd = [int8_exe, str(fp32_param), str(fp32_bin), str(param), str(weights), str(table)]
        run_tool(int8_cmd, "ncnn2int8", cwd=work, timeout_s=opts.timeout_s)
        check_param(param, where)
        quantized = int8_layer_count(param)
        if quantized == 0 or not weights.is_file():
            raise ConversionError(f"{where}: ncnn2int8 quantized no layer (no int8 scale term in {param.name})")

        check = self._compare(artifact, param, weights, data.take(CHECK_SAMPLES), inputs, outputs, ctx)
        details: dict[str, Any] = {
            "ncnn_weights": "int8",
            "ncnn_int8": {"tools": tools, "method": opts.method, "calibration_data": data.description,
                          "calibration_samples": len(data), "table_entries": len(entries),
                          "int8_layers": quantized, "ncnn2table": " ".join(table_cmd[3:]),
                          "check_vs_fp32": check},
        }
        return artifact.derive(path=param, files=[param, weights], precision="int8",
                               details={**artifact.details, **details})

    def _compare(self, artifact: Artifact, param: Path, weights: Path, data: DataSet, inputs: dict[str, str],
                 outputs: list[tuple[str, str]], ctx: StepContext) -> dict[str, Any]:
        """Run the fp32 and int8 models in a child process (an ncnn crash fails this step only) on a few
        calibration samples, one at a time; record how close int8 stays to fp32."""
        assert artifact.path is not None
        folder = ctx.workdir / "check"
        folder.mkdir(exist_ok=True)
        cases = {}
        for i, feed in enumerate(data.batches(1)):
            src = folder / f"in{i}.npz"
            np.savez(src, **feed)
            cases[str(i)] = src
        shapes = artifact.details.get("ncnn_output_shapes") or {}
        requests = []
        for label, p, b, precision in (("fp32", artifact.path, artifact.path.with_suffix(".bin"), "fp32"),
                                       ("int8", param, weights, "int8")):
            request = folder / f"{label}.json"
            request.write_text(json.dumps({
                "param": str(p), "bin": str(b), "precision": precision, "threads": ctx.threads,
                "inputs": inputs, "outputs": [list(o) for o in outputs], "output_shapes": shapes,
                "cases": {c: [str(src), str(folder / f"{label}{c}.npz")] for c, src in cases.items()}}))
            requests.append(str(request))
        code = f"from convcli.runners.ncnn_runner import run_request\nfor r in {requests!r}:\n    run_request(r)"
        run_python(code, "ncnn int8 check", cwd=folder, timeout_s=self.options.timeout_s)  # type: ignore[attr-defined]

        def load(label: str) -> list[np.ndarray]:
            parts = []
            for c in cases:
                with np.load(folder / f"{label}{c}.npz") as z:
                    parts.append([z[f"arr_{j}"] for j in range(len(z.files))])
            return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]

        names = [n for n, _ in outputs]
        int8 = load("int8")
        result = compare_outputs(names, load("fp32"), int8, DEFAULT_TOLERANCES["int8"])
        if any(not np.all(np.isfinite(o)) for o in int8):
            raise ConversionError("ncnn int8 model produces NaN/inf on calibration samples")
        return {"samples": len(cases), "cosine_min": result.cosine_min, "max_abs_err": result.max_abs_err,
                "top1_agreement": result.top1_agreement}


def register(registry: Registry) -> None:
    registry.add_step(QuantizeNcnnInt8)
