"""Accuracy budgets for INT8 steps, and the search that keeps layers in float until one is met.

Shared by every accuracy-aware quantization step (ONNX Runtime's QuantizeOnnxInt8 in this process, the TFLite
int8 edge in its TensorFlow child): the budget (top-1 accuracy drop on a labelled set, or the lowest per-sample
cosine against the float model on held-out calibration samples), how a quantized model's outputs score against
it, how calibration samples are split from the ones held out to check on, and ``FloatFallbackSearch``. A new
backend adds a ``measure(float_layers) -> (Score, file)`` and gets the same search and the same report record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from convcli.parity.compare import DEFAULT_TOLERANCES, accuracy, compare_outputs
from convcli.parity.data import DataSet


class BudgetOptions(BaseModel):
    """The accuracy budget of an accuracy-aware INT8 step and the limits of its float-fallback search (shared by
    every step that runs ``FloatFallbackSearch``)."""

    model_config = ConfigDict(extra="forbid")
    max_accuracy_drop: float | None = Field(
        default=0.01, ge=0.0, le=1.0, description="Budget: largest top-1 accuracy drop vs the float model on "
                                                  "--validation (0.01 = 1 point); null disables it.")
    min_cosine: float | None = Field(
        default=0.98, ge=-1.0, le=1.0, description="Budget without --validation: lowest per-sample cosine vs the "
                                                  "float model on held-out calibration samples; null disables it.")
    max_float_layers: int = Field(default=4, ge=0, description="Most layers kept in float to meet the budget; 0 "
                                                               "turns the accuracy-aware search off.")
    max_trials: int = Field(default=100, ge=1, description="Most quantize-and-measure trials the accuracy-aware "
                                                           "search may run.")
    check_samples: int = Field(
        default=16, ge=1, description="Held-out calibration samples for the cosine budget (used without "
                                      "--validation).")
    on_budget_miss: Literal["error", "keep_best"] = Field(
        default="error", description="When no tried model meets the budget: fail the step (error) or ship the "
                                     "best one and let the report's gates judge it (keep_best).")


@dataclass
class Score:
    """One quantized model measured against the float model."""

    accuracy: float | None = None
    accuracy_drop: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    max_abs_err: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Budget:
    """What the quantized model must meet, on which data."""

    metric: Literal["accuracy_drop", "cosine", "none"]
    limit: float | None
    data: DataSet | None
    ref_outputs: list[np.ndarray] = field(default_factory=list)
    ref_accuracy: float | None = None

    def met(self, score: Score) -> bool:
        if self.metric == "accuracy_drop":
            return score.accuracy_drop is not None and self.limit is not None and \
                score.accuracy_drop <= self.limit + 1e-12
        if self.metric == "cosine":
            return score.cosine_min is not None and self.limit is not None and score.cosine_min >= self.limit
        return True

    def key(self, score: Score) -> float:
        """Larger is better."""
        if self.metric == "accuracy_drop":
            return -(score.accuracy_drop if score.accuracy_drop is not None else 1.0) + \
                1e-3 * (score.cosine_min or 0.0)
        return score.cosine_min if score.cosine_min is not None else -1.0

    def text(self, score: Score) -> str:
        if self.metric == "accuracy_drop" and score.accuracy_drop is not None:
            return f"accuracy drop {score.accuracy_drop * 100:.2f} points (budget {(self.limit or 0) * 100:.2f})"
        if score.cosine_min is not None:
            return f"cosine {score.cosine_min:.5f} (budget {self.limit})"
        return "no measurement"


def score_outputs(budget: Budget, names: list[str], got: list[np.ndarray]) -> Score:
    """A quantized model's outputs on ``budget.data`` against the float model's (NaN/inf: the worst score)."""
    assert budget.data is not None
    if any(not np.all(np.isfinite(g)) for g in got):
        return Score(accuracy=0.0 if budget.metric == "accuracy_drop" else None,
                     accuracy_drop=1.0 if budget.metric == "accuracy_drop" else None, cosine_min=-1.0)
    parity = compare_outputs(names, budget.ref_outputs, got, DEFAULT_TOLERANCES["int8"])
    score = Score(cosine_min=parity.cosine_min, top1_agreement=parity.top1_agreement,
                  max_abs_err=parity.max_abs_err)
    if budget.metric == "accuracy_drop" and budget.data.labels is not None:
        score.accuracy = accuracy(got[0], budget.data.labels)
        score.accuracy_drop = (budget.ref_accuracy or 0.0) - score.accuracy
    return score


def split_calibration(calibration: DataSet, labelled: DataSet | None, opts: BudgetOptions,
                      calibration_samples: int | None) -> tuple[DataSet, DataSet, bool]:
    """Calibration samples, check samples for a cosine budget, and whether the check samples are held out
    (not among those that calibrated). Samples are held out only when the cosine check will need them (no
    labelled set, or no accuracy budget) and calibration_samples is not set explicitly."""
    needs_check = labelled is None or labelled.labels is None or opts.max_accuracy_drop is None
    n = len(calibration)
    if calibration_samples is not None:
        calib_n = min(calibration_samples, n)
    elif needs_check and n >= 8:
        calib_n = n - min(opts.check_samples, n // 4)
    else:
        calib_n = n
    calib = calibration.take(calib_n)
    if calib_n < n:
        rest = DataSet({k: v[calib_n:] for k, v in calibration.inputs.items()}, None,
                       f"{calibration.description}, samples {calib_n + 1}..{n} (held out)")
        return calib, rest.take(opts.check_samples), True
    return calib, calibration.take(opts.check_samples), False


class FloatFallbackSearch:
    """Forward selection of the layers to keep in float, then pruning of the ones that turn out unneeded.

    Round 1 quantizes with each candidate alone left in float: the per-layer sensitivity. Each further round
    adds the candidate that helps most given the layers already chosen, so two layers that only help together
    (a producer and a consumer sharing one badly quantized tensor) are still found. Once the budget is met,
    each chosen layer is dropped again if the budget holds without it.
    """

    def __init__(self, budget: Budget, path: Path, score: Score, max_trials: int, deadline: float) -> None:
        self.budget, self.max_trials, self.deadline = budget, max_trials, deadline
        self.best_path, self.best_score = path, score
        self.best_layers: list[str] = []
        self.trials = 0
        self.note: str | None = None

    def _rank(self, score: Score, layers: list[str]) -> tuple[bool, int, float]:
        """Meeting the budget first; then fewer float layers when met, a better metric when not."""
        met = self.budget.met(score)
        return (met, -len(layers) if met else 0, self.budget.key(score) - 1e-9 * len(layers))

    def _can_try(self) -> bool:
        if self.trials >= self.max_trials:
            self.note = f"stopped after max_trials={self.max_trials} trials"
            return False
        if time.perf_counter() > self.deadline:
            self.note = f"stopped at the step's time limit after {self.trials} trials"
            return False
        return True

    def _try(self, layers: list[str], measure: Callable[[list[str]], tuple[Score, Path]]) -> Score:
        self.trials += 1
        score, path = measure(layers)
        loser = path
        if self._rank(score, layers) > self._rank(self.best_score, self.best_layers):
            loser = self.best_path
            self.best_path, self.best_score, self.best_layers = path, score, list(layers)
        loser.unlink(missing_ok=True)  # one model per trial would fill the disk on a large network
        return score

    def run(self, candidates: list[str], max_layers: int, measure: Callable[[list[str]], tuple[Score, Path]],
            steps: list[dict[str, Any]], sensitivity: list[dict[str, Any]], ops: dict[str, str]) -> None:
        chosen: list[str] = []
        singles: dict[str, Score] = {}
        while len(chosen) < max_layers and not self.budget.met(self.best_score):
            results: dict[str, Score] = {}
            for node in [c for c in candidates if c not in chosen]:
                if not self._can_try():
                    break
                results[node] = self._try([*chosen, node], measure)
            if not chosen:
                singles = dict(results)
            if not results:
                break
            pick = max(results, key=lambda n: self.budget.key(results[n]))
            chosen.append(pick)
            score = results[pick]
            steps.append({"action": f"keep {pick} in float (best of {len(results)} tried)",
                          "float_layers": list(chosen), **score.as_dict(), "budget_met": self.budget.met(score)})
        for node in sorted(singles, key=lambda n: -self.budget.key(singles[n])):
            sensitivity.append({"layer": node, "op": ops.get(node), **singles[node].as_dict()})
        if not self.budget.met(self.best_score):
            return
        for node in list(self.best_layers) if len(self.best_layers) > 1 else []:
            if len(self.best_layers) < 2 or not self._can_try():
                break
            layers = [n for n in self.best_layers if n != node]
            score = self._try(layers, measure)
            met = self.budget.met(score)
            steps.append({"action": f"{'drop' if met else 'keep'} {node}: the budget "
                                    f"{'holds' if met else 'fails'} without it",
                          "float_layers": list(self.best_layers), **score.as_dict(), "budget_met": met})
