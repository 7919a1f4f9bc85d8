"""Judging detector outputs as detections, not as numbers (output kind ``detections``, docs/cli.md).

A detector's post-processing (score threshold, non-maximum suppression, top-K) turns tiny numerical differences
into different lists: one backend keeps a box another drops at the threshold, NMS breaks a tie the other way, and
the order of the list follows the scores. Elementwise comparison then fails on a conversion that is right, or
compares row 7 with an unrelated row 7. Detections are therefore paired: within each image, the source's
detections in descending score order each take the unpaired artifact detection of the same class with the
highest IoU, if it reaches ``det_match_iou``. Pairs are judged on IoU and score difference; unpaired detections
fail, except those whose score is within the score tolerance of the lowest score kept in that image, which may
legitimately cross the model's threshold or top-K cut (excused and counted).

Layout: one row per detection, ``[x1, y1, x2, y2, score, class]``; either a (K, 6) tensor per image (the model
runs on batch 1; convcli groups rows by the batch they came from) or (N, K, 6) padded per sample, where padding
rows (all zero, or class < 0) are dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convcli.parity.compare import DetectionMetrics, Tolerance, source_nonfinite

LAYOUT = "[x1, y1, x2, y2, score, class] rows: (K, 6) per image at batch 1, or (N, K, 6) padded per sample"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (K, 4) with every box in ``b`` (M, 4), corners x1, y1, x2, y2."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-30), (inter == 0) * 1.0)


@dataclass
class ImageMatch:
    """The pairing of one image's detections."""

    pairs: list[tuple[int, int, float, float]] = field(default_factory=list)  # (ref row, got row, IoU, |d score|)
    missing: list[int] = field(default_factory=list)  # source rows without a pair, not near the threshold
    extra: list[int] = field(default_factory=list)  # artifact rows without a pair, not near the threshold
    near: int = 0  # unpaired rows (either side) excused as near the lowest kept score


def score_slack(score: np.ndarray | float, tol: Tolerance) -> np.ndarray:
    """The score difference allowed at ``score``: det_max_score_diff x max(1, |score|) (0 when unset)."""
    limit = tol.det_max_score_diff or 0.0
    return np.asarray(limit * np.maximum(1.0, np.abs(score)))


