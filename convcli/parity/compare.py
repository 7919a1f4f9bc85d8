"""Output comparison: per output, max/mean abs error, relative L2, cosine and top-1 agreement, judged against a
tolerance that depends on the artifact's precision (docs/cli.md, "How artifacts are judged", lists the rules).

Three things make a comparison prove nothing, and each is said out loud instead of passing quietly: non-finite
values (NaN fails every ``>`` test, so it is checked, never compared: metrics cover the positions finite on both
sides, non-finite positions must match exactly, and a source that is itself non-finite fails the row in the
judge, while a step's own check only asks that the artifact reproduce it), a degenerate reference (all zero,
constant, the same for every sample, or too small for the tolerance to tell right from wrong), and judging an
output by a rule that does not fit what it is (argmax over the dimensions of an embedding)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

OutputKind = Literal["logits", "probabilities", "embedding", "regression", "boxes", "detections", "segmentation"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "embedding", "regression", "boxes", "detections",
                                 "segmentation")
CLASSIFIER_KINDS = ("logits", "probabilities")
# Kinds whose argmax is judged by min_top1: a segmentation output is a classifier per pixel (argmax over axis 1).
TOP1_KINDS = (*CLASSIFIER_KINDS, "segmentation")
# An output with no declared kind is judged as a classifier (top-1) only on evidence: the labelled set's accuracy
# is computed on it, its rows are probability distributions, or its name says so. Shape alone is no evidence: a
# (N, 384) sentence embedding and (N, 384) logits look the same.
_CLASSIFIER_NAME = re.compile(r"logit|prob|class|cls", re.IGNORECASE)
# Below this, a reference without an elementwise tolerance (int8) counts as too small: fp16 underflows and int8
# scales degenerate, so any artifact that outputs (near) zero would agree with it.
TINY_OUTPUT = 1e-6


class Tolerance(BaseModel):
    """Limits an artifact's outputs must meet against the source. None disables a check."""

    model_config = ConfigDict(extra="forbid")
    atol: float | None = Field(default=None, description="Absolute tolerance: |a-b| <= atol + rtol*|ref|.")
    rtol: float = Field(default=0.0, description="Relative tolerance paired with atol.")
    atol_per_range: bool = Field(
        default=False, description="Scale atol by the output's range, max(1, max|ref|): for precisions whose "
                                   "error grows with the magnitude of the activations (fp32's kernel "
                                   "reordering, fp16's and bf16's rounding).")
    rounding_factor: float | None = Field(
        default=None, gt=0, description="When the elementwise limit fails, also allow this many times the source's "
                                        "own float32 error (max |source - source in float64|, per output) as "
                                        "atol; only for sources that run in float64 (PyTorch). fp32: 2, the most "
                                        "two computations as accurate as the source's can differ "
                                        "(convcli/parity/rounding.py).")
    min_cosine: float | None = Field(default=None, description="Lowest per-sample cosine similarity allowed.")
    min_top1: float | None = Field(default=None, description="Lowest top-1 agreement for classifier outputs "
                                                             "(kinds logits and probabilities; per pixel for "
                                                             "segmentation).")
    max_rel_l2: float | None = Field(
        default=None, description="Largest relative L2 error ||a-b|| / ||ref|| over the whole output: the size "
                                  "check for precisions without an elementwise limit (cosine cannot see a scale "
                                  "error, and a one-value-per-sample output has cosine +-1).")
    det_match_iou: float = Field(default=0.5, gt=0, le=1, description="detections kind: the IoU a source "
                                 "detection and an artifact detection of the same class need to be paired.")
    det_min_iou: float | None = Field(default=None, description="detections kind: lowest IoU allowed between "
                                      "paired detections (how far a box may move).")
    det_max_score_diff: float | None = Field(
        default=None, description="detections kind: largest score difference of paired detections, "
                                  "x max(1, |score|); also the margin within which a detection near the lowest "
                                  "score kept may appear or disappear (excused, counted).")
    det_min_matched: float | None = Field(
        default=None, description="detections kind: lowest share of each side's detections, those near the "
                                  "lowest score kept excepted, that must find a pair on the other side.")


