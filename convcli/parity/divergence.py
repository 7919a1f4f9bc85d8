"""Where parity fails: the first intermediate tensor at which an artifact drifts from the reference (issue 10).

The reference graph is the fp32 ONNX the artifact's chain started from; its tensor names are the common
vocabulary (``core/intermediates.py``). Reference values come from the source's runner when it can return
intermediates (PyTorch module hooks, ONNX Runtime for an ONNX source), else from the reference ONNX run in ONNX
Runtime. Both sides run the same few failing samples; matched tensors are compared in the reference graph's
topological order, and the first one whose error exceeds the intermediate tolerance is the divergence.

Intermediate tolerance: a tensor diverges when ``max_abs_err / scale > rel`` or ``cosine < min_cosine``, with
``scale = max |reference|`` of that tensor (errors are relative to each tensor's own magnitude, so a layer with
activations of 1000 and one with 0.01 are judged alike). ``INTERMEDIATE_TOLERANCES`` holds the values per
precision. On graphs with more than ``MAX_PER_ROUND`` tensors a spread-out subset is compared first, and the
first drifting one's ancestors, less those cleared by an agreeing tensor computed from them, are narrowed round
by round (bisection along its lineage, so an agreeing parallel branch never hides the origin), within a time
budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from convcli.core.artifact import Artifact
from convcli.core.errors import ConvcliError, UnavailableError, first_line
from convcli.core.intermediates import Intermediates, ReferenceGraph
from convcli.core.registry import Registry


class IntermediateTolerance(BaseModel):
    rel: float = Field(description="Largest allowed max_abs_err / max|reference| of a tensor.")
    min_cosine: float = Field(description="Lowest allowed cosine between a tensor and its reference (all samples "
                                          "flattened).")


# fp32 kernels reorder sums (~1e-6 relative); fp16 keeps 11 bits (~5e-4 per layer, 1e-2 after a few layers);
# int8 rounds to 1/255 of a tensor's range per layer and accumulates: the worst element of a healthy static-int8
# layer is ~10% of the tensor's scale off (measured: digits CNN, first Conv+Relu, 0.127 at cosine 0.9998), so int8
# leans on cosine and its rel bound only catches gross errors.
INTERMEDIATE_TOLERANCES: dict[str, IntermediateTolerance] = {
    "fp32": IntermediateTolerance(rel=1e-4, min_cosine=0.9999),
    "fp16": IntermediateTolerance(rel=1e-2, min_cosine=0.999),
    "bf16": IntermediateTolerance(rel=5e-2, min_cosine=0.995),  # 8 significant bits: 8x fp16's rounding
    "int8": IntermediateTolerance(rel=0.25, min_cosine=0.99),
}
MAX_PER_ROUND = 256  # tensors captured per run of each model; more are narrowed by bisection
PATH_ROWS = 12  # rows of the path table around the first divergence


class TensorError(BaseModel):
    """One matched tensor: where it is in both graphs and how far the artifact is from the reference."""

    tensor: str = Field(description="Tensor name in the reference ONNX graph.")
    node: str | None = Field(default=None, description="Reference ONNX node that produces it.")
    op: str | None = Field(default=None, description="That node's op type.")
    artifact_layer: str | None = Field(default=None, description="The artifact's layer/tensor name for it.")
    artifact_op: str | None = None
    module: str | None = Field(default=None, description="PyTorch module (dynamo exporter scopes), when known.")
    source_line: str | None = Field(default=None, description="file:line: code of the module call, when known.")
    index: int = Field(default=0, description="Position in the reference graph's topological order.")
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    scale: float | None = Field(default=None, description="max |reference| of the tensor.")
    rel_err: float | None = Field(default=None, description="max_abs_err / scale: the number judged.")
    cosine: float | None = None
    added: float | None = Field(default=None, description="rel_err minus the largest rel_err of the node's "
                                                          "compared inputs: the error this layer adds.")
    diverged: bool = False


class Divergence(BaseModel):
    """The row's ``divergence`` object in report.json (docs/debugging.md explains how to read it)."""

    status: Literal["found", "not_found", "unmatched", "unavailable", "error"]
    message: str = Field(description="One line: what was found, or why nothing could be.")
    first: TensorError | None = Field(default=None, description="The first tensor over the tolerance.")
    inputs: list[TensorError] = Field(default_factory=list, description="The first node's inputs: small errors "
                                      "there and a large one at `first` mean the node itself diverges.")
    path: list[TensorError] = Field(default_factory=list, description="Compared tensors in topological order "
                                    "(every one compared; the report renders the rows around `first`).")
    ranked: list[TensorError] = Field(default_factory=list, description="fp16/int8: the layers that add the "
                                      "most error, largest first.")
    quantization_sensitivity: list[dict[str, Any]] = Field(
        default_factory=list, description="The int8 step's own per-layer sensitivity (when it measured one).")
    tolerance: IntermediateTolerance | None = None
    reference_graph: str | None = Field(default=None, description="The fp32 ONNX whose names are used.")
    reference_values: str | None = Field(default=None, description="What produced the reference values.")
    samples: list[int] = Field(default_factory=list, description="Parity samples run (the worst ones).")
    compared: int = 0
    unmatched: int = Field(default=0, description="Artifact tensors that could not be named in the reference.")
    unmatched_reasons: dict[str, int] = Field(default_factory=dict)
    rounds: int = 0
    seconds: float = 0.0
    budget_exhausted: bool = False
    files: list[str] = Field(default_factory=list, description="Repro files, relative to OUTDIR.")


