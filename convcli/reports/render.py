"""Reading report.json back and writing its other views next to it (report.md, report.html,
report.junit.xml), each atomically so a CI step never picks up half a file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from convcli.core.errors import InputError
from convcli.core.fsutil import atomic_write_text
from convcli.reports.model import SCHEMA_VERSION, Report

REPORT_JSON = "report.json"
FILES = {"md": "report.md", "html": "report.html", "junit": "report.junit.xml"}


def renderer(fmt: str) -> Callable[[Report], str]:
    """The ``Report -> str`` function of a file format (md, html, junit); imported on demand."""
    if fmt == "md":
        from convcli.reports.markdown import render_markdown

        return render_markdown
    if fmt == "html":
        from convcli.reports.html import render_html

        return render_html
    if fmt == "junit":
        from convcli.reports.junit import render_junit

        return render_junit
    raise InputError(f"unknown report format '{fmt}'", hint=f"choose from {', '.join(FILES)}")


def write_reports(report: Report, outdir: Path, formats: Iterable[str]) -> list[Path]:
    """Render ``report`` in each format and write OUTDIR/report.md, report.html, report.junit.xml.

    Every format is checked before anything is written; returns the paths written, in the order given.
    """
    wanted = list(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    renderers = [(fmt, renderer(fmt)) for fmt in wanted]
    written = []
    for fmt, render in renderers:
        path = Path(outdir) / FILES[fmt]
        atomic_write_text(path, render(report))
        written.append(path)
    return written


def load_report(path: Path) -> Report:
    """Read and validate a report: ``path`` is report.json or the OUTDIR holding it.

    Raises InputError naming the file when it is missing, not JSON, of another schema version, or does not
    match the schema.
    """
    path = Path(path)
    file = path / REPORT_JSON if path.is_dir() or not path.suffix else path
    hint = "`convcli convert ... -o OUTDIR` and `convcli check ... -o OUTDIR` write OUTDIR/report.json"
    if not file.is_file():
        raise InputError(f"no report at {file}", hint=hint)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{file} is not JSON: {exc}", hint=hint) from None
    if not isinstance(data, dict) or "schema" not in data:
        raise InputError(f"{file} is not a convcli report: it has no 'schema' field",
                         hint=f"expected schema {SCHEMA_VERSION}")
    if data["schema"] != SCHEMA_VERSION:
        raise InputError(f"{file} has schema {data['schema']!r}; this convcli reads {SCHEMA_VERSION!r}",
                         hint="re-run the job with this convcli version, or use the convcli that wrote it")
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        first = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise InputError(f"{file} does not match schema {SCHEMA_VERSION}: {first}") from None