# fp32: conversions should be numerically exact up to kernel reordering, whose error is a few float32 roundings
# of the values being summed, so it grows with the magnitude of the activations: its absolute term scales with the
# output's range like fp16's (1e-4 up to magnitude 1, 1e-4·max|ref| above). Measured: inception_v3's ONNX export
# differs from PyTorch by 2.8e-4 on logits up to 6.6 (limit now 6.6e-4, was 1e-4), while one filter of its last
# conv block scaled by 1.02 moves them by 1.7e-3 and one classifier row scaled by 1.01 by 2.5e-2: both still fail.
# Past ~100 layers even 1e-4 of the range is below PyTorch's own float32 error (resnet152: 1.0e-3 off float64 on
# logits of range 1.9), so fp32's atol is floored at twice the source's measured float32 error
# (rounding_factor; convcli/parity/rounding.py has the measurements).
# fp16 keeps 11 significant bits: each
# layer adds ~5e-4 relative error, so after tens of layers logits of magnitude 5 differ by a few 1e-2 (measured:
# a MobileNetV2 with realistic activations, 0.025 on logits up to ~4, cosine 0.99985); its absolute term therefore
# scales with the output's range. int8 is judged on cosine/top-1 (and on accuracy drop when a labelled set is
# given), not elementwise. bf16 keeps fp32's exponent but only 8 significant bits: each rounding is ~4e-3 relative,
# 8x fp16's, so its elementwise and cosine limits are looser than fp16's (OpenVINO bf16 on an fp32 IR measured
# about 2e-2 off on logits of magnitude ~5, cosine 0.9999 on ResNet-18); top-1 and accuracy drop stay fp16's.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, atol_per_range=True, rounding_factor=2.0, min_cosine=0.9999,
                      det_min_iou=0.9, det_max_score_diff=1e-3, det_min_matched=1.0),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, atol_per_range=True, min_cosine=0.999, min_top1=0.95,
                      det_min_iou=0.8, det_max_score_diff=1e-2, det_min_matched=1.0),
    "bf16": Tolerance(atol=5e-2, rtol=5e-2, atol_per_range=True, min_cosine=0.995, min_top1=0.95,
                      det_min_iou=0.7, det_max_score_diff=3e-2, det_min_matched=0.98),
    "int8": Tolerance(atol=None, min_cosine=0.98, min_top1=0.9, max_rel_l2=0.3,
                      det_min_iou=0.5, det_max_score_diff=0.1, det_min_matched=0.9),
}


def merge_tolerance(precision: str, override: Tolerance | None) -> Tolerance:
    """The default tolerance of ``precision`` with the fields ``override`` sets replacing the default's, field by
    field: ``{fp16: {atol: 0.05}}`` loosens fp16's elementwise limit and keeps its cosine and top-1 checks. A
    field set to null disables that check."""
    base = DEFAULT_TOLERANCES.get(precision, Tolerance())
    if override is None:
        return base
    return base.model_copy(update=override.model_dump(exclude_unset=True))


class KindChoice(BaseModel):
    """How one output is judged, and why: declared by the user, or assumed from evidence (said in the report)."""

    kind: str = Field(description="logits, probabilities, embedding, regression, boxes, detections, "
                                  "segmentation, or 'tensor' (no kind known: elementwise and cosine, top-1 not "
                                  "judged).")
    declared: bool = False
    reason: str = ""

    @property
    def judges_top1(self) -> bool:
        return self.kind in TOP1_KINDS


