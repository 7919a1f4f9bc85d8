"""Simplify and fuse an ONNX graph (onnxslim; optionally ORT's portable 'basic' offline optimizations),
then prove the result against the unsimplified graph on seeded random inputs. A simplified graph that
disagrees is not shipped: the step keeps the original and records why."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConversionError, first_line
from convcli.core.lazy import require
from convcli.core.registry import Registry
from convcli.core.step import Pass, StepContext
from convcli.parity.compare import DEFAULT_TOLERANCES, compare_outputs
from convcli.parity.data import random_data


class SimplifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: Literal["onnxslim", "onnxslim+ort-basic"] = Field(
        default="onnxslim", description="onnxslim alone, or followed by ORT's portable basic graph optimizations.")
    samples: int = Field(default=4, ge=1, description="Random samples for the simplified-vs-original check.")


def op_histogram(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def _run(path: Path, feed: dict[str, np.ndarray], threads: int) -> tuple[list[str], list[np.ndarray]]:
    from convcli.runners.onnxruntime_runner import ort_session

    session: Any = ort_session(str(path), threads, optimization="none")
    names = [o.name for o in session.get_outputs()]
    return names, [np.asarray(o) for o in session.run(None, feed)]


MAX_SIMPLIFY_BYTES = 2 * 1024**3 - 1  # protobuf's limit for one message


def keep_node_metadata(original: Any, slim: Any) -> None:
    """Copy each node's metadata_props (the dynamo exporter's module scopes and source lines) onto the node of the
    same name in the simplified graph: onnxslim drops them, and divergence localization (parity/divergence.py)
    reads them to name the PyTorch module and source line of a drifting tensor."""
    meta = {n.name: list(n.metadata_props) for n in original.graph.node if n.name and len(n.metadata_props)}
    for node in slim.graph.node:
        if node.name in meta and not len(node.metadata_props):
            node.metadata_props.extend(_condensed(meta[node.name]))


def _condensed(props: list[Any]) -> list[Any]:
    """Only what localization reads: the module scopes and class hierarchy, and of the exporter's full stack trace
    (~1 kB per node, every frame of torch itself) only the innermost frame outside torch, the model's own line. A
    shipped ONNX then carries one path of the user's model file per node, not the whole Python stack."""
    import re

    kept = []
    for p in props:
        if p.key == "pkg.torch.onnx.stack_trace":
            lines = p.value.splitlines()
            frames = [i for i, ln in enumerate(lines)
                      if (m := re.match(r'\s*File "([^"]+)", line \d+', ln)) and "/torch/" not in m.group(1)]
            if not frames:
                continue
            i = frames[-1]
            p = type(p)(key=p.key, value="\n".join(lines[i:i + 2]))  # a copy: the original graph stays as it was
        elif p.key not in ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy"):
            continue
        kept.append(p)
    return kept


class SimplifyOnnx(Pass):
    name = "SimplifyOnnx"
    source = "onnx"
    target = "onnx"
    summary = "onnxslim constant folding and fusion, checked against the unsimplified graph"
    requires = ("onnx", "onnxslim", "onnxruntime")
    Options = SimplifyOptions
    default_for_target = True

    def run(self, artifact: Artifact, ctx: StepContext) -> Artifact:
        onnx = require("onnx")
        onnxslim = require("onnxslim", "simplifying ONNX")
        opts: SimplifyOptions = self.options  # type: ignore[assignment]
        assert artifact.path is not None
        size = artifact.size_bytes
        if size >= MAX_SIMPLIFY_BYTES:  # vit_h_14 (2.5 GB): "EncodeError: Failed to serialize proto" inside onnxslim
            skipped = (f"skipped: the model is {size / 1e9:.1f} GB and onnxslim serialises the whole graph as one "
                       "protobuf, which cannot exceed 2 GB; the exported file is used as it is")
            return artifact.derive(details={**artifact.details, "simplify": {"engine": opts.engine,
                                                                             "skipped": skipped}})
        original = onnx.load(str(artifact.path))
        before = op_histogram(original)
        try:
            slim = onnxslim.slim(original)
        except Exception as exc:
            raise ConversionError(f"onnxslim failed on {artifact.path.name}: {first_line(exc)}") from None
        keep_node_metadata(original, slim)
        out = ctx.workdir / "model.onnx"
        tmp = ctx.workdir / "model.onnx.tmp"
        onnx.save(slim, str(tmp))
        if opts.engine == "onnxslim+ort-basic":
            ort = require("onnxruntime")
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.optimized_model_filepath = str(out)
            ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
            tmp.unlink()
        else:
            os.replace(tmp, out)
        after = op_histogram(onnx.load(str(out), load_external_data=False))
        first = artifact.inputs[0].shape[0] if artifact.inputs and artifact.inputs[0].shape else None
        samples = first.size if first is not None and not first.dynamic else opts.samples  # a static batch is fixed
        data = random_data(artifact.inputs, samples, seed=2).inputs
        names, ref = _run(artifact.path, data, ctx.threads)
        _, got = _run(out, data, ctx.threads)
        check = compare_outputs(names, ref, got, DEFAULT_TOLERANCES["fp32"], ctx.kinds(names, ref))
        details = {"engine": opts.engine, "nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
                   "ops_before": before, "ops_after": after,
                   "check_vs_unsimplified": {"max_abs_err": check.max_abs_err, "passed": check.passed}}
        if not check.passed:
            out.unlink()
            details["kept_original"] = f"simplified graph disagreed with the original: {check.message}"
            return artifact.derive(details={**artifact.details, "simplify": details})
        return artifact.derive(path=out, files=[out], details={**artifact.details, "simplify": details})


def register(registry: Registry) -> None:
    registry.add_step(SimplifyOnnx)
