"""The terminal view of a report: one row per artifact (source first), then failures and flags."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from convcli.reports.markdown import (
    DIVERGENCE_HEADERS,
    cached_note,
    detections_lines,
    divergence_cells,
    divergence_note,
    fixed_shapes_line,
    fmt_ms,
    output_kinds_line,
    path_window,
    speedup_cell,
    tolerance_line,
)
from convcli.reports.model import ArtifactReport, Report

STATUS_STYLE = {"passed": "bold green", "failed": "bold red", "error": "bold red", "unavailable": "yellow"}


def _ms(value: float | None) -> str:
    return fmt_ms(value)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _divergence(a: ArtifactReport, console: Console) -> None:
    """The divergence note of a row that failed parity, and the error along the path around the first
    diverging tensor."""
    note = divergence_note(a)
    if note is None or a.divergence is None:
        return
    d = a.divergence
    console.print(f"[magenta]{note}[/]", highlight=False, soft_wrap=True)
    if d.first is not None and d.first.source_line:
        console.print(f"[dim]  source: {d.first.source_line}[/]", highlight=False)
    window = path_window(d)
    if d.status == "found" and window:
        table = Table(show_edge=False, box=None, padding=(0, 1))
        for i, h in enumerate(DIVERGENCE_HEADERS):
            table.add_column(h, justify="right" if i in (0, 5, 6, 7) else "left", style="dim")
        for e in window:
            cells = divergence_cells(e, d.first)
            table.add_row(*cells, style="bold red" if cells[-1] == "FIRST" else None)
        console.print(table)
    if d.ranked:
        console.print("[dim]  layers adding the most error: " + ", ".join(
            f"{e.node or e.tensor} (+{e.added:.2e})" for e in d.ranked if e.added is not None) + "[/]",
            highlight=False)


def render_terminal(report: Report, console: Console) -> None:
    src = report.source
    batch = src.latency_ms.batch if src.latency_ms else None
    title = f"convcli: {src.spec} ({src.format})"
    table = Table(title=title, title_justify="left", show_lines=False)
    p50 = "p50 ms" + (f" (b={batch})" if batch else "")
    for col, just in (("artifact", "left"), ("status", "left"), ("max abs err", "right"), ("cosine", "right"),
                      ("top-1 agr", "right"), ("accuracy", "right"), (p50, "right"), ("speedup", "right"),
                      ("size", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    table.add_row("source", "[dim]reference[/]", "-", "-", "-", _acc(src.accuracy),
                  _ms(src.latency_ms.p50 if src.latency_ms else None), "1.00x", _size(src.size_bytes))
    for a in report.artifacts:
        p = a.parity
        name = a.id + (" [bold cyan]*fastest[/]" if a.id == report.fastest_passed else "")
        table.add_row(
            name, f"[{STATUS_STYLE[a.status]}]{a.status}[/]",
            "-" if not p or p.max_abs_err is None else f"{p.max_abs_err:.2e}",
            "-" if not p or p.cosine_min is None else f"{p.cosine_min:.6f}",
            "-" if not p or p.top1_agreement is None else f"{p.top1_agreement * 100:.1f}%",
            _acc(a.accuracy), _ms(a.latency_ms.p50 if a.latency_ms else None),
            speedup_cell(a), _size(a.size_bytes))
    console.print(table)
    if src.pruning:
        console.print(pruning_line(src.pruning), highlight=False)
    s = report.settings
    console.print(f"[dim]parity on {s.parity_data}; accuracy on {s.accuracy_data or 'no labelled set'}; "
                  f"{s.threads} threads; {s.machine.get('cpu', '')}; latency timed in interleaved rounds"
                  + ("; ~ = within noise" if any(a.speed_within_noise for a in report.artifacts) else "") + "[/]",
                  highlight=False)
    if note := cached_note(report):
        console.print(f"[dim]{note}[/]", highlight=False)
    if s.accuracy_split:
        console.print(f"[dim]accuracy split: {s.accuracy_split}[/]", highlight=False)
    tols = sorted({f"{a.precision}: {tolerance_line(a)}" for a in report.artifacts if a.parity})
    if tols:
        console.print(f"[dim]tolerances: {'; '.join(tols)}[/]", highlight=False)
    if kinds := output_kinds_line(report):
        console.print(f"[dim]outputs judged as: {kinds}[/]", highlight=False)
    for line in detections_lines(report):
        console.print(f"[dim]detections: {line}[/]", highlight=False)
    if fixed := fixed_shapes_line(report):
        console.print(f"[dim]dynamic dims fixed (these artifacts take only these sizes): {fixed}[/]",
                      highlight=False)
    for a in report.artifacts:
        for line in ([a.error] if a.error else []) + a.failures:
            style = "yellow" if a.status == "unavailable" else "red"
            console.print(f"[{style}]{a.id}:[/] {line}", highlight=False)
        for flag in a.flags:
            console.print(f"[yellow]{a.id}: {flag}[/]", highlight=False)
    for a in report.artifacts:
        _divergence(a, console)
    if report.settings.precision_auto:
        console.print(f"[dim]{report.settings.precision_auto}[/]", highlight=False)
    best = report.best_artifact
    if best is not None:
        where = f"OUTDIR/{best.link} -> {best.folder}" if best.link else (best.path or best.folder)
        console.print(f"[bold]best:[/] [cyan]{best.id}[/] ({where}): {best.why}", highlight=False)
    console.print(f"[bold]{report.summary}[/]; exit code {report.exit_code}"
                  + (f"; fastest passed: [cyan]{report.fastest_passed}[/]" if report.fastest_passed else ""))


def pruning_line(p: dict[str, object]) -> str:
    """One line: what pruning did to parameters, MACs, weight size, accuracy and latency."""
    before, after = p.get("before") or {}, p.get("after") or {}
    assert isinstance(before, dict) and isinstance(after, dict)

    def change(key: str) -> str:
        b, a = before.get(key), after.get(key)
        if not b or a is None:
            return "-"
        return f"{b:,} -> {a:,} ({(a / b - 1) * 100:+.0f}%)"

    acc = "-"
    if before.get("accuracy") is not None and after.get("accuracy") is not None:
        acc = f"{before['accuracy'] * 100:.2f}% -> {after['accuracy'] * 100:.2f}%"
    lat = "-"
    if before.get("latency_ms") and after.get("latency_ms"):
        lat = f"{before['latency_ms']['p50']:.2f} -> {after['latency_ms']['p50']:.2f} ms"
    tune = p.get("finetune")
    tuned = f", fine-tuned {tune['epochs']} epochs" if isinstance(tune, dict) else ""
    return (f"pruned ({p.get('method')} {float(str(p.get('ratio', 0))) * 100:.0f}%{tuned}): params {change('params')}, "
            f"MACs {change('macs')}, weights {change('state_dict_bytes')} bytes, accuracy {acc}, source p50 {lat}")