def assume_kind(name: str, ref: np.ndarray, declared: str | None = None,
                labelled: bool = False) -> KindChoice:
    """The kind an output is judged as. ``labelled``: the job's labelled set scores accuracy on this output, which
    only a classifier can have."""
    if declared is not None:
        return KindChoice(kind=declared, declared=True, reason="declared")
    two_d = ref.ndim == 2 and ref.shape[1] > 1 and np.issubdtype(ref.dtype, np.floating)
    if not two_d:
        return KindChoice(kind="tensor", reason=f"{ref.ndim}-D output: judged elementwise and by cosine")
    if labelled:
        return KindChoice(kind="logits", reason="accuracy on the labelled set is computed on it")
    finite = ref[np.isfinite(ref).all(axis=1)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1 and np.allclose(finite.sum(axis=1), 1, atol=1e-3):
        return KindChoice(kind="probabilities", reason="every row is a probability distribution")
    if _CLASSIFIER_NAME.search(name):
        return KindChoice(kind="logits", reason=f"its name '{name}' says so")
    return KindChoice(kind="tensor", reason=f"(N, {ref.shape[1]}) could be logits or an embedding: top-1 shown, "
                                            f"not judged; declare --output-kind {name}:logits to judge it")


class DetectionMetrics(BaseModel):
    """How the artifact's detections pair with the source's (kind ``detections``, ``parity/detections.py``)."""

    groups: int = Field(description="Images compared (one per fed batch for a (K, 6) output, one per sample "
                                    "for (N, K, 6)); detections are only paired within an image.")
    source: int = Field(description="Source detections, over all images.")
    artifact: int = Field(description="Artifact detections, over all images.")
    matched: int = Field(description="Pairs: same class, IoU >= det_match_iou, greedy in the source's score order.")
    recall: float | None = Field(default=None, description="Share of the source's detections (near-threshold "
                                                           "ones excepted) that have a pair.")
    precision: float | None = Field(default=None, description="Share of the artifact's detections "
                                                              "(near-threshold ones excepted) that have a pair.")
    min_iou: float | None = Field(default=None, description="Lowest IoU of a pair.")
    max_score_diff: float | None = Field(default=None, description="Largest |score difference| of a pair.")
    near_threshold: int = Field(default=0, description="Unpaired detections (either side) whose score is within "
                                                       "det_max_score_diff of the image's lowest kept score: "
                                                       "they may cross the model's threshold or top-K cut, so "
                                                       "they are excused, not failed.")


class OutputParity(BaseModel):
    name: str
    shape: list[int]
    kind: str = Field(default="tensor", description="The kind the output was judged as (KindChoice.kind).")
    kind_reason: str = Field(default="", description="'declared', or why the kind was assumed.")
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    rel_l2_err: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = Field(default=None, description="Shown for 2-D float outputs; judged only for "
                                                                   "kinds logits and probabilities.")
    top1_ties_excused: int = Field(default=0, description="Samples whose top-1 differs only where the source's "
                                                          "two best scores are within the elementwise tolerance "
                                                          "(a tie the artifact may break either way): not counted "
                                                          "against top-1 agreement.")
    detections: DetectionMetrics | None = Field(default=None, description="Kind detections: pairing metrics "
                                                                          "(elementwise metrics are not computed).")
    atol: float | None = Field(default=None, description="The absolute tolerance applied to this output (after "
                                                         "scaling by range and the rounding floor).")
    rounding_floor: float | None = Field(
        default=None, description="The source's own float32 error on this output (max |source - source in "
                                  "float64|), measured because the plain elementwise limit failed; atol is "
                                  "at least rounding_factor times it.")
    abs_err_quantiles: dict[str, float] = Field(
        default_factory=dict, description="Distribution of |artifact - source| over all values: p50, p90, p99, max.")
    passed: bool
    problems: list[str] = Field(default_factory=list, description="Failed tolerance checks.")
    source_nonfinite: str | None = Field(default=None, description="NaN/inf in the source's own output on the "
                                                                   "parity data: the row fails (judge), whatever "
                                                                   "the artifact does.")
    nonfinite: str | None = Field(default=None, description="Where the artifact's non-finite values differ from "
                                                            "the source's: fails the output.")
    degenerate: list[str] = Field(default_factory=list, description="Why the reference cannot tell a right answer "
                                                                    "from a wrong one (a flag; a failure with strict).")


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


def _share(mask: np.ndarray) -> str:
    return f"{mask.mean() * 100:.3g}%"


def source_nonfinite(name: str, r: np.ndarray) -> str | None:
    """The source's NaN/inf on the parity data, named with their share; None when it is finite everywhere."""
    bad = ~np.isfinite(r)
    if not bad.any():
        return None
    return (f"source output '{name}' is non-finite in {_share(bad)} of its values (NaN {_share(np.isnan(r))}, "
            f"inf {_share(np.isinf(r))}) on the parity data: feed inputs in the model's valid range (--data, or "
            "--input NAME:SHAPE:DTYPE:LOW..HIGH)")


def nonfinite_mismatch(r: np.ndarray, g: np.ndarray) -> str | None:
    """Positions where the artifact's non-finite values differ from the source's (NaN vs inf, the sign of an inf,
    or non-finite on one side only). None when they agree exactly: then the finite positions are compared."""
    bad_r, bad_g = ~np.isfinite(r), ~np.isfinite(g)
    differ = (bad_r != bad_g) | (np.isnan(r) != np.isnan(g)) | (np.isinf(r) & np.isinf(g) & (np.sign(r) != np.sign(g)))
    if not differ.any():
        return None
    return (f"non-finite values differ from the source's at {int(differ.sum())} of {differ.size} positions "
            f"(artifact NaN/inf where the source is finite: {int((bad_g & ~bad_r).sum())})")


def degenerate_reasons(r: np.ndarray, atol: float | None) -> list[str]:
    """Why a (finite part of a) reference output cannot tell a right artifact from a wrong one. ``atol`` is the
    row's effective absolute tolerance (None: no elementwise check, then TINY_OUTPUT is the floor)."""
    if r.size == 0:
        return ["empty: it has no values on the parity data"]
    finite = r[np.isfinite(r)]
    if finite.size == 0:
        return []
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        return [f"constant: every value is {lo:g}" + (" (all zero)" if lo == 0 else "")]
    reasons = []
    if r.ndim and r.shape[0] > 1 and np.all(np.isfinite(r)) and np.all(r == r[:1]):
        reasons.append(f"the same for all {r.shape[0]} samples: it does not depend on the inputs given")
    peak = float(np.abs(finite).max())
    floor = atol if atol is not None else TINY_OUTPUT
    if peak <= floor:
        reasons.append(f"too small: max |value| {peak:.3g} <= {floor:.3g}, so an all-zero artifact would pass")
    return reasons


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance,
                   kind: KindChoice | None = None, rows: tuple[list[int], list[int]] | None = None,
                   rounding_floor: float | None = None) -> OutputParity:
    """One output judged by its kind. ``rows``: how many rows each fed batch contributed to the source's and the
    artifact's output (``parity.evaluate.run_batches``); kind ``detections`` pairs detections within each batch.
    ``rounding_floor``: the source's own float32 error on this output (``parity/rounding.py``); with
    ``tol.rounding_factor`` it raises atol to that many times it."""
    kind = kind or assume_kind(name, ref)
    head: dict[str, Any] = dict(name=name, shape=list(ref.shape), kind=kind.kind, kind_reason=kind.reason)
    if kind.kind == "detections":
        from convcli.parity.detections import compare_detections

        return OutputParity(**head, **compare_detections(name, ref, got, tol, rows))
    if ref.shape != got.shape:
        return OutputParity(**head, passed=False,
                            problems=[f"shape {tuple(got.shape)} differs from the source's {tuple(ref.shape)}"])
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    mismatch, source_bad = nonfinite_mismatch(r, g), source_nonfinite(name, r)
    # Metrics on the positions finite in both (NaN would poison every number; the mismatch itself fails above).
    both = np.isfinite(r) & np.isfinite(g)
    r = np.where(both, r, 0.0)
    g = np.where(both, g, 0.0)
    diff = np.abs(r - g)
    problems: list[str] = []
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff[both].mean()) if both.any() else 0.0
    norm = float(np.linalg.norm(r))
    rel_l2 = float(np.linalg.norm(r - g) / norm) if norm > 0 else float(np.linalg.norm(g))
    n = r.shape[0] if r.ndim else 1
    rf = r.reshape(n, -1) if r.size else np.zeros((n, 0))
    gf = g.reshape(n, -1) if g.size else np.zeros((n, 0))
    nr, ng = np.linalg.norm(rf, axis=1), np.linalg.norm(gf, axis=1)
    both_zero = (nr == 0) & (ng == 0)
    cos = np.where(both_zero, 1.0, (rf * gf).sum(axis=1) / np.maximum(nr * ng, 1e-30))
    cosine_min = float(cos.min()) if cos.size else 1.0
    atol = None
    if tol.atol is not None:
        atol = tol.atol * max(1.0, float(np.abs(r).max()) if r.size else 1.0) if tol.atol_per_range else tol.atol
    floored = ""
    if atol is not None and rounding_floor is not None and tol.rounding_factor:
        raised = tol.rounding_factor * rounding_floor > atol
        floored = f" ({'' if raised else '>= '}{tol.rounding_factor:g}x the source's own float32 error " \
                  f"{rounding_floor:.3g})"
        atol = max(atol, tol.rounding_factor * rounding_floor)
    top1, ties = None, 0
    rs, gs = r, g
    if kind.kind == "segmentation" and ref.ndim >= 3 and ref.shape[1] > 1:  # (N, C, ...): argmax per pixel
        rs = np.moveaxis(r, 1, -1).reshape(-1, ref.shape[1])
        gs = np.moveaxis(g, 1, -1).reshape(-1, ref.shape[1])
    if rs.ndim == 2 and rs.shape[1] > 1 and rs.shape[0] and np.issubdtype(ref.dtype, np.floating):
        agree = rs.argmax(axis=1) == gs.argmax(axis=1)
        top2 = np.partition(rs, -2, axis=1)[:, -2:]
        # The source's own near-ties: a difference this small is within what the precision may change anyway.
        tie = atol + tol.rtol * np.abs(top2[:, 1]) if atol is not None else 0.01 * float(np.abs(r).max())
        excused = ~agree & (top2[:, 1] - top2[:, 0] <= tie)
        ties = int(excused.sum())
        top1 = float((agree | excused).mean())
    if not np.issubdtype(ref.dtype, np.floating):
        # Class ids, masks, token ids: a value is right or wrong, never "close" (an id off by one is another class).
        wrong = diff > 0
        allowed = 0.0 if tol.atol is not None else 1.0 - (tol.min_top1 if tol.min_top1 is not None else 1.0)
        if wrong.size and wrong.mean() > allowed + 1e-12:
            problems.append(f"{int(wrong.sum())} of {wrong.size} integer values differ from the source's "
                            + ("(they must be equal)" if allowed == 0 else f"(at most {allowed:.0%} may)"))
    else:
        if atol is not None:
            bad = diff > atol + tol.rtol * np.abs(r)
            if bad.any():
                problems.append(f"{int(bad.sum())} of {bad.size} values beyond atol={atol:.3g}{floored}, "
                                f"rtol={tol.rtol:g} (max abs err {max_abs:.3g})")
        if tol.min_cosine is not None and cosine_min < tol.min_cosine:
            problems.append(f"cosine {cosine_min:.6f} < {tol.min_cosine}")
        if tol.max_rel_l2 is not None and rel_l2 > tol.max_rel_l2:
            problems.append(f"relative L2 error {rel_l2:.3g} > {tol.max_rel_l2:g} (the output's size is off)")
    if tol.min_top1 is not None and top1 is not None and kind.judges_top1 and top1 < tol.min_top1:
        problems.append(f"top-1 agreement {top1:.3f} < {tol.min_top1}")
    quantiles = {}
    if diff.size:
        q = np.percentile(diff, [50, 90, 99])
        quantiles = {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": max_abs}
    return OutputParity(**head, max_abs_err=max_abs, mean_abs_err=mean_abs, rel_l2_err=rel_l2,
                        cosine_min=cosine_min, top1_agreement=top1, top1_ties_excused=ties,
                        atol=atol, rounding_floor=rounding_floor, abs_err_quantiles=quantiles,
                        passed=not problems and mismatch is None, problems=problems, nonfinite=mismatch,
                        source_nonfinite=source_bad,
                        degenerate=degenerate_reasons(ref.astype(np.float64), atol))


def compare_outputs(names: list[str], ref: list[np.ndarray], got: list[np.ndarray], tol: Tolerance,
                    kinds: list[KindChoice] | None = None,
                    rows: tuple[list[list[int]], list[list[int]]] | None = None,
                    rounding: list[float | None] | None = None) -> ParityResult:
    """Compare positionally; one combined message lists every failing output. ``rows``: per output, the rows
    each fed batch contributed, on the source's and the artifact's side (kind ``detections`` needs them).
    ``rounding``: per output, the source's own float32 error (``parity/rounding.py``)."""
    samples = ref[0].shape[0] if ref and ref[0].ndim else 1
    if len(ref) != len(got):
        return ParityResult(passed=False, samples=samples, tolerance=tol,
                            message=f"artifact returns {len(got)} outputs, the source {len(ref)}")
    chosen: list[KindChoice | None] = list(kinds) if kinds is not None else [None] * len(ref)
    per_output: list[tuple[list[int], list[int]] | None] = [None] * len(ref)
    if rows is not None and len(rows[0]) == len(rows[1]) == len(ref):
        per_output = list(zip(rows[0], rows[1], strict=True))
    floors: list[float | None] = list(rounding) if rounding is not None and len(rounding) == len(ref) \
        else [None] * len(ref)
    outs = [compare_output(n, r, g, tol, k, w, f)
            for n, r, g, k, w, f in zip(names, ref, got, chosen, per_output, floors, strict=True)]

    def worst(attr: str, fn: Callable[[list[float]], float]) -> float | None:
        vals = [getattr(o, attr) for o in outs if getattr(o, attr) is not None]
        return fn(vals) if vals else None

    judged_top1 = [o.top1_agreement for o in outs if o.top1_agreement is not None and o.kind in TOP1_KINDS]
    failing = [f"{o.name}: {'; '.join(([o.nonfinite] if o.nonfinite else []) + o.problems)}"
               for o in outs if not o.passed]
    return ParityResult(
        passed=not failing, samples=samples, tolerance=tol, outputs=outs,
        max_abs_err=worst("max_abs_err", max), mean_abs_err=worst("mean_abs_err", max),
        rel_l2_err=worst("rel_l2_err", max), cosine_min=worst("cosine_min", min),
        top1_agreement=min(judged_top1) if judged_top1 else None, message=" | ".join(failing),
    )


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a classifier output against integer labels."""
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"accuracy needs (N, classes) logits for {labels.shape[0]} labels, got {logits.shape}")
    return float((logits.argmax(axis=1) == labels).mean())