@dataclass
class LocateRequest:
    """Everything the locator needs for one failing row."""

    registry: Registry
    source: Artifact
    artifact: Artifact
    reference: Path
    feed: dict[str, np.ndarray]
    samples: list[int]
    threads: int
    precision: str
    budget_s: float
    repro_dir: Path | None = None
    repro_prefix: str = ""


def worst_samples(ref: list[np.ndarray], got: list[np.ndarray], k: int = 2) -> list[int]:
    """Indices of the ``k`` samples whose outputs are furthest from the reference (error relative to each
    output's scale), worst first."""
    n = ref[0].shape[0] if ref and ref[0].ndim else 0
    if n == 0:
        return []
    score = np.zeros(n)
    for r, g in zip(ref, got, strict=False):
        if r.shape != g.shape or r.ndim == 0 or r.size == 0 or not np.issubdtype(r.dtype, np.floating):
            continue
        d = np.abs(r.astype(np.float64) - g.astype(np.float64)).reshape(n, -1)
        d = np.where(np.isfinite(d), d, np.inf)
        scale = max(float(np.nanmax(np.abs(r))) if r.size else 0.0, 1e-12)
        score = np.maximum(score, d.max(axis=1) / scale)
    return [int(i) for i in np.argsort(-score, kind="stable")[:k]]


def align(ref: np.ndarray, got: np.ndarray) -> np.ndarray | None:
    """``got`` in ``ref``'s shape: as is, NHWC transposed back to NCHW, or None when they cannot be compared."""
    if got.shape == ref.shape:
        return got
    if got.ndim == 4 and got.transpose(0, 3, 1, 2).shape == ref.shape:
        return got.transpose(0, 3, 1, 2)
    if got.size == ref.size and got.squeeze().shape == ref.squeeze().shape:
        return got.reshape(ref.shape)
    return None


def tensor_error(ref: np.ndarray, got: np.ndarray, tol: IntermediateTolerance) -> dict[str, Any]:
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    finite = np.isfinite(r)
    if (finite & ~np.isfinite(g)).any():
        return dict(max_abs_err=float("inf"), mean_abs_err=float("inf"), scale=None, rel_err=float("inf"),
                    cosine=None, diverged=True)
    r, g = r[finite], g[finite]
    if r.size == 0:
        return dict(diverged=False)
    d = np.abs(r - g)
    scale = float(np.abs(r).max())
    rel = float(d.max()) / scale if scale > 0 else float(d.max())
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if nr == 0:  # an all-zero reference (a dead ReLU, a mask): no direction to compare, only the size of the error
        return dict(max_abs_err=float(d.max()), mean_abs_err=float(d.mean()), scale=scale, rel_err=rel, cosine=None,
                    diverged=rel > tol.rel)
    cos = float(np.dot(r, g) / (nr * ng)) if ng > 0 else 0.0
    return dict(max_abs_err=float(d.max()), mean_abs_err=float(d.mean()), scale=scale, rel_err=rel, cosine=cos,
                diverged=rel > tol.rel or cos < tol.min_cosine)


