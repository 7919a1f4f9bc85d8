"""Run the source and each artifact on the same data: outputs and accuracy one model at a time, then latency of
all of them together, in round-robin rounds."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from convcli.core.artifact import Artifact
from convcli.core.errors import UnavailableError
from convcli.core.registry import Registry
from convcli.core.runner import Session
from convcli.parity.compare import accuracy
from convcli.parity.data import DataSet
from convcli.parity.latency import LatencyStats, Timer, time_round_robin


def run_batches(session: Session, data: DataSet, batch: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Outputs for every sample of ``data``, fed ``batch`` samples at a time, concatenated, and per output the
    rows each fed batch contributed. An output whose first dim is not the batch (a detector's K detections of
    one image) is concatenated all the same; the row counts let the comparison split it per batch again."""
    parts = [session(feed) for feed in data.batches(batch)]
    outputs = [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]
    rows = [[int(p[i].shape[0]) if np.ndim(p[i]) else 1 for p in parts] for i in range(len(parts[0]))]
    return outputs, rows


def run_batches_float64(session: Session, data: DataSet, batch: int) -> list[np.ndarray] | None:
    """``run_batches``'s outputs computed in float64 (``Session.run_float64``), None where the session cannot."""
    parts = []
    for feed in data.batches(batch):
        got = session.run_float64(feed)
        if got is None:
            return None
        parts.append(got)
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))] if parts else None


def run_dataset(session: Session, data: DataSet, batch: int) -> list[np.ndarray]:
    """Outputs for every sample of ``data``, fed ``batch`` samples at a time, concatenated."""
    return run_batches(session, data, batch)[0]


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
    rows: list[list[int]] = field(default_factory=list)  # per output, the rows each fed batch contributed
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


def evaluate_outputs(session: Session, runner: str, parity: DataSet, labelled: DataSet | None,
                     settings: EvalSettings) -> Measurement:
    """Outputs on the parity data and accuracy on the labelled set; latency is left to ``time_sessions``."""
    outputs, rows = run_batches(session, parity, settings.parity_batch)
    acc = None
    if labelled is not None and labelled.labels is not None:
        logits = run_dataset(session, labelled, settings.parity_batch)[0]
        acc = accuracy(logits, labelled.labels)
    return Measurement(runner=session.description or runner, outputs=outputs, rows=rows, accuracy=acc)


Key = TypeVar("Key", bound=Hashable)


def time_sessions(sessions: dict[Key, Session], parity: DataSet, settings: EvalSettings,
                  on_error: Callable[[Key, Exception], None]) -> dict[Key, dict[int, LatencyStats]]:
    """Latency of every session at every latency batch, timed together in round-robin rounds (each round runs
    each session a slice of its runs at each batch), so that a load spike on the machine hits all of them
    alike. Warm-up, ``runs`` and ``max_seconds`` apply to each session and batch as if it were timed alone.
    A session that raises is dropped (``on_error`` is told once) and the others go on."""
    timers: dict[Hashable, Timer] = {}
    for b in settings.latency_batches:
        feed = latency_feed(parity, b)
        for key, session in sessions.items():
            timers[(key, b)] = Timer(functools.partial(session, feed), b, settings.runs, settings.max_seconds)
    failed: set[Hashable] = set()

    def dropped(timer_key: Hashable, exc: Exception) -> None:
        key = timer_key[0]  # type: ignore[index]
        if key not in failed:
            failed.add(key)
            on_error(key, exc)

    got = time_round_robin(timers, settings.warmup, settings.runs, dropped)
    result: dict[Key, dict[int, LatencyStats]] = {}
    for key in sessions:
        if key not in failed:
            result[key] = {b: got[(key, b)] for b in settings.latency_batches if (key, b) in got}
    return result
