"""Runs a plan's steps in order, each in its own empty folder. A failing step fails only the targets that
depend on it; its error names the step and the steps that ran before it."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from convcli.core.artifact import Artifact
from convcli.core.cache import Cache
from convcli.core.errors import ConvcliError, first_line
from convcli.core.planner import Plan
from convcli.core.step import StepContext


class ProgressSink(Protocol):
    """Where long work reports progress (the CLI shows it with rich; the library default is silent)."""

    def begin(self, label: str) -> None: ...

    def end(self, label: str, ok: bool, seconds: float, note: str = "") -> None: ...


class SilentProgress:
    def begin(self, label: str) -> None:
        pass

    def end(self, label: str, ok: bool, seconds: float, note: str = "") -> None:
        pass


@dataclass
class StepOutcome:
    artifact: Artifact | None
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False
    cached: bool = False
    traceback: str | None = None
    details: dict[str, object] = field(default_factory=dict)


def _new_details(before: Artifact, after: Artifact) -> dict[str, object]:
    return {k: v for k, v in after.details.items() if before.details.get(k) != v}


def execute(plan: Plan, source: Callable[[], Artifact], workdir: Path, context: StepContext,
            progress: ProgressSink | None = None, cache: Cache | None = None,
            keys: dict[str, str] | None = None) -> dict[str, StepOutcome]:
    """Run every planned step. ``source`` is called only when a step that reads the source must really run
    (a fully cached plan never loads the model); ``keys`` are the steps' cache keys."""
    progress = progress or SilentProgress()
    outcomes: dict[str, StepOutcome] = {}
    for sid, planned in plan.steps.items():
        folder = workdir / f"{sid}-{planned.step.name}"
        label = f"{planned.step.name} ({planned.step.source} -> {planned.step.target})"
        key = (keys or {}).get(sid)
        hit = cache.load_artifact(key, folder) if cache is not None and key else None
        if hit is not None:
            outcomes[sid] = StepOutcome(hit[0], hit[1], cached=True, details=hit[2])
            progress.end(label, True, hit[1], "cached")
            continue
        if planned.input_id == "source":
            upstream: Artifact | None = source()
            before: list[str] = []
        else:
            prior = outcomes[planned.input_id]
            upstream = prior.artifact
            before = _ancestors(plan, planned.input_id)
        if upstream is None:
            outcomes[sid] = StepOutcome(None, error=f"skipped: input step {plan.steps[planned.input_id].step.name} "
                                                   "failed", skipped=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        ctx = StepContext(workdir=folder, threads=context.threads, calibration_source=context.calibration_source,
                          validation_source=context.validation_source,
                          timeout_s=context.timeout_s, debug=context.debug, cache_dir=context.cache_dir,
                          output_kinds=context.output_kinds)
        progress.begin(label)
        start = time.perf_counter()
        try:
            produced = planned.step(planned.options).run(upstream, ctx)
        except Exception as exc:
            seconds = time.perf_counter() - start
            after = f" after {', '.join(before)}" if before else ""
            message = f"{planned.step.name} failed{after}: {first_line(exc, 400)}"
            # Not a ConvcliError: a bug in convcli or the backend; keep the traceback for --debug.
            trace = traceback.format_exc() if context.debug or not isinstance(exc, ConvcliError) else None
            outcomes[sid] = StepOutcome(None, seconds, error=message, traceback=trace)
            progress.end(label, False, seconds, first_line(exc, 160))
            continue
        seconds = time.perf_counter() - start
        outcomes[sid] = StepOutcome(produced, seconds, details=_new_details(upstream, produced))
        if cache is not None and key:
            cache.store_artifact(key, produced, seconds, outcomes[sid].details)
        progress.end(label, True, seconds)
    return outcomes


def _ancestors(plan: Plan, sid: str) -> list[str]:
    names = []
    while sid != "source":
        names.append(plan.steps[sid].step.name)
        sid = plan.steps[sid].input_id
    return list(reversed(names))
