"""Run the source and each artifact on the same data: outputs, accuracy and latency side by side."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import UnavailableError
from convcli.core.registry import Registry
from convcli.core.runner import Session
from convcli.parity.compare import accuracy
from convcli.parity.data import DataSet
from convcli.parity.latency import LatencyStats, measure


def run_dataset(session: Session, data: DataSet, batch: int) -> list[np.ndarray]:
    """Outputs for every sample of ``data``, fed ``batch`` samples at a time, concatenated."""
    parts = [session(feed) for feed in data.batches(batch)]
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


def latency_feed(data: DataSet, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples (repeated when the data set is smaller)."""
    out = {}
    for name, arr in data.inputs.items():
        reps = -(-batch // arr.shape[0])
        out[name] = np.concatenate([arr] * reps, axis=0)[:batch] if reps > 1 else arr[:batch]
    return out


@dataclass
class Measurement:
    """What one model did on the shared data."""

    runner: str
    outputs: list[np.ndarray]
    accuracy: float | None = None
    latency: dict[int, LatencyStats] = field(default_factory=dict)


@dataclass
class EvalSettings:
    threads: int
    parity_batch: int
    latency_batches: list[int]
    warmup: int
    runs: int
    max_seconds: float
    measure_latency: bool = True


def open_session(registry: Registry, artifact: Artifact, threads: int) -> tuple[str, Session]:
    runner = registry.runner_for(artifact.format)
    if runner is None:
        raise UnavailableError(f"no runner is registered for {artifact.format}")
    avail = runner.availability()
    if not avail.available:
        raise UnavailableError(f"runner {runner.name} is unavailable: {avail.reason}")
    return runner.name, runner().load(artifact, threads)


def measure_model(registry: Registry, artifact: Artifact, parity: DataSet, labelled: DataSet | None,
                  settings: EvalSettings) -> Measurement:
    name, session = open_session(registry, artifact, settings.threads)
    try:
        outputs = run_dataset(session, parity, settings.parity_batch)
        acc = None
        if labelled is not None and labelled.labels is not None:
            logits = run_dataset(session, labelled, settings.parity_batch)[0]
            acc = accuracy(logits, labelled.labels)
        result = Measurement(runner=session.description or name, outputs=outputs, accuracy=acc)
        if settings.measure_latency:
            for b in settings.latency_batches:
                feed = latency_feed(parity, b)
                result.latency[b] = measure(functools.partial(session, feed), b, settings.warmup, settings.runs,
                                            settings.max_seconds)
        return result
    finally:
        session.close()
