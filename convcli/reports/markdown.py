"""The Markdown view of a report, sized for a pull-request comment or ``$GITHUB_STEP_SUMMARY``.

GitHub-flavoured Markdown only (no HTML): a headline with the verdict, one table row per artifact (source
first), the problems and flags, then the settings that make the numbers reproducible. The summary table
and the problem list are built here once and shared with the HTML renderer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convcli.parity.compare import OutputParity
from convcli.parity.divergence import PATH_ROWS, Divergence, TensorError
from convcli.reports.model import ArtifactReport, Report

VERDICTS = {0: ("PASSED", "every available artifact passed its gates"),
            1: ("FAILED", "a parity, accuracy or latency gate failed"),
            2: ("BAD INPUT", "the job's input was rejected"),
            3: ("ERROR", "a conversion or a run failed")}


def verdict(report: Report) -> tuple[str, str]:
    """One word for the outcome (PASSED, FAILED, ERROR, ...) and what it means, from the exit code."""
    return VERDICTS.get(report.exit_code, (f"EXIT {report.exit_code}", "unknown exit code"))


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if value >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.3g}"  # three significant digits: 0.0115 vs 0.0100, never "0.01 vs 0.01"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def fmt_pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def fmt_accuracy(value: float | None, drop: float | None) -> str:
    """``99.17% (-0.42 pt)``: a positive drop (worse than the source) is shown as a minus."""
    if value is None:
        return "-"
    if drop is None:
        return fmt_pct(value)
    change = -drop * 100
    return f"{fmt_pct(value)} ({0.0 if abs(change) < 0.005 else change:+.2f} pt)"


def batches(report: Report) -> list[str]:
    """Every latency batch size measured anywhere in the report, in numeric order."""
    keys = set(report.source.latency_by_batch)
    for a in report.artifacts:
        keys.update(a.latency_by_batch)
    keys.update(str(b) for b in report.settings.latency_batches)
    return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))


@dataclass
class Row:
    """One line of the summary table: ``status`` is an artifact status or ``reference`` for the source."""

    label: str
    status: str
    cells: list[str]
    fastest: bool = False


@dataclass
class SummaryTable:
    headers: list[str]
    numeric: list[bool]
    rows: list[Row]


def summary_table(report: Report) -> SummaryTable:
    """The table every renderer shows: source first, then each artifact, one p50 column per batch size."""
    bs = batches(report) or [""]
    p50_headers = [f"p50 ms b={b}" if b else "p50 ms" for b in bs]
    headers = ["artifact", "status", "max abs err", "cosine", "top-1 agr", "accuracy (vs source)",
               *p50_headers, "speedup", "size"]
    numeric = [False, False] + [True] * (len(headers) - 2)
    src = report.source
    rows = [Row("source", "reference",
                ["-", "-", "-", fmt_pct(src.accuracy),
                 *[fmt_ms(src.latency_by_batch[b].p50) if b in src.latency_by_batch else
                   (fmt_ms(src.latency_ms.p50) if not b and src.latency_ms else "-") for b in bs],
                 "1.00x" if src.latency_ms else "-", fmt_size(src.size_bytes)])]
    for a in report.artifacts:
        p = a.parity
        rows.append(Row(a.id, a.status, [
            "-" if not p or p.max_abs_err is None else f"{p.max_abs_err:.2e}",
            "-" if not p or p.cosine_min is None else f"{p.cosine_min:.6f}",
            "-" if not p or p.top1_agreement is None else fmt_pct(p.top1_agreement, 1),
            fmt_accuracy(a.accuracy, a.accuracy_drop),
            *[fmt_ms(a.latency_by_batch[b].p50) if b in a.latency_by_batch else
              (fmt_ms(a.latency_ms.p50) if not b and a.latency_ms else "-") for b in bs],
            speedup_cell(a), fmt_size(a.size_bytes)], fastest=a.id == report.fastest_passed))
    return SummaryTable(headers, numeric, rows)


@dataclass
class Problem:
    """A line worth a reader's attention: ``kind`` is failed, error, unavailable or flag."""

    artifact: str
    kind: str
    text: str


def problems(report: Report) -> list[Problem]:
    """Errors, failed gates, unavailable targets and flags (slower than the source, ...), worst first."""
    order = {"error": 0, "failed": 1, "unavailable": 2, "flag": 3}
    found: list[Problem] = []
    for a in report.artifacts:
        if a.error:
            found.append(Problem(a.id, a.status if a.status in order else "error", a.error))
        found.extend(Problem(a.id, "failed", line) for line in a.failures)
        found.extend(Problem(a.id, "flag", line) for line in a.flags)
    return sorted(found, key=lambda p: order[p.kind])


