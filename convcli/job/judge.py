"""Judging a measured row: parity tolerances, accuracy drop and gates decide passed/failed; speed flags and the
run's exit code. The rules are documented in docs/cli.md ("How artifacts are judged")."""

from __future__ import annotations

import math

from convcli.core.errors import EXIT_CONVERSION_FAILED, EXIT_GATE_FAILED, EXIT_OK
from convcli.parity.latency import LatencyStats
from convcli.recipes.schema import GateSpec
from convcli.reports.markdown import fmt_ms
from convcli.reports.model import ArtifactReport, SourceReport


def parity_failures(row: ArtifactReport, strict: bool,
                    src_accuracy: float | None = None) -> tuple[list[str], list[str]]:
    """Failures and flags from the row's parity, output by output.

    - Non-finite values (NaN/inf in the source's output on the parity data, or where the artifact's differ from
      the source's) always fail, on every precision and whatever else is judged.
    - A degenerate reference is a flag, and a failure with ``strict``.
    - Tolerance problems fail, except on the output the accuracy is scored on (the first) of an int8 row that has
      an accuracy: that output is judged by its accuracy drop; every other output still meets the int8 tolerance.
    """
    parity = row.parity
    if parity is None:
        return [], []
    failures: list[str] = []
    flags: list[str] = []
    if not parity.outputs and not parity.passed:
        return [f"parity: {parity.message}"], []
    judged_on_accuracy = row.precision == "int8" and row.accuracy is not None and src_accuracy is not None
    for i, out in enumerate(parity.outputs):
        problems = [p for p in (out.source_nonfinite, out.nonfinite) if p]
        if judged_on_accuracy and i == 0:  # judged by its accuracy drop; a wrong shape is still wrong
            problems += [p for p in out.problems if p.startswith("shape ")]
        else:
            problems += out.problems
        if problems:
            failures.append(f"parity: {out.name}: {'; '.join(problems)}")
        for reason in out.degenerate:
            text = f"degenerate reference: output '{out.name}' is {reason}; parity on it proves little"
            (failures if strict else flags).append(text + (" (strict)" if strict else ""))
    nan = [name for name in ("max_abs_err", "mean_abs_err", "rel_l2_err", "cosine_min", "top1_agreement")
           if (v := getattr(parity, name)) is not None and not math.isfinite(v)]
    if nan:  # compare.py computes metrics on finite positions only; a NaN here is a bug, never a pass
        failures.append(f"parity: {', '.join(nan)} not finite")
    return failures, flags


GATE_TEXT = {
    "max_abs_err": lambda v: f"max abs err {v:.3g}", "min_cosine": lambda v: f"cosine {v:.6f}",
    "min_top1": lambda v: f"top-1 agreement {v:.3f}", "max_p50_ms": lambda v: f"p50 {v:.2f} ms",
    "min_speedup": lambda v: f"speedup {v:.2f}x", "max_size_mb": lambda v: f"size {v:.2f} MB",
}
GATE_NEEDS = {
    "max_abs_err": "no parity", "min_cosine": "no parity",
    "min_top1": "no output is judged as a classifier: declare one with --output-kind NAME:logits",
    "max_p50_ms": "latency not measured", "min_speedup": "no source latency timed with it",
    "max_size_mb": "no artifact size",
}


