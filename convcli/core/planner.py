"""The planner: finds, for each requested (format, precision), the cheapest chain of available steps from
the source, shares common prefixes between targets, and explains targets it cannot reach.

A chain is: converters along the cheapest path through the format graph, each followed by the default
passes of the format it lands in (e.g. SimplifyOnnx), then a precision step for non-fp32 targets (a pass
whose ``output_precision`` matches, or the last converter when it lists the precision itself).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from convcli.core.errors import InputError
from convcli.core.registry import Registry
from convcli.core.step import Converter, Step

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class TargetRequest:
    """One requested artifact: a format, a precision and options for that target's own step."""

    format: str
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    via: str | None = None  # a converter name the path must use (e.g. to compare two paths)

    @property
    def label(self) -> str:
        return f"{self.format}-{self.precision}" + (f"@{self.via}" if self.via else "")


@dataclass
class PlanStep:
    id: str
    step: type[Step]
    options: BaseModel
    input_id: str  # "source" or another PlanStep id

    def describe(self) -> str:
        opts = self.options.model_dump(exclude_defaults=True)
        extra = f" {json.dumps(opts, sort_keys=True)}" if opts else ""
        return f"{self.step.name} ({self.step.source} -> {self.step.target}){extra}"


@dataclass
class PlannedTarget:
    request: TargetRequest
    final_step: str | None  # None: the source itself is the artifact, or unreachable
    chain: list[str] = field(default_factory=list)
    unavailable: str | None = None


@dataclass
class Plan:
    source_format: str
    steps: dict[str, PlanStep] = field(default_factory=dict)
    targets: list[PlannedTarget] = field(default_factory=list)

    def chain_text(self, target: PlannedTarget) -> str:
        return " -> ".join([self.source_format, *(self.steps[s].step.name for s in target.chain)])


def _cheapest_path(
    registry: Registry, source: str, target: str, only_available: bool, via: str | None
) -> list[type[Converter]] | None:
    """Dijkstra over converters; with ``via``, the path must contain that converter."""
    if via is not None:
        mid = registry.converters.get(via)
        if mid is None:
            raise InputError(f"unknown converter '{via}' in via", hint="see `convcli doctor` for converter names")
        if only_available and not mid.availability().available:
            return None
        head = _cheapest_path(registry, source, mid.source, only_available, None)
        tail = _cheapest_path(registry, mid.target, target, only_available, None)
        return None if head is None or tail is None else [*head, mid, *tail]
    edges = [c for c in registry.converters.values() if not only_available or c.availability().available]
    queue: list[tuple[float, int, str, list[type[Converter]]]] = [(0.0, 0, source, [])]
    seen: set[str] = set()
    counter = 0
    while queue:
        cost, _, fmt, path = heapq.heappop(queue)
        if fmt == target:
            return path
        if fmt in seen:
            continue
        seen.add(fmt)
        for conv in edges:
            if conv.source == fmt and conv.target not in seen:
                counter += 1
                heapq.heappush(queue, (cost + conv.cost, counter, conv.target, [*path, conv]))
    return None


def plan(
    registry: Registry,
    source_format: str,
    targets: list[TargetRequest],
    step_options: dict[str, dict[str, Any]] | None = None,
    skip_passes: set[str] | None = None,
) -> Plan:
    """Plan every target. Raises InputError for unknown formats or options; unreachable targets are kept
    in the plan with ``unavailable`` set, so the report still lists them."""
    step_options = step_options or {}
    skip_passes = skip_passes or set()
    for name in step_options:
        registry.step_named(name)
    result = Plan(source_format=source_format)
    index: dict[tuple[str, str, str], str] = {}

    def add(step: type[Step], options: BaseModel, input_id: str) -> str:
        key = (input_id, step.name, options.model_dump_json())
        if key not in index:
            sid = f"s{len(result.steps) + 1}"
            index[key] = sid
            result.steps[sid] = PlanStep(sid, step, options, input_id)
        return index[key]

    def options_for(step: type[Step], extra: dict[str, Any], where: str) -> BaseModel:
        return step.parse_options({**step_options.get(step.name, {}), **extra}, where)

    def default_passes(fmt: str, current: str, chain: list[str]) -> str:
        """Append the format's default passes (e.g. SimplifyOnnx) that are available and not skipped."""
        for p in registry.passes.values():
            if p.source == fmt and p.default_for_target and p.name not in skip_passes and p.availability().available:
                current = add(p, options_for(p, {}, f"pass {p.name}"), current)
                chain.append(current)
        return current

    for req in targets:
        fmt = registry.format_named(req.format).name
        req.format = fmt
        if req.precision not in PRECISIONS:
            raise InputError(f"target {fmt}: precision '{req.precision}' is not one of {', '.join(PRECISIONS)}")
        path = _cheapest_path(registry, source_format, fmt, True, req.via)
        reason = None
        if path is None:
            any_path = _cheapest_path(registry, source_format, fmt, False, req.via)
            if any_path is None:
                raise InputError(
                    f"no conversion path from {source_format} to {fmt}"
                    + (f" through {req.via}" if req.via else ""),
                    hint="see `convcli doctor` for the registered converters",
                )
            blocked = [c for c in any_path if not c.availability().available]
            reason = "; ".join(f"{c.name}: {c.availability().reason}" for c in blocked)
            result.targets.append(PlannedTarget(req, None, unavailable=reason))
            continue
        final_conv = path[-1] if path else None
        precision_step = None
        if req.precision != "fp32" and not (final_conv and req.precision in final_conv.precisions):
            # Decided before any step is added, so an unreachable precision adds no steps to the plan.
            precision_passes = [
                p for p in registry.passes.values() if p.source == fmt and p.output_precision == req.precision
            ]
            ready = [p for p in precision_passes if p.availability().available]
            if not ready:
                why = "; ".join(f"{p.name}: {p.availability().reason}" for p in precision_passes)
                reason = why or f"no {req.precision} step is registered for {fmt}"
                result.targets.append(PlannedTarget(req, None, [], unavailable=reason))
                continue
            precision_step = ready[0]
        chain: list[str] = []
        current = "source"
        for conv in path:
            extra = req.options if conv is final_conv else {}
            if conv is final_conv and req.precision in conv.precisions and req.precision != "fp32":
                extra = {**extra, "precision": req.precision}
            current = add(conv, options_for(conv, extra, f"target {req.label}"), current)
            chain.append(current)
            current = default_passes(conv.target, current, chain)
        if not path:
            if req.options:
                raise InputError(f"target {req.label}: options {sorted(req.options)} given, but the source "
                                 f"is already {fmt} and no converter runs")
            current = default_passes(fmt, current, chain)
        if precision_step is not None:
            current = add(precision_step, options_for(precision_step, {}, f"target {req.label}"), current)
            chain.append(current)
        result.targets.append(PlannedTarget(req, chain[-1] if chain else None, chain))
    return result
