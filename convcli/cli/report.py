"""convcli report: re-render OUTDIR/report.json as Markdown, HTML, JUnit XML or the terminal table."""

from __future__ import annotations

import io
import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from convcli.cli.common import err, handle_errors, out


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    junit = "junit"
    terminal = "terminal"


def report(
    outdir: Path = typer.Argument(..., help="The -o folder of a convert/check run (or its report.json)."),
    fmt: ReportFormat = typer.Option(ReportFormat.terminal, "--format", "-f", help="What to render."),
    output: Path = typer.Option(None, "--output", "-o", help="Write to this file (atomically) instead of stdout."),
) -> None:
    """Render a saved report again: for a PR comment (md), a browser (html), CI test results (junit).

    Exits 0 when the report could be rendered, whatever its verdict; 2 when OUTDIR has no valid report.json.

    Example:\n
      convcli report out/digits --format md >> "$GITHUB_STEP_SUMMARY"
    """
    handle_errors(_report)(outdir, fmt, output)


def _report(outdir: Path, fmt: ReportFormat, output: Path | None) -> None:
    from convcli.core.fsutil import atomic_write_text
    from convcli.reports.render import load_report, renderer
    from convcli.reports.terminal import render_terminal

    loaded = load_report(outdir)
    if fmt is ReportFormat.terminal:
        if output is None:
            render_terminal(loaded, out)
            return
        buf = io.StringIO()
        render_terminal(loaded, Console(file=buf, width=160, color_system=None, force_terminal=False))
        text = buf.getvalue()
    else:
        text = renderer(fmt.value)(loaded)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(output, text)
    err.print(f"wrote {output}", highlight=False)
