"""Output comparison: per output, max/mean abs error, relative L2, cosine and top-1 agreement, judged
against a tolerance that depends on the artifact's precision (docs/cli.md lists the defaults)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Tolerance(BaseModel):
    """Limits an artifact's outputs must meet against the source. None disables a check."""

    model_config = ConfigDict(extra="forbid")
    atol: float | None = Field(default=None, description="Absolute tolerance: |a-b| <= atol + rtol*|ref|.")
    rtol: float = Field(default=0.0, description="Relative tolerance paired with atol.")
    atol_per_range: bool = Field(
        default=False, description="Scale atol by the output's range, max(1, max|ref|): for precisions whose "
                                   "error grows with the magnitude of the activations (fp16).")
    min_cosine: float | None = Field(default=None, description="Lowest per-sample cosine similarity allowed.")
    min_top1: float | None = Field(default=None, description="Lowest top-1 agreement for classifier outputs.")


# fp32: conversions should be numerically exact up to kernel reordering. fp16 keeps 11 significant bits: each
# layer adds ~5e-4 relative error, so after tens of layers logits of magnitude 5 differ by a few 1e-2 (measured:
# a MobileNetV2 with realistic activations, 0.025 on logits up to ~4, cosine 0.99985); its absolute term therefore
# scales with the output's range. int8 is judged on cosine/top-1 (and on accuracy drop when a labelled set is
# given), not elementwise.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, atol_per_range=True, min_cosine=0.999, min_top1=0.95),
    "int8": Tolerance(atol=None, min_cosine=0.98, min_top1=0.9),
}


class OutputParity(BaseModel):
    name: str
    shape: list[int]
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    rel_l2_err: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    abs_err_quantiles: dict[str, float] = Field(
        default_factory=dict, description="Distribution of |artifact - source| over all values: p50, p90, p99, max.")
    passed: bool
    problems: list[str] = Field(default_factory=list)


class ParityResult(BaseModel):
    """Per-output results plus the worst value of each metric over all outputs."""

    passed: bool
    samples: int
    tolerance: Tolerance
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    rel_l2_err: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    outputs: list[OutputParity] = Field(default_factory=list)
    message: str = ""


def _is_classifier(arr: np.ndarray) -> bool:
    return arr.ndim == 2 and arr.shape[1] > 1 and np.issubdtype(arr.dtype, np.floating)


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputParity:
    if ref.shape != got.shape:
        return OutputParity(name=name, shape=list(ref.shape), passed=False,
                            problems=[f"shape {tuple(got.shape)} differs from the source's {tuple(ref.shape)}"])
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    diff = np.abs(r - g)
    problems: list[str] = []
    if not np.all(np.isfinite(g)) and np.all(np.isfinite(r)):
        problems.append("artifact output has NaN/inf where the source has none")
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    norm = float(np.linalg.norm(r))
    rel_l2 = float(np.linalg.norm(r - g) / norm) if norm > 0 else float(np.linalg.norm(g))
    n = r.shape[0] if r.ndim else 1
    rf, gf = r.reshape(n, -1), g.reshape(n, -1)
    nr, ng = np.linalg.norm(rf, axis=1), np.linalg.norm(gf, axis=1)
    both_zero = (nr == 0) & (ng == 0)
    cos = np.where(both_zero, 1.0, (rf * gf).sum(axis=1) / np.maximum(nr * ng, 1e-30))
    cosine_min = float(cos.min()) if cos.size else 1.0
    top1 = None
    if _is_classifier(r):
        top1 = float((r.argmax(axis=1) == g.argmax(axis=1)).mean())
    if tol.atol is not None:
        atol = tol.atol * max(1.0, float(np.abs(r).max()) if r.size else 1.0) if tol.atol_per_range else tol.atol
        bad = diff > atol + tol.rtol * np.abs(r)
        if bad.any():
            problems.append(f"{int(bad.sum())} of {bad.size} values beyond atol={atol:.3g}, rtol={tol.rtol:g} "
                            f"(max abs err {max_abs:.3g})")
    if tol.min_cosine is not None and cosine_min < tol.min_cosine:
        problems.append(f"cosine {cosine_min:.6f} < {tol.min_cosine}")
    if tol.min_top1 is not None and top1 is not None and top1 < tol.min_top1:
        problems.append(f"top-1 agreement {top1:.3f} < {tol.min_top1}")
    quantiles = {}
    if diff.size:
        q = np.percentile(diff, [50, 90, 99])
        quantiles = {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": max_abs}
    return OutputParity(name=name, shape=list(ref.shape), max_abs_err=max_abs, mean_abs_err=mean_abs,
                        rel_l2_err=rel_l2, cosine_min=cosine_min, top1_agreement=top1, abs_err_quantiles=quantiles,
                        passed=not problems, problems=problems)


def compare_outputs(names: list[str], ref: list[np.ndarray], got: list[np.ndarray], tol: Tolerance) -> ParityResult:
    """Compare positionally; one combined message lists every failing output."""
    samples = ref[0].shape[0] if ref and ref[0].ndim else 1
    if len(ref) != len(got):
        return ParityResult(passed=False, samples=samples, tolerance=tol,
                            message=f"artifact returns {len(got)} outputs, the source {len(ref)}")
    outs = [compare_output(n, r, g, tol) for n, r, g in zip(names, ref, got, strict=True)]

    def worst(attr: str, fn: Callable[[list[float]], float]) -> float | None:
        vals = [getattr(o, attr) for o in outs if getattr(o, attr) is not None]
        return fn(vals) if vals else None

    failing = [f"{o.name}: {'; '.join(o.problems)}" for o in outs if not o.passed]
    return ParityResult(
        passed=not failing, samples=samples, tolerance=tol, outputs=outs,
        max_abs_err=worst("max_abs_err", max), mean_abs_err=worst("mean_abs_err", max),
        rel_l2_err=worst("rel_l2_err", max), cosine_min=worst("cosine_min", min),
        top1_agreement=worst("top1_agreement", min), message=" | ".join(failing),
    )


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a classifier output against integer labels."""
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"accuracy needs (N, classes) logits for {labels.shape[0]} labels, got {logits.shape}")
    return float((logits.argmax(axis=1) == labels).mean())
