"""Report renderers (Markdown, HTML, JUnit) and `convcli report`, on one real conversion and one real
failing check; the HTML page is opened in headless Chromium."""

from __future__ import annotations

import base64
import re
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest

from convcli.core.errors import InputError
from convcli.reports.html import render_html
from convcli.reports.junit import gate_name, render_junit
from convcli.reports.markdown import md_escape, render_markdown
from convcli.reports.model import Report
from convcli.reports.render import load_report, write_reports
from tests.conftest import FAST, Cli
from tests.models.catalogue import DIGITS

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUTDIR of digits_cnn -> onnx (passes) and tensorrt (unavailable without NVIDIA's wheels and a GPU)."""
    out = tmp_path_factory.mktemp("reports") / "out"
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the per-test private cache is not set up yet
        mp.setenv("CONVCLI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        res = Cli()("convert", *DIGITS.args(), "--to", "onnx,tensorrt", "--batch", "1,8", "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory, converted: Path) -> Path:
    """OUTDIR of `convcli check` (no labelled set) on the converted ONNX with its largest weight shifted by 0.05."""
    tmp = tmp_path_factory.mktemp("failing")
    model = onnx.load(str(converted / "onnx-fp32/model.onnx"))
    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
    arr = onnx.numpy_helper.to_array(weights).copy() + 0.05
    weights.CopyFrom(onnx.numpy_helper.from_array(arr, weights.name))
    bad = tmp / "perturbed.onnx"
    onnx.save(model, str(bad))
    out = tmp / "check"
    res = Cli()("check", DIGITS.spec, bad, "--weights", DIGITS.weights, "--threads", "2", "-o", out)
    assert res.exit_code == 1, res.output
    return out


@pytest.fixture(scope="module")
def report(converted: Path) -> Report:
    return load_report(converted)


@pytest.fixture(scope="module")
def html_page(report: Report, converted: Path) -> Path:
    (path,) = write_reports(report, converted, ["html"])
    return path


def _table_rows(md: str) -> list[dict[str, str]]:
    """Rows of the first Markdown table as {header: cell}, split on unescaped pipes."""
    lines = md.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| artifact"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]])
    header, sep, *body = rows
    assert len(sep) == len(header) and all(len(r) == len(header) for r in body), rows
    return [dict(zip(header, r, strict=True)) for r in body]


def test_markdown_has_a_row_per_artifact_and_the_unavailable_reason(report: Report) -> None:
    md = render_markdown(report)
    assert md.startswith("## convcli: PASSED (1 passed, 1 unavailable)")
    assert "Exit code **0**" in md and "**onnx-fp32** (p50 " in md
    rows = _table_rows(md)
    assert [r["artifact"] for r in rows] == ["source", "**onnx-fp32** (fastest)", "tensorrt-fp32"]
    assert [r["status"] for r in rows] == ["reference", "passed", "unavailable"]
    src, onnx_row, trt_row = rows
    assert float(onnx_row["max abs err"]) < 1e-4 and float(onnx_row["cosine"]) > 0.9999
    assert onnx_row["top-1 agr"] == "100.0%" and src["accuracy (vs source)"].startswith("9")
    assert re.fullmatch(r"9\d\.\d\d% \([+-]\d\.\d\d pt\)", onnx_row["accuracy (vs source)"]), onnx_row
    for row in (src, onnx_row):
        assert float(row["p50 ms b=1"]) > 0 and float(row["p50 ms b=8"]) > 0, row
    assert float(onnx_row["speedup"].lstrip("~").rstrip("x")) > 0 and onnx_row["size"].endswith(("kB", "MB"))
    assert set(list(trt_row.values())[2:]) == {"-"}
    trt = next(a for a in report.artifacts if a.status == "unavailable")
    assert trt.error and f"**tensorrt-fp32** unavailable: {md_escape(trt.error)}" in md
    assert "avx2" in md and "Threads: 2" in md and "SimplifyOnnx" in md
    assert not re.search(r"<[a-zA-Z/!]", md.replace("\\<", "")), "Markdown must not contain HTML"


def test_junit_counts_and_elements_match_the_statuses(report: Report) -> None:
    root = ET.fromstring(render_junit(report).encode())
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(report.artifacts) + sum(len(a.failures) for a in report.artifacts) == 2
    for attr, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        assert int(suite.get(attr, "-1")) == sum(len(c.findall(tag)) for c in cases), attr
        assert root.get(attr) == suite.get(attr)
    assert int(suite.get("tests", "0")) == len(cases)
    by_name = {c.get("name"): c for c in cases}
    assert all(c.get("classname") == report.source.spec for c in cases)
    for a in report.artifacts:
        case = by_name[a.id]
        assert (case.find("failure") is not None) == (a.status == "failed")
        assert (case.find("error") is not None) == (a.status == "error")
        assert (case.find("skipped") is not None) == (a.status == "unavailable")
    skipped = by_name["tensorrt-fp32"].find("skipped")
    assert skipped is not None and "tensorrt" in skipped.get("message", "")
    assert "max abs err" in (by_name["onnx-fp32"].findtext("system-out") or "")


def test_failing_check_reports_failure_in_every_format(failing: Path) -> None:
    rep = load_report(failing)
    (row,) = rep.artifacts
    assert row.status == "failed" and rep.exit_code == 1 and row.failures[0].startswith("parity:")
    root = ET.fromstring(render_junit(rep).encode())
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {row.id, f"{row.id} gate: parity"}
    for case in cases.values():
        failure = case.find("failure")
        assert failure is not None and failure.get("message", "").startswith("parity:")
    assert suite.get("failures") == "2" and suite.get("errors") == "0" and suite.get("skipped") == "0"
    md = render_markdown(rep)
    assert md.startswith("## convcli: FAILED") and "Exit code **1**" in md
    assert f"**{md_escape(row.id)}** failed: parity" in md
    assert "### Parity per output" in md and "| FAILED: " in md
    assert gate_name("accuracy drop 1.20 points > 0.50") == "accuracy drop"
    assert gate_name("top-1 agreement 0.800 < 0.9") == "top-1 agreement"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "action", "data")]


