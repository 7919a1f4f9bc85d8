"""Judging a measured row: parity tolerances, accuracy drop and gates decide passed/failed; speed flags and the
run's exit code. The rules are documented in docs/cli.md ("How artifacts are judged")."""

from __future__ import annotations

import math

from convcli.core.errors import EXIT_CONVERSION_FAILED, EXIT_GATE_FAILED, EXIT_OK
from convcli.parity.latency import LatencyStats
from convcli.recipes.schema import GateSpec
from convcli.reports.markdown import fmt_ms
from convcli.reports.model import ArtifactReport, SourceReport


def parity_failures(row: ArtifactReport, strict: bool) -> tuple[list[str], list[str]]:
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
    judged_on_accuracy = row.precision == "int8" and row.accuracy is not None
    for i, out in enumerate(parity.outputs):
        problems = [p for p in (out.source_nonfinite, out.nonfinite) if p]
        if not (judged_on_accuracy and i == 0):
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


def judge(row: ArtifactReport, src: SourceReport, gates: GateSpec, strict: bool = False) -> None:
    """Apply parity tolerances and gates to a measured row: sets status, failures, flags, accuracy drop, speedup.
    Every rule is in this function and ``parity_failures``; docs/cli.md states them in words."""
    if row.status not in ("passed", "failed"):
        return
    failures, flags = parity_failures(row, strict)
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
    if parity is not None:
        if g.max_abs_err is not None and parity.max_abs_err is not None and parity.max_abs_err > g.max_abs_err:
            failures.append(f"max abs err {parity.max_abs_err:.3g} > {g.max_abs_err:g}")
        if g.min_cosine is not None and parity.cosine_min is not None and parity.cosine_min < g.min_cosine:
            failures.append(f"cosine {parity.cosine_min:.6f} < {g.min_cosine:g}")
        if g.min_top1 is not None and parity.top1_agreement is not None and parity.top1_agreement < g.min_top1:
            failures.append(f"top-1 agreement {parity.top1_agreement:.3f} < {g.min_top1:g}")
    if g.max_p50_ms is not None and head and head.p50 > g.max_p50_ms:
        failures.append(f"p50 {head.p50:.2f} ms > {g.max_p50_ms} ms")
    if g.min_speedup is not None and row.speedup_vs_source is not None and row.speedup_vs_source < g.min_speedup:
        failures.append(f"speedup {row.speedup_vs_source:.2f}x < {g.min_speedup}x")
    if g.max_size_mb is not None and row.size_bytes is not None and row.size_bytes / 1e6 > g.max_size_mb:
        failures.append(f"size {row.size_bytes / 1e6:.2f} MB > {g.max_size_mb} MB")
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


