"""Latency: warm-up, then timed runs of one feed; percentiles, spread and throughput.

Numbers on a shared machine are noisy, and a load spike lasts longer than one model's runs. So models that are
compared are timed together, in round-robin rounds (``time_round_robin``): every round runs each model a slice
of its runs, and a spike lands on all of them. Each ``LatencyStats`` carries its own spread, so a difference
can be called a difference only when it is larger than the noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from pydantic import BaseModel, Field

NOTCH = 1.58  # McGill et al.'s boxplot notch: median +- 1.58 IQR / sqrt(n) is a ~95% interval of the median


class LatencyStats(BaseModel):
    p50: float
    p90: float
    p99: float
    mean: float
    throughput: float  # samples per second at ``batch``
    batch: int
    runs: int
    p25: float | None = Field(default=None, description="25th percentile (ms); with p75, the spread of the runs.")
    p75: float | None = Field(default=None, description="75th percentile (ms).")

    @property
    def iqr(self) -> float:
        """Interquartile range (ms); 0 for numbers cached before convcli recorded it."""
        return self.p75 - self.p25 if self.p25 is not None and self.p75 is not None else 0.0

    @property
    def p50_halfwidth(self) -> float:
        """Half-width (ms) of a ~95% interval of the median: ``NOTCH * IQR / sqrt(runs)``."""
        return NOTCH * self.iqr / math.sqrt(self.runs) if self.runs > 0 else 0.0


def stats(times_ms: Sequence[float], batch: int) -> LatencyStats:
    arr = np.asarray(times_ms, dtype=np.float64)
    p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(arr, [25, 50, 75, 90, 99]))
    return LatencyStats(p50=p50, p90=p90, p99=p99, mean=float(arr.mean()),
                        throughput=batch * 1000.0 / p50 if p50 > 0 else 0.0, batch=batch, runs=len(arr),
                        p25=p25, p75=p75)


class Timer:
    """Timed runs of one callable, taken a slice at a time. ``done`` once it has ``runs`` times, or at least 3
    and ``max_seconds`` of its own timed runs (the budget is per model, however the rounds interleave)."""

    def __init__(self, fn: Callable[[], object], batch: int, runs: int, max_seconds: float) -> None:
        self.fn, self.batch, self.runs, self.max_seconds = fn, batch, runs, max_seconds
        self.times: list[float] = []
        self.spent = 0.0

    @property
    def done(self) -> bool:
        return len(self.times) >= self.runs or (len(self.times) >= 3 and self.spent > self.max_seconds)

    def warm(self, warmup: int) -> None:
        for _ in range(warmup):
            self.fn()

    def take(self, n: int, settle: int = 0) -> None:
        """Up to ``n`` more timed runs (fewer when the timer is done sooner), after ``settle`` untimed ones."""
        if self.done:
            return
        self.warm(settle)
        for _ in range(n):
            if self.done:
                return
            t0 = time.perf_counter()
            self.fn()
            elapsed = time.perf_counter() - t0
            self.times.append(elapsed * 1000.0)
            self.spent += elapsed

    def stats(self) -> LatencyStats:
        return stats(self.times, self.batch)


ROUNDS = 5
SETTLE = 2  # untimed runs at the start of every slice (see time_round_robin)


def slice_size(runs: int, rounds: int = ROUNDS) -> int:
    """Timed runs per model per round: about ``rounds`` rounds, each slice at least one run."""
    return max(1, -(-runs // rounds))


def time_round_robin(timers: dict[Hashable, Timer], warmup: int, runs: int,
                     on_error: Callable[[Hashable, Exception], None]) -> dict[Hashable, LatencyStats]:
    """Warm every timer up, then run rounds until all are done: each round takes a slice from each timer in
    ``timers``' order. A timer whose callable raises is dropped (``on_error`` is told) and the others go on.
    Returns the stats of the timers that finished.

    Every slice starts with SETTLE untimed runs: switching runtimes wakes the next runtime's parked thread pool
    while the previous one's may still spin, and on a loaded 2-core machine the first run after a switch
    measured 10 to 400 times its usual latency (a tiny transformer: PyTorch 0.21 ms alone, 5 to 90 ms p50 when
    interleaved one run at a time without settling; 0.22-0.24 ms with slices of 6 after one or two untimed
    runs, OpenVINO 0.19-0.20 ms after one and 0.16-0.19 after two, against 0.14 alone)."""
    live = dict(timers)
    for key, timer in list(live.items()):
        try:
            timer.warm(warmup)
        except Exception as exc:
            del live[key]
            on_error(key, exc)
    n = slice_size(runs)
    while any(not t.done for t in live.values()):
        for key, timer in list(live.items()):
            try:
                timer.take(n, settle=SETTLE)
            except Exception as exc:
                del live[key]
                on_error(key, exc)
    return {k: t.stats() for k, t in live.items()}