def capture(req: LocateRequest, which: Literal["reference", "artifact"], wanted: list[str] | None,
            notes: dict[str, str]) -> Intermediates:
    """Intermediates of the reference side (the source's runner, else the reference ONNX in ONNX Runtime) or
    of the artifact. ``notes['reference_values']`` records what produced the reference values."""
    if which == "artifact":
        runner = req.registry.runner_for(req.artifact.format)
        if runner is None:
            raise UnavailableError(f"no runner is registered for {req.artifact.format}")
        return runner().intermediates(req.artifact, req.feed, req.threads, wanted, req.reference)
    runner = req.registry.runner_for(req.source.format)
    if runner is not None and "reference_fallback" not in notes:
        try:
            got = runner().intermediates(req.source, req.feed, req.threads, wanted, req.reference)
            if got.reference:
                notes["reference_values"] = f"source ({runner.name} runner)"
                return got
        except UnavailableError as exc:
            notes["reference_fallback"] = exc.one_line()
    from convcli.runners.onnxruntime_runner import onnx_intermediates

    if req.artifact.path is not None and req.reference.resolve() == req.artifact.path.resolve():
        raise UnavailableError("the source's runner cannot return intermediates and the only reference graph is "
                               f"the artifact itself ({notes.get('reference_fallback', 'no values')})")
    notes["reference_values"] = "reference ONNX in ONNX Runtime" + (
        f" (the source's runner cannot: {notes['reference_fallback']})" if "reference_fallback" in notes else "")
    return onnx_intermediates(req.reference, req.feed, req.threads, wanted, None)


def locate(req: LocateRequest) -> Divergence:
    """The first diverging tensor of ``req.artifact`` (see the module docstring); never raises for a runtime
    problem: the Divergence says what went wrong instead."""
    start = time.monotonic()
    tol = INTERMEDIATE_TOLERANCES.get(req.precision, INTERMEDIATE_TOLERANCES["fp32"])
    base: dict[str, Any] = dict(tolerance=tol, reference_graph=req.reference.name, samples=req.samples)
    try:
        return _locate(req, tol, base, start)
    except UnavailableError as exc:
        return Divergence(status="unavailable", message=exc.one_line(), seconds=_since(start), **base)
    except ConvcliError as exc:
        return Divergence(status="error", message=f"divergence localization failed: {exc.one_line()}",
                          seconds=_since(start), **base)
    except Exception as exc:  # a bug or a backend crash: a note on the row, never a crashed run
        return Divergence(status="error", message=f"divergence localization failed: {first_line(exc)}",
                          seconds=_since(start), **base)


def _since(start: float) -> float:
    return round(time.monotonic() - start, 3)


