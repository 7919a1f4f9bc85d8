"""The HTML view of a report: one self-contained page (inline CSS, plots as base64 PNG, no scripts, fonts
or URLs) that can be attached to a CI run or mailed around and still open offline.

Plots are drawn with matplotlib's Agg canvas on ``Figure`` objects (no pyplot, so no global state). matplotlib
is imported only here and only when a page is rendered; without it the page says what to install instead.
"""

from __future__ import annotations

import base64
import io
import math
import re
from html import escape
from typing import Any

from convcli.core.errors import UnavailableError
from convcli.reports.markdown import (
    DIVERGENCE_HEADERS,
    SPEEDUP_NOTE,
    batches,
    cached_note,
    divergence_cells,
    divergence_note,
    fastest_detail,
    fmt_ms,
    fmt_pct,
    kind_text,
    machine_line,
    output_result,
    path_window,
    problems,
    summary_table,
    tolerance_line,
    verdict,
)
from convcli.reports.model import ArtifactReport, Report

COLOURS = {"passed": "#1a7f37", "failed": "#cf222e", "error": "#9a3412", "unavailable": "#6e7781",
           "reference": "#0969da"}
VERDICT_COLOURS = {"PASSED": "passed", "FAILED": "failed"}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #ffffff;
  --passed: #1a7f37; --failed: #cf222e; --error: #9a3412; --unavailable: #6e7781; --reference: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 20px 48px; }
header.verdict { background: var(--card); border: 1px solid var(--line); border-left: 8px solid var(--v);
  border-radius: 8px; padding: 16px 20px; }
header.verdict h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; word-break: break-all; }
header.verdict p { margin: 2px 0; color: var(--muted); }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; color: #fff; background: var(--v);
  font-weight: 700; letter-spacing: .04em; font-size: 13px; margin-bottom: 6px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; margin: 16px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
.card .v { font-size: 20px; font-weight: 600; word-break: break-all; }
.card .s { color: var(--muted); font-size: 12px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px;
  margin: 16px 0; }