def test_html_is_self_contained_with_plots(html_page: Path, failing: Path) -> None:
    page = html_page.read_text()
    parser = _Refs()
    parser.feed(page)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert parser.refs and all(v.startswith("data:image/png;base64,") for _, k, v in parser.refs), parser.refs
    assert not re.search(r"https?://", page)
    assert "url(" not in page and "@import" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 2
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    for text in ("onnx-fp32", "tensorrt-fp32", "unavailable", "OnnxFromPytorch", "Latency vs accuracy",
                 "python package tensorrt not installed"):
        assert text in page, text
    # Without a labelled set the first plot falls back to cosine; a failed artifact is coloured as failed.
    failed_page = render_html(load_report(failing))
    assert "FAILED" in failed_page and 'class="row-failed"' in failed_page
    assert "Latency vs cosine distance" in failed_page and failed_page.count("data:image/png") == 4
    assert "Where parity fails" in failed_page  # the fourth plot: error per layer of the failing row


def _chromium_screenshot(page: Path, shot: Path, size: str) -> list[str]:
    """Render ``page`` headless; returns Chromium's stderr lines that report page console messages."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={shot.parent / 'ud'}",
           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", f"--window-size={size}", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert shot.is_file() and shot.stat().st_size > 1000, log[-2000:]
    return [ln for ln in log.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium missing: apt-get install -y chromium")
def test_html_renders_in_headless_chromium_without_console_errors(html_page: Path, tmp_path: Path) -> None:
    from PIL import Image

    # A control page first, so a change in Chromium's log format cannot make the real check pass vacuously.
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><p>x</p><script>notDefined();</script>")
    assert any("notDefined" in ln for ln in _chromium_screenshot(control, tmp_path / "c" / "c.png", "400,300"))

    shot = tmp_path / "page" / "page.png"
    console = _chromium_screenshot(html_page, shot, "1200,1600")
    assert console == [], console
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
    # The PASSED badge and the passed pill are drawn in the status green (#1a7f37): CSS was applied.
    green = sum(n for n, c in colours if all(abs(a - b) <= 8 for a, b in zip(c, (0x1A, 0x7F, 0x37), strict=True)))
    assert green > 500, green
    assert len(colours) > 50, "page looks blank"


def test_report_command_rerenders_each_format(cli, converted: Path, report: Report, tmp_path: Path) -> None:
    res = cli("report", converted, "--format", "md")
    assert res.exit_code == 0 and res.output == render_markdown(report)
    res = cli("report", converted / "report.json", "--format", "junit")
    assert res.exit_code == 0 and res.output == render_junit(report)
    res = cli("report", converted)
    assert res.exit_code == 0 and "onnx-fp32" in res.output and "unavailable" in res.output
    for fmt, name in (("md", "r.md"), ("junit", "r.xml"), ("html", "r.html"), ("terminal", "r.txt")):
        target = tmp_path / name
        res = cli("report", converted, "--format", fmt, "--output", target)
        assert res.exit_code == 0, res.output
        assert target.is_file() and f"wrote {target}" in res.output
    assert (tmp_path / "r.md").read_text() == render_markdown(report)
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert "tensorrt-fp32" in (tmp_path / "r.txt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_report_command_rejects_missing_or_foreign_reports(cli, tmp_path: Path) -> None:
    res = cli("report", tmp_path / "nowhere", "--format", "md")
    assert res.exit_code == 2 and "nowhere/report.json" in res.output
    (tmp_path / "report.json").write_text('{"schema": "convcli.report/v0"}')
    res = cli("report", tmp_path, "--format", "junit")
    assert res.exit_code == 2 and "convcli.report/v0" in res.output and "report.json" in res.output
    (tmp_path / "report.json").write_text('{"schema": "convcli.report/v1", "created": 1}')
    with pytest.raises(InputError, match="does not match schema"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    assert cli("report", tmp_path).exit_code == 2


def test_write_reports_checks_formats_before_writing(report: Report, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown report format 'pdf'"):
        write_reports(report, tmp_path, ["md", "pdf"])
    assert list(tmp_path.iterdir()) == []
    written = write_reports(report, tmp_path, ["md", "junit"])
    assert [p.name for p in written] == ["report.md", "report.junit.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.junit.xml", "report.md"]


def test_renderers_handle_every_status_and_many_artifacts(report: Report) -> None:
    """Targets added later (openvino, ncnn, tflite, ...) appear as more rows of any status; built here from
    the real report's rows, with an error message full of Markdown/XML specials and a control character."""
    many = report.model_copy(deep=True)
    base = next(a for a in many.artifacts if a.status == "passed")
    failed = base.model_copy(deep=True, update={
        "id": "openvino-int8", "format": "openvino", "precision": "int8", "status": "failed",
        "failures": ["accuracy drop 2.17 points > 1.00", "p50 0.30 ms > 0.1 ms", "accuracy drop 3.00 points > 1.00"],
        "flags": ["slower than the source (0.80x)"]})
    exact = base.model_copy(deep=True, update={"id": "ncnn-fp32", "format": "ncnn"})
    for o in exact.parity.outputs if exact.parity else []:
        o.abs_err_quantiles = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    broken = type(base)(id="tflite-fp32", format="tflite", precision="fp32", status="error",
                        error='TfliteFromOnnx: <class "KeyError"> | `x` *y* _z_ & \x07bell')
    many.artifacts += [failed, exact, broken]
    statuses = [a.status for a in many.artifacts]

    md = render_markdown(many)
    assert [r["status"].strip("*") for r in _table_rows(md)] == ["reference", *statuses]
    assert "\x07" not in md and "\\<class" in md and "\\| \\`x\\` \\*y\\* \\_z\\_" in md
    assert md.count("**openvino-int8** failed:") == 3 and "**openvino-int8** flag: slower" in md

    root = ET.fromstring(render_junit(many).encode())
    suite = root.find("testsuite")
    assert suite is not None
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names.count("openvino-int8 gate: accuracy drop") == 1 and "openvino-int8 gate: accuracy drop #2" in names
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        str(len(many.artifacts) + 3), "4", "1", "1")
    error = next(c for c in suite.findall("testcase") if c.get("name") == "tflite-fp32").find("error")
    assert error is not None and error.get("message", "").endswith("& ?bell")

    page = render_html(many)
    assert page.count("data:image/png;base64,") == 3 and "\x07" not in page
    assert "&lt;class &quot;KeyError&quot;&gt;" in page and 'class="row-error"' in page