def _locate(req: LocateRequest, tol: IntermediateTolerance, base: dict[str, Any], start: float) -> Divergence:
    graph = ReferenceGraph.read(req.reference)
    order = graph.tensor_names()
    index = {t: i for i, t in enumerate(order)}
    notes: dict[str, str] = {}
    errors: dict[str, TensorError] = {}
    ref_vals: dict[str, np.ndarray] = {}
    unmatched: dict[str, int] = {}
    window = list(order)
    rounds = 0
    exhausted = False
    while True:
        if len(window) <= MAX_PER_ROUND:
            pick = window
        else:
            step = len(window) / MAX_PER_ROUND
            pick = sorted({window[min(int(i * step), len(window) - 1)] for i in range(MAX_PER_ROUND)} |
                          {window[-1]}, key=index.__getitem__)
        wanted = sorted(set(pick) | {i for t in pick for i in graph.producer[t].inputs if i in index})
        ref_side = capture(req, "reference", wanted, notes)
        art_side = capture(req, "artifact", wanted, notes)
        rounds += 1
        unmatched = dict(art_side.unmatched)
        _compare(graph, index, ref_side, art_side, tol, errors, ref_vals, unmatched)
        first = next((t for t in pick if t in errors and errors[t].diverged and not contradicted(graph, t, errors)),
                     None)
        if len(window) <= MAX_PER_ROUND or first is None:
            break
        # A tensor drifts because of what it is computed from: the next window is the first drifting tensor and
        # its ancestors, less every tensor seen agreeing and what that one is computed from. Cutting the
        # topological order at the last agreeing tensor instead let a parallel branch's agreeing tensor hide the
        # real origin (issue-12 review).
        cleared: set[str] = set()
        for t in pick:
            if t in errors and not errors[t].diverged and t not in cleared:
                cleared |= {t} | ancestors(graph, t, index)
        lineage = ancestors(graph, first, index) | {first}
        narrowed = [t for t in window if t in lineage and t not in cleared]
        if len(narrowed) >= len(window):  # nothing seen agreeing in the lineage: no narrower window to try
            break
        window = narrowed
        if time.monotonic() - start > req.budget_s:
            exhausted = True
            break
    compared = sorted(errors.values(), key=lambda e: e.index)
    base.update(reference_values=notes.get("reference_values"), compared=len(compared),
                unmatched=sum(unmatched.values()),
                unmatched_reasons=unmatched, rounds=rounds, budget_exhausted=exhausted)
    if not compared:
        n = base["unmatched"]
        why = ", ".join(f"{k}: {v}" for k, v in unmatched.items()) or "the artifact returned no tensors"
        return Divergence(status="unmatched", seconds=_since(start), message=(
            f"no intermediate tensor of the artifact could be matched to the reference graph "
            f"{req.reference.name} ({n} unmatched; {why})"), **base)
    for e in compared:
        node = graph.producer.get(e.tensor)
        ins = [errors[i].rel_err for i in (node.inputs if node else []) if i in errors]
        graph_inputs = node is not None and any(i in graph.inputs for i in node.inputs)
        if e.rel_err is not None and (ins or graph_inputs):
            e.added = e.rel_err - max([x for x in ins if x is not None] or [0.0])
    ranked = ([e for e in sorted(compared, key=lambda e: -(e.added or 0.0)) if (e.added or 0) > 0][:5]
              if req.precision in ("fp16", "bf16", "int8") else [])
    isolated = [e.tensor for e in compared if e.diverged and contradicted(graph, e.tensor, errors)]
    skipped = (f"; {len(isolated)} tensor(s) differed while every compared tensor computed from them agrees "
               f"(a wrong match between same-shaped tensors, not a divergence; skipped): {', '.join(isolated[:4])}"
               + (" ..." if len(isolated) > 4 else "")) if isolated else ""
    first_err = next((e for e in compared if e.diverged and e.tensor not in isolated), None)
    if first_err is None:
        return Divergence(status="not_found", seconds=_since(start), path=compared, ranked=ranked,
                          message=(f"no compared tensor exceeds the {req.precision} intermediate tolerance "
                                   f"(rel {tol.rel:g}, cosine {tol.min_cosine:g}) on {len(compared)} tensors"
                                   + skipped), **base)
    node = graph.producer.get(first_err.tensor)
    inputs = [errors[i] for i in (node.inputs if node else []) if i in errors]
    files: list[str] = []
    repro_failed = ""
    if req.repro_dir is not None:
        try:  # the repro is a convenience: failing to write it never loses the divergence that was found
            files = write_repro(req, graph, first_err, ref_vals, notes)
        except Exception as exc:
            repro_failed = f"; no repro written: {first_line(exc)}"
    where = first_err.node or first_err.tensor
    extra = f" ({first_err.module})" if first_err.module else ""
    in_text = (f"inputs agree (rel err <= {max(e.rel_err or 0 for e in inputs):.2g})"
               if inputs and all(not e.diverged for e in inputs) else
               "its inputs already differ" if inputs else "its inputs were not compared")
    message = (f"first divergence at {first_err.op or 'tensor'} {where}{extra} -> {first_err.tensor}: "
               f"max abs err {first_err.max_abs_err:.3g} (rel {first_err.rel_err:.3g}), cosine "
               + (f"{first_err.cosine:.6f}" if first_err.cosine is not None else "n/a (all-zero reference)")
               + f"; {in_text}{repro_failed}{skipped}")
    if exhausted:
        message += (f"; time budget ({req.budget_s:g} s) spent: narrowed to {len(window)} of {len(order)} tensors "
                    f"({window[0]} .. {window[-1]})")
    return Divergence(status="found", message=message, first=first_err, inputs=inputs, path=compared,
                      ranked=ranked, files=files, seconds=_since(start), **base)