h2 { font-size: 16px; margin: 0 0 10px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.row-failed td:first-child, tr.row-error td:first-child { box-shadow: inset 4px 0 0 var(--failed); }
tr.row-passed td:first-child { box-shadow: inset 4px 0 0 var(--passed); }
tr.row-unavailable td:first-child { box-shadow: inset 4px 0 0 var(--unavailable); }
tr.row-reference td:first-child { box-shadow: inset 4px 0 0 var(--reference); }
tr.row-reference { background: #f6faff; }
.pill { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 12px; font-weight: 600;
  color: #fff; background: var(--c); white-space: nowrap; }
.fastest { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 4px; font-size: 11px;
  font-weight: 600; color: var(--reference); border: 1px solid var(--reference); }
.note { color: var(--muted); font-size: 12px; margin: 8px 0 0; }
ul.problems { list-style: none; padding: 0; margin: 0; }
ul.problems li { padding: 6px 10px; margin: 4px 0; border-radius: 6px; border-left: 4px solid var(--c);
  background: var(--bg); }
ul.problems b { margin-right: 6px; }
.kind { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--c); font-weight: 700;
  margin-right: 6px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
figure { margin: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.barbox { width: 220px; padding-top: 5px; }
.bar { height: 8px; background: var(--reference); border-radius: 4px; min-width: 2px; opacity: .7; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--bg);
  padding: 1px 4px; border-radius: 4px; word-break: break-all; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
"""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not allowed in HTML text


def _e(value: Any) -> str:
    return escape(_CONTROL.sub(" ", str(value)), quote=True)


def _pill(text: str, colour: str | None = None) -> str:
    """A coloured label; ``colour`` is a status name whose CSS variable gives the colour (default: ``text``)."""
    return f'<span class="pill" style="--c: var(--{_e(colour or text)}, #6e7781)">{_e(text)}</span>'


def _table(headers: list[str], numeric: list[bool], rows: list[tuple[str, list[str]]]) -> str:
    """``rows`` are (row class, cells as HTML)."""
    head = "".join(f'<th class="num">{_e(h)}</th>' if n else f"<th>{_e(h)}</th>" for h, n in zip(headers, numeric,
                                                                                            strict=True))
    body = "".join(f'<tr class="{_e(cls)}">' + "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>"
                                                      for c, n in zip(cells, numeric, strict=True)) + "</tr>"
                   for cls, cells in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# ---------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style_axes(ax: Any) -> None:
    ax.grid(True, which="major", color="#d1d9e0", linewidth=0.8)
    ax.grid(True, which="minor", color="#eef1f4", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _log_if_wide(ax: Any, values: list[float], axis: str, ratio: float = 20.0) -> None:
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _plot_latency_vs_quality(report: Report) -> tuple[str | None, str, str]:
    """(a) p50 at the headline batch against accuracy, or against cosine distance without a labelled set."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    src = report.source
    use_acc = src.accuracy is not None or any(a.accuracy is not None for a in report.artifacts)
    points = []  # (label, status, x, y)
    if use_acc and src.latency_ms and src.accuracy is not None:
        points.append(("source", "reference", src.latency_ms.p50, src.accuracy * 100))
    for a in report.artifacts:
        if a.latency_ms is None:
            continue
        if use_acc and a.accuracy is not None:
            points.append((a.id, a.status, a.latency_ms.p50, a.accuracy * 100))
        elif not use_acc and a.parity and a.parity.cosine_min is not None:
            points.append((a.id, a.status, a.latency_ms.p50, max(1.0 - a.parity.cosine_min, 1e-16)))
    title = f"Latency vs {'accuracy' if use_acc else 'cosine distance'}"
    if not points:
        return None, f"No artifact has both a latency and a {'accuracy' if use_acc else 'cosine'} measurement.", title
    fig = Figure(figsize=(6.2, 4.2))
    ax = fig.add_subplot()
    _style_axes(ax)
    labels: dict[tuple[str, str], list[str]] = {}  # artifacts at the same spot share one label
    for label, status, x, y in points:
        ax.scatter([x], [y], s=70, color=COLOURS.get(status, "#6e7781"), edgecolor="white", linewidth=1.2,
                   zorder=3, marker="D" if status == "reference" else "o")
        labels.setdefault((f"{x:.2g}", f"{y:.4g}"), []).append(label)
    spots = sorted(labels.items(), key=lambda kv: float(kv[0][0]))
    for i, ((sx, sy), names) in enumerate(spots):
        ax.annotate(", ".join(names), (float(sx), float(sy)), textcoords="offset points",
                    xytext=(7, 5 if i % 2 == 0 else -12), fontsize=8.5, color="#1f2328")
    if not use_acc and src.latency_ms:
        ax.axvline(src.latency_ms.p50, color=COLOURS["reference"], linestyle="--", linewidth=1)
        ax.annotate("source", (src.latency_ms.p50, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=8, color=COLOURS["reference"], ha="right", va="top")
    _log_if_wide(ax, [p[2] for p in points] + ([src.latency_ms.p50] if src.latency_ms else []), "x")
    ax.margins(x=0.15)
    batch = src.latency_ms.batch if src.latency_ms else next(a.latency_ms.batch for a in report.artifacts
                                                             if a.latency_ms)
    ax.set_xlabel(f"p50 latency, ms (batch {batch}; left is faster)")
    if use_acc:
        ax.set_ylabel("top-1 accuracy, % (up is better)")
        ys = [p[3] for p in points]
        pad = max(0.5, (max(ys) - min(ys)) * 0.25)
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad) + 0.1)
    else:
        ax.set_yscale("log")
        ax.set_ylabel("1 - cosine, worst sample (down is closer)")
    statuses = sorted({p[1] for p in points})
    ax.legend(handles=[Line2D([], [], marker="D" if s == "reference" else "o", linestyle="", markersize=7,
                              color=COLOURS.get(s, "#6e7781"), label="source" if s == "reference" else s)
                       for s in statuses], fontsize=8, frameon=False, loc="best")
    ax.set_title(title, fontsize=11, loc="left")
    caption = ("Each point is an artifact at its p50 latency; the best place is top left." if use_acc else
               "No labelled set: the quality axis is 1 - the worst per-sample cosine similarity to the source "
               "(log scale); the dashed line is the source's latency.")
    return _png(fig), caption, title


def _plot_error_distributions(report: Report) -> tuple[str | None, str, str]:
    """(b) |artifact - source| quantiles per artifact and output, log scale, with each tolerance's atol."""
    from matplotlib.figure import Figure

    rows = []  # (label, quantiles, atol)
    for a in report.artifacts:
        outs = [o for o in (a.parity.outputs if a.parity else []) if o.abs_err_quantiles]
        for o in outs:
            label = a.id if len(outs) == 1 else f"{a.id} / {o.name}"
            rows.append((label, o.abs_err_quantiles, a.parity.tolerance.atol if a.parity else None))
    title = "Error distribution per artifact and output"
    if not rows:
        return None, "No artifact has parity results.", title
    keys = ["p50", "p90", "p99", "max"]
    shades = ["#9ecae1", "#4292c6", "#08519c", "#08306b"]
    positive = [v for _, q, _ in rows for v in q.values() if v > 0] + [t for _, _, t in rows if t and t > 0]
    floor = 10 ** math.floor(math.log10(min(positive))) / 10 if positive else 1e-12
    n = len(rows)
    fig = Figure(figsize=(11.5, max(2.4, 0.62 * n + 1.4)))
    ax = fig.add_subplot()
    _style_axes(ax)
    height = 0.8 / len(keys)
    for k, (key, shade) in enumerate(zip(keys, shades, strict=True)):
        ys = [i - 0.4 + height * (k + 0.5) for i in range(n)]
        vals = [q.get(key, 0.0) for _, q, _ in rows]
        ax.barh(ys, [max(v, floor) - floor for v in vals], height=height * 0.92, left=floor, color=shade,
                label=key, zorder=2)
        for y, v in zip(ys, vals, strict=True):
            ax.annotate("0" if v <= 0 else f"{v:.1e}", (max(v, floor), y), textcoords="offset points",
                        xytext=(3, 0), va="center", fontsize=7, color="#59636e")
    for i, (_, _, atol) in enumerate(rows):
        if atol is not None:
            ax.plot([atol, atol], [i - 0.45, i + 0.45], color=COLOURS["failed"], linestyle="--", linewidth=1.4,
                    zorder=3, label="atol" if i == next(j for j, r in enumerate(rows) if r[2] is not None) else None)
    ax.set_xscale("log")
    ax.set_xlim(left=floor)
    ax.set_yticks(range(n), [r[0] for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("|artifact - source| over all output values (log scale)")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title, fontsize=11, loc="left")
    return _png(fig), ("Quantiles of the absolute difference to the source's outputs on the parity data; "
                       "the dashed red mark is the precision's absolute tolerance (atol). Exact zeros sit on the "
                       "left edge and are labelled 0."), title


def _plot_latency_by_batch(report: Report) -> tuple[str | None, str, str]:
    """(c) p50 per batch size, one line per artifact (source dashed), whiskers up to p90."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    series = [("source", "reference", report.source.latency_by_batch)]
    series += [(a.id, a.status, a.latency_by_batch) for a in report.artifacts if a.latency_by_batch]
    series = [s for s in series if s[2]]
    title = "Latency per batch size"
    if not series:
        return None, "Latency was not measured.", title
    bs = [b for b in batches(report) if b.isdigit()]
    fig = Figure(figsize=(6.2, 4.2))
    ax = fig.add_subplot()
    _style_axes(ax)
    palette = ["#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e", "#1b7c83", "#6e7781",
               "#fb8500", "#2d3a8c"]
    for i, (label, status, by_batch) in enumerate(series):
        xs = [int(b) for b in bs if b in by_batch]
        p50 = [by_batch[b].p50 for b in bs if b in by_batch]
        p90 = [by_batch[b].p90 for b in bs if b in by_batch]
        colour = "#1f2328" if status == "reference" else palette[(i - 1) % len(palette)]
        upper = [max(h - m, 0.0) for h, m in zip(p90, p50, strict=True)]
        ax.errorbar(xs, p50, yerr=[[0.0] * len(p50), upper],
                    marker="D" if status == "reference" else "o", markersize=5, capsize=3, linewidth=1.6,
                    linestyle="--" if status == "reference" else "-", color=colour, label=label, zorder=3)
    if len(bs) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks([int(b) for b in bs], bs)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency, ms (log; whisker to p90)")
    ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_title(title, fontsize=11, loc="left")
    s = report.settings
    return _png(fig), (f"{s.threads} threads, {s.warmup} warm-up and up to {s.runs} timed runs per batch; the "
                       "source is the dashed line."), title


def _plot_divergence(a: ArtifactReport) -> str | None:
    """Relative error (max abs err / max |reference|) of every compared tensor in topological order, log scale,
    with the intermediate tolerance and the first divergence marked; None without matplotlib or data."""
    d = a.divergence
    if d is None or not d.path:
        return None
    try:
        from convcli.core.lazy import require

        require("matplotlib", "plots in the HTML report")
    except UnavailableError:
        return None
    from matplotlib.figure import Figure

    xs = [e.index for e in d.path]
    ys = [e.rel_err if e.rel_err is not None and math.isfinite(e.rel_err) else float("nan") for e in d.path]
    positive = [y for y in ys if y > 0]
    floor = min(positive) / 10 if positive else 1e-12
    fig = Figure(figsize=(11.5, 3.2))
    ax = fig.add_subplot()
    _style_axes(ax)
    ax.plot(xs, [max(y, floor) for y in ys], marker="o", markersize=3, linewidth=1.2, color="#4292c6", zorder=2)
    if d.tolerance is not None:
        ax.axhline(d.tolerance.rel, color=COLOURS["failed"], linestyle="--", linewidth=1.2, label="tolerance (rel)")
    if d.first is not None and d.first.rel_err is not None:
        ax.plot([d.first.index], [max(d.first.rel_err, floor)], marker="o", markersize=9, color=COLOURS["failed"],
                fillstyle="none", linestyle="none", label=f"first: {d.first.node or d.first.tensor}", zorder=3)
    ax.set_yscale("log")
    ax.set_xlabel("tensor position in the reference graph's topological order")
    ax.set_ylabel("max abs err / max |ref|")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.set_title(f"{a.id}: error per layer", fontsize=11, loc="left")
    return _png(fig)


def _divergence(report: Report) -> str:
    rows = [a for a in report.artifacts if a.divergence is not None]
    if not rows:
        return ""
    parts = []
    for a in rows:
        d = a.divergence
        assert d is not None
        body = f"<p><b>{_e(a.id)}</b>: {_e(divergence_note(a, with_id=False) or '')}</p>"
        if d.first is not None and d.first.source_line:
            body += f"<p>Source line: <code>{_e(d.first.source_line)}</code></p>"
        png = _plot_divergence(a)
        if png is not None:
            body += (f'<figure class="wide"><img alt="{_e(a.id)}: error per layer" src="data:image/png;base64,{png}">'
                     "<figcaption>Relative error of every compared tensor, in topological order (log scale); the "
                     "dashed line is the intermediate tolerance, the ring the first tensor over it.</figcaption>"
                     "</figure>")
        window = path_window(d)
        if window:
            cells = [("failed" if divergence_cells(e, d.first)[-1] == "FIRST" else "",
                      [_e(c) for c in divergence_cells(e, d.first)]) for e in window]
            body += _table(DIVERGENCE_HEADERS, [True, False, False, False, False, True, True, True, False], cells)
        if d.ranked:
            body += "<p>Layers adding the most error: " + ", ".join(
                f"<code>{_e(e.node or e.tensor)}</code> (+{e.added:.2e})" for e in d.ranked if e.added is not None
            ) + "</p>"
        if d.files:
            body += "<p>Repro: " + ", ".join(f"<code>{_e(f)}</code>" for f in d.files) + "</p>"
        parts.append(body)
    return f"<section><h2>Where parity fails</h2>{''.join(parts)}</section>"


def _plots(report: Report) -> str:
    try:
        from convcli.core.lazy import require

        require("matplotlib", "plots in the HTML report")
    except UnavailableError as exc:
        return f'<p class="note">Plots left out: {_e(exc.one_line())}</p>'
    figures = []
    for fn, wide in ((_plot_latency_vs_quality, False), (_plot_latency_by_batch, False),
                     (_plot_error_distributions, True)):
        png, caption, alt = fn(report)
        cls = ' class="wide"' if wide else ""
        if png is None:
            figures.append(f"<figure{cls}><figcaption>{_e(alt)}: {_e(caption)}</figcaption></figure>")
        else:
            figures.append(f'<figure{cls}><img alt="{_e(alt)}" src="data:image/png;base64,{png}">'
                           f"<figcaption>{_e(caption)}</figcaption></figure>")
    return f'<div class="plots">{"".join(figures)}</div>'


# ---------------------------------------------------------------- sections


def _header(report: Report) -> str:
    word, meaning = verdict(report)
    colour = VERDICT_COLOURS.get(word, "error")
    src = report.source
    return (f'<header class="verdict" style="--v: var(--{colour})"><span class="badge">{_e(word)}</span>'
            f"<h1>{_e(src.spec)}</h1><p>{_e(report.summary or 'no artifacts')} &middot; exit code "
            f"{report.exit_code}: {_e(meaning)}</p><p>{_e(src.format)} source"
            + (f", {src.params:,} parameters" if src.params else "")
            + f"; inputs {', '.join(f'<code>{_e(i)}</code>' for i in src.inputs)}; outputs "
            + ", ".join(f"<code>{_e(o)}</code>" for o in src.outputs) + "</p></header>")


def _cards(report: Report) -> str:
    src = report.source
    counts = {s: sum(a.status == s for a in report.artifacts) for s in ("passed", "failed", "error", "unavailable")}
    cards = [("artifacts", str(len(report.artifacts)),
              ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"),
             ("fastest passed", report.fastest_passed or "none", fastest_detail(report) or "no passed artifact "
              "with a latency measurement"),
             ("source accuracy", fmt_pct(src.accuracy), report.settings.accuracy_data or "no labelled set"),
             ("source p50", f"{fmt_ms(src.latency_ms.p50)} ms" if src.latency_ms else "-",
              f"batch {src.latency_ms.batch}, {src.runner or ''}" if src.latency_ms else "not measured")]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div><div class="s">{_e(s)}</div>'
        "</div>" for k, v, s in cards) + "</div>"


def _summary(report: Report) -> str:
    table = summary_table(report)
    rows = []
    for row in table.rows:
        label = f"<b>{_e(row.label)}</b>" + ('<span class="fastest">fastest</span>' if row.fastest else "")
        rows.append((f"row-{row.status}", [label, _pill(row.status), *[_e(c) for c in row.cells]]))
    batch = report.source.latency_ms.batch if report.source.latency_ms else None
    cached = cached_note(report)
    return (f"<section><h2>Artifacts</h2>{_table(table.headers, table.numeric, rows)}"
            f'<p class="note">{_e(SPEEDUP_NOTE.format(at=f" at batch {batch}" if batch else ""))} The bracket after '
            "accuracy is the change against the source in percentage points."
            + (f" {_e(cached)}" if cached else "") + "</p></section>")


def _problems(report: Report) -> str:
    found = problems(report)
    if not found:
        return "<section><h2>Problems and flags</h2><p>None: no failed gates, errors or flags.</p></section>"
    colour = {"error": "error", "failed": "failed", "unavailable": "unavailable", "flag": "unavailable"}
    items = "".join(f'<li style="--c: var(--{colour[p.kind]})"><span class="kind">{_e(p.kind)}</span>'
                    f"<b>{_e(p.artifact)}</b>{_e(p.text)}</li>" for p in found)
    return f'<section><h2>Problems and flags</h2><ul class="problems">{items}</ul></section>'


def _outputs(report: Report) -> str:
    rows = []
    for a in report.artifacts:
        for o in a.parity.outputs if a.parity else []:
            q = o.abs_err_quantiles
            result = output_result(o)
            rows.append((f"row-{'passed' if result == 'ok' else 'failed'}", [
                f"<b>{_e(a.id)}</b>", _e(o.name), _e("x".join(map(str, o.shape))),
                *[_e(f"{q[k]:.2e}") if k in q else "-" for k in ("p50", "p90", "p99", "max")],
                "-" if o.rel_l2_err is None else _e(f"{o.rel_l2_err:.2e}"),
                "-" if o.cosine_min is None else _e(f"{o.cosine_min:.6f}"),
                "-" if o.top1_agreement is None else _e(fmt_pct(o.top1_agreement, 1)),
                _e(kind_text(o)), _e(tolerance_line(a)), _e(result)]))
    if not rows:
        return ""
    headers = ["artifact", "output", "shape", "p50 abs err", "p90", "p99", "max", "rel L2", "cosine (min)",
               "top-1 agr", "judged as", "tolerance", "result"]
    numeric = [False, False, False, True, True, True, True, True, True, True, False, False, False]
    return f"<section><h2>Parity per output</h2>{_table(headers, numeric, rows)}</section>"


def _latency(report: Report) -> str:
    rows = []
    series = [("source", "reference", report.source.latency_by_batch)]
    series += [(a.id, a.status, a.latency_by_batch) for a in report.artifacts]
    for label, status, by_batch in series:
        for b in batches(report):
            if b in by_batch:
                s = by_batch[b]
                iqr = "-" if s.p25 is None or s.p75 is None else f"{fmt_ms(s.p25)}-{fmt_ms(s.p75)}"
                rows.append((f"row-{status}", [f"<b>{_e(label)}</b>", _e(b), *[_e(fmt_ms(v)) for v in
                                                                               (s.p50, s.p90, s.p99, s.mean)],
                                               _e(iqr), _e(f"{s.throughput:,.0f}"), _e(s.runs)]))
    if not rows:
        return ""
    headers = ["artifact", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "p25-p75 ms", "samples/s", "runs"]
    return (f"<section><h2>Latency</h2>{_table(headers, [False] + [True] * 8, rows)}"
            '<p class="note">All models of a run are timed together in round-robin rounds, so a load spike hits '
            "them alike; p25-p75 is the spread of the timed runs.</p></section>")


def _provenance(report: Report) -> str:
    rows = [("row-reference", ["<b>source</b>", _e(report.source.spec), _e(report.source.runner or "-"), "-"])]
    for a in report.artifacts:
        files = ", ".join(a.files) or (a.path or "-")
        layout = "; ".join(f"{k}: {v}" for k, v in a.input_layout.items())
        rows.append((f"row-{a.status}", [f"<b>{_e(a.id)}</b>", _e(a.chain or "-") + (
            f"<br><span class='note'>input layout {_e(layout)}</span>" if layout else ""), _e(a.runner or "-"),
            f"<code>{_e(files)}</code>" if files != "-" else "-"]))
    return ("<section><h2>How each artifact was made and run</h2>"
            f"{_table(['artifact', 'chain', 'runner', 'files'], [False] * 4, rows)}</section>")


def _steps(report: Report) -> str:
    if not report.steps:
        return ""
    longest = max((s.seconds for s in report.steps), default=0.0) or 1.0
    rows = []
    for s in report.steps:
        status = {"ok": "passed", "error": "error", "skipped": "unavailable"}[s.status]
        rows.append((f"row-{status}", [
            _e(s.id), f"<b>{_e(s.name)}</b>", _e(f"{s.source} -> {s.target}"), _pill(s.status, status),
            _e(f"{s.seconds:.2f} s"),
            f'<div class="barbox"><div class="bar" style="width: {max(1.0, 100 * s.seconds / longest):.1f}%">'
            "</div></div>", _e(s.error or "")]))
    headers = ["id", "step", "edge", "status", "time", "share of the longest step", "error"]
    return f"<section><h2>Steps</h2>{_table(headers, [False] * 4 + [True, False, False], rows)}</section>"


def _settings(report: Report) -> str:
    s = report.settings
    tol = "; ".join(f"{p}: " + ", ".join(f"{k} {v}" for k, v in t.items() if v is not None)
                    for p, t in s.tolerances.items() if isinstance(t, dict))
    items = [("threads", str(s.threads)),
             ("latency", f"batches {', '.join(map(str, s.latency_batches))}; {s.warmup} warm-up and up to "
                         f"{s.runs} timed runs per batch" if s.latency_batches else "not measured"),
             ("parity data", s.parity_data), ("accuracy data", s.accuracy_data or "no labelled set"),
             *([("accuracy split", s.accuracy_split)] if s.accuracy_split else []),
             ("tolerances", tol or "-"), ("machine", machine_line(report)),
             ("convcli", f"{report.convcli_version}, report created {report.created}")]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    if report.command:
        body += f"<dt>command</dt><dd><code>{_e(report.command)}</code></dd>"
    return f"<section><h2>Settings</h2><dl>{body}</dl></section>"


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML page."""
    word, _ = verdict(report)
    parts = [_header(report), _cards(report), _summary(report), _problems(report), _divergence(report),
             f"<section><h2>Plots</h2>{_plots(report)}</section>", _outputs(report), _latency(report),
             _provenance(report), _steps(report), _settings(report),
             f"<footer>convcli {_e(report.convcli_version)} &middot; {_e(report.schema_)}</footer>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>convcli {_e(word)}: {_e(report.source.spec)}</title>\n<style>{CSS}</style>\n</head>\n"
            "<body>\n<main>\n" + "\n".join(p for p in parts if p) + "\n</main>\n</body>\n</html>\n")
