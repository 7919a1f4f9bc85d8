"""Latency: warm-up, then timed runs of one feed; percentiles and throughput.

Numbers on a shared 2-core machine are noisy: callers compare artifacts measured in the same process,
one after another, with the same feed and thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel


class LatencyStats(BaseModel):
    p50: float
    p90: float
    p99: float
    mean: float
    throughput: float  # samples per second at ``batch``
    batch: int
    runs: int


def measure(fn: Callable[[], object], batch: int, warmup: int = 5, runs: int = 30,
            max_seconds: float = 10.0) -> LatencyStats:
    """Time ``fn`` (which runs one batch); stops early after ``max_seconds`` of timed runs (at least 3)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    arr = np.asarray(times)
    p50 = float(np.percentile(arr, 50))
    return LatencyStats(p50=p50, p90=float(np.percentile(arr, 90)), p99=float(np.percentile(arr, 99)),
                        mean=float(arr.mean()), throughput=batch * 1000.0 / p50 if p50 > 0 else 0.0,
                        batch=batch, runs=len(times))