def judge(row: ArtifactReport, src: SourceReport, gates: GateSpec, strict: bool = False) -> None:
    """Apply parity tolerances and gates to a measured row: sets status, failures, flags, accuracy drop, speedup.
    Every rule is in this function and ``parity_failures``; docs/cli.md states them in words."""
    if row.status not in ("passed", "failed"):
        return
    failures, flags = parity_failures(row, strict, src.accuracy)
    row.flags = [f for f in row.flags if not f.startswith("degenerate reference")] + flags
    parity = row.parity
    row.accuracy_drop = None
    if row.accuracy is not None and src.accuracy is not None:
        row.accuracy_drop = src.accuracy - row.accuracy
        limit = gates.accuracy_limit(row.precision)
        if not math.isfinite(row.accuracy_drop):
            failures.append("accuracy is not a finite number")
        elif limit is not None and row.accuracy_drop > limit + 1e-12:
            failures.append(f"accuracy drop {row.accuracy_drop * 100:.2f} points > {limit * 100:.2f}")
    head, ref_head = row.latency_ms, row.source_latency_ms  # the source as timed in the same rounds
    row.speedup_vs_source = ref_head.p50 / head.p50 if head and ref_head and head.p50 > 0 else None
    g = gates
    measured: dict[str, float | None] = {
        "max_abs_err": parity.max_abs_err if parity else None, "min_cosine": parity.cosine_min if parity else None,
        "min_top1": parity.top1_agreement if parity else None, "max_p50_ms": head.p50 if head else None,
        "min_speedup": row.speedup_vs_source, "max_size_mb": row.size_bytes / 1e6 if row.size_bytes else None}
    for gate, value in measured.items():
        limit = getattr(g, gate)
        if limit is None:
            continue
        if value is None:  # a gate the user set is never skipped silently
            failures.append(f"gate {gate} is set but there is nothing to judge it on ({GATE_NEEDS[gate]})")
        elif (value > limit) if gate.startswith("max_") else (value < limit):
            failures.append(f"{GATE_TEXT[gate](value)} {'>' if gate.startswith('max_') else '<'} {limit:g}"
                            + {"max_p50_ms": " ms", "min_speedup": "x", "max_size_mb": " MB"}.get(gate, ""))
    row.failures = failures
    row.status = "failed" if failures else "passed"


SLOWER_MARGIN = 1.10  # latency differences under 10% are noise on a shared machine, not a finding


def within_noise(a: LatencyStats, b: LatencyStats) -> bool:
    """Whether two medians differ by no more than their combined spread (the sum of the ~95% intervals of
    each median, ``LatencyStats.p50_halfwidth``): such a difference is not evidence either way."""
    return abs(a.p50 - b.p50) <= a.p50_halfwidth + b.p50_halfwidth


def clearly_slower(slow: LatencyStats, fast: LatencyStats) -> bool:
    """``slow`` is slower than ``fast`` by more than SLOWER_MARGIN *and* by more than the combined spread."""
    return slow.p50 > fast.p50 * SLOWER_MARGIN and not within_noise(slow, fast)


def same_run(a: ArtifactReport, b: ArtifactReport) -> bool:
    return a.measured is not None and b.measured is not None and a.measured.run_id == b.measured.run_id


def flag_speed(rows: list[ArtifactReport]) -> None:
    """Flag 'optimized' artifacts that are slower: than the source, or than a higher-precision sibling of the
    same format (int8 slower than fp32 is the classic). A difference counts only when it exceeds both
    SLOWER_MARGIN and the combined spread of the two numbers, and only between numbers measured in the same
    rounds (a row and its own source pair; siblings with the same run id). ``speed_within_noise`` records
    whether the row's difference from the source is inside the spread, so the report can say so."""
    order = {"fp32": 0, "fp16": 1, "bf16": 1, "int8": 2}
    for row in rows:
        head, src = row.latency_ms, row.source_latency_ms
        if head is None:
            continue
        if src is not None:
            row.speed_within_noise = within_noise(head, src)
            if row.speedup_vs_source is not None and clearly_slower(head, src):
                row.flags.append(f"slower than the source ({row.speedup_vs_source:.2f}x)")
        for other in rows:
            if (other is not row and other.format == row.format and other.latency_ms is not None
                    and order.get(other.precision, 0) < order.get(row.precision, 0) and same_run(row, other)
                    and clearly_slower(head, other.latency_ms)):
                row.flags.append(f"slower than {other.id} ({fmt_ms(head.p50)} vs {fmt_ms(other.latency_ms.p50)} ms)")


def exit_code(rows: list[ArtifactReport], require_all: bool) -> int:
    if any(r.status == "error" for r in rows) or (require_all and any(r.status == "unavailable" for r in rows)):
        return EXIT_CONVERSION_FAILED
    if any(r.status == "failed" for r in rows):
        return EXIT_GATE_FAILED
    return EXIT_OK