def match_image(ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> ImageMatch:
    """Pair one image's detections (rows of 6) greedily in the source's score order by class and IoU."""
    out = ImageMatch()
    iou = box_iou(ref[:, :4], got[:, :4]) if len(ref) and len(got) else np.zeros((len(ref), len(got)))
    same_class = np.rint(ref[:, None, 5]) == np.rint(got[None, :, 5])  # class ids carried as floats
    iou = np.where(same_class, iou, -1.0) if iou.size else iou
    taken = np.zeros(len(got), dtype=bool)
    paired_ref = np.zeros(len(ref), dtype=bool)
    for i in np.argsort(-ref[:, 4], kind="stable"):
        if not len(got):
            break
        cand = np.where(taken, -1.0, iou[i])
        j = int(cand.argmax())
        if cand[j] >= tol.det_match_iou:
            taken[j] = paired_ref[i] = True
            out.pairs.append((int(i), j, float(cand[j]), float(abs(ref[i, 4] - got[j, 4]))))
    scores = np.concatenate([ref[:, 4], got[:, 4]])
    floor = float(scores.min()) if scores.size else 0.0
    near_cut = floor + float(score_slack(floor, tol))
    for rows, paired, unpaired in ((ref, paired_ref, out.missing), (got, taken, out.extra)):
        for k in np.flatnonzero(~paired):
            if rows[k, 4] <= near_cut:
                out.near += 1
            else:
                unpaired.append(int(k))
    return out


def split_images(arr: np.ndarray, rows: list[int] | None) -> list[np.ndarray] | str:
    """The per-image (K, 6) detection lists of an output, or why its layout is not one convcli reads."""
    if arr.ndim == 3 and arr.shape[2] == 6:
        images = [a.astype(np.float64) for a in arr]
        return [a[~(np.all(a == 0, axis=1) | (a[:, 5] < 0))] for a in images]
    if arr.ndim == 2 and arr.shape[1] == 6:
        counts = rows if rows is not None else [arr.shape[0]]
        if sum(counts) != arr.shape[0]:
            return f"{arr.shape[0]} rows do not add up to the per-batch counts {counts}"
        bounds = np.cumsum([0, *counts])
        return [arr[a:b].astype(np.float64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return f"shape {tuple(arr.shape)} is not a detections layout ({LAYOUT})"


def _describe(row: np.ndarray) -> str:
    return f"[{', '.join(f'{v:.1f}' for v in row[:4])}] score {row[4]:.3g} class {int(row[5])}"


def compare_detections(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance,
                       rows: tuple[list[int], list[int]] | None) -> dict[str, Any]:
    """OutputParity fields for a detections output: the pairing metrics, problems, non-finite and degenerate
    notes. Elementwise metrics are left empty: rows of two lists in different orders have nothing to subtract."""
    ref_images = split_images(ref, rows[0] if rows else None)
    got_images = split_images(got, rows[1] if rows else None)
    for side, images in (("source", ref_images), ("artifact", got_images)):
        if isinstance(images, str):
            return {"passed": False, "problems": [f"kind detections: the {side}'s output: {images}"]}
    assert not isinstance(ref_images, str) and not isinstance(got_images, str)
    if len(ref_images) != len(got_images):
        return {"passed": False, "problems": [f"the artifact's detections come in {len(got_images)} images, "
                                              f"the source's in {len(ref_images)}"]}
    source_bad = source_nonfinite(name, ref) if ref.size else None
    bad_got = sum(int((~np.isfinite(g)).any(axis=1).sum()) for g in got_images)
    nonfinite = f"{bad_got} artifact detections hold NaN/inf" if bad_got else None
    matches = [match_image(np.nan_to_num(r), np.nan_to_num(g), tol)
               for r, g in zip(ref_images, got_images, strict=True)]
    n_ref = sum(len(r) for r in ref_images)
    n_got = sum(len(g) for g in got_images)
    pairs = [p for m in matches for p in m.pairs]
    missing = sum(len(m.missing) for m in matches)
    extra = sum(len(m.extra) for m in matches)
    ious = [p[2] for p in pairs]
    metrics = DetectionMetrics(
        groups=len(ref_images), source=n_ref, artifact=n_got, matched=len(pairs),
        recall=1 - missing / n_ref if n_ref else None, precision=1 - extra / n_got if n_got else None,
        min_iou=min(ious) if ious else None, max_score_diff=max(p[3] for p in pairs) if pairs else None,
        near_threshold=sum(m.near for m in matches))
    problems: list[str] = []
    if tol.det_min_matched is not None:
        for share, count, total, side, images, unpaired in (
                (metrics.recall, missing, n_ref, "source", ref_images, "missing"),
                (metrics.precision, extra, n_got, "artifact", got_images, "extra")):
            if share is not None and share < tol.det_min_matched - 1e-12:
                first = next((images[i][getattr(m, unpaired)[0]]
                              for i, m in enumerate(matches) if getattr(m, unpaired)), None)
                example = f", e.g. image {next(i for i, m in enumerate(matches) if getattr(m, unpaired))}: " \
                          f"{_describe(first)}" if first is not None else ""
                problems.append(f"{count} of {total} {side} detections have no pair (same class, IoU >= "
                                f"{tol.det_match_iou:g}) and are not near the lowest kept score{example}")
    if tol.det_min_iou is not None and metrics.min_iou is not None and metrics.min_iou < tol.det_min_iou:
        moved = sum(i < tol.det_min_iou for i in ious)
        problems.append(f"{moved} paired boxes moved: IoU down to {metrics.min_iou:.3f} < {tol.det_min_iou:g}")
    if tol.det_max_score_diff is not None and pairs:
        over = [p for m, r in zip(matches, ref_images, strict=True) for p in m.pairs
                if p[3] > float(score_slack(r[p[0], 4], tol)) + 1e-12]
        if over:
            problems.append(f"{len(over)} paired scores differ by up to {max(p[3] for p in over):.3g} > "
                            f"{tol.det_max_score_diff:g} x max(1, |score|)")
    degenerate: list[str] = []
    if not n_ref:
        degenerate = ["empty: the source made no detections on the parity data (lower the model's score "
                      "threshold)"]
    elif len(ref_images) > 1 and all(r.shape == ref_images[0].shape and np.array_equal(r, ref_images[0])
                                     for r in ref_images):
        degenerate = [f"the same detections for all {len(ref_images)} images: they do not depend on the inputs"]
    return {"passed": not problems and nonfinite is None, "problems": problems, "nonfinite": nonfinite,
            "source_nonfinite": source_bad, "detections": metrics, "degenerate": degenerate}