def ancestors(graph: ReferenceGraph, tensor: str, index: dict[str, int]) -> set[str]:
    """Every tensor of ``index`` that ``tensor`` is computed from, directly or through any other tensor (integer
    shape tensors included), itself excluded."""
    seen: set[str] = set()
    stack = list(graph.producer[tensor].inputs) if tensor in graph.producer else []
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in graph.producer:
            stack.extend(graph.producer[t].inputs)
    return {t for t in seen if t in index}


def contradicted(graph: ReferenceGraph, tensor: str, errors: dict[str, TensorError],
                 memo: dict[str, bool] | None = None) -> bool:
    """A tensor off by its whole scale whose nearest compared descendants all agree with the reference (or differ
    by less than a tenth as much): its error reached nothing the graph computes next. That is what a wrong match
    looks like (ncnn's structural matching pairing two parallel same-shaped branches of an Inception block: each
    "differs" with cosine 0.3, their Concat agrees), not a divergence, which propagates; an error a later op
    removes (a ReLU clipping it) did not matter either. A tensor with no compared descendant (an output, or
    nothing later compared) is not contradicted, nor is one off by less than half its scale: small errors may
    fade below the tolerance and still be where drift begins (fp16/int8); a wrong match is off by its whole
    scale."""
    memo = {} if memo is None else memo
    if tensor in memo:
        return memo[tensor]
    own = errors.get(tensor)
    if own is None or own.rel_err is None or own.rel_err < 0.5:
        return False
    memo[tensor] = False  # while the walk below runs (the graph is acyclic; this only bounds the work)
    reached: list[TensorError] = []  # a reached tensor that is itself a wrong match (a mis-paired chain) agrees
    frontier, seen = [tensor], {tensor}
    while frontier:
        for node in graph.consumers.get(frontier.pop(), []):
            for out in node.outputs:
                if out in seen:
                    continue
                seen.add(out)
                if out in errors:
                    reached.append(errors[out])  # compared: the walk stops here
                else:
                    frontier.append(out)
    floor = 0.1 * own.rel_err  # a whole-scale error that reached a tensor leaves more than a trace there
    memo[tensor] = bool(reached) and not any(
        e.diverged and (e.rel_err or 0.0) >= floor and not contradicted(graph, e.tensor, errors, memo)
        for e in reached)
    return memo[tensor]