def speedup_cell(a: ArtifactReport) -> str:
    """``2.75x``; ``~1.04x`` when the difference from the source is inside the two numbers' spread."""
    if a.speedup_vs_source is None:
        return "-"
    return ("~" if a.speed_within_noise else "") + f"{a.speedup_vs_source:.2f}x"


SPEEDUP_NOTE = ("Speedup is the source's p50 over the artifact's p50{at}, both timed in the same interleaved rounds "
                "of the same run; ~ marks a difference within the two numbers' spread (noise, not a finding).")


def cached_note(report: Report) -> str:
    """``Latency cached from run R (machine M, at T): a, b.`` for numbers not measured in this run ("" if none)."""
    runs: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for label, m in [("source", report.source.measured)] + [(a.id, a.measured) for a in report.artifacts]:
        if m is not None and report.run_id is not None and m.run_id != report.run_id:
            runs.setdefault(m.run_id, []).append(label)
            where[m.run_id] = f"machine {m.machine}, {m.at}"
    return " ".join(f"Cached from run {r} ({where[r]}): {', '.join(ids)}." for r, ids in runs.items())


def fastest_detail(report: Report) -> str:
    """``p50 0.024 ms at batch 1, 10.00x the source`` for the fastest passed artifact ("" when none)."""
    a = next((x for x in report.artifacts if x.id == report.fastest_passed), None)
    if a is None or a.latency_ms is None:
        return ""
    text = f"p50 {fmt_ms(a.latency_ms.p50)} ms at batch {a.latency_ms.batch}"
    if a.speedup_vs_source is not None:
        text += f", {a.speedup_vs_source:.2f}x the source"
    return text


def machine_line(report: Report) -> str:
    m = report.settings.machine
    parts = [str(m.get("cpu") or "unknown CPU")]
    if m.get("cores"):
        parts.append(f"{m['cores']} cores")
    flags = m.get("cpu_flags") or []
    parts.append("flags " + (", ".join(flags) if flags else "none of avx2/avx512/amx"))
    if m.get("python"):
        parts.append(f"Python {m['python']}")
    if m.get("platform"):
        parts.append(str(m["platform"]))
    return "; ".join(parts)


def output_result(o: OutputParity) -> str:
    """``ok``, or ``FAILED: ...`` with every reason (a non-finite source fails even when the artifact matches it),
    plus any degenerate-reference note."""
    reasons = [r for r in (o.source_nonfinite, o.nonfinite) if r] + o.problems
    text = "FAILED: " + "; ".join(reasons) if reasons else "ok"
    return text + ("; degenerate reference: " + "; ".join(o.degenerate) if o.degenerate else "")


def kind_text(o: OutputParity) -> str:
    """``embedding (declared)`` or ``tensor (assumed: ...)``: how the output was judged, and why."""
    return f"{o.kind} ({'declared' if o.kind_reason == 'declared' else 'assumed: ' + o.kind_reason})"


def output_kinds_line(report: Report) -> str:
    """The kind each source output was judged as (the same for every row), or "" before any parity."""
    first = next((a.parity for a in report.artifacts if a.parity and a.parity.outputs), None)
    return "; ".join(f"{o.name}: {kind_text(o)}" for o in first.outputs) if first else ""


def detections_lines(report: Report) -> list[str]:
    """Per row and detections output: how the artifact's detections paired with the source's."""
    lines = []
    for a in report.artifacts:
        for o in a.parity.outputs if a.parity else []:
            if (d := o.detections) is None:
                continue
            iou = f", IoU >= {d.min_iou:.3f}, score diff <= {d.max_score_diff:.2g}" if d.min_iou is not None else ""
            lines.append(f"{a.id}: {o.name}: {d.matched} pairs of {d.source} source / {d.artifact} artifact "
                         f"detections in {d.groups} images{iou}, {d.near_threshold} near the lowest kept score")
    return lines


def fixed_shapes_line(report: Report) -> str:
    """Which rows run at sizes fixed from the source's dynamic dims (TFLite: ``details["fixed shapes"]``), e.g.
    ``tflite-fp32: input_ids batch=1 seq=16``: such an artifact accepts those sizes only. "" when none."""
    rows = []
    for a in report.artifacts:
        fixed = a.details.get("fixed shapes")
        if isinstance(fixed, dict) and fixed:
            rows.append(f"{a.id}: " + ", ".join(
                f"{name} " + " ".join(f"{dim}={size}" for dim, size in dims.items())
                for name, dims in fixed.items() if isinstance(dims, dict)))
    return "; ".join(rows)


