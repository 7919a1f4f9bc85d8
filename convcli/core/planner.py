"""The planner: finds, for each requested (format, precision), the cheapest chain of available steps from
the source, shares common prefixes between targets, and explains targets it cannot reach.

A chain is: converters along the cheapest path through the format graph, each followed by the default
passes of the format it lands in (e.g. SimplifyOnnx), then a precision step for non-fp32 targets (a pass
whose ``output_precision`` matches, or the last converter when it lists the precision itself).

A converter whose output keeps the precision of its input (``Converter.input_precision``: TensorRT builds an
int8 engine from explicit Q/DQ nodes in the ONNX, an fp16 engine from an fp16 ONNX) gets the precision step
*before* it, in its source format, with the options it needs. That intermediate file is then a target of its
own, ``<format>-<precision>-for-<target>`` (e.g. ``onnx-int8-for-tensorrt``), so it is measured and judged
like any artifact, and it is built even where the last converter cannot run (no GPU for TensorRT).
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

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
AUTO = "auto"  # every precision a target has a step for (``precisions_for``; expanded by job.source.expand_auto)


@dataclass
class TargetRequest:
    """One requested artifact: a format, a precision and options for that target's own step."""

    format: str
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    via: str | None = None  # a converter name the path must use (e.g. to compare two paths)
    feeds: str | None = None  # set on the input target the planner adds for a converter's input precision

    @property
    def label(self) -> str:
        if self.feeds:
            return f"{self.format}-{self.precision}-for-{self.feeds}"
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

    def chain_text(self, target: PlannedTarget, notes: dict[str, str] | None = None) -> str:
        """``pytorch -> OnnxFromPytorch -> SimplifyOnnx``; a step that ran another way than its name says (its
        details' ``chain_note``, passed in ``notes`` by step id) reads ``NcnnFromPytorch [via ONNX: ...]``."""
        notes = notes or {}
        return " -> ".join([self.source_format, *(self.steps[s].step.name + (f" [{notes[s]}]" if s in notes else "")
                                                  for s in target.chain)])


def precisions_for(registry: Registry, fmt: str) -> tuple[str, ...]:
    """The precisions some registered step can produce in ``fmt`` (available here or not), in ``PRECISIONS``
    order: what ``--precision auto`` expands to for that target. A precision no step produces (bf16 for onnx) is
    left out; one whose step cannot run on this machine (bf16 without CPU support) stays, so its row says why."""
    found = {"fp32"}
    for conv in registry.converters.values():
        if conv.target == fmt:
            found.update(conv.precisions)
            found.update(conv.input_precision)
    found.update(p.output_precision for p in registry.passes.values() if p.source == fmt and p.output_precision)
    return tuple(p for p in PRECISIONS if p in found)


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

    def precision_pass(fmt: str, precision: str) -> tuple[type[Step] | None, str]:
        """The first available pass of ``fmt`` producing ``precision``, or None and why not."""
        candidates = [p for p in registry.passes.values() if p.source == fmt and p.output_precision == precision]
        ready = [p for p in candidates if p.availability().available]
        if ready:
            return ready[0], ""
        why = "; ".join(f"{p.name}: {p.availability().reason}" for p in candidates)
        return None, why or f"no {precision} step is registered for {fmt}"

    def input_target(req: TargetRequest, path: list[type[Converter]], conv: type[Converter]) -> PlannedTarget:
        """Plan (and add as a target) the file ``conv`` is built from for ``req.precision``: ``path`` to its
        source format, that format's default passes, then its precision pass with the options ``conv`` needs
        (they win over ``-O`` for this chain only). Unavailable when no precision pass can run."""
        feed_req = TargetRequest(conv.source, req.precision, feeds=req.format + (f"@{req.via}" if req.via else ""))
        existing = next((t for t in result.targets if t.request.label == feed_req.label), None)
        if existing is not None:
            return existing
        step, why = precision_pass(conv.source, req.precision)
        if step is None:
            target = PlannedTarget(feed_req, None, unavailable=why)
            result.targets.append(target)
            return target
        chain: list[str] = []
        current = "source"
        for c in path:
            current = add(c, options_for(c, {}, f"target {feed_req.label}"), current)
            chain.append(current)
            current = default_passes(c.target, current, chain)
        if not path:
            current = default_passes(conv.source, current, chain)
        needed = conv.input_precision[req.precision].get(step.name, {})
        current = add(step, options_for(step, needed, f"target {feed_req.label}"), current)
        chain.append(current)
        target = PlannedTarget(feed_req, current, chain)
        result.targets.append(target)
        return target

    for req in targets:
        fmt = registry.format_named(req.format).name
        req.format = fmt
        if req.precision not in PRECISIONS:
            raise InputError(f"target {fmt}: precision '{req.precision}' is not one of {', '.join(PRECISIONS)}",
                             hint="'auto' is expanded before planning (job.source.expand_auto)"
                             if req.precision == AUTO else "")
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
            if blocked == [any_path[-1]] and req.precision in any_path[-1].input_precision:
                input_target(req, any_path[:-1], any_path[-1])  # built and judged even so
            result.targets.append(PlannedTarget(req, None, unavailable=reason))
            continue
        final_conv = path[-1] if path else None
        if final_conv is not None and req.precision in final_conv.input_precision:
            feed = input_target(req, path[:-1], final_conv)
            if feed.final_step is None:
                result.targets.append(PlannedTarget(req, None, unavailable=f"its input {feed.request.label}: "
                                                                          f"{feed.unavailable}"))
                continue
            current = add(final_conv, options_for(final_conv, {**req.options, "precision": req.precision},
                                                  f"target {req.label}"), feed.chain[-1])
            built = [*feed.chain, current]
            default_passes(final_conv.target, current, built)
            result.targets.append(PlannedTarget(req, built[-1], built))
            continue
        precision_step = None
        if req.precision != "fp32" and not (final_conv and req.precision in final_conv.precisions):
            # Decided before any step is added, so an unreachable precision adds no steps to the plan.
            precision_step, reason = precision_pass(fmt, req.precision)
            if precision_step is None and final_conv is not None and req.precision in final_conv.precision_gaps:
                reason = f"{final_conv.name}: {final_conv.precision_gaps[req.precision]}"
            if precision_step is None:
                result.targets.append(PlannedTarget(req, None, [], unavailable=reason))
                continue
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
    # An input file the user asked for anyway (onnx:fp16 beside tensorrt:fp16) is reported once, under its own id.
    asked = {t.final_step for t in result.targets if not t.request.feeds and t.final_step}
    result.targets = [t for t in result.targets if not (t.request.feeds and t.final_step in asked)]
    return result