def _compare(graph: ReferenceGraph, index: dict[str, int], ref_side: Intermediates, art_side: Intermediates,
             tol: IntermediateTolerance, errors: dict[str, TensorError], ref_vals: dict[str, np.ndarray],
             unmatched: dict[str, int]) -> None:
    ref_by = ref_side.by_reference()
    art_names = {v: k for k, v in reversed(list(art_side.reference.items()))}
    art_by = art_side.by_reference()
    for name, r in ref_by.items():
        ref_vals[name] = r
        if name not in art_by or name not in index or name in errors:
            continue
        got = align(r, art_by[name])
        if got is None:
            unmatched["shape differs from the reference"] = unmatched.get("shape differs from the reference", 0) + 1
            continue
        node = graph.producer.get(name)
        backend = art_names.get(name)
        info = art_side.info.get(backend) if backend else None
        ref_info = ref_side.info.get(next((k for k, v in ref_side.reference.items() if v == name), ""))
        errors[name] = TensorError(
            tensor=name, node=node.name if node else None, op=node.op if node else None, artifact_layer=backend,
            artifact_op=info.op if info else None, index=index[name],
            module=(node.module if node else None) or (ref_info.module if ref_info else None),
            source_line=(node.source_line if node else None) or (ref_info.source_line if ref_info else None),
            **tensor_error(r, got, tol))


def write_repro(req: LocateRequest, graph: ReferenceGraph, first: TensorError, ref_vals: dict[str, np.ndarray],
                notes: dict[str, str]) -> list[str]:
    """The smallest ONNX subgraph around the first diverging node (from the artifact when it is ONNX and has the
    node's tensors, else from the reference graph), its inputs (reference values: they agree on both sides) and
    the reference's and the artifact's outputs, as ``subgraph.onnx``, ``inputs.npz``, ``expected.npz``."""
    from convcli.core.lazy import require
    from convcli.runners.onnxruntime_runner import onnx_intermediates

    onnx = require("onnx")
    assert req.repro_dir is not None
    node = graph.producer.get(first.tensor)
    if node is None:
        return []
    inputs = [i for i in node.inputs if i not in graph.initializers]
    outputs = [o for o in node.outputs if o]
    source = req.reference
    if req.artifact.format == "onnx" and req.artifact.path is not None:
        art = ReferenceGraph.read(req.artifact.path)
        if all(i in art.producer or i in art.inputs for i in inputs) and all(o in art.producer for o in outputs):
            source = req.artifact.path
    req.repro_dir.mkdir(parents=True, exist_ok=True)
    sub = req.repro_dir / "subgraph.onnx"
    onnx.utils.extract_model(str(source), str(sub), inputs, outputs, check_model=False)
    # Reference-side values first (the source's, when its runner supplied them); the reference graph in ONNX
    # Runtime fills in tensors the source could not name (inputs agree on both sides by construction).
    vals = onnx_intermediates(req.reference, req.feed, req.threads, [*inputs, *outputs], None).by_reference()
    vals = {**vals, **ref_vals}
    feed = {i: (req.feed[i] if i in req.feed else vals.get(i)) for i in inputs}
    dims = [i.type.tensor_type.shape.dim for i in onnx.load(str(sub), load_external_data=False).graph.input]
    batch = next((d[0].dim_value for d in dims if len(d) and d[0].dim_value > 0), None)  # a static batch
    cut = (lambda v: v[:batch]) if batch else (lambda v: v)
    np.savez(req.repro_dir / "inputs.npz", **{k: cut(v) for k, v in feed.items() if v is not None})
    same_graph = req.artifact.path is not None and req.reference.resolve() == req.artifact.path.resolve()
    expected = {o: cut(vals[o]) for o in outputs if o in ref_vals or (o in vals and not same_graph)}
    np.savez(req.repro_dir / "expected.npz", **expected)
    readme = req.repro_dir / "README.txt"
    readme.write_text(
        f"First divergence: {first.op} node {first.node} -> {first.tensor}\n"
        f"subgraph.onnx: that node alone, extracted from {source.name}\n"
        "inputs.npz: its inputs (reference values, which both sides agree on)\n"
        "expected.npz: its outputs in the reference graph\n"
        "Reproduce: import onnxruntime as ort, numpy as np\n"
        "  s = ort.InferenceSession('subgraph.onnx'); got = s.run(None, dict(np.load('inputs.npz')))\n"
        "  compare got with np.load('expected.npz')\n")
    return [f"{req.repro_prefix}{p.name}" for p in (sub, req.repro_dir / "inputs.npz",
                                                   req.repro_dir / "expected.npz", readme)]