def tolerance_line(a: ArtifactReport) -> str:
    if not a.parity:
        return ""
    t = a.parity.tolerance
    scale = " x max(1, |ref|)" if t.atol_per_range else ""
    floor = f" (>= {t.rounding_factor:g}x the source's own float32 error)" if t.rounding_factor else ""
    parts = [f"atol {t.atol:g}{scale}{floor} rtol {t.rtol:g}" if t.atol is not None else "no elementwise limit"]
    if t.min_cosine is not None:
        parts.append(f"cosine >= {t.min_cosine:g}")
    if t.min_top1 is not None:
        parts.append(f"top-1 >= {t.min_top1:g}")
    return ", ".join(parts)


_ESCAPE = re.compile(r"([\\`*_{}\[\]<>|#~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def divergence_note(a: ArtifactReport, with_id: bool = True) -> str | None:
    """One line per row that went through divergence localization: what it found (or why nothing), how many
    tensors could not be matched, and where the repro files are. Shared by every renderer."""
    d = a.divergence
    if d is None:
        return None
    text = (f"{a.id}: divergence: " if with_id else "") + d.message
    if d.status in ("found", "not_found"):
        text += f" [{d.compared} tensors compared, {d.unmatched} unmatched"
        text += f"; reference values: {d.reference_values}]" if d.reference_values else "]"
    if d.files:
        text += f"; repro in {d.files[0].rsplit('/', 1)[0]}/"
    return text


def path_window(d: Divergence) -> list[TensorError]:
    """The path rows to show: a few compared tensors before the first divergence, it, and a few after."""
    if not d.path:
        return []
    at = next((i for i, e in enumerate(d.path) if d.first is not None and e.tensor == d.first.tensor), 0)
    lo = max(0, at - PATH_ROWS // 2)
    return d.path[lo : lo + PATH_ROWS]


DIVERGENCE_HEADERS = ["#", "tensor", "node", "op", "module", "max abs err", "rel err", "cosine", ""]


def divergence_cells(e: TensorError, first: TensorError | None) -> list[str]:
    mark = "FIRST" if first is not None and e.tensor == first.tensor else ("over" if e.diverged else "")
    return [str(e.index), e.tensor, e.node or "-", e.op or "-", e.module or "-",
            "-" if e.max_abs_err is None else f"{e.max_abs_err:.2e}",
            "-" if e.rel_err is None else f"{e.rel_err:.2e}", "-" if e.cosine is None else f"{e.cosine:.6f}", mark]


def md_escape(text: str) -> str:
    """Plain text inside Markdown: punctuation that GFM would read as markup is backslash-escaped, and
    newlines become spaces so a message cannot break a table or a list."""
    return _ESCAPE.sub(r"\\\1", " ".join(_CONTROL.sub(" ", str(text)).split()))


def md_code(text: str) -> str:
    """An inline code span that survives backticks inside ``text``."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(headers: list[str], numeric: list[bool], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _output_rows(report: Report) -> list[list[str]]:
    """Per-output parity, for models with several outputs or artifacts with a failing output."""
    rows = []
    for a in report.artifacts:
        for o in a.parity.outputs if a.parity else []:
            q = o.abs_err_quantiles
            rows.append([md_escape(a.id), md_escape(o.name), "x".join(map(str, o.shape)),
                         "-" if o.max_abs_err is None else f"{o.max_abs_err:.2e}",
                         f"{q['p99']:.2e}" if "p99" in q else "-",
                         "-" if o.cosine_min is None else f"{o.cosine_min:.6f}",
                         "-" if o.top1_agreement is None else fmt_pct(o.top1_agreement, 1),
                         md_escape(o.kind), md_escape(output_result(o))])
    return rows


def _divergence_section(report: Report) -> list[str]:
    rows = [a for a in report.artifacts if a.divergence is not None]
    if not rows:
        return []
    lines = ["", "### Where parity fails", ""]
    for a in rows:
        d = a.divergence
        assert d is not None
        lines += [f"**{md_escape(a.id)}**: {md_escape(divergence_note(a, with_id=False) or '')}", ""]
        if d.first is not None and d.first.source_line:
            lines += [f"Source line: {md_code(d.first.source_line)}", ""]
        window = path_window(d)
        if window:
            lines += _table(DIVERGENCE_HEADERS, [True, False, False, False, False, True, True, True, False],
                            [[md_escape(c) for c in divergence_cells(e, d.first)] for e in window])
            lines.append("")
        if d.ranked:
            lines.append("Layers adding the most error: " + ", ".join(
                f"{md_code(e.node or e.tensor)} (+{e.added:.2e})" for e in d.ranked if e.added is not None))
            lines.append("")
        if d.unmatched_reasons:
            lines.append("Unmatched: " + md_escape(", ".join(f"{k}: {v}" for k, v in d.unmatched_reasons.items())))
            lines.append("")
        if d.files:
            lines.append("Repro: " + ", ".join(md_code(f) for f in d.files))
            lines.append("")
    return lines[:-1]


def render_markdown(report: Report) -> str:
    """The whole report as GitHub-flavoured Markdown (no HTML, no emoji); ends with a newline."""
    word, meaning = verdict(report)
    src = report.source
    s = report.settings
    lines = [f"## convcli: {word} ({md_escape(report.summary or 'no artifacts')})", ""]
    fastest = (f"**{md_escape(report.fastest_passed)}** ({fastest_detail(report)})" if report.fastest_passed
               else "none (no artifact passed with a latency measurement)")
    lines.append(f"Exit code **{report.exit_code}**: {meaning}. Fastest passed artifact: {fastest}.")
    lines.append("")
    params = f", {src.params:,} parameters" if src.params else ""
    lines.append(f"Source {md_code(src.spec)} ({md_escape(src.format)}{params}); inputs "
                 + ", ".join(md_code(i) for i in src.inputs) + "; outputs "
                 + ", ".join(md_code(o) for o in src.outputs) + ".")
    lines.append("")
    table = summary_table(report)
    body = []
    for row in table.rows:
        label = f"**{md_escape(row.label)}** (fastest)" if row.fastest else md_escape(row.label)
        status = f"**{row.status}**" if row.status in ("failed", "error") else row.status
        body.append([label, status, *row.cells])
    lines += _table(table.headers, table.numeric, body)
    lines.append("")
    batch = src.latency_ms.batch if src.latency_ms else None
    lines.append(SPEEDUP_NOTE.format(at=f" at batch {batch}" if batch else "")
                 + " Accuracy in brackets is the change against the source in percentage points.")
    if note := cached_note(report):
        lines += ["", md_escape(note)]

    found = problems(report)
    if found:
        lines += ["", "### Problems and flags", ""]
        lines += [f"- **{md_escape(p.artifact)}** {p.kind}: {md_escape(p.text)}" for p in found]

    multi = len(src.outputs) > 1 or any(a.parity and any(output_result(o) != "ok" for o in a.parity.outputs)
                                        for a in report.artifacts)
    out_rows = _output_rows(report) if multi else []
    if out_rows:
        lines += ["", "### Parity per output", ""]
        lines += _table(["artifact", "output", "shape", "max abs err", "p99 abs err", "cosine", "top-1 agr",
                         "kind", "result"], [False, False, False, True, True, True, True, False, False], out_rows)

    lines += _divergence_section(report)

    lines += ["", "### Settings", ""]
    lat = (f"batches {', '.join(map(str, s.latency_batches))}; {s.warmup} warm-up and up to {s.runs} timed runs "
           "per batch, all models interleaved in rounds" if s.latency_batches else "not measured")
    lines.append(f"- Threads: {s.threads}; latency: {lat}" + (f"; run {md_escape(report.run_id)}"
                                                               if report.run_id else ""))
    lines.append(f"- Parity data: {md_escape(s.parity_data)}")
    lines.append(f"- Accuracy data: {md_escape(s.accuracy_data) if s.accuracy_data else 'no labelled set'}")
    if s.accuracy_split:
        lines.append(f"- Accuracy split: {md_escape(s.accuracy_split)}")
    tols = sorted({f"{a.precision}: {tolerance_line(a)}" for a in report.artifacts if a.parity})
    if tols:
        lines.append(f"- Tolerances (effective, per row precision): {md_escape('; '.join(tols))}")
    if kinds := output_kinds_line(report):
        lines.append(f"- Outputs judged as: {md_escape(kinds)}")
    lines += [f"- Detections: {md_escape(line)}" for line in detections_lines(report)]
    if fixed := fixed_shapes_line(report):
        lines.append(f"- Dynamic dims fixed (these artifacts take only these sizes): {md_escape(fixed)}")
    lines.append(f"- Machine: {md_escape(machine_line(report))}")
    if report.steps:
        lines.append("- Steps: " + ", ".join(f"{md_escape(st.name)} {st.seconds:.2f} s"
                                             + ("" if st.status == "ok" else f" ({st.status})")
                                             for st in report.steps))
    lines.append(f"- convcli {md_escape(report.convcli_version)}, {md_escape(report.created)}"
                 + (f"; command {md_code(report.command)}" if report.command else ""))
    return "\n".join(lines) + "\n"
